"""Per-source, per-track summaries of a labelling CSV (``OUT.summary.csv``), rebuilt from the CSV alone.

One row per image (all its faces) and per video track: analysed frames, first and last time, the dominant
emotion (the one that is the top label in most analysed frames; ties go to the higher mean probability), the mean
probability of each emotion, and the share of analysed frames - equally spaced, so the share of analysed time -
in which each emotion is the top label. On a reviewed CSV (``fer-batch review --apply``) the top label is the
person's where one decided, and rows a person marked ``not_a_face`` are left out, like every row that is not ok.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from fer_batch.labels import EMOTIONS
from fer_batch.writer import check_columns

SUMMARY_COLUMNS: tuple[str, ...] = ("source", "track", "frames", "faces", "first_s", "last_s", "dominant",
                                    *(f"mean_{e}" for e in EMOTIONS), *(f"share_{e}" for e in EMOTIONS))


def summary_path(csv_path: str | Path) -> Path:
    """``OUT.csv`` -> ``OUT.summary.csv``, beside it."""
    csv_path = Path(csv_path)
    stem = csv_path.name[: -len(csv_path.suffix)] if csv_path.suffix else csv_path.name
    return csv_path.with_name(stem + ".summary.csv")


def run_info_path(csv_path: str | Path) -> Path:
    """``OUT.csv`` -> ``OUT.run.json``, beside it: the run's settings, versions and totals (written by the runner,
    read by the report)."""
    csv_path = Path(csv_path)
    stem = csv_path.name[: -len(csv_path.suffix)] if csv_path.suffix else csv_path.name
    return csv_path.with_name(stem + ".run.json")


def read_rows(csv_path: str | Path) -> list[dict[str, str]]:
    with open(csv_path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        check_columns(csv_path, reader.fieldnames, ("source", "frame", "track", "status", *EMOTIONS))
        return list(reader)


def summarize(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    """Summary rows, in the order sources and tracks first appear in ``rows``."""
    groups: dict[tuple[str, str], list[dict[str, str]]] = {}
    for row in rows:
        if row["status"] == "ok":
            groups.setdefault((row["source"], row["track"]), []).append(row)
    summaries = []
    for (source, track), members in groups.items():
        probabilities = np.array([[float(r[e]) for e in EMOTIONS] for r in members])
        frames = {r["frame"] for r in members}
        times = [float(r["time_s"]) for r in members if r["time_s"]]
        # A reviewed CSV (fer-batch review --apply): where a person decided, the top label is theirs.
        top = np.array([EMOTIONS.index(r["emotion"]) if r.get("decided_by") == "person" else int(model_top)
                        for r, model_top in zip(members, probabilities.argmax(axis=1))])
        share = np.bincount(top, minlength=len(EMOTIONS)) / len(members)
        mean = probabilities.mean(axis=0)
        dominant = max(range(len(EMOTIONS)), key=lambda i: (share[i], mean[i]))
        summaries.append({
            "source": source, "track": track, "frames": str(len(frames)), "faces": str(len(members)),
            "first_s": f"{min(times):.3f}" if times else "", "last_s": f"{max(times):.3f}" if times else "",
            "dominant": EMOTIONS[dominant],
            **{f"mean_{e}": f"{m:.6f}" for e, m in zip(EMOTIONS, mean)},
            **{f"share_{e}": f"{s:.4f}" for e, s in zip(EMOTIONS, share)},
        })
    return summaries


def write_summary(csv_path: str | Path, output: str | Path | None = None) -> Path:
    """Summarise the labelling CSV into ``output`` (default: ``OUT.summary.csv`` beside it)."""
    output = Path(output) if output else summary_path(csv_path)
    summaries = summarize(read_rows(csv_path))
    temporary = output.with_name(output.name + ".tmp")
    with open(temporary, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=SUMMARY_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(summaries)
    temporary.replace(output)
    return output
