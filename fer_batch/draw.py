"""Drawing pieces shared by annotated copies, timeline files and the HTML report: emotion colours, faces drawn on
images with OpenCV, and small SVG charts written as text.

The charts are our own SVG (no matplotlib): they need nothing beyond the default install, stay sharp at any zoom,
and the same code draws the report's inline charts and the ``.timeline.svg`` files.
"""

from __future__ import annotations

import math
from html import escape

import cv2
import numpy as np

from fer_batch.labels import EMOTIONS

# BGR colours per emotion, shared by boxes, bars and charts.
COLORS: dict[str, tuple[int, int, int]] = {
    "angry": (40, 40, 220), "disgust": (40, 140, 60), "fear": (150, 60, 150), "happy": (0, 200, 255),
    "sad": (200, 120, 40), "surprise": (0, 140, 255), "neutral": (170, 170, 170)}


def hex_color(emotion: str) -> str:
    """The emotion's colour as a CSS ``#rrggbb`` (grey for anything unknown)."""
    blue, green, red = COLORS.get(emotion, (128, 128, 128))
    return f"#{red:02x}{green:02x}{blue:02x}"


# ---------------------------------------------------------------------------------------------------- raster

def draw_faces(image: np.ndarray, faces: list[dict[str, str]]) -> np.ndarray:
    """Draw, in place, each face's box coloured by emotion, '#track emotion confidence', and a seven-bar
    probability chart; ``faces`` are CSV rows (x, y, w, h, emotion, confidence, track, the seven emotions)."""
    height, width = image.shape[:2]
    thickness = max(1, round(max(height, width) / 400))
    font_scale = max(0.4, max(height, width) / 1400)
    for face in faces:
        x, y, w, h = (int(float(face[k])) for k in ("x", "y", "w", "h"))
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
        draw_bars(image, face, x + w + 3 if x + w + 3 + 60 < width else max(x - 63, 0), max(y, 0), max(h, 42))
    return image


def draw_bars(image: np.ndarray, face: dict[str, str], left: int, top: int, height: int) -> None:
    """Seven horizontal bars (one per emotion, FER order) of up to 60 px, on a darkened backing."""
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


# ---------------------------------------------------------------------------------------------------- SVG

def downsample(times: np.ndarray, values: np.ndarray, max_points: int = 300) -> tuple[np.ndarray, np.ndarray]:
    """At most ``max_points`` points: the mean time and values of equal-time bins (the input as is when it is
    short enough). Keeps hour-long tracks to a few kilobytes of SVG; a mean shows what a viewer would see."""
    times = np.asarray(times, np.float64)
    values = np.asarray(values, np.float64).reshape(len(times), -1)
    if len(times) <= max_points:
        return times, values
    edges = np.linspace(times.min(), times.max(), max_points + 1)
    bins = np.clip(np.searchsorted(edges, times, side="right") - 1, 0, max_points - 1)
    counts = np.bincount(bins, minlength=max_points)
    keep = counts > 0
    mean_times = np.bincount(bins, times, minlength=max_points)[keep] / counts[keep]
    mean_values = np.stack([np.bincount(bins, values[:, j], minlength=max_points)[keep] / counts[keep]
                            for j in range(values.shape[1])], axis=1)
    return mean_times, mean_values


def _nice_step(span: float, ticks: int = 6) -> float:
    """A 1/2/5 x 10^n step that gives about ``ticks`` ticks over ``span``."""
    raw = max(span, 1e-9) / ticks
    power = 10 ** math.floor(math.log10(raw))
    return next(m * power for m in (1, 2, 5, 10) if m * power >= raw)


def _format_time(seconds: float, step: float) -> str:
    if step >= 60:
        return f"{int(seconds // 60)}:{int(seconds % 60):02d}"
    return f"{seconds:g}" if step >= 1 else f"{seconds:.{max(0, -math.floor(math.log10(step)))}f}"


