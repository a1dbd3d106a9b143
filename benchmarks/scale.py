"""How fer-batch scales with worker processes, and where a worker's time goes.

    python benchmarks/scale.py                          # generated clip and photos, workers 1..cores
    python benchmarks/scale.py --baseline e7c4846 --pairs 10   # also: against an older commit (see below)
    python benchmarks/scale.py --baseline e7c4846 --baseline-only --fer fer2013.csv.gz   # only that
    python benchmarks/scale.py --workers 1 2 4 8 16 --separate 16
    python benchmarks/scale.py --media media/ --media-only      # write the media here, measure elsewhere

Prints JSON with:
- ``worker_profile``: one worker at --threads 1 on the clip, in seconds and shares: onnxruntime (detector and
  classifier sessions) against everything else (decoding, resizing, anchor decoding and NMS, crops, pickling the
  results for the parent, building CSV rows);
- ``video`` / ``folder``: whole-command wall time of ``fer-batch label`` (a fresh process each run, start-up
  included, best of --repeat) per worker count (threads: the cores divided among them), frames or images per
  second, the peak resident memory of the whole process tree (parent + workers), and for the clip the parallel
  efficiency: frames/s over (cores x the one-thread worker's frames/s);
- ``separate``: N independent processes at --threads 1, each labelling the clip: the machine's throughput ceiling
  that one command with N workers is compared with;
- ``baseline``: with --baseline REV, whole commands on the clip, on a crowd clip (six faces in every frame), on a
  close-up clip and with --fer on a clip of six real FER-2013 test faces: that commit's code (a git worktree, its
  defaults) and this code's default, ``--precision float`` and ``--detect-every 1``, interleaved; per variant the
  median time, frames/s, the ratios to the previous release and to ``--precision float``, and how its CSV agrees with
  each of theirs (faces matched by box, same label, probabilities, frames with a face, tracks).
The clip is benchmarks/bench.py's: 640x360, 25 fps, 275 frames, two people, ~40 % empty frames; the crowd clip is
its ``make_crowd_clip``: the same size and length, six heads in a 3x2 grid in every frame; the close-up clip is
its ``make_closeup_clip``: 1280x720, 275 frames, one face about half the frame's height (an interview, a webcam).
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def tree_rss(pid: int) -> int:
    """Resident bytes of ``pid`` and all its descendants, from /proc."""
    parents: dict[int, int] = {}
    rss: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(entry.name)] = int(fields[1])
        rss[int(entry.name)] = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
    total, frontier = 0, [pid]
    while frontier:
        current = frontier.pop()
        total += rss.get(current, 0)
        frontier.extend(child for child, parent in parents.items() if parent == current)
    return total


def run_command(command: list[str], env: dict | None = None) -> tuple[float, int]:
    """Wall time and peak resident memory of the whole process tree of one command."""
    started = time.perf_counter()
    # Run from the code's own folder: `python -m` puts the working directory first on sys.path, before PYTHONPATH,
    # so another checkout there (this one, under --baseline) would be what runs.
    cwd = (env or {}).get("PYTHONPATH")
    process = subprocess.Popen(command, env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, cwd=cwd)
    peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, tree_rss(process.pid))
            done.wait(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, stderr = process.communicate()
    seconds = time.perf_counter() - started
    done.set()
    sampler.join()
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed: {stderr.decode()[-500:]}")
    return seconds, peak


def label_command(inputs: list[str], output: Path, *options: str, python_path: Path = REPO) -> tuple[list, dict]:
    """``fer-batch label`` of the code in ``python_path`` (run there, see run_command; give absolute paths)."""
    return ([sys.executable, "-m", "fer_batch", "label", *[str(Path(i).resolve()) for i in inputs], "-o",
             str(Path(output).resolve()), "--force", "--quiet", "--no-summary", *options],
            {"PYTHONPATH": str(python_path)})


def best(repeat: int, command: list[str], env: dict) -> tuple[float, int]:
    runs = [run_command(command, env) for _ in range(repeat)]
    return min(r[0] for r in runs), max(r[1] for r in runs)


def worker_profile(clip: Path) -> dict:
    """One worker at one thread on the whole clip: seconds per stage, and the share outside onnxruntime."""
    from fer_batch.recognizer import EmotionRecognizer
    from fer_batch.runner import LabelConfig, VideoState, rows_for
    from fer_batch.sources import Source
    from fer_batch.work import WorkUnit, analyse

    recognizer = EmotionRecognizer(threads=1)
    unit = WorkUnit(0, (Source(clip, str(clip), "video"),), detect_every=LabelConfig.detect_every)  # as by default
    list(analyse(unit, recognizer, LabelConfig.batch))  # warm-up
    timings: dict[str, float] = {}
    started = time.perf_counter()
    batches = []
    pickling = 0.0
    for results in analyse(unit, recognizer, LabelConfig.batch, timings=timings):
        tick = time.perf_counter()
        pickle.loads(pickle.dumps(results, protocol=pickle.HIGHEST_PROTOCOL))  # what the pipe to the parent costs
        pickling += time.perf_counter() - tick
        batches.append(results)
    analysed = time.perf_counter() - started
    tick = time.perf_counter()
    state = VideoState(str(clip), 25.0, LabelConfig(), [])
    for results in batches:
        for result in results:
            rows = state.rows(result) if result.faces else rows_for(result)
            [row.as_dict() for row in rows]
    rows_seconds = time.perf_counter() - tick
    total = analysed + rows_seconds
    onnx = timings["detect_onnx"] + timings["classify_onnx"]
    stages = {
        "detector onnxruntime": timings["detect_onnx"],
        "classifier onnxruntime": timings["classify_onnx"],
        "decoding": timings["decode"],
        "detector pre/post (resize, blob, anchors, NMS)": timings["detect"] - timings["detect_onnx"],
        "crops": timings["crop"],
        "classifier pre/post": timings["classify"] - timings["classify_onnx"],
        "pickling results for the parent": pickling,
        "building CSV rows (parent)": rows_seconds,
    }
    stages["other (batching, loop)"] = total - sum(stages.values())
    return {"seconds": round(total, 3), "frames_per_s": round(275 / total, 1),
            "stages_s": {k: round(v, 3) for k, v in stages.items()},
            "onnxruntime_share": round(onnx / total, 3), "everything_else_share": round(1 - onnx / total, 3)}


# --baseline's variants: name -> label options (the previous release runs with none, from its own code).
VARIANTS = {"default": (), "float": ("--precision", "float"), "full_detection": ("--detect-every", "1")}


def baseline(rev: str, clips: dict[str, Path], work: Path, pairs: int) -> dict:
    """Whole-command time of ``rev``'s code (a git worktree) and of this code's VARIANTS on each clip, interleaved
    run by run so drifting load hits all alike; medians, frames/s and ratios; and how each variant's CSV agrees
    with the previous release's and with ``--precision float``'s (benchmarks/compare_runs.py)."""
    from compare_runs import compare, read

    old = work / "baseline"
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", "-f", str(old), rev],
                   check=True, capture_output=True)
    results: dict = {"rev": rev, "pairs": pairs, "variants": {"previous": f"{rev}, its defaults",
                                                               **{k: " ".join(v) or "defaults"
                                                                  for k, v in VARIANTS.items()}}}
    try:
        for name, video in clips.items():
            times: dict[str, list[float]] = {"previous": [], **{k: [] for k in VARIANTS}}
            for _ in range(pairs):
                times["previous"].append(run_command(*label_command([str(video)], work / f"{name}-previous.csv",
                                                                    python_path=old))[0])
                for variant, options in VARIANTS.items():
                    times[variant].append(run_command(*label_command([str(video)], work / f"{name}-{variant}.csv",
                                                                     *options))[0])
            medians = {k: statistics.median(v) for k, v in times.items()}
            frames = int(read(work / f"{name}-previous.csv")[-1]["frame"]) + 1
            previous, floats = read(work / f"{name}-previous.csv"), read(work / f"{name}-float.csv")
            clip_results = {}
            for variant, seconds in times.items():
                rows = read(work / f"{name}-{variant}.csv")
                clip_results[variant] = {
                    "median_s": round(medians[variant], 2), "frames_per_s": round(frames / medians[variant], 1),
                    "speedup_vs_previous": round(medians["previous"] / medians[variant], 2),
                    "speedup_vs_float": round(medians["float"] / medians[variant], 2),
                    "times_s": [round(t, 2) for t in seconds],
                    "vs_previous": compare(previous, rows), "vs_float": compare(floats, rows)}
                print("baseline", name, variant, json.dumps(clip_results[variant]), file=sys.stderr)
            results[name] = clip_results
    finally:
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(old)], capture_output=True)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, nargs="+", help="worker counts (default: 1, 2, 4, ... up to cores)")
    parser.add_argument("--separate", type=int, default=0, help="also run N separate processes (default: cores)")
    parser.add_argument("--photos", type=int, default=60, help="photos in the generated folder")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--baseline", metavar="REV", help="compare whole-command time with this commit")
    parser.add_argument("--pairs", type=int, default=5, help="interleaved runs of each variant for --baseline")
    parser.add_argument("--baseline-only", action="store_true", help="with --baseline: only that comparison")
    parser.add_argument("--clips", nargs="+", choices=("clip", "crowd", "closeup", "fer"), metavar="CLIP",
                        help="with --baseline: only these clips (clip, crowd, closeup, fer; default: all)")
    parser.add_argument("--fer", type=Path, metavar="FER2013_CSV",
                        help="with --baseline: also a clip of six real FER-2013 test faces (bench.make_fer_clip)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--media", type=Path, metavar="DIR",
                        help="use clip.mp4, crowd.mp4 and photos/ in DIR, writing those missing (default: a new "
                             "temporary folder); for a machine without scikit-image, write them here first")
    parser.add_argument("--media-only", action="store_true", help="write the media into --media DIR and exit")
    args = parser.parse_args(argv)

    from bench import emit, make_clip, make_closeup_clip, make_crowd_clip, make_fer_clip, make_folder

    from fer_batch.system import available_cores, describe_hardware

    cores = available_cores()
    counts = args.workers or sorted({1, *[2 ** i for i in range(1, 8) if 2 ** i <= cores], cores})
    work = Path(tempfile.mkdtemp(prefix="fer-batch-scale-"))
    media = args.media or work
    media.mkdir(parents=True, exist_ok=True)
    clip = media / "clip.mp4" if (media / "clip.mp4").is_file() else make_clip(media / "clip.mp4")
    crowd = media / "crowd.mp4" if (media / "crowd.mp4").is_file() else make_crowd_clip(media / "crowd.mp4")
    closeup = media / "closeup.mp4" if (media / "closeup.mp4").is_file() else make_closeup_clip(media / "closeup.mp4")
    folder = media / "photos"
    if not folder.is_dir() or len(list(folder.glob("*.jpg"))) != args.photos:
        folder = make_folder(folder, args.photos)
    if args.media_only:
        print(f"wrote the clip, the crowd clip, the close-up clip and {args.photos} photos to {media}")
        return 0
    clips = {"clip": clip, "crowd": crowd, "closeup": closeup}
    if args.fer:
        fer = media / "fer.mp4"
        clips["fer"] = fer if fer.is_file() else make_fer_clip(fer, args.fer)
    clips = {name: path for name, path in clips.items() if not args.clips or name in args.clips}
    results: dict = {"machine": describe_hardware(), "clip": "640x360, 275 frames", "photos": args.photos}
    if args.baseline_only:
        results["baseline"] = baseline(args.baseline, clips, work, args.pairs)
        emit(results, args.json)
        return 0
    results["worker_profile"] = worker_profile(clip)
    print(json.dumps(results["worker_profile"], indent=2), file=sys.stderr)

    for name, inputs, items in (("video", [str(clip)], 275), ("folder", [str(folder)], args.photos)):
        rows = []
        for workers in counts:
            seconds, peak = best(args.repeat, *label_command(inputs, work / "out.csv", "--workers", str(workers)))
            rows.append({"workers": workers, "seconds": round(seconds, 2), "per_s": round(items / seconds, 1),
                         "peak_rss_mb": round(peak / 2 ** 20)})
            print(name, rows[-1], file=sys.stderr)
        # One process, one lane whose onnxruntime calls use every core (what --workers 1 did before lanes).
        seconds, peak = best(args.repeat, *label_command(inputs, work / "out.csv", "--workers", "1",
                                                         "--threads", str(cores)))
        rows.append({"workers": 1, "lanes": 1, "threads": cores, "seconds": round(seconds, 2),
                     "per_s": round(items / seconds, 1), "peak_rss_mb": round(peak / 2 ** 20)})
        print(name, rows[-1], file=sys.stderr)
        if name == "video":  # against every core running at the one-thread worker's rate (start-up included)
            for row in rows:
                row["efficiency"] = round(row["per_s"] / (cores * results["worker_profile"]["frames_per_s"]), 2)
        default_seconds, peak = best(args.repeat, *label_command(inputs, work / "out.csv"))
        results[name] = {"per_worker_count": rows, "default_seconds": round(default_seconds, 2),
                         "default_per_s": round(items / default_seconds, 1),
                         "default_peak_rss_mb": round(peak / 2 ** 20)}

    separate = args.separate or cores
    commands = [label_command([str(clip)], work / f"sep{i}.csv", "--workers", "1", "--threads", "1")
                for i in range(separate)]
    started = time.perf_counter()
    processes = [subprocess.Popen(c, env={**os.environ, **e}, stderr=subprocess.DEVNULL, cwd=e["PYTHONPATH"])
                 for c, e in commands]
    for process in processes:
        process.wait()
    seconds = time.perf_counter() - started
    results["separate"] = {"processes": separate, "seconds": round(seconds, 2),
                           "frames_per_s": round(275 * separate / seconds, 1)}
    results["one_command_vs_separate"] = round(results["video"]["default_per_s"] /
                                               results["separate"]["frames_per_s"], 2)

    if args.baseline:
        results["baseline"] = baseline(args.baseline, clips, work, args.pairs)
    emit(results, args.json)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    raise SystemExit(main())
