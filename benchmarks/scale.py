"""How fer-batch scales with worker processes, and where a worker's time goes.

    python benchmarks/scale.py                          # generated clip and photos, workers 1..cores
    python benchmarks/scale.py --baseline 2851c84 --pairs 10   # also: an older commit's whole-command time
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
- ``baseline``: with --baseline REV, the same clip through that commit's code (a git worktree), interleaved with
  the current default run and with ``--int8``, and the speed-up ratios, on the clip and on a crowd clip (six
  faces in every frame).
The clip is benchmarks/bench.py's: 640x360, 25 fps, 275 frames, two people, ~40 % empty frames; the crowd clip is
its ``make_crowd_clip``: the same size and length, six heads in a 3x2 grid in every frame.
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
    process = subprocess.Popen(command, env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
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
    return ([sys.executable, "-m", "fer_batch", "label", *inputs, "-o", str(output), "--force", "--quiet",
             "--no-summary", *options], {"PYTHONPATH": str(python_path)})


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
    unit = WorkUnit(0, (Source(clip, str(clip), "video"),))
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, nargs="+", help="worker counts (default: 1, 2, 4, ... up to cores)")
    parser.add_argument("--separate", type=int, default=0, help="also run N separate processes (default: cores)")
    parser.add_argument("--photos", type=int, default=60, help="photos in the generated folder")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--baseline", metavar="REV", help="compare whole-command time with this commit")
    parser.add_argument("--pairs", type=int, default=5, help="interleaved old/new runs for --baseline")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--media", type=Path, metavar="DIR",
                        help="use clip.mp4, crowd.mp4 and photos/ in DIR, writing those missing (default: a new "
                             "temporary folder); for a machine without scikit-image, write them here first")
    parser.add_argument("--media-only", action="store_true", help="write the media into --media DIR and exit")
    args = parser.parse_args(argv)

    from bench import make_clip, make_crowd_clip, make_folder

    from fer_batch.system import available_cores, describe_hardware

    cores = available_cores()
    counts = args.workers or sorted({1, *[2 ** i for i in range(1, 8) if 2 ** i <= cores], cores})
    work = Path(tempfile.mkdtemp(prefix="fer-batch-scale-"))
    media = args.media or work
    media.mkdir(parents=True, exist_ok=True)
    clip = media / "clip.mp4" if (media / "clip.mp4").is_file() else make_clip(media / "clip.mp4")
    crowd = media / "crowd.mp4" if (media / "crowd.mp4").is_file() else make_crowd_clip(media / "crowd.mp4")
    folder = media / "photos"
    if not folder.is_dir() or len(list(folder.glob("*.jpg"))) != args.photos:
        folder = make_folder(folder, args.photos)
    if args.media_only:
        print(f"wrote the clip, the crowd clip and {args.photos} photos to {media}")
        return 0
    results: dict = {"machine": describe_hardware(), "clip": "640x360, 275 frames", "photos": args.photos}
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
    processes = [subprocess.Popen(c, env={**os.environ, **e}, stderr=subprocess.DEVNULL) for c, e in commands]
    for process in processes:
        process.wait()
    seconds = time.perf_counter() - started
    results["separate"] = {"processes": separate, "seconds": round(seconds, 2),
                           "frames_per_s": round(275 * separate / seconds, 1)}
    results["one_command_vs_separate"] = round(results["video"]["default_per_s"] /
                                               results["separate"]["frames_per_s"], 2)

    if args.baseline:
        old = work / "baseline"
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", "-f", str(old), args.baseline],
                       check=True, capture_output=True)
        try:
            results["baseline"] = {"rev": args.baseline}
            for name, video in (("clip", clip), ("crowd", crowd)):
                old_times, new_times, int8_times = [], [], []
                for _ in range(args.pairs):  # interleaved, so drifting load hits all alike
                    old_times.append(run_command(*label_command([str(video)], work / "old.csv", python_path=old))[0])
                    new_times.append(run_command(*label_command([str(video)], work / "new.csv"))[0])
                    int8_times.append(run_command(*label_command([str(video)], work / "int8.csv", "--int8"))[0])
                old_median = statistics.median(old_times)
                results["baseline"][name] = {
                    "old_s": [round(t, 2) for t in old_times], "new_s": [round(t, 2) for t in new_times],
                    "int8_s": [round(t, 2) for t in int8_times],
                    "median_speedup": round(old_median / statistics.median(new_times), 2),
                    "median_speedup_int8": round(old_median / statistics.median(int8_times), 2)}
                print("baseline", name, results["baseline"][name], file=sys.stderr)
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(old)], capture_output=True)
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    raise SystemExit(main())
