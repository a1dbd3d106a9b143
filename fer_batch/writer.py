"""The per-item emotion CSV: its columns, its rows, and crash-safe appending with resume.

Each item's rows (an image, or one analysed video frame) go to the file in one ``os.write`` of complete lines,
so after Ctrl-C or ``kill -9`` the file holds whole items only (a torn last line, possible only if the disk
fills, is cut off on resume). ``--resume`` reads the items already there and the runner skips them.
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fer_batch.labels import EMOTIONS

COLUMNS: tuple[str, ...] = ("source", "frame", "time_s", "face", "track", "x", "y", "w", "h", "face_score",
                            "emotion", "confidence", *EMOTIONS, "smooth_s", "status", "error")


def check_columns(csv_path: str | Path, header: list[str] | None, required) -> None:
    """Raise ValueError naming ``csv_path`` when its ``header`` lacks any of the ``required`` columns: a CSV that
    fer-batch did not write (the readers of summarize, report and review share this check and its message)."""
    missing = [column for column in required if column not in (header or [])]
    if missing:
        raise ValueError(f"{csv_path}: not a fer-batch CSV (missing column(s) {', '.join(missing)})")


class OutputError(Exception):
    """The output file cannot be written, or exists and neither --resume nor --force was given."""


@dataclass
class Row:
    source: str
    frame: int | None = None
    time_s: float | None = None
    face: int | None = None
    track: int | None = None
    box: tuple[float, float, float, float] | None = None
    face_score: float | None = None
    probabilities: np.ndarray | None = None
    smooth_s: float = 0.0  # the probabilities were smoothed along the track over this many seconds (0: raw)
    status: str = "ok"
    error: str = ""

    def as_dict(self) -> dict[str, str]:
        values = {"source": self.source, "frame": "" if self.frame is None else str(self.frame),
                  "time_s": "" if self.time_s is None else f"{self.time_s:.3f}",
                  "face": "" if self.face is None else str(self.face),
                  "track": "" if self.track is None else str(self.track), "status": self.status,
                  "error": self.error}
        if self.box is not None:
            values.update(zip(("x", "y", "w", "h"), (str(int(round(v))) for v in self.box)))
        if self.face_score is not None:
            values["face_score"] = f"{self.face_score:.4f}"
        if self.probabilities is not None:
            rounded = _round_to_sum(self.probabilities)
            values.update(zip(EMOTIONS, (f"{p:.6f}" for p in rounded)))
            top = int(np.argmax(self.probabilities))
            values["emotion"], values["confidence"] = EMOTIONS[top], f"{rounded[top]:.6f}"
            values["smooth_s"] = f"{self.smooth_s:g}"
        return values


def _round_to_sum(probabilities: np.ndarray) -> np.ndarray:
    """Six-decimal probabilities that still sum to exactly 1 (the rounding remainder goes to the largest)."""
    values = np.asarray(probabilities, np.float64)  # summed in float64 too: float32 and float64 inputs round alike
    micro = np.round(values / values.sum() * 1_000_000).astype(np.int64)
    micro[int(np.argmax(micro))] += 1_000_000 - micro.sum()
    return micro / 1_000_000


def item_key(row: dict[str, str]) -> tuple[str, str]:
    return row["source"], row["frame"]


class CsvSink:
    """Appends whole items to the CSV. After ``resume``, ``done`` holds the (source, frame) keys already in the
    file and ``video_rows`` the face rows of each video, so tracks and smoothing can pick up where they stopped."""

    def __init__(self, path: str | Path, resume: bool = False, force: bool = False):
        self.path = Path(path)
        self.done: set[tuple[str, str]] = set()
        self.video_rows: dict[str, list[dict[str, str]]] = {}
        self.smooth_values: set[str] = set()  # smooth_s of the video face rows already there
        exists = self.path.exists() and self.path.stat().st_size > 0
        if exists and not (resume or force):
            raise OutputError(f"{self.path}: already exists; use --resume to finish that run or --force to "
                              f"overwrite it")
        if self.path.is_dir():
            raise OutputError(f"{self.path}: is a folder, not a CSV file")
        try:
            if self.path.parent != Path(""):
                self.path.parent.mkdir(parents=True, exist_ok=True)
            if exists and resume:
                self._load_existing()
            else:
                with open(self.path, "w", newline="", encoding="utf-8") as handle:
                    csv.writer(handle).writerow(COLUMNS)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        except OSError as error:
            raise OutputError(f"{self.path}: cannot write: {error.strerror or error}") from None

    def _load_existing(self) -> None:
        """Read the finished items; cut a torn last line; refuse a file that is not ours."""
        with open(self.path, "rb") as handle:
            data = handle.read()
        complete = data[: data.rfind(b"\n") + 1]
        if len(complete) != len(data):
            with open(self.path, "r+b") as handle:
                handle.truncate(len(complete))
        reader = csv.DictReader(io.StringIO(complete.decode("utf-8")))
        if tuple(reader.fieldnames or ()) != COLUMNS:
            raise OutputError(f"{self.path}: its header is not fer-batch's CSV header; refusing to resume into it")
        for row in reader:
            self.done.add(item_key(row))
            if row["frame"] and row["status"] == "ok":
                self.smooth_values.add(row["smooth_s"])
                self.video_rows.setdefault(row["source"], []).append(row)

    def write_item(self, rows: list[Row]) -> None:
        """Write one item's rows in a single write and flush them to the OS."""
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
        for row in rows:
            writer.writerow(row.as_dict())
        data = buffer.getvalue().encode("utf-8")
        written = os.write(self._fd, data)
        while written < len(data):  # only on a nearly full disk; keep the item whole or fail loudly
            more = os.write(self._fd, data[written:])
            if more == 0:
                raise OutputError(f"{self.path}: disk full while writing")
            written += more

    def close(self) -> None:
        if self._fd >= 0:
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> CsvSink:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
