"""What a person reviews in a labelling CSV: each photo face, and each video track segment.

A **segment** is a run of consecutive analysed frames of one video track with one label: the track's rows, in frame
order, split wherever the label changes or the track misses an analysed frame (a frame with rows, faces or not,
that has no row of this track). A decision on a segment applies to all of its rows.

Big CSVs open quickly: the file is read in blocks and split into fields by numpy on the raw bytes (every comma
of a row without quotes is a field boundary; the ``csv`` module reads the rare rows with quotes), and only what the
list needs is kept per row - source, frame, track, face, label, confidence, and where the row lies in the file.
Boxes, times and probabilities are read back from the file for the few items a person looks at
(:meth:`ReviewItems.detail`).
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fer_batch.labels import EMOTIONS
from fer_batch.sources import kind_of
from fer_batch.writer import check_columns

# Columns the review needs; the rest of a row (and any extra columns) is carried through untouched.
REQUIRED = ("source", "frame", "time_s", "face", "track", "x", "y", "w", "h", "emotion", "confidence", "status",
            *EMOTIONS)
BLOCK_BYTES = 1 << 21  # read 2 MiB at a time: the arrays of a block stay in the caches (0.6 s -> 0.4 s for 2 h)
MEAN_ROWS = 2000  # a segment's mean probabilities come from at most this many of its rows, evenly spaced


class ReviewError(Exception):
    """A CSV that cannot be reviewed, or a review file that cannot be read or written; the message names it."""


@dataclass(frozen=True)
class Shown:
    """One row of an item as the page shows it: a photo's face, or one of a segment's first/middle/last frames."""

    frame: int | None
    time_s: float | None
    box: tuple[int, int, int, int]  # x, y, w, h in the source's pixels
    confidence: float
    probabilities: tuple[float, ...]


@dataclass(frozen=True)
class Detail:
    shown: list[Shown]
    probabilities: list[float]  # the photo face's, or the mean over the segment's rows


class ReviewItems:
    """The items of one labelling CSV, as parallel arrays (item ids are positions, in source-then-frame order).

    ``source`` indexes ``sources``; ``track`` and ``face`` are -1 where they do not apply (photos have no track,
    segments no face); ``first`` and ``last`` are a segment's first and last frame (-1: a photo); ``rows`` the
    CSV rows it covers, ``emotion`` the model's label (index into EMOTIONS), ``confidence`` its probability (a
    segment's mean). Raises ReviewError for a file that is missing or not a fer-batch CSV.
    """

    def __init__(self, csv_path: str | Path):
        self.csv_path = Path(csv_path)
        try:
            with open(self.csv_path, "rb") as handle:
                header_line = handle.readline()
                header = next(csv.reader([header_line.decode("utf-8", "replace")]), [])
                try:
                    check_columns(self.csv_path, header, REQUIRED)
                except ValueError as error:
                    raise ReviewError(str(error)) from None
                if "decided_by" in header:
                    raise ReviewError(f"{self.csv_path}: already has decisions applied (fer-batch review --apply "
                                      f"wrote it); review the labelling CSV itself, its decisions are kept")
                self._columns = {name: header.index(name) for name in header}
                parsed = _parse(handle, len(header_line), self._columns)
        except OSError as error:
            raise ReviewError(f"{self.csv_path}: cannot read: {error.strerror or error}") from None
        except UnicodeDecodeError as error:
            raise ReviewError(f"{self.csv_path}: not UTF-8 text ({error.reason})") from None
        except ValueError as error:  # a number column that holds something else
            raise ReviewError(f"{self.csv_path}: not a fer-batch CSV: {error}") from None
        self.sources: list[str] = parsed.pop("names")
        self.kinds = [kind_of(Path(name)) or "other" for name in self.sources]
        self._build(**parsed)

    def _build(self, source, frame, face, track, emotion, confidence, offset, length, analysed) -> None:
        photo = frame < 0
        # Photo faces: one item each.
        photo_rows = np.flatnonzero(photo)
        # Video rows: sorted by source, track, frame; a segment starts at a new track, a new label, or a gap.
        video_rows = np.flatnonzero(~photo)
        order = video_rows[np.lexsort((frame[video_rows], track[video_rows], source[video_rows]))]
        position = np.searchsorted(analysed, (source[order].astype(np.int64) << 40) | frame[order])
        new = np.ones(len(order), bool)
        if len(order) > 1:
            new[1:] = ((source[order][1:] != source[order][:-1]) | (track[order][1:] != track[order][:-1]) |
                       (emotion[order][1:] != emotion[order][:-1]) | (np.diff(position) != 1))
        starts = np.flatnonzero(new)
        counts = np.diff(np.append(starts, len(order)))
        ends = starts + counts - 1
        sums = np.add.reduceat(confidence[order].astype(np.float64), starts) if len(order) else np.zeros(0)
        # Both kinds together, sorted into item order: source, first frame, track, face.
        item_source = np.concatenate([source[photo_rows], source[order][starts]])
        item_first = np.concatenate([np.full(len(photo_rows), -1, np.int64), frame[order][starts]])
        item_track = np.concatenate([np.full(len(photo_rows), -1, np.int64), track[order][starts]])
        item_face = np.concatenate([face[photo_rows], np.full(len(starts), -1, np.int64)])
        ids = np.lexsort((item_face, item_track, item_first, item_source))
        self.source = item_source[ids].astype(np.int32)
        self.first = item_first[ids]
        self.last = np.concatenate([np.full(len(photo_rows), -1, np.int64), frame[order][ends]])[ids]
        self.track = item_track[ids]
        self.face = item_face[ids]
        self.rows = np.concatenate([np.ones(len(photo_rows), np.int64), counts])[ids]
        self.emotion = np.concatenate([emotion[photo_rows], emotion[order][starts]])[ids].astype(np.int8)
        self.confidence = np.concatenate([confidence[photo_rows],
                                          (sums / np.maximum(counts, 1)).astype(np.float32)])[ids]
        # Where each item's rows are in the file, in frame order: rows of item i are _row_order[_row_start[i]:...].
        row_order = np.concatenate([photo_rows, order])
        row_start = np.concatenate([np.arange(len(photo_rows)), len(photo_rows) + starts])[ids]
        self._row_order, self._row_start = row_order, row_start
        self._offset, self._length = offset, length
        self._keys: dict[tuple, int] | None = None

    def __len__(self) -> int:
        return len(self.source)

    def key(self, item: int) -> tuple:
        """What names the item in the review file: (source, face) for a photo face, (source, track, first frame,
        last frame) for a segment."""
        name = self.sources[int(self.source[item])]
        if self.first[item] < 0:
            return name, int(self.face[item])
        return name, int(self.track[item]), int(self.first[item]), int(self.last[item])

    def find(self, key: tuple) -> int | None:
        """The item a review-file key names; None when this CSV has no such item."""
        if self._keys is None:
            self._keys = {self.key(item): item for item in range(len(self))}
        return self._keys.get(key)

    def model_emotion(self, item: int) -> str:
        return EMOTIONS[int(self.emotion[item])]

    def row_lines(self, item: int) -> np.ndarray:
        """Indices (into the parsed rows) of the item's rows, in frame order."""
        start = int(self._row_start[item])
        return self._row_order[start:start + int(self.rows[item])]

    def detail(self, item: int) -> Detail:
        """The rows the page shows (a photo's face; a segment's first, middle and last frame) and the mean
        probabilities, read back from the CSV."""
        lines = self.row_lines(item)
        picks = sorted({0, len(lines) // 2, len(lines) - 1})
        sample = lines if len(lines) <= MEAN_ROWS else lines[np.linspace(0, len(lines) - 1, MEAN_ROWS).astype(int)]
        with open(self.csv_path, "rb") as handle:
            shown = [self._shown(self._read_row(handle, int(lines[p]))) for p in picks]
            if len(lines) == 1:
                mean = list(shown[0].probabilities)
            else:
                rows = [self._read_row(handle, int(line)) for line in sample]
                mean = np.mean([[float(r[self._columns[e]]) for e in EMOTIONS] for r in rows], axis=0).tolist()
        return Detail(shown, mean)

    def _read_row(self, handle, line: int) -> list[str]:
        handle.seek(int(self._offset[line]))
        data = handle.read(int(self._length[line])).decode("utf-8")
        return next(csv.reader(io.StringIO(data)))

    def _shown(self, row: list[str]) -> Shown:
        column = self._columns
        frame = row[column["frame"]]
        time_s = row[column["time_s"]]
        box = tuple(int(round(float(row[column[k]] or 0))) for k in ("x", "y", "w", "h"))
        return Shown(frame=int(frame) if frame else None, time_s=float(time_s) if time_s else None, box=box,
                     confidence=float(row[column["confidence"]]),
                     probabilities=tuple(float(row[column[e]]) for e in EMOTIONS))

    def to_json(self) -> dict:
        """The list the page filters and sorts (columns of plain numbers; names once, in ``sources``)."""
        return {"sources": self.sources, "kinds": self.kinds,
                "items": {"source": self.source.tolist(), "track": self.track.tolist(), "face": self.face.tolist(),
                          "first": self.first.tolist(), "last": self.last.tolist(), "rows": self.rows.tolist(),
                          "emotion": self.emotion.tolist(),
                          # in ten-thousandths: whole numbers encode (and parse) several times faster than floats
                          "confidence_e4": np.round(self.confidence.astype(np.float64) * 1e4).astype(int).tolist()}}


def _parse(handle, start: int, columns: dict[str, int]) -> dict:
    """Read the rows after the header, a block at a time, into arrays of the fields the review keeps."""
    at = {name: columns[name] for name in ("source", "frame", "face", "track", "emotion", "confidence", "status")}
    blocks: list[dict[str, np.ndarray | list]] = []
    offset, pending = start, b""
    while True:
        block = handle.read(BLOCK_BYTES)
        data = pending + block
        if block:
            cut = data.rfind(b"\n") + 1
            data, pending = data[:cut], data[cut:]
        elif data and not data.endswith(b"\n"):
            data += b"\n"  # no newline after the last row: a torn row has too few fields and is dropped
        if data:
            rows, used = _scan(data, offset, len(columns), at)
            blocks.append(rows)
            pending, offset = data[used:] + pending, offset + used  # a quoted field that goes on: read it again
        if not block:
            break
    names: dict[bytes, int] = {}
    source = []
    for rows in blocks:
        run_names, run_lengths = rows.pop("source")
        ids = np.array([names.setdefault(name, len(names)) for name in run_names], np.int64)
        source.append(np.repeat(ids, run_lengths))
    joined = {k: np.concatenate([rows[k] for rows in blocks]) if blocks else np.zeros(0, np.int64)
              for k in ("frame", "face", "track", "emotion", "confidence", "status", "offset", "length")}
    joined["source"] = np.concatenate(source) if source else np.zeros(0, np.int64)
    video = (joined["frame"] >= 0) & (joined["status"] >= 0)  # analysed frames: rows with faces or without
    analysed = np.sort((joined["source"][video] << 40) | joined["frame"][video])
    analysed = analysed[np.concatenate([[True], analysed[1:] != analysed[:-1]])] if len(analysed) else analysed
    ok = joined.pop("status") == 0
    if (joined["emotion"][ok] < 0).any():
        bad = int(np.flatnonzero(ok & (joined["emotion"] < 0))[0])
        raise ValueError(f"the row at byte {int(joined['offset'][bad])} has status ok but no emotion it knows")
    parsed = {k: v[ok] for k, v in joined.items()}
    parsed["confidence"] = parsed["confidence"].astype(np.float32)
    parsed["analysed"] = analysed
    parsed["names"] = [name.decode("utf-8") for name in names]
    return parsed


_STATUSES = (b"ok", b"no_face")  # status codes 0 and 1; any other status (error, not_a_face) is -1
_EMOTION_WORDS = tuple(name.encode() for name in EMOTIONS)


def _scan(data: bytes, offset: int, width: int, at: dict[str, int]) -> tuple[dict, int]:
    """The rows of ``data`` (whole lines) as arrays, in file order, and how many bytes they used (less than all
    when the last row's quoted field goes on past the end).

    Rows without quotes are split by numpy on the raw bytes: every comma is a field boundary, so a row's fields
    lie between its commas. The few rows with quotes (a comma or newline inside a field) go through the csv module.
    """
    array = np.frombuffer(data, np.uint8)
    ends = np.flatnonzero(array == 10)  # each line's newline
    starts = np.concatenate([[0], ends[:-1] + 1]).astype(np.int64)
    simple = np.ones(len(ends), bool)
    used = len(data)
    complex_rows: list[tuple[int, int, list[str]]] = []
    if b'"' in data:
        quotes = np.bincount(np.searchsorted(ends, np.flatnonzero(array == 34)), minlength=len(ends))
        open_before = (np.cumsum(quotes) - quotes) % 2 == 1  # inside a quoted field that began on a line above
        simple = (quotes == 0) & ~open_before
        lines = np.flatnonzero(~simple).tolist()
        position = 0
        while position < len(lines):
            line = lines[position]
            last = line
            count = int(quotes[line])
            while count % 2 and position + 1 < len(lines) and lines[position + 1] == last + 1:
                position += 1
                last = lines[position]
                count += int(quotes[last])
            if count % 2:  # still open at the end of the block
                used = int(starts[line])
                simple &= np.arange(len(ends)) < line
                break
            text = data[starts[line]:ends[last]]
            row = next(csv.reader([text.decode("utf-8")]), [])
            if len(row) == width:
                complex_rows.append((int(starts[line]), len(text) + 1, row))
            position += 1
    commas = np.flatnonzero(array[:used] == 44)
    lines = int(np.searchsorted(ends, used))  # the lines before ``used``
    per_line = np.diff(np.searchsorted(commas, ends[:lines]), prepend=0)
    good = simple[:lines] & (per_line == width - 1)  # other lines: torn or foreign
    bounds = (commas if good.all() else commas[np.repeat(good, per_line)]).reshape(-1, width - 1)
    row_start, row_end = starts[:lines][good], ends[:lines][good]

    def field(name: str) -> tuple[np.ndarray, np.ndarray]:
        index = at[name]
        return (row_start if index == 0 else bounds[:, index - 1] + 1,
                row_end if index == width - 1 else bounds[:, index])

    rows = {"source": _names(data, *field("source")),
            "frame": _whole_numbers(array, *field("frame"), "frame"),
            "face": _whole_numbers(array, *field("face"), "face"),
            "track": _whole_numbers(array, *field("track"), "track"),
            "emotion": _word_index(array, *field("emotion"), _EMOTION_WORDS),
            "confidence": _decimals(data, array, *field("confidence")),
            "status": _word_index(array, *field("status"), _STATUSES),
            "offset": offset + row_start, "length": row_end - row_start + 1}
    if complex_rows:
        rows = _with_quoted_rows(rows, complex_rows, offset, at)
    return rows, used


def _with_quoted_rows(rows: dict, quoted: list[tuple[int, int, list[str]]], offset: int, at: dict) -> dict:
    """``rows`` with the rows the csv module parsed merged in, in file order."""
    def number(text: str) -> int:
        return int(text) if text else -1

    run_names, run_lengths = rows["source"]
    rows = {**rows, "source": [name for name, count in zip(run_names, run_lengths.tolist()) for _ in range(count)]}
    extra = {"source": [row[at["source"]].encode("utf-8") for _, _, row in quoted],
             "frame": np.array([number(row[at["frame"]]) for _, _, row in quoted], np.int64),
             "face": np.array([number(row[at["face"]]) for _, _, row in quoted], np.int64),
             "track": np.array([number(row[at["track"]]) for _, _, row in quoted], np.int64),
             "emotion": np.array([_EMOTION_WORDS.index(row[at["emotion"]].encode())
                                  if row[at["emotion"]].encode() in _EMOTION_WORDS else -1 for _, _, row in quoted],
                                 np.int64),
             "confidence": np.array([float(row[at["confidence"]] or "nan") for _, _, row in quoted], np.float64),
             "status": np.array([_STATUSES.index(row[at["status"]].encode())
                                 if row[at["status"]].encode() in _STATUSES else -1 for _, _, row in quoted],
                                np.int64),
             "offset": offset + np.array([start for start, _, _ in quoted], np.int64),
             "length": np.array([length for _, length, _ in quoted], np.int64)}
    order = np.argsort(np.concatenate([rows["offset"], extra["offset"]]), kind="stable")
    merged = {}
    for key, values in rows.items():
        if key == "source":
            names = values + extra["source"]
            merged[key] = ([names[i] for i in order.tolist()], np.ones(len(names), np.int64))
        else:
            merged[key] = np.concatenate([values, extra[key]])[order]
    return merged


def _names(data: bytes, start: np.ndarray, end: np.ndarray) -> tuple[list[bytes], np.ndarray]:
    """The fields' bytes as runs of equal values (rows of one source come together): each run's value and
    length."""
    names = [data[a:b] for a, b in zip(start.tolist(), end.tolist())]
    runs = [0] + [row for row in range(1, len(names)) if names[row] != names[row - 1]] if names else []
    return [names[row] for row in runs], np.diff(np.append(np.array(runs, np.int64), len(names)))


def _characters(array: np.ndarray, start: np.ndarray, end: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The fields' bytes side by side, (rows, longest field), and which of them lie inside the field."""
    longest = int((end - start).max()) if len(start) else 0
    index = start[:, None] + np.arange(max(longest, 1))
    inside = index < end[:, None]
    return np.where(inside, array[np.minimum(index, len(array) - 1)], 0), inside


def _whole_numbers(array: np.ndarray, start: np.ndarray, end: np.ndarray, name: str) -> np.ndarray:
    """The fields as non-negative integers; -1 for an empty field."""
    length = end - start
    if not len(start) or not length.any():
        return np.full(len(start), -1, np.int64)
    if length.max() > 15:
        raise ValueError(f"a {name} value of {int(length.max())} characters")
    characters, inside = _characters(array, start, end)
    digits = characters.astype(np.int64) - 48
    if ((digits < 0) | (digits > 9))[inside].any():
        raise ValueError(f"a {name} value that is not a whole number")
    power = np.clip(length[:, None] - 1 - np.arange(characters.shape[1]), 0, None)
    values = np.where(inside, digits * 10 ** power, 0).sum(axis=1)
    values[length == 0] = -1
    return values


def _decimals(data: bytes, array: np.ndarray, start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """The fields as numbers: digits with one point in numpy (0.123456, as fer-batch writes them, fastest),
    anything else (1e-05, an empty field: NaN) by float()."""
    values = np.full(len(start), np.nan)
    length = end - start
    if not len(start) or not length.any():
        return values
    fixed = (length == 8) & (array[np.minimum(start + 1, len(array) - 1)] == 46)
    if fixed.any():
        digits = array[start[fixed, None] + np.array([0, 2, 3, 4, 5, 6, 7])].astype(np.int64) - 48
        good = ((digits >= 0) & (digits <= 9)).all(axis=1)
        values[np.flatnonzero(fixed)[good]] = digits[good] @ (10.0 ** -np.arange(7))
        fixed[np.flatnonzero(fixed)[~good]] = False
    rest = np.flatnonzero(~fixed & (length > 0))
    if not len(rest):
        return values
    characters, inside = _characters(array, start[rest], end[rest])
    digit = inside & (characters >= 48) & (characters <= 57)
    point = inside & (characters == 46)
    plain = (length[rest] <= 17) & ((digit | point) == inside).all(axis=1) & (point.sum(axis=1) <= 1)
    # Each digit's power of ten counts the digits after it; the point's count is the number of decimals.
    after = np.cumsum(digit[:, ::-1], axis=1)[:, ::-1] - digit
    whole = np.where(digit, (characters.astype(np.int64) - 48) * 10 ** np.where(digit, after, 0), 0).sum(axis=1)
    decimals = np.where(point, after, 0).sum(axis=1)
    values[rest[plain]] = whole[plain] / 10.0 ** decimals[plain]
    for row in rest[~plain].tolist():
        values[row] = float(data[start[row]:end[row]])
    return values


def _word_index(array: np.ndarray, start: np.ndarray, end: np.ndarray, words: tuple[bytes, ...]) -> np.ndarray:
    """Which of ``words`` each field is; -1 for anything else. Each word is told by its length and first byte
    (the words given differ in those) and then checked whole."""
    index = np.full(len(start), -1, np.int64)
    if not len(start):
        return index
    width = max(len(w) for w in words)
    table = np.full((width + 1, 256), -1, np.int64)
    patterns = np.zeros((len(words) + 1, width), np.uint8)  # the last row: matches nothing (its code is -1)
    for number, word in enumerate(words):
        assert table[len(word), word[0]] < 0, "words must differ in length or first byte"
        table[len(word), word[0]] = number
        patterns[number, :len(word)] = np.frombuffer(word, np.uint8)
    length = end - start
    first = array[np.minimum(start, len(array) - 1)]
    code = np.where(length <= width, table[np.minimum(length, width), first], -1)
    characters, _ = _characters(array, start, np.minimum(end, start + width))
    if characters.shape[1] < width:
        characters = np.pad(characters, ((0, 0), (0, width - characters.shape[1])))
    match = (characters == patterns[code]).all(axis=1) & (code >= 0)
    index[match] = code[match]
    return index


def review_path(csv_path: str | Path) -> Path:
    """``OUT.csv`` -> ``OUT.review.csv``, beside it: the decisions, appended as they are made."""
    csv_path = Path(csv_path)
    stem = csv_path.name[: -len(csv_path.suffix)] if csv_path.suffix else csv_path.name
    return csv_path.with_name(stem + ".review.csv")


def reviewed_path(csv_path: str | Path) -> Path:
    """``OUT.csv`` -> ``OUT.reviewed.csv``, beside it: the default of ``--apply``."""
    csv_path = Path(csv_path)
    stem = csv_path.name[: -len(csv_path.suffix)] if csv_path.suffix else csv_path.name
    return csv_path.with_name(stem + ".reviewed.csv")


def open_source(csv_path: Path, name: str) -> Path:
    """Where to read a source the CSV names: as written (relative to the current folder), else relative to the
    CSV's folder (a run labelled from there)."""
    path = Path(name)
    if path.is_absolute() or path.exists():
        return path
    beside = csv_path.parent / path
    return beside if beside.exists() else path

