"""What ``--annotate`` costs: labelling alone against labelling + annotated copy, on bench.py's clip.

    python benchmarks/annotate_bench.py                    # the generated 640x360, 275-frame clip
    python benchmarks/annotate_bench.py --video clip.mp4 --codecs h264,vp9,av1,mp4v

For each codec it reports the annotation time (reading, drawing, encoding, audio), encode frames/s, and the ratio
(labelling + annotation) / labelling, in wall-clock and in CPU seconds; each figure is the best of --repeat runs
after a warm-up. Labelling runs in this process (one worker) so that CPU time counts all of it. Run it on an
otherwise idle machine.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--video", type=Path, help="a video to measure (default: bench.py's generated clip)")
    parser.add_argument("--codecs", default="h264", help="comma-separated --annotate-codec values (default h264)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)

    from bench import emit, make_clip

    from fer_batch import EmotionRecognizer, LabelConfig, label_files
    from fer_batch.annotate import render
    from fer_batch.summary import read_rows
    from fer_batch.video import VideoReader
    from training.export import describe_hardware  # no TensorFlow at import

    work = Path(tempfile.mkdtemp(prefix="fer-batch-annotate-bench-"))
    video = args.video or make_clip(work / "clip.mp4")
    with VideoReader(video) as reader:
        frames = reader.info.frame_count
    recognizer = EmotionRecognizer()
    out = work / "video.csv"
    config = LabelConfig(force=True, progress=False, summary=False)
    label_s, label_cpu = best_of(args.repeat, lambda: label_files([str(video)], out, config, recognizer=recognizer))
    rows = read_rows(out)
    results: dict = {"machine": describe_hardware(), "video": str(video), "frames": frames,
                     "label_s": round(label_s, 3), "label_cpu_s": round(label_cpu, 3),
                     "label_fps": round(frames / label_s, 1), "annotate": {}}
    for codec in args.codecs.split(","):
        seconds, cpu = best_of(args.repeat, lambda codec=codec: render(rows, work / codec, [str(video)], codec=codec))
        size = sum(p.stat().st_size for p in (work / codec).iterdir() if not p.name.endswith(".svg"))
        results["annotate"][codec] = {"seconds": round(seconds, 3), "cpu_s": round(cpu, 3),
                                      "encode_fps": round(frames / seconds, 1),
                                      "ratio": round((label_s + seconds) / label_s, 2),
                                      "cpu_ratio": round((label_cpu + cpu) / label_cpu, 2), "bytes": size}
    emit(results, args.json)
    return 0


def best_of(repeat: int, run) -> tuple[float, float]:
    """The best wall-clock and the best CPU seconds (all threads of this process) of ``repeat`` runs after a
    warm-up; CPU time is the steadier figure on a machine others are using."""
    run()
    walls, cpus = [], []
    for _ in range(repeat):
        wall, cpu = time.perf_counter(), time.process_time()
        run()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return min(walls), min(cpus)


if __name__ == "__main__":
    raise SystemExit(main())
