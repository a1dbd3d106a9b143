"""Shared fixtures: real faces (scikit-image's public-domain astronaut photo), videos written with
cv2.VideoWriter, and small synthetic FER-2013 files."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
# Where the face is in skimage.data.astronaut() (512x512), x1 y1 x2 y2, checked by eye.
ASTRONAUT_FACE = (178, 57, 273, 177)


@pytest.fixture(scope="session")
def astronaut() -> np.ndarray:
    from skimage import data

    return cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)


@pytest.fixture(scope="session")
def astronaut_jpg(tmp_path_factory, astronaut) -> Path:
    path = tmp_path_factory.mktemp("photos") / "astronaut.jpg"
    cv2.imwrite(str(path), astronaut)
    return path


def paste(canvas: np.ndarray, image: np.ndarray, x: int, y: int) -> None:
    """Paste image into canvas at (x, y), clipped to the canvas."""
    height = min(image.shape[0], canvas.shape[0] - y)
    width = min(image.shape[1], canvas.shape[1] - x)
    if height > 0 and width > 0:
        canvas[y:y + height, x:x + width] = image[:height, :width]


def write_video(path: Path, frames, fps: float = 25.0, size=(640, 360), fourcc: str = "mp4v") -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, size)
    assert writer.isOpened(), f"cannot write {path}"
    for frame in frames:
        writer.write(frame)
    writer.release()
    return path


def moving_face_frames(astronaut: np.ndarray, count: int = 30, blank_every: int = 10, size=(640, 360)):
    """The astronaut's head and shoulders moving right and growing; every ``blank_every``-th frame is blank."""
    head = astronaut[20:300, 120:340]
    for index in range(count):
        frame = np.full((size[1], size[0], 3), 30, np.uint8)
        if blank_every and index % blank_every == blank_every - 1:
            yield frame
            continue
        scale = 0.8 + 0.01 * index
        scaled = cv2.resize(head, None, fx=scale, fy=scale)
        paste(frame, scaled, 20 + 8 * index, 20)
        yield frame


@pytest.fixture(scope="session")
def face_video(tmp_path_factory, astronaut) -> Path:
    """30 frames at 25 fps, 640x360; frames 9, 19 and 29 are blank."""
    path = tmp_path_factory.mktemp("videos") / "moving_face.mp4"
    return write_video(path, moving_face_frames(astronaut))


def fer_rows(count: int, seed: int = 0, usages=("Training", "PublicTest", "PrivateTest")):
    """Synthetic FER rows: label-dependent blobs, so a model can learn something in one epoch."""
    rng = np.random.default_rng(seed)
    rows = []
    for index in range(count):
        label = index % 7
        image = rng.integers(0, 60, (48, 48))
        image[5 + 5 * label: 12 + 5 * label, 10:38] += 150
        rows.append((label, image.astype(np.uint8), usages[index % len(usages)]))
    return rows


def write_fer_csv(path: Path, rows, header="emotion,pixels,Usage") -> Path:
    lines = [header] + [f"{label},{' '.join(map(str, image.ravel()))},{usage}" for label, image, usage in rows]
    text = "\n".join(lines) + "\n"
    if path.suffix == ".gz":
        with gzip.open(path, "wt") as handle:
            handle.write(text)
    else:
        path.write_text(text)
    return path


@pytest.fixture
def fer_csv(tmp_path) -> Path:
    return write_fer_csv(tmp_path / "fer2013.csv", fer_rows(84))


def run_cli(*args: str, timeout: float = 300, check: bool = False) -> subprocess.CompletedProcess:
    """Run ``python -m fer_batch ...`` in a subprocess, as a user would."""
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    result = subprocess.run([sys.executable, "-m", "fer_batch", *args], capture_output=True, text=True,
                            timeout=timeout, env=env)
    if check:
        assert result.returncode == 0, result.stderr
    return result


def read_csv(path: Path) -> list[dict]:
    import csv

    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))
