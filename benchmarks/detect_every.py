"""What --detect-every costs and saves: whole-command time and agreement with full detection on every frame.

    python benchmarks/detect_every.py                                  # N = 1 4 8 12 16 on the generated clips
    python benchmarks/detect_every.py --every-values 1 8 --pairs 5 --fer /path/to/fer2013.csv.gz

For each clip and each N, `fer-batch label CLIP --detect-every N` runs --pairs times, the values interleaved
(N=1, 4, 8, ..., N=1, 4, 8, ...) so drifting load hits all alike; the median is reported with its ratio to N=1.
Each N's CSV is compared with N=1's (benchmarks/compare_runs.py: faces matched by box, same top label,
probability differences, frames with a face, tracks). Clips: benchmarks/bench.py's two-person clip, six-face
crowd clip and 720p close-up clip, and with --fer a clip of six real FER-2013 test faces (``make_fer_clip``).
Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--every-values", type=int, nargs="+", default=[1, 4, 8, 12, 16], metavar="N")
    parser.add_argument("--pairs", type=int, default=3, help="runs of each value, interleaved")
    parser.add_argument("--fer", type=Path, metavar="FER2013_CSV", help="also a clip of real FER-2013 test faces")
    parser.add_argument("--media", type=Path, metavar="DIR", help="read (or write) the clips here")
    parser.add_argument("--options", default="", help="more label options for every run, e.g. '--precision float'")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)

    from bench import emit, make_clip, make_closeup_clip, make_crowd_clip, make_fer_clip
    from compare_runs import compare, read
    from scale import label_command, run_command

    from fer_batch.system import describe_hardware

    work = Path(tempfile.mkdtemp(prefix="fer-batch-detect-every-"))
    media = args.media or work
    media.mkdir(parents=True, exist_ok=True)
    clips = {"clip": media / "clip.mp4", "crowd": media / "crowd.mp4", "closeup": media / "closeup.mp4"}
    for name, make in (("clip", make_clip), ("crowd", make_crowd_clip), ("closeup", make_closeup_clip)):
        if not clips[name].is_file():
            make(clips[name])
    if args.fer:
        clips["fer"] = media / "fer.mp4"
        if not clips["fer"].is_file():
            make_fer_clip(clips["fer"], args.fer)
    values = sorted(set(args.every_values) | {1})
    results: dict = {"machine": describe_hardware(), "options": args.options, "pairs": args.pairs, "clips": {}}
    for name, clip in clips.items():
        times: dict[int, list[float]] = {n: [] for n in values}
        for _ in range(args.pairs):
            for n in values:
                command = label_command([str(clip)], work / f"{name}-{n}.csv", "--detect-every", str(n),
                                        *args.options.split())
                times[n].append(run_command(*command)[0])
        reference = read(work / f"{name}-1.csv")
        rows = {}
        for n in values:
            median = statistics.median(times[n])
            rows[n] = {"median_s": round(median, 2), "frames_per_s": round(275 / median, 1),
                       "speedup_vs_1": round(statistics.median(times[1]) / median, 2),
                       "times_s": [round(t, 2) for t in times[n]],
                       "vs_detect_every_1": compare(reference, read(work / f"{name}-{n}.csv"))}
            print(name, n, json.dumps(rows[n]), file=sys.stderr)
        results["clips"][name] = rows
    emit(results, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
