"""People's decisions: the append-only review file ``OUT.review.csv``, and ``--apply``, which writes the labelling
CSV with them.

Every decision is one CSV line, written with one ``os.write`` and ``os.fsync`` before the page hears that it is
saved, so a closed tab, ``kill -9`` or a crash loses none. The file is only ever appended to: an undo is a record
too (it puts the item back as it was before the decision it undoes), and reading the file back from the start -
the last record per item wins - gives the state where the person stopped. A torn last line (a write cut off by a
full disk) is dropped when the file is opened again.

An item is named by what it is, never by a position: a photo face by (source, face), a video segment by (source,
track, first frame, last frame); ``--apply`` applies a segment's decision to every row of that track between its
first and last frame.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from fer_batch.labels import EMOTIONS
from fer_batch.review.items import ReviewError, review_path

NOT_A_FACE = "not_a_face"
DECISIONS = (*EMOTIONS, NOT_A_FACE)  # what a person can say about an item ("" in a record: not reviewed)
ACTIONS = ("choose", "accept", "not_a_face", "undo")  # a key 1-7, A, X, Z
REVIEW_COLUMNS = ("time", "action", "decision", "source", "face", "track", "first_frame", "last_frame", "rows",
                  "model_emotion")
# What --apply adds to the labelling CSV's columns, in this order, at the end.
APPLIED_COLUMNS = ("decided_by", "model_emotion", "model_confidence")


@dataclass(frozen=True)
class Record:
    """One line of the review file: ``decision`` is the item's state after it ("" after undoing its first
    decision)."""

    action: str
    decision: str
    key: tuple  # (source, face) or (source, track, first_frame, last_frame)
    rows: int = 1
    model_emotion: str = ""
    time: str = ""

    def as_row(self) -> list[str]:
        if len(self.key) == 2:
            source, face = self.key
            track = first = last = ""
        else:
            source, track, first, last = self.key
            face = ""
        return [self.time, self.action, self.decision, source, str(face), str(track), str(first), str(last),
                str(self.rows), self.model_emotion]


def parse_record(row: list[str], where: str) -> Record:
    """A review-file line as a Record; ValueError naming ``where`` (file and line) when it is not one."""
    if len(row) != len(REVIEW_COLUMNS):
        raise ValueError(f"{where}: {len(row)} fields, not {len(REVIEW_COLUMNS)}")
    values = dict(zip(REVIEW_COLUMNS, row))
    if values["action"] not in ACTIONS:
        raise ValueError(f"{where}: unknown action {values['action']!r}")
    if values["decision"] and values["decision"] not in DECISIONS:
        raise ValueError(f"{where}: unknown decision {values['decision']!r}")
    try:
        if values["face"]:
            key: tuple = (values["source"], int(values["face"]))
        else:
            key = (values["source"], int(values["track"]), int(values["first_frame"]), int(values["last_frame"]))
        rows = int(values["rows"] or 1)
    except ValueError:
        raise ValueError(f"{where}: face, track, frames and rows must be whole numbers") from None
    return Record(values["action"], values["decision"], key, rows, values["model_emotion"], values["time"])


def read_records(path: str | Path) -> Iterator[Record]:
    """The records of a review file, in the order they were made (a torn last line is skipped). Raises
    ReviewError for a file that cannot be read or is not a review file."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ReviewError(f"{path}: cannot read: {error.strerror or error}") from None
    complete = data[: data.rfind(b"\n") + 1]
    try:
        reader = csv.reader(io.StringIO(complete.decode("utf-8")))
        header = next(reader, None)
        if header is None:
            return
        if tuple(header) != REVIEW_COLUMNS:
            raise ReviewError(f"{path}: not a fer-batch review file (its header is not {','.join(REVIEW_COLUMNS)})")
        for number, row in enumerate(reader, 2):
            yield parse_record(row, f"{path}, line {number}")
    except UnicodeDecodeError:
        raise ReviewError(f"{path}: not UTF-8 text") from None
    except (ValueError, csv.Error) as error:
        raise ReviewError(str(error)) from None


def final_decisions(records) -> dict[tuple, tuple[int, str]]:
    """Each item's state after the records: key -> (number of its last record, decision); items whose last
    record says "" (undone to unreviewed) are left out."""
    state: dict[tuple, tuple[int, str]] = {}
    for number, record in enumerate(records):
        state[record.key] = (number, record.decision)
    return {key: value for key, value in state.items() if value[1]}