def svg_timeline(times, probabilities, end_s: float | None = None, width: int = 720, height: int = 150,
                 title: str = "", standalone: bool = False, max_points: int = 300) -> str:
    """One panel: the seven probabilities (``probabilities``: N x 7, FER order) over ``times`` seconds, as SVG
    text. Long tracks are downsampled to ``max_points``; ``standalone`` adds the XML namespace for a file."""
    times, values = downsample(np.asarray(times, float), np.asarray(probabilities, float), max_points)
    left, right, top, bottom = 34, 8, 16 if title else 6, 20
    plot_w, plot_h = width - left - right, height - top - bottom
    end = max(float(end_s) if end_s else 0.0, float(times.max()) if len(times) else 0.0, 1e-3)

    def px(t: float) -> float:
        return left + plot_w * t / end

    def py(p: float) -> float:
        return top + plot_h * (1.0 - p)

    parts = [f'<svg {_xmlns(standalone)}width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
             f'font-family="sans-serif" font-size="10" role="img">']
    if title:
        parts.append(f'<text x="{left}" y="11" fill="#333">{escape(title)}</text>')
    for p in (0.0, 0.5, 1.0):
        parts.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{py(p):.1f}" y2="{py(p):.1f}" stroke="#ddd"/>'
                     f'<text x="{left - 4}" y="{py(p) + 3:.1f}" text-anchor="end" fill="#666">{p:g}</text>')
    step = _nice_step(end)
    tick = 0.0
    while tick <= end + 1e-9:
        parts.append(f'<line x1="{px(tick):.1f}" x2="{px(tick):.1f}" y1="{top + plot_h}" y2="{top + plot_h + 3}" '
                     f'stroke="#999"/><text x="{px(tick):.1f}" y="{height - 6}" text-anchor="middle" '
                     f'fill="#666">{_format_time(tick, step)}</text>')
        tick += step
    parts.append(f'<text x="{left + plot_w}" y="{height - 6}" text-anchor="end" fill="#666">s</text>')
    for column, emotion in enumerate(EMOTIONS):
        if not len(times):
            break
        if len(times) == 1:  # a single point would be an invisible polyline
            parts.append(f'<circle cx="{px(times[0]):.1f}" cy="{py(values[0, column]):.1f}" r="2" '
                         f'fill="{hex_color(emotion)}"><title>{emotion}</title></circle>')
            continue
        points = " ".join(f"{px(t):.1f},{py(v):.1f}" for t, v in zip(times, values[:, column]))
        parts.append(f'<polyline fill="none" stroke="{hex_color(emotion)}" stroke-width="1.3" points="{points}">'
                     f'<title>{emotion}</title></polyline>')
    parts.append("</svg>")
    return "".join(parts)


def svg_legend(width: int = 720, standalone: bool = False) -> str:
    """A one-line legend of the seven emotion colours."""
    parts = [f'<svg {_xmlns(standalone)}width="{width}" height="18" viewBox="0 0 {width} 18" '
             f'font-family="sans-serif" font-size="11" role="img">']
    for index, emotion in enumerate(EMOTIONS):
        x = 34 + index * 92
        parts.append(f'<rect x="{x}" y="5" width="12" height="8" fill="{hex_color(emotion)}"/>'
                     f'<text x="{x + 16}" y="13" fill="#333">{emotion}</text>')
    parts.append("</svg>")
    return "".join(parts)


def svg_shares(shares, width: int = 240, height: int = 14) -> str:
    """A stacked horizontal bar of the seven shares (FER order, summing to about 1), each part titled."""
    shares = np.clip(np.asarray(shares, float), 0, None)
    total = shares.sum() or 1.0
    parts = [f'<svg width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img">',
             f'<rect width="{width}" height="{height}" fill="#eee"/>']
    x = 0.0
    for emotion, share in zip(EMOTIONS, shares / total):
        if share <= 0:
            continue
        parts.append(f'<rect x="{x:.2f}" width="{share * width:.2f}" height="{height}" '
                     f'fill="{hex_color(emotion)}"><title>{emotion} {share:.0%}</title></rect>')
        x += share * width
    parts.append("</svg>")
    return "".join(parts)


def _xmlns(standalone: bool) -> str:
    return 'xmlns="http://www.w3.org/2000/svg" ' if standalone else ""
