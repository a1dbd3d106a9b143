"""Emotion timelines: one PNG per video, one panel per track, the seven probabilities over time.

Needs matplotlib (``pip install 'fer-batch[plot]'``); without it, timelines are skipped with one message.
"""

from __future__ import annotations

import sys
from pathlib import Path

from fer_batch.annotate import COLORS
from fer_batch.labels import EMOTIONS

_warned = False


def timeline(source: str, rows: list[dict[str, str]], png: Path) -> Path | None:
    """Draw the probabilities of each track of one video over time into ``png``; None without matplotlib or
    without any tracked face."""
    global _warned
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        if not _warned:
            print("fer-batch: timeline plots need matplotlib: pip install 'fer-batch[plot]'", file=sys.stderr)
            _warned = True
        return None
    tracks: dict[str, list[dict[str, str]]] = {}
    for row in rows:
        if row["status"] == "ok" and row["track"] != "":
            tracks.setdefault(row["track"], []).append(row)
    if not tracks:
        return None
    ordered = sorted(tracks, key=int)
    end = max(float(r["time_s"]) for r in rows if r["time_s"])
    figure, axes = plt.subplots(len(ordered), 1, figsize=(11, 1.9 * len(ordered) + 0.9), sharex=True,
                                squeeze=False)
    for axis, track in zip(axes[:, 0], ordered):
        members = sorted(tracks[track], key=lambda r: float(r["time_s"]))
        times = [float(r["time_s"]) for r in members]
        for emotion in EMOTIONS:
            blue, green, red = COLORS[emotion]
            axis.plot(times, [float(r[emotion]) for r in members], ".-" if len(members) < 60 else "-",
                      color=(red / 255, green / 255, blue / 255), label=emotion, linewidth=1.2, markersize=3)
        smoothing = members[0].get("smooth_s", "")
        note = f", smoothed {smoothing} s" if smoothing not in ("", "0") else ""
        axis.set_title(f"track {track}: {len(members)} frames{note}", fontsize=9, loc="left")
        axis.set_ylim(0, 1)
        axis.set_xlim(0, max(end, 1e-3))
        axis.set_ylabel("probability")
        axis.grid(alpha=0.3)
    axes[0, 0].legend(loc="upper center", bbox_to_anchor=(0.5, 1.6), ncol=len(EMOTIONS), fontsize=8, frameon=False)
    axes[-1, 0].set_xlabel("time (s)")
    figure.suptitle(Path(source).name, y=0.995, fontsize=10)
    figure.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(png, dpi=90)
    plt.close(figure)
    return png