class ReviewLog:
    """The review file of one labelling CSV, open for appending; ``state`` maps item keys to decisions and
    ``history`` is what undo goes back through (rebuilt from the file, so undo works across restarts).

    One process at a time may hold it: an exclusive lock, which the system releases when the process dies (kill -9
    included). It is not thread-safe: the server calls it under its own lock.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.state: dict[tuple, str] = {}
        self.history: list[tuple[tuple, str]] = []  # (key, decision before) of each decision not undone
        self.records = 0
        try:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        except OSError as error:
            raise ReviewError(f"{self.path}: cannot open for writing: {error.strerror or error}") from None
        try:
            self._lock()
            self._load()
        except BaseException:
            os.close(self._fd)
            raise

    def _lock(self) -> None:
        try:
            import fcntl
        except ImportError:  # not POSIX: one review per file is then up to the user
            return
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise ReviewError(f"{self.path}: another fer-batch review has it open; use that one's page, or stop "
                              f"it first") from None

    def _load(self) -> None:
        size = os.fstat(self._fd).st_size
        data = os.pread(self._fd, size, 0) if size else b""
        complete = data[: data.rfind(b"\n") + 1]
        if len(complete) != len(data):  # a torn last line: never acknowledged, so nothing is lost by cutting it
            os.ftruncate(self._fd, len(complete))
        if not complete:
            self._append_line(REVIEW_COLUMNS)
            return
        for record in read_records(self.path):
            self._replay(record)

    def _replay(self, record: Record) -> None:
        if record.action == "undo":
            if self.history:
                self.history.pop()
        else:
            self.history.append((record.key, self.state.get(record.key, "")))
        if record.decision:
            self.state[record.key] = record.decision
        else:
            self.state.pop(record.key, None)
        self.records += 1

    def decide(self, key: tuple, decision: str, action: str, rows: int, model_emotion: str) -> Record:
        """Record a person's decision on an item (on disk before this returns)."""
        if decision not in DECISIONS:
            raise ValueError(f"unknown decision {decision!r}")
        if action not in ACTIONS[:3]:
            raise ValueError(f"unknown action {action!r}")
        record = Record(action, decision, key, rows, model_emotion, _now())
        self._append_line(record.as_row())
        self._replay(record)
        return record

    def undo(self, rows_of, model_emotion_of) -> Record | None:
        """Put back the item of the last decision not yet undone as it was before it; None when there is none.
        ``rows_of(key)`` and ``model_emotion_of(key)`` fill in the record's description of the item."""
        if not self.history:
            return None
        key, before = self.history[-1]
        record = Record("undo", before, key, rows_of(key), model_emotion_of(key), _now())
        self._append_line(record.as_row())
        self._replay(record)
        return record

    def _append_line(self, values) -> None:
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\n").writerow(values)
        data = buffer.getvalue().encode("utf-8")
        try:
            written = os.write(self._fd, data)
            if written != len(data):  # a short write: only on a full disk; never leave half a record behind
                os.ftruncate(self._fd, os.fstat(self._fd).st_size - written)
                raise OSError(28, "disk full")
            os.fsync(self._fd)
        except OSError as error:
            raise ReviewError(f"{self.path}: cannot save the decision: {error.strerror or error}") from None

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> ReviewLog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _now() -> str:
    return datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds")


# ------------------------------------------------------------------------------------------------ --apply

@dataclass
class Applied:
    output: Path
    rows: int = 0
    by_person: int = 0  # rows a person decided (accepted, relabelled or "not a face")
    changed: int = 0  # of those, rows whose emotion is not the model's, "not a face" included
    not_a_face: int = 0

    def format(self) -> str:
        return (f"{self.rows:,} rows, {self.by_person:,} decided by a person ({self.changed:,} changed, "
                f"{self.not_a_face:,} not a face)")


