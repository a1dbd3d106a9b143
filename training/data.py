"""Load FER-2013: the original CSV (plain or gzip), the image-folder variant, and optional FER+ labels.

Everything returns a :class:`Dataset`: uint8 images (N, 48, 48), int labels 0..6 in FER order, and the split
of each row (Training, PublicTest or PrivateTest). Problems in a file raise :class:`DataError` naming the file,
the line and what is wrong, so a bad download is spotted at once instead of as a strange accuracy later.
"""

from __future__ import annotations

import csv
import gzip
import io
import logging
import random
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fer_batch.labels import EMOTIONS

log = logging.getLogger(__name__)

IMAGE_SIZE = 48
NUM_PIXELS = IMAGE_SIZE * IMAGE_SIZE
SPLITS = ("Training", "PublicTest", "PrivateTest")
DEFAULT_DATA = "../shared/data/fer2013/fer2013.csv.gz"
# Folder names of the image-folder variant mapped onto the CSV's Usage values.
FOLDER_SPLITS = {"train": "Training", "training": "Training", "val": "PublicTest", "valid": "PublicTest",
                 "validation": "PublicTest", "publictest": "PublicTest", "test": "PrivateTest",
                 "privatetest": "PrivateTest"}
FOLDER_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp"}
# FER+ vote columns, in the file's order, and where each lands among the 7 FER classes (None: row dropped).
FERPLUS_COLUMNS = ("neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt",
                   "unknown", "NF")
FERPLUS_TO_FER = {"neutral": 6, "happiness": 3, "surprise": 5, "sadness": 4, "anger": 0, "disgust": 1,
                  "fear": 2, "contempt": None, "unknown": None, "NF": None}


class DataError(ValueError):
    """A data file is malformed; the message names the file, the line and the problem."""


