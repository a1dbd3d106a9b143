"""How far two `fer-batch label` CSVs of the same inputs agree: faces matched by box, labels, probabilities,
frames with a face, tracks.

    python benchmarks/compare_runs.py REFERENCE.csv OTHER.csv

Faces are matched within each frame (or image), greedily by IoU, best first, at IoU >= 0.5. Prints JSON with the
faces of each run, how many matched, the share of matched faces with the same top label, the mean and largest
|difference| of the seven probabilities, the mean IoU of matched boxes, the frames (and images) with a face in
each run, and the tracks in each run.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

EMOTIONS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")


def read(path: str | Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _iou(a: tuple, b: tuple) -> float:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    width = max(0.0, min(ax + aw, bx + bw) - max(ax, bx))
    height = max(0.0, min(ay + ah, by + bh) - max(ay, by))
    inter = width * height
    union = aw * ah + bw * bh - inter
    return inter / union if union > 0 else 0.0


def _faces(rows: list[dict]) -> dict[tuple[str, str], list[dict]]:
    faces: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        if row["status"] == "ok":
            faces.setdefault((row["source"], row["frame"]), []).append(row)
    return faces


def _box(row: dict) -> tuple:
    return tuple(float(row[key]) for key in ("x", "y", "w", "h"))


def compare(reference: list[dict], other: list[dict], min_iou: float = 0.5) -> dict:
    """Agreement of ``other`` with ``reference`` (rows of two CSVs of the same inputs)."""
    ours, theirs = _faces(reference), _faces(other)
    matched = same_label = 0
    differences: list[float] = []
    overlaps: list[float] = []
    for key in ours.keys() & theirs.keys():
        pairs = sorted(((_iou(_box(a), _box(b)), i, j) for i, a in enumerate(ours[key])
                        for j, b in enumerate(theirs[key])), reverse=True)
        used_a: set[int] = set()
        used_b: set[int] = set()
        for overlap, i, j in pairs:
            if overlap < min_iou or i in used_a or j in used_b:
                continue
            used_a.add(i)
            used_b.add(j)
            a, b = ours[key][i], theirs[key][j]
            matched += 1
            same_label += a["emotion"] == b["emotion"]
            differences.append(max(abs(float(a[e]) - float(b[e])) for e in EMOTIONS))
            overlaps.append(overlap)

    def tracks(rows: list[dict]) -> int:
        return len({(row["source"], row["track"]) for row in rows if row["status"] == "ok" and row["track"]})

    faces_reference = sum(len(v) for v in ours.values())
    faces_other = sum(len(v) for v in theirs.values())
    return {
        "faces": [faces_reference, faces_other], "matched": matched,
        "matched_share": round(matched / max(faces_reference, 1), 4),
        "same_label": round(same_label / max(matched, 1), 4),
        "mean_max_abs_dp": round(sum(differences) / max(len(differences), 1), 4),
        "max_abs_dp": round(max(differences, default=0.0), 4),
        "mean_iou": round(sum(overlaps) / max(len(overlaps), 1), 4),
        "frames_with_face": [len(ours), len(theirs)], "tracks": [tracks(reference), tracks(other)],
    }


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    print(json.dumps(compare(read(args[0]), read(args[1])), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