def apply_review(csv_path: str | Path, output: str | Path, review_file: str | Path | None = None) -> Applied:
    """Write ``output``: the labelling CSV ``csv_path`` with the decisions of ``review_file`` (default:
    OUT.review.csv beside it) applied, and APPLIED_COLUMNS appended.

    Where a person chose an emotion, ``emotion`` is theirs and ``confidence`` the model's probability of it (so
    ``confidence`` stays the probability of ``emotion``); where a person said "not a face", ``status`` is
    ``not_a_face`` and ``emotion`` and ``confidence`` are empty. The probability columns stay the model's;
    ``model_emotion`` and ``model_confidence`` keep the model's label; ``decided_by`` is ``person`` or ``model``.
    No-face and error rows are copied as they are. The output is written beside itself and renamed into place;
    the labelling CSV is never written. Raises ReviewError.
    """
    csv_path, output = Path(csv_path), Path(output)
    review_file = Path(review_file) if review_file else review_path(csv_path)
    for other in (csv_path, review_file):
        if output.resolve() == other.resolve():
            raise ReviewError(f"{output}: is {'the labelling CSV' if other == csv_path else 'the review file'}; "
                              f"write the result to another file")
    _check_header(csv_path)
    if not review_file.is_file():
        raise ReviewError(f"{review_file}: no decisions yet (run fer-batch review {csv_path} first)")
    decided = final_decisions(read_records(review_file))
    photos = {key: decision for key, (_, decision) in decided.items() if len(key) == 2}
    # Segments painted onto their frames in the order they were decided: if the CSV gained rows since (a resumed
    # run) and a later segment overlaps an earlier one, the later decision wins.
    frames: dict[tuple[str, int, int], str] = {}
    for key, (_, decision) in sorted((item for item in decided.items() if len(item[0]) == 4),
                                     key=lambda item: item[1][0]):
        source, track, first, last = key
        for frame in range(first, last + 1):
            frames[(source, track, frame)] = decision
    result = Applied(output)
    temporary = output.with_name(output.name + ".part")
    try:
        if output.parent != Path(""):
            output.parent.mkdir(parents=True, exist_ok=True)
        with open(csv_path, newline="", encoding="utf-8") as source_file, \
                open(temporary, "w", newline="", encoding="utf-8") as target:
            reader = csv.reader(source_file)
            header = next(reader, [])
            column = {name: index for index, name in enumerate(header)}
            writer = csv.writer(target, lineterminator="\n")
            writer.writerow([*header, *APPLIED_COLUMNS])
            for row in reader:
                if len(row) != len(header):
                    continue  # a torn last line of an interrupted run
                writer.writerow(_applied_row(row, column, photos, frames, result))
        temporary.replace(output)
    except OSError as error:
        temporary.unlink(missing_ok=True)
        raise ReviewError(f"{error.filename or output}: {error.strerror or error}") from None
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    _copy_run_info(csv_path, output, review_file, result)
    return result


def _check_header(csv_path: Path) -> None:
    """ReviewError unless ``csv_path`` is a labelling CSV without decisions applied."""
    try:
        with open(csv_path, newline="", encoding="utf-8") as handle:
            header = next(csv.reader(handle), [])
    except OSError as error:
        raise ReviewError(f"{csv_path}: cannot read: {error.strerror or error}") from None
    except (UnicodeDecodeError, csv.Error):
        header = []
    if "decided_by" in header:
        raise ReviewError(f"{csv_path}: already has decisions applied (a decided_by column); review and apply to the "
                          f"labelling CSV itself")
    missing = [c for c in ("source", "frame", "face", "track", "emotion", "confidence", "status", *EMOTIONS)
               if c not in header]
    if missing:
        raise ReviewError(f"{csv_path}: not a fer-batch CSV (missing column(s) {', '.join(missing)})")


def _applied_row(row: list[str], column: dict[str, int], photos: dict, frames: dict, result: Applied) -> list[str]:
    result.rows += 1
    emotion, confidence = row[column["emotion"]], row[column["confidence"]]
    if row[column["status"]] != "ok":
        return [*row, "model", "", ""]
    source, frame, track = row[column["source"]], row[column["frame"]], row[column["track"]]
    if frame:
        decision = frames.get((source, int(track) if track else -1, int(frame)))
    else:
        face = row[column["face"]]
        decision = photos.get((source, int(face) if face else -1))
    if decision is None:
        return [*row, "model", emotion, confidence]
    result.by_person += 1
    result.changed += decision != emotion
    out = list(row)
    if decision == NOT_A_FACE:
        result.not_a_face += 1
        out[column["status"]], out[column["emotion"]], out[column["confidence"]] = NOT_A_FACE, "", ""
    else:
        out[column["emotion"]], out[column["confidence"]] = decision, row[column[decision]]
    return [*out, "person", emotion, confidence]


def _copy_run_info(csv_path: Path, output: Path, review_file: Path, result: Applied) -> None:
    """REVIEWED.run.json: the labelling run's record (so ``report`` on the result shows its settings) with what
    the review changed."""
    from fer_batch.summary import run_info_path

    source = run_info_path(csv_path)
    if not source.is_file():
        return
    try:
        info = json.loads(source.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    if not isinstance(info, dict):
        return
    info["review"] = {"labelling_csv": str(csv_path), "review_file": str(review_file), "applied": _now(),
                      "rows": result.rows, "decided_by_person": result.by_person, "changed": result.changed,
                      "not_a_face": result.not_a_face}
    target = run_info_path(output)
    temporary = target.with_name(target.name + ".tmp")
    temporary.write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    temporary.replace(target)