@dataclass
class Dataset:
    images: np.ndarray  # (N, 48, 48) uint8
    labels: np.ndarray  # (N,) int64, FER order
    usage: np.ndarray  # (N,) str, one of SPLITS
    source: str
    ferplus_votes: np.ndarray | None = None  # (N, 10) FER+ vote counts, row-aligned, when loaded

    def mask(self, name: str) -> np.ndarray:
        """The rows of one split; raises DataError when the split is empty."""
        mask = self.usage == name
        if not mask.any():
            present = sorted(set(self.usage.tolist()))
            raise DataError(f"{self.source}: no rows in split {name!r} (splits present: {', '.join(present)})")
        return mask

    def split(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """Images and labels of one split; raises DataError when the split is empty."""
        mask = self.mask(name)
        return self.images[mask], self.labels[mask]

    def votes(self, name: str) -> np.ndarray:
        """FER+ vote counts of one split; raises DataError when they were not loaded."""
        if self.ferplus_votes is None:
            raise DataError(f"{self.source}: no FER+ votes loaded (give --ferplus-votes fer2013new.csv)")
        return self.ferplus_votes[self.mask(name)]

    def counts(self) -> dict[str, list[int]]:
        """Per split, the number of rows of each class."""
        return {s: np.bincount(self.labels[self.usage == s], minlength=len(EMOTIONS)).tolist()
                for s in SPLITS if (self.usage == s).any()}


def load(path: str | Path, ferplus: str | Path | None = None, ferplus_votes: str | Path | None = None) -> Dataset:
    """Load FER-2013 from a CSV (``.csv`` or ``.csv.gz``), an image-folder root or a file made by :func:`pack`.

    ``ferplus_votes`` (fer2013new.csv) attaches FER+'s vote counts to the rows; ``ferplus`` (the same file)
    also replaces the labels by FER+'s majority vote, dropping rows it cannot map. A packed ``.npz`` carries its
    votes inside (the file arguments are then not read again).
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    if path.is_dir():
        dataset = load_folder(path)
    elif path.suffix == ".npz":
        dataset = load_npz(path)
    else:
        dataset = load_csv(path)
    for source in (ferplus_votes, ferplus):
        if source in (None, False) or dataset.ferplus_votes is not None:
            continue
        if path.is_dir() or path.suffix == ".npz":
            raise DataError(f"{source}: FER+ labels join fer2013.csv by row position; they cannot be used "
                            f"with {path} (pack them into it: fer-train pack --ferplus-votes)")
        dataset.ferplus_votes = load_ferplus_votes(source, len(dataset.labels))
    if ferplus not in (None, False):
        dataset = apply_ferplus(dataset, str(ferplus))
    return dataset


def load_npz(path: str | Path) -> Dataset:
    """A dataset written by :func:`pack` (images, labels, usage, optionally FER+ votes)."""
    path = Path(path)
    try:
        with np.load(path) as stored:
            missing = [key for key in ("images", "labels", "usage") if key not in stored]
            if missing:
                raise DataError(f"{path}: lacks {', '.join(missing)}; not a file made by fer-train pack")
            votes = stored["ferplus_votes"] if "ferplus_votes" in stored else None
            images = _unpredict(stored["images"])
            dataset = Dataset(images, stored["labels"].astype(np.int64), stored["usage"].astype(str), str(path), votes)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise DataError(f"{path}: cannot read: {error}") from error
    if dataset.images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE) or len(dataset.images) != len(dataset.labels):
        raise DataError(f"{path}: images {dataset.images.shape} and labels {dataset.labels.shape} do not fit "
                        f"(expected (N, 48, 48) and (N,))")
    return dataset


def pack(dataset: Dataset, out: str | Path, splits: tuple[str, ...] = SPLITS) -> Path:
    """Write the chosen splits as one compressed ``.npz`` (to carry to another machine; never into the repo).

    Images are stored as what a pixel predictor leaves (see :func:`_predict`): 53.8 MB for Training + PublicTest
    instead of 70.5 MB for the raw pixels, so data and Keras's wheels fit the 64 MiB a call to a lent GPU may carry.
    """
    keep = np.isin(dataset.usage, splits)
    values = {"images": _predict(dataset.images[keep]), "labels": dataset.labels[keep].astype(np.uint8),
              "usage": dataset.usage[keep]}
    if dataset.ferplus_votes is not None:
        values["ferplus_votes"] = dataset.ferplus_votes[keep].astype(np.uint8)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    temporary = out.with_name(out.name + ".tmp.npz")
    np.savez_compressed(temporary, **values)
    temporary.replace(out)
    return out


def _open_text(path: Path) -> io.TextIOBase:
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="ascii", newline="")
    return open(path, encoding="ascii", newline="")


def load_csv(path: str | Path) -> Dataset:
    """Parse ``fer2013.csv`` (columns emotion, pixels, Usage), streaming it line by line.

    All 35,887 rows take a few seconds: each pixels field is parsed by numpy in one call.
    """
    path = Path(path)
    images: list[np.ndarray] = []
    labels: list[int] = []
    usage: list[str] = []
    try:
        with _open_text(path) as handle:
            header = handle.readline().strip().split(",")
            missing = [c for c in ("emotion", "pixels", "Usage") if c not in header]
            if missing:
                raise DataError(f"{path}: line 1: header {header} lacks column(s) {', '.join(missing)}; "
                                f"expected emotion,pixels,Usage")
            i_label, i_pixels, i_usage = (header.index(c) for c in ("emotion", "pixels", "Usage"))
            for line_number, line in enumerate(handle, start=2):
                line = line.rstrip("\r\n")
                if not line:
                    continue
                fields = line.split(",")
                if len(fields) != len(header):
                    raise DataError(f"{path}: line {line_number}: {len(fields)} fields, expected {len(header)}")
                images.append(_parse_pixels(fields[i_pixels], path, line_number))
                labels.append(_parse_label(fields[i_label], path, line_number))
                split = fields[i_usage].strip()
                if split not in SPLITS:
                    raise DataError(f"{path}: line {line_number}: Usage {split!r} is not one of {', '.join(SPLITS)}")
                usage.append(split)
    except (OSError, EOFError, UnicodeDecodeError, gzip.BadGzipFile) as error:
        raise DataError(f"{path}: cannot read: {error}") from error
    if not images:
        raise DataError(f"{path}: no data rows")
    return Dataset(np.stack(images), np.asarray(labels, dtype=np.int64), np.asarray(usage), str(path))


def _parse_pixels(text: str, path: Path, line_number: int) -> np.ndarray:
    tokens = text.split()
    if len(tokens) != NUM_PIXELS:
        raise DataError(f"{path}: line {line_number}: pixels has {len(tokens)} values, expected {NUM_PIXELS} (48x48)")
    try:
        values = np.array(tokens, dtype=np.int32)
    except ValueError as error:
        raise DataError(f"{path}: line {line_number}: pixels holds a value that is not an integer ({error})") from None
    if values.min() < 0 or values.max() > 255:
        raise DataError(f"{path}: line {line_number}: pixel values must lie in 0..255, "
                        f"found {values.min()}..{values.max()}")
    return values.astype(np.uint8).reshape(IMAGE_SIZE, IMAGE_SIZE)


def _parse_label(text: str, path: Path, line_number: int) -> int:
    try:
        label = int(text)
    except ValueError:
        raise DataError(f"{path}: line {line_number}: emotion {text!r} is not an integer") from None
    if not 0 <= label < len(EMOTIONS):
        raise DataError(f"{path}: line {line_number}: emotion {label} is out of range 0..{len(EMOTIONS) - 1}")
    return label


def load_folder(root: str | Path, holdout: float = 0.1, seed: int = 1337) -> Dataset:
    """Load the image-folder variant: ``root/<split>/<label name>/*.png|jpg``.

    Splits: train -> Training, val -> PublicTest, test -> PrivateTest. Without a val folder, a stratified
    ``holdout`` share of train (fixed seed) becomes PublicTest, so checkpoints are never chosen on the test set.
    """
    import cv2  # runtime dependency of fer_batch, so always present

    root = Path(root)
    images: list[np.ndarray] = []
    labels: list[int] = []
    usage: list[str] = []
    split_dirs = sorted(d for d in root.iterdir() if d.is_dir() and d.name.lower() in FOLDER_SPLITS)
    if not split_dirs:
        raise DataError(f"{root}: expected sub-folders train/ and test/ (and optionally val/), found none")
    for split_dir in split_dirs:
        split = FOLDER_SPLITS[split_dir.name.lower()]
        for class_dir in sorted(d for d in split_dir.iterdir() if d.is_dir()):
            name = class_dir.name.lower()
            if name not in EMOTIONS:
                raise DataError(f"{class_dir}: folder name {class_dir.name!r} is not an emotion "
                                f"({', '.join(EMOTIONS)})")
            for file in sorted(class_dir.iterdir()):
                if file.suffix.lower() not in FOLDER_IMAGE_SUFFIXES:
                    continue
                image = cv2.imread(str(file), cv2.IMREAD_GRAYSCALE)
                if image is None:
                    raise DataError(f"{file}: unreadable image")
                if image.shape != (IMAGE_SIZE, IMAGE_SIZE):
                    image = cv2.resize(image, (IMAGE_SIZE, IMAGE_SIZE), interpolation=cv2.INTER_AREA)
                images.append(image)
                labels.append(EMOTIONS.index(name))
                usage.append(split)
    if not images:
        raise DataError(f"{root}: no images found under {', '.join(d.name for d in split_dirs)}")
    dataset = Dataset(np.stack(images), np.asarray(labels, dtype=np.int64), np.asarray(usage), str(root))
    if "PublicTest" not in usage:
        _hold_out(dataset, holdout, seed)
    return dataset


def _hold_out(dataset: Dataset, share: float, seed: int) -> None:
    """Move a stratified share of Training rows to PublicTest, in place."""
    rng = random.Random(seed)
    moved = 0
    for label in range(len(EMOTIONS)):
        rows = np.flatnonzero((dataset.labels == label) & (dataset.usage == "Training")).tolist()
        rng.shuffle(rows)
        take = rows[: int(round(len(rows) * share))]
        dataset.usage[take] = "PublicTest"
        moved += len(take)
    log.info("%s: no val/ folder; held out %d training images (%.0f %%) as PublicTest for model selection",
             dataset.source, moved, share * 100)


def load_ferplus_votes(path: str | Path, expected_rows: int) -> np.ndarray:
    """The FER+ vote counts (N, 10), in file order, checked against the FER row count."""
    path = Path(path)
    votes: list[list[int]] = []
    try:
        with open(path, encoding="utf-8", newline="") as handle:
            reader = csv.reader(handle)
            header = next(reader, [])
            missing = [c for c in FERPLUS_COLUMNS if c not in header]
            if missing:
                raise DataError(f"{path}: line 1: header lacks FER+ column(s) {', '.join(missing)}")
            columns = [header.index(c) for c in FERPLUS_COLUMNS]
            for line_number, row in enumerate(reader, start=2):
                try:
                    votes.append([int(row[c]) for c in columns])
                except (ValueError, IndexError):
                    raise DataError(f"{path}: line {line_number}: vote counts are not integers") from None
    except OSError as error:
        raise DataError(f"{path}: cannot read: {error}") from error
    if len(votes) != expected_rows:
        raise DataError(f"{path}: {len(votes)} rows, but the FER-2013 file has {expected_rows}; FER+ labels join "
                        f"by row position, so both files must hold the same rows")
    return np.asarray(votes, dtype=np.int64)


def ferplus_labels(votes: np.ndarray) -> tuple[np.ndarray, dict[str, int]]:
    """Majority vote mapped onto FER's 7 classes; -1 where the row is dropped. Also the counts of each reason."""
    top = votes.max(axis=1)
    winner = votes.argmax(axis=1)
    tied = (votes == top[:, None]).sum(axis=1) > 1
    mapped = np.array([FERPLUS_TO_FER[FERPLUS_COLUMNS[w]] if FERPLUS_TO_FER[FERPLUS_COLUMNS[w]] is not None else -1
                       for w in winner], dtype=np.int64)
    no_votes = top == 0
    reasons = {
        "no votes": int(no_votes.sum()),
        "tied majority": int((tied & ~no_votes).sum()),
        **{f"majority {c}": int(((mapped == -1) & ~tied & ~no_votes & (winner == i)).sum())
           for i, c in enumerate(FERPLUS_COLUMNS) if FERPLUS_TO_FER[c] is None},
    }
    mapped[tied | no_votes] = -1
    return mapped, reasons


def _median_edge(west: np.ndarray, north: np.ndarray, north_west: np.ndarray) -> np.ndarray:
    """LOCO-I's median edge detector (JPEG-LS): a pixel predicted from its west, north and north-west neighbours."""
    high, low = np.maximum(west, north), np.minimum(west, north)
    return np.where(north_west >= high, low, np.where(north_west <= low, high, west + north - north_west))


def _predict(images: np.ndarray) -> np.ndarray:
    """uint8 residuals (mod 256) of each pixel against its median-edge prediction; deflate compresses them to 72 %
    of the raw pixels (raw: 95 %)."""
    pixels = images.astype(np.int16)
    west, north, north_west = (np.zeros_like(pixels) for _ in range(3))
    west[:, :, 1:], north[:, 1:, :], north_west[:, 1:, 1:] = pixels[:, :, :-1], pixels[:, :-1, :], pixels[:, :-1, :-1]
    return (pixels - _median_edge(west, north, north_west)).astype(np.uint8)


def _unpredict(residuals: np.ndarray) -> np.ndarray:
    """Invert :func:`_predict`, one pixel position at a time across all images (about a second for 32,000)."""
    pixels = np.zeros(residuals.shape, np.int16)
    zero = np.zeros(len(residuals), np.int16)
    for y in range(residuals.shape[1]):
        for x in range(residuals.shape[2]):
            west = pixels[:, y, x - 1] if x else zero
            north = pixels[:, y - 1, x] if y else zero
            north_west = pixels[:, y - 1, x - 1] if x and y else zero
            pixels[:, y, x] = (_median_edge(west, north, north_west) + residuals[:, y, x]) % 256
    return pixels.astype(np.uint8)


def apply_ferplus(dataset: Dataset, path: str) -> Dataset:
    """Replace the labels by the FER+ majority vote (votes already attached), dropping rows it cannot map."""
    labels, reasons = ferplus_labels(dataset.ferplus_votes)
    keep = labels >= 0
    changed = int((labels[keep] != dataset.labels[keep]).sum())
    log.info("FER+ labels from %s: kept %d of %d rows, %d relabelled; dropped %s", path, int(keep.sum()),
             len(labels), changed, ", ".join(f"{n} {r}" for r, n in reasons.items()))
    return Dataset(dataset.images[keep], labels[keep], dataset.usage[keep], f"{dataset.source} + FER+ {path}",
                   dataset.ferplus_votes[keep])
