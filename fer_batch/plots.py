"""Emotion timelines: one ``.timeline.svg`` per video, one panel per track, the seven probabilities over time.

Drawn by :mod:`fer_batch.draw` as plain SVG, so timelines come with the default install (no matplotlib), open in
any browser, and match the report's charts.
"""

from __future__ import annotations

from html import escape
from pathlib import Path

import numpy as np

from fer_batch.draw import svg_legend, svg_timeline
from fer_batch.labels import EMOTIONS

PANEL_WIDTH, PANEL_HEIGHT = 900, 150


def track_series(rows: list[dict[str, str]]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The face rows of one video grouped by track, in track-id order: track -> (times (N,), probabilities (N, 7)),
    sorted by time."""
    tracks: dict[str, list[dict[str, str]]] = {}
    for row in rows:
        if row["status"] == "ok" and row.get("track", "") != "" and row.get("time_s", ""):
            tracks.setdefault(row["track"], []).append(row)
    series = {}
    for track in sorted(tracks, key=int):
        members = sorted(tracks[track], key=lambda r: float(r["time_s"]))
        series[track] = (np.array([float(r["time_s"]) for r in members]),
                         np.array([[float(r[e]) for e in EMOTIONS] for r in members]))
    return series


def timeline_svg(source: str, rows: list[dict[str, str]]) -> str | None:
    """The SVG document of one video's timelines (None when no face was tracked)."""
    series = track_series(rows)
    if not series:
        return None
    end = max((float(r["time_s"]) for r in rows if r.get("time_s", "")), default=0.0)
    smoothing = next((r["smooth_s"] for r in rows if r["status"] == "ok" and r.get("smooth_s", "")), "0")
    note = f", smoothed over {smoothing} s" if smoothing not in ("", "0") else ""
    height = 44 + PANEL_HEIGHT * len(series)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{PANEL_WIDTH}" height="{height}" '
             f'viewBox="0 0 {PANEL_WIDTH} {height}" font-family="sans-serif">',
             f'<rect width="{PANEL_WIDTH}" height="{height}" fill="#fff"/>',
             f'<text x="34" y="16" font-size="13" fill="#222">{escape(Path(source).name)}</text>',
             f'<g transform="translate(0,22)">{svg_legend(PANEL_WIDTH)}</g>']
    for position, (track, (times, probabilities)) in enumerate(series.items()):
        panel = svg_timeline(times, probabilities, end, PANEL_WIDTH, PANEL_HEIGHT,
                             title=f"track {track}: {len(times)} frames{note}")
        parts.append(f'<g transform="translate(0,{44 + position * PANEL_HEIGHT})">{panel}</g>')
    parts.append("</svg>")
    return "".join(parts)


def timeline(source: str, rows: list[dict[str, str]], target: Path) -> Path | None:
    """Write the timelines of one video (``rows``: its CSV rows) to ``target``; None without any tracked face."""
    document = timeline_svg(source, rows)
    if document is None:
        return None
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(target.name + ".part")
    temporary.write_text(document, encoding="utf-8")
    temporary.replace(target)
    return target
