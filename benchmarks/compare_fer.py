"""The `fer` package (Haar cascade + mini-Xception, Keras) on the same clip as benchmarks/bench.py, for a
same-machine comparison of frame rate and frames with a face found.

    pip install --no-deps fer   # its other dependencies (tensorflow, opencv) come with fer-batch[train]
    python benchmarks/compare_fer.py [--video clip.mp4] [--pairs 3]

It calls `FER().detect_emotions(frame)` on every frame, as `fer`'s own video loop does, and prints JSON. With
``--pairs N`` it also times whole commands, start-up, model loading and decoding included, interleaved N times:
`fer` as a script doing the above, and `fer-batch label VIDEO` with its defaults; medians and their ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import cv2

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--video", type=Path, help="default: the clip bench.py generates")
    parser.add_argument("--pairs", type=int, default=0,
                        help="also time N interleaved whole commands of each package (default 0: off)")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from bench import make_clip
    from fer.fer import FER

    video = args.video or make_clip(Path(tempfile.mkdtemp(prefix="fer-compare-")) / "clip.mp4")
    detector = FER(mtcnn=False)
    capture = cv2.VideoCapture(str(video))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    detector.detect_emotions(frames[0])  # warm-up: first Keras call builds the graph
    started = time.perf_counter()
    with_face = sum(bool(detector.detect_emotions(frame)) for frame in frames)
    seconds = time.perf_counter() - started
    results = {"package": "fer (Haar + mini-Xception)", "video": str(video), "frames": len(frames),
               "frames_with_face": with_face, "fps_excluding_decode": round(len(frames) / seconds, 1)}
    if args.pairs:
        results["whole_commands"] = whole_commands(video, args.pairs)
    print(json.dumps(results, indent=2))
    return 0


FER_SCRIPT = """
import sys, cv2
from fer.fer import FER
detector = FER(mtcnn=False)
capture = cv2.VideoCapture(sys.argv[1])
while True:
    ok, frame = capture.read()
    if not ok:
        break
    detector.detect_emotions(frame)
"""


def whole_commands(video: Path, pairs: int) -> dict:
    """Median wall seconds of `fer` (FER_SCRIPT) and `fer-batch label` on ``video``, interleaved ``pairs`` times."""
    import statistics
    import subprocess

    from fer_batch.system import describe_hardware

    out = Path(tempfile.mkdtemp(prefix="fer-compare-")) / "out.csv"
    commands = {"fer": [sys.executable, "-c", FER_SCRIPT, str(video)],
                "fer-batch": [sys.executable, "-m", "fer_batch", "label", str(video), "-o", str(out), "--force",
                              "--quiet"]}
    environment = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    times: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(pairs):
        for name, command in commands.items():
            started = time.perf_counter()
            subprocess.run(command, check=True, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            times[name].append(time.perf_counter() - started)
    medians = {name: statistics.median(values) for name, values in times.items()}
    return {"machine": describe_hardware(), "seconds": {k: [round(t, 2) for t in v] for k, v in times.items()},
            "median_s": {k: round(v, 2) for k, v in medians.items()},
            "fer_batch_speedup": round(medians["fer"] / medians["fer-batch"], 2)}


if __name__ == "__main__":
    raise SystemExit(main())
