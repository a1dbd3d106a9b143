"""Find the inputs (files and folders) and decode images to BGR arrays (videos: :mod:`fer_batch.video`).

Discovery is deterministic (sorted walks) and never fails on one folder: unreadable folders and symlink loops are
reported as :class:`Problem` s. Decoding raises :class:`InputError` with a message that says what is wrong; the
runner turns it into an error row and goes on.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})
VIDEO_SUFFIXES = frozenset({".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv"})
MAX_IMAGE_PIXELS = 250_000_000  # ~16k x 16k; larger images are refused rather than exhausting memory


class InputError(Exception):
    """An input that cannot be read; the message says why (the runner adds the file name)."""


@dataclass(frozen=True)
class Source:
    path: Path  # where to read it
    name: str  # as written in the CSV: the path as found from the INPUT given
    kind: str  # "image" or "video"


@dataclass(frozen=True)
class Problem:
    path: str
    message: str


def kind_of(path: Path) -> str | None:
    suffix = path.suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        return "image"
    if suffix in VIDEO_SUFFIXES:
        return "video"
    return None


def discover(inputs: list[str]) -> tuple[list[Source], list[Problem]]:
    """Expand files and folders into sources, in the order given and sorted within folders.

    A file named explicitly is taken even with an unknown extension (reported as a problem row, since the user
    asked for it); inside folders only known image and video extensions are taken. Each file is listed once.
    """
    sources: list[Source] = []
    problems: list[Problem] = []
    seen: set[str] = set()

    def add(path: Path, name: str, kind: str) -> None:
        key = os.path.realpath(path)
        if key not in seen:
            seen.add(key)
            sources.append(Source(path, name, kind))

    for given in inputs:
        path = Path(given)
        if path.is_dir():
            for file in _walk(path, problems):
                add(file, str(file), kind_of(file))  # type: ignore[arg-type]
        elif path.is_file():
            kind = kind_of(path)
            if kind is None:
                problems.append(Problem(given, f"not a supported image or video extension ({path.suffix or 'none'})"))
            else:
                add(path, given, kind)
        else:
            problems.append(Problem(given, "no such file or folder"))
    return sources, problems


def _walk(root: Path, problems: list[Problem]) -> Iterator[Path]:
    """Files with known extensions under root, sorted, following symlinks but never around a loop."""
    visited: set[str] = set()

    def on_error(error: OSError) -> None:
        problems.append(Problem(error.filename or str(root), f"cannot read folder: {error.strerror or error}"))

    for folder, subfolders, files in os.walk(root, onerror=on_error, followlinks=True):
        real = os.path.realpath(folder)
        if real in visited:
            problems.append(Problem(folder, f"symlink loop (already visited as {real}); skipped"))
            subfolders[:] = []
            continue
        visited.add(real)
        subfolders.sort()
        for name in sorted(files):
            file = Path(folder) / name
            if kind_of(file) is not None:
                yield file


def read_image(path: Path) -> np.ndarray:
    """Decode an image file to 3-channel uint8 BGR: grey, palette, 16-bit and alpha images are converted.

    Raises InputError for empty, truncated, corrupt, non-image and oversized files.
    """
    try:
        data = path.read_bytes()  # bytes + imdecode: works for non-ASCII paths on every platform
    except OSError as error:
        raise InputError(f"cannot read file: {error.strerror or error}") from None
    if not data:
        raise InputError("empty file (0 bytes)")
    buffer = np.frombuffer(data, np.uint8)
    # JPEG and BMP carry no alpha or 16-bit samples: decode straight to BGR, which also applies EXIF orientation.
    # Other formats keep their depth and alpha so to_bgr8 can convert them properly.
    flags = cv2.IMREAD_COLOR if path.suffix.lower() in {".jpg", ".jpeg", ".bmp"} else cv2.IMREAD_UNCHANGED
    try:
        image = cv2.imdecode(buffer, flags)
    except cv2.error as error:  # e.g. over OpenCV's own pixel limit
        raise InputError(f"cannot decode image: {error.err or error}") from None
    if image is None:
        raise InputError(f"not a decodable image ({len(data)} bytes; truncated, corrupt, or not an image)")
    if image.size == 0:
        raise InputError("image has no pixels")
    height, width = image.shape[:2]
    if height * width > MAX_IMAGE_PIXELS:
        raise InputError(f"image is {width}x{height}, over the {MAX_IMAGE_PIXELS:,}-pixel limit")
    return to_bgr8(image)


def to_bgr8(image: np.ndarray) -> np.ndarray:
    """uint8 BGR from any decoded layout: grey, BGRA (blended onto white), 16-bit or float."""
    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
    elif image.dtype in (np.float32, np.float64):
        top = float(np.nanmax(image)) if image.size else 1.0
        image = np.clip(np.nan_to_num(image) * (255.0 if top <= 1.0 else 1.0), 0, 255).astype(np.uint8)
    elif image.dtype != np.uint8:
        image = cv2.normalize(image, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    channels = image.shape[2]
    if channels == 1:
        return cv2.cvtColor(image[:, :, 0], cv2.COLOR_GRAY2BGR)
    if channels == 4:
        alpha = image[:, :, 3:4].astype(np.float32) / 255.0
        blended = image[:, :, :3].astype(np.float32) * alpha + 255.0 * (1.0 - alpha)
        return blended.astype(np.uint8)
    if channels == 2:  # grey + alpha
        return to_bgr8(np.dstack([image[:, :, 0]] * 3 + [image[:, :, 1]]))
    return image[:, :, :3]
