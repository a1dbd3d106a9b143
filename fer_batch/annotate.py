"""Annotated copies of the inputs and per-video timeline plots, rendered from a finished labelling CSV.

Rendering reads the CSV rather than hooking into the labelling loop, so ``label`` without ``--annotate`` pays
nothing, an interrupted-then-resumed run still gets complete videos, and ``fer-batch summarize --annotate`` can
redraw an old run. Images keep their format; videos become MPEG-4 Part 2 ``.mp4`` files (the only MP4 codec in
the opencv-python wheels) with the source's size, fps and every frame; no audio is carried over.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePath

import cv2
import numpy as np

from fer_batch.labels import EMOTIONS
from fer_batch.sources import InputError, kind_of, open_video, read_image

# BGR colours per emotion, shared by boxes, bars and plots.
COLORS = {"angry": (40, 40, 220), "disgust": (40, 140, 60), "fear": (150, 60, 150), "happy": (0, 200, 255),
          "sad": (200, 120, 40), "surprise": (0, 140, 255), "neutral": (170, 170, 170)}


def safe_target(folder: Path, source: str, suffix: str | None = None) -> Path:
    """Where the annotated copy of ``source`` goes: its path as given, without roots, drives or '..', under
    ``folder``; raises ValueError if the result would still land outside ``folder`` (e.g. through a symlink)."""
    parts = [p for p in PurePath(source.replace("\\", "/")).parts if p not in ("..", ".", "/", "") and
             not PurePath(p).anchor and ":" not in p[:2]]
    if not parts:
        raise ValueError(f"{source}: no usable file name to write an annotated copy under")
    name = parts[-1] + suffix if suffix else parts[-1]
    target = folder.joinpath(*parts[:-1], name)
    root = folder.resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    if os.path.commonpath([root, target.parent.resolve()]) != str(root):
        raise ValueError(f"{source}: annotated copy would be written outside {folder}")
    return target


def video_target(folder: Path, source: str) -> Path:
    """x.mp4 -> x.mp4; x.avi -> x.avi.mp4 (so x.avi and x.mp4 side by side never collide)."""
    return safe_target(folder, source, None if source.lower().endswith(".mp4") else ".mp4")


def draw_faces(image: np.ndarray, faces: list[dict[str, str]]) -> np.ndarray:
    """Boxes coloured by emotion, '#track emotion confidence', and a seven-bar probability chart per face."""
    height, width = image.shape[:2]
    thickness = max(1, round(max(height, width) / 400))
    font_scale = max(0.4, max(height, width) / 1400)
    for face in faces:
        x, y, w, h = (int(face[k]) for k in ("x", "y", "w", "h"))
        color = COLORS.get(face["emotion"], (255, 255, 255))
        cv2.rectangle(image, (x, y), (x + w, y + h), color, thickness)
        label = f"{face['emotion']} {float(face['confidence']):.0%}"
        if face.get("track"):
            label = f"#{face['track']} {label}"
        (text_w, text_h), baseline = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, font_scale, thickness)
        top = y - text_h - baseline - 2 if y - text_h - baseline - 2 >= 0 else y + h
        cv2.rectangle(image, (x, top), (x + text_w + 4, top + text_h + baseline + 2), color, -1)
        cv2.putText(image, label, (x + 2, top + text_h + 1), cv2.FONT_HERSHEY_SIMPLEX, font_scale, (0, 0, 0),
                    thickness, cv2.LINE_AA)
        _draw_bars(image, face, x + w + 3 if x + w + 3 + 60 < width else max(x - 63, 0), y, max(h, 42))
    return image


def _draw_bars(image: np.ndarray, face: dict[str, str], left: int, top: int, height: int) -> None:
    """Seven horizontal bars (one per emotion, FER order) of up to 60 px, on a dark backing."""
    row = max(6, height // 7)
    bottom = min(top + row * 7, image.shape[0])
    region = image[top:bottom, left:left + 60]
    region[:] = (region * 0.4).astype(np.uint8)
    for index, emotion in enumerate(EMOTIONS):
        y = top + index * row
        if y + row - 1 > image.shape[0]:
            break
        length = int(round(float(face[emotion]) * 60))
        cv2.rectangle(image, (left, y + 1), (left + max(length, 1), y + row - 1), COLORS[emotion], -1)


def render(rows: list[dict[str, str]], folder: str | Path, plots: bool = True, copies: bool = True) -> list[Path]:
    """Write annotated copies (``copies``) and timeline PNGs for videos (``plots``, when matplotlib is there) of
    every source in ``rows`` into ``folder``; returns the files written. Sources that cannot be read any more are
    skipped with a message on stderr."""
    import sys

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    by_source: dict[str, list[dict[str, str]]] = {}
    for row in rows:
        by_source.setdefault(row["source"], []).append(row)
    written = []
    for source, source_rows in by_source.items():
        kind = kind_of(Path(source))
        if kind is None or all(r["status"] == "error" and not r["frame"] for r in source_rows):
            continue
        try:
            if copies:
                render_one = _render_image if kind == "image" else _render_video
                written.append(render_one(folder, source, source_rows))
            if plots and kind == "video":
                from fer_batch.plots import timeline

                png = timeline(source, source_rows, safe_target(folder, source, ".timeline.png"))
                if png:
                    written.append(png)
        except (InputError, ValueError, OSError, cv2.error) as error:
            print(f"fer-batch: {source}: not annotated: {error}", file=sys.stderr)
    return written


def _render_image(folder: Path, source: str, rows: list[dict[str, str]]) -> Path:
    image = read_image(Path(source))
    target = safe_target(folder, source)
    draw_faces(image, [r for r in rows if r["status"] == "ok"])
    ok, encoded = cv2.imencode(target.suffix or ".png", image)
    if not ok:
        raise ValueError(f"cannot encode {target.suffix} image")
    target.write_bytes(encoded.tobytes())  # bytes + imencode: non-ASCII paths work everywhere
    return target


def _render_video(folder: Path, source: str, rows: list[dict[str, str]]) -> Path:
    analysed: dict[int, list[dict[str, str]]] = {}
    for row in rows:
        if row["frame"]:
            analysed.setdefault(int(row["frame"]), [])
            if row["status"] == "ok":
                analysed[int(row["frame"])].append(row)
    capture, info = open_video(Path(source))
    target = video_target(folder, source)
    temporary = target.with_name(target.name + ".part.mp4")
    ok, frame = capture.read()
    if not ok:
        capture.release()
        raise InputError("no decodable frames")
    height, width = frame.shape[:2]
    writer = cv2.VideoWriter(str(temporary), cv2.VideoWriter_fourcc(*"mp4v"), info.fps, (width, height))
    if not writer.isOpened():
        capture.release()
        raise OSError(f"cannot write {temporary}")
    current: list[dict[str, str]] = []
    index = 0
    try:
        while ok:
            current = analysed.get(index, current)  # frames between analysed ones keep the last annotation
            writer.write(draw_faces(frame, current))
            ok, frame = capture.read()
            index += 1
    finally:
        writer.release()
        capture.release()
    temporary.replace(target)
    return target
