"""The `fer` package (Haar cascade + mini-Xception, Keras) on the same clip as benchmarks/bench.py, for a
same-machine comparison of frame rate and frames with a face found.

    pip install --no-deps fer   # its other dependencies (tensorflow, opencv) come with fer-batch[train]
    python benchmarks/compare_fer.py [--video clip.mp4]

It calls `FER().detect_emotions(frame)` on every frame, as `fer`'s own video loop does, and prints JSON.
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
    print(json.dumps({"package": "fer (Haar + mini-Xception)", "video": str(video), "frames": len(frames),
                      "frames_with_face": with_face, "fps_excluding_decode": round(len(frames) / seconds, 1)},
                     indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
