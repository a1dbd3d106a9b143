"""Fine-tune an exported model on your own labelled faces: ``fer-train finetune PHOTOS --out RUN``.

PHOTOS is either a folder with one sub-folder per emotion (angry, disgust, fear, happy, sad, surprise, neutral, any
case) of photos in any format ``fer-batch`` reads, or a labelling CSV reviewed in the browser (``fer-batch review
OUT.csv --apply -o REVIEWED.csv``), whose rows a person decided are cut from their sources by the recorded boxes.
Photos take the path ``fer-batch label`` takes (read_image, the detector, crop_face) and their largest face is kept;
photos without a face, or unreadable, are listed in RUN/photos.csv and on stderr.

A folder of a hundred photos is small, so the recipe is built for it (the figures behind each choice are in
docs/training.md, "Fine-tuning on your photos"):

- training is counted in steps, about PASSES passes over the photos (clamped to MIN_STEPS..MAX_STEPS), in
  class-balanced batches, augmented for photos (PHOTO_AUGMENT); Adam at a constant LEARNING_RATE after a short
  warm-up; every convolution and dense layer learns, the batch norms keep the statistics the model was trained with
  (``train_batch_norms`` lets them learn);
- FOLDS-fold stratified cross-validation chooses how long to train: each fold's model is scored on the photos it
  did not see at a few step counts, zero (the model unchanged) included; the fewest steps within one standard error
  of the best mean per-class recall (:func:`choose_steps`) are then trained on every photo. The before/after table
  is those cross-validated predictions: each photo is judged by a model that never trained on it;
- with ``fer2013``, FER-2013 Training faces fill part of every batch, their targets the starting model's own
  probabilities, so the model keeps its answers on faces unlike the photos.

The run folder holds ``best.keras``, ``config.json`` and ``state.json`` as a training run does (``fer-train
export`` reads them and records the model the run started from), ``faces.npz`` (the faces in training.data's
format, with mirrored and varied copies: Training for ``fer-train quantize`` to calibrate on, PublicTest for the
parity checks of ``export`` and ``quantize``; see :func:`write_faces`), ``photos.csv`` and ``finetune.json`` (counts,
the cross-validation's scores, per-class recall before and after).
"""

from __future__ import annotations

import csv
import json
import logging
import os
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from fer_batch.config import LabelConfig
from fer_batch.labels import EMOTIONS
from fer_batch.sources import IMAGE_SUFFIXES, InputError, kind_of, read_image
from fer_batch.track import iou
from training.augment import AugmentConfig
from training.train import write_json

log = logging.getLogger(__name__)

# Chosen with benchmarks/finetune_demo.py on PublicTest faces (docs/training.md): 108 photos take 135 steps, 5 x 135
# with the folds. Adam at 1e-5 and 3e-5 gained alike on other people's faces and kept accuracy; 1e-4 gained less and
# lost accuracy past 30 steps; 3e-5 leaves more room for photos further from FER-2013 than the benchmark's.
PASSES = 40  # passes over the photos: the default step count is PASSES * photos / batch, clamped
MIN_STEPS, MAX_STEPS = 60, 600
FOLDS = 4
CHECKPOINTS = (0.25, 0.5, 0.75, 1.0)  # shares of the steps at which each fold's model is scored (and 0: unchanged)
LEARNING_RATE = 3e-5
WARMUP_STEPS = 10  # linear warm-up from zero, then constant
BATCH_SIZE = 32
LABEL_SMOOTHING = 0.1
FER2013_SHARE = 0.25  # with --fer2013: share of every batch that is FER-2013 faces
FER2013_POOL = 4000  # FER-2013 Training faces drawn (seeded) to mix in
STEPS_VARIABLE = "FER_FINETUNE_STEPS"  # sets the default step count (quick trials, tests)
# Photos are sharper, bigger, turned and lit more variously than FER-2013's faces; the model sees them as 48x48 grey
# crops, so what varies is pose, framing, lighting, focus and compression.
PHOTO_AUGMENT = AugmentConfig(flip=True, rotation_deg=15.0, zoom=0.12, shift=0.08, brightness=0.2, contrast=0.3,
                              erase_probability=0.25, blur_probability=0.2, low_resolution_probability=0.2,
                              jpeg_probability=0.3)
FACES_FILE = "faces.npz"
CHECK_FACES = 300  # faces (the photos, mirrored and varied) in RUN/faces.npz to calibrate INT8 on, and to check
PHOTOS_FILE = "photos.csv"
REPORT_FILE = "finetune.json"
DETECTOR_SETTINGS = ("detector", "align", "face_threshold", "min_face", "detect_size")  # of LabelConfig, used here
# A reviewed labelling CSV: fer_batch/writer.py's columns and the three `fer-batch review --apply` appends.
REVIEW_COLUMNS = ("source", "frame", "x", "y", "w", "h", "emotion", "status", "decided_by")
FRAME_RUN_GAP = 48  # video frames this close together are decoded in one pass instead of seeking to each


class FinetuneError(ValueError):
    """The photos cannot be fine-tuned on (names the folder or file and why)."""


@dataclass
class FinetuneConfig:
    photos: str  # a folder of one sub-folder per emotion, or a reviewed labelling CSV
    out: str
    init: str | None = None  # the .onnx to start from; None: the bundled float model
    root: str | None = None  # CSV: the folder its relative sources are read from (None: here, then the CSV's folder)
    fer2013: str | None = None  # FER-2013 data (csv[.gz], folder or packed .npz) whose Training faces are mixed in
    fer2013_share: float = FER2013_SHARE
    steps: int | None = None  # None: PASSES over the photos, clamped to MIN_STEPS..MAX_STEPS
    folds: int = FOLDS  # cross-validation folds choosing the step count; 0: train `steps` without choosing
    learning_rate: float = LEARNING_RATE
    batch_size: int = BATCH_SIZE
    train_batch_norms: bool = False
    augment: bool = True
    seed: int = 1337
    precision: str = "auto"  # auto: bf16 mixed precision where the CPU computes bf16 natively, else fp32
    detector: LabelConfig = field(default_factory=LabelConfig)  # detector settings, as `fer-batch label`'s


@dataclass
class Photo:
    path: Path
    emotion: str
    status: str = ""  # "face", "no face" or "error"
    message: str = ""
    box: tuple[float, float, float, float] | None = None  # x, y, w, h of the face kept
    score: float | None = None
    faces_found: int = 0
    frame: int | None = None  # a reviewed CSV's video row: the frame number
    line: int | None = None  # a reviewed CSV's row: its line in the file
    fold: int = -1  # cross-validation fold the face is held out in


def default_steps(photos: int, batch_size: int = BATCH_SIZE) -> int:
    """PASSES passes over ``photos`` in batches of ``batch_size``, clamped to MIN_STEPS..MAX_STEPS; the environment
    variable FER_FINETUNE_STEPS, where set, instead."""
    if os.environ.get(STEPS_VARIABLE):
        try:
            return max(1, int(os.environ[STEPS_VARIABLE]))
        except ValueError:
            raise FinetuneError(f"{STEPS_VARIABLE}={os.environ[STEPS_VARIABLE]!r}: give a whole number of steps") \
                from None
    return int(np.clip(round(PASSES * photos / max(batch_size, 1)), MIN_STEPS, MAX_STEPS))


def find_photos(root: str | Path) -> list[Photo]:
    """The photos under ``root/<emotion>/`` (any case, searched recursively, sorted), labelled by their folder.

    Raises FinetuneError for a folder that is not an emotion (naming it), a file directly under ``root``, or no
    photo at all. Inside the emotion folders only image suffixes fer-batch reads are taken."""
    root = Path(root)
    if not root.is_dir():
        raise FinetuneError(f"{root}: no such folder (expected one sub-folder per emotion: {', '.join(EMOTIONS)}, "
                            f"or a reviewed labelling CSV)")
    photos: list[Photo] = []
    entries = sorted(root.iterdir())
    strays = [entry.name for entry in entries if entry.is_file() and entry.suffix.lower() in IMAGE_SUFFIXES]
    if strays:
        raise FinetuneError(f"{root}: photos must sit in a folder named after their emotion; found "
                            f"{', '.join(strays[:5])}{' ...' if len(strays) > 5 else ''} directly in it")
    folders = [entry for entry in entries if entry.is_dir() and not entry.name.startswith(".")]
    unknown = [folder.name for folder in folders if folder.name.lower() not in EMOTIONS]
    if unknown:
        raise FinetuneError(f"{root}: folder {', '.join(repr(name) for name in unknown)} is not an emotion; "
                            f"name each folder after one of {', '.join(EMOTIONS)} (any case)")
    seen: dict[str, str] = {}
    for folder in folders:
        emotion = folder.name.lower()
        if emotion in seen:
            raise FinetuneError(f"{root}: folders {seen[emotion]!r} and {folder.name!r} are the same emotion")
        seen[emotion] = folder.name
        photos += [Photo(path, emotion) for path in sorted(folder.rglob("*"))
                   if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES]
    if not photos:
        raise FinetuneError(f"{root}: no photos ({', '.join(sorted(IMAGE_SUFFIXES))}) in folders named "
                            f"{', '.join(EMOTIONS)}")
    return photos


def read_reviewed(path: str | Path, root: str | Path | None = None) -> tuple[list[Photo], dict[str, int]]:
    """The faces a person labelled in a reviewed labelling CSV (``decided_by`` "person", ``status`` "ok"), each with
    its source resolved, its box and frame; and counts of the rows left out (decided by the model, not a face, ...).

    A relative source is looked for under ``root`` when given, else in the current folder (where ``fer-batch label``
    ran, as it wrote them) and then beside the CSV. Raises FinetuneError naming the file (and line) for a CSV that is
    not a reviewed labelling CSV, a bad row, a source that is not found, or no face a person labelled."""
    path = Path(path)
    try:
        handle = open(path, newline="", encoding="utf-8")
    except OSError as error:
        raise FinetuneError(f"{path}: cannot read: {error.strerror or error}") from None
    faces: list[Photo] = []
    left_out = {"decided by the model": 0, "not a face": 0, "no face or error": 0}
    missing: dict[str, tuple[int, list[Path]]] = {}
    resolved: dict[str, Path] = {}
    with handle:
        reader = csv.DictReader(handle)
        absent = [name for name in REVIEW_COLUMNS if name not in (reader.fieldnames or [])]
        if absent:
            hint = (" (a labelling CSV nobody reviewed: review it with `fer-batch review OUT.csv`, then write the "
                    "decisions with `--apply -o REVIEWED.csv`)" if absent == ["decided_by"] else "")
            raise FinetuneError(f"{path}: not a reviewed labelling CSV: no column {', '.join(absent)}{hint}")
        for raw in reader:
            line = reader.line_num
            row = {name: (value or "").strip() for name, value in raw.items() if isinstance(name, str)}
            if row["decided_by"] != "person":
                left_out["decided by the model"] += 1
                continue
            if row["status"] != "ok":
                left_out["not a face" if row["status"] == "not_a_face" else "no face or error"] += 1
                continue
            emotion = row["emotion"].lower()
            if emotion not in EMOTIONS:
                raise FinetuneError(f"{path} line {line}: emotion {row['emotion']!r} is not one of "
                                    f"{', '.join(EMOTIONS)}")
            try:
                x, y, w, h = (float(row[name]) for name in ("x", "y", "w", "h"))
                frame = int(row["frame"]) if row["frame"] else None
                score = float(row["face_score"]) if row.get("face_score") else None
            except ValueError:
                raise FinetuneError(f"{path} line {line}: the box ({row['x']}, {row['y']}, {row['w']}, {row['h']}), "
                                    f"frame {row['frame']!r} or face_score is not a number") from None
            if w <= 0 or h <= 0:
                raise FinetuneError(f"{path} line {line}: the box has no area ({w:g} x {h:g})")
            source = raw.get("source") or ""  # as labelling wrote it (a name may end in a space)
            if source not in resolved:
                candidates = _source_candidates(source, path, root)
                found = next((candidate for candidate in candidates if candidate.is_file()), None)
                if found is None:
                    missing.setdefault(source, (line, candidates))
                    continue
                resolved[source] = found
            if kind_of(resolved[source]) == "video" and frame is None:
                raise FinetuneError(f"{path} line {line}: {source} is a video but the row has no frame number")
            faces.append(Photo(resolved[source], emotion, box=(x, y, w, h), frame=frame, line=line, score=score))
    if missing:
        source, (line, candidates) = next(iter(missing.items()))
        more = f" (and {len(missing) - 1} other sources)" if len(missing) > 1 else ""
        raise FinetuneError(f"{path} line {line}: source {source} not found{more}: looked for "
                            f"{' and '.join(str(c) for c in candidates)}; run from the folder `fer-batch label` ran "
                            f"in, or give --root")
    if not faces:
        raise FinetuneError(f"{path}: no face a person labelled (rows with decided_by 'person' and status 'ok'; "
                            f"left out: {', '.join(f'{count} {why}' for why, count in left_out.items())})")
    return faces, left_out


def _check_labelling_settings(csv_path: Path, settings: LabelConfig) -> None:
    """Warn where REVIEWED.run.json (the labelling run's record, which ``--apply`` copies beside the result) names
    another detector or alignment than the crops are about to be cut with."""
    from fer_batch.summary import run_info_path

    record = run_info_path(csv_path)
    try:
        recorded = json.loads(record.read_text(encoding="utf-8")).get("settings", {})
    except (OSError, ValueError, AttributeError):
        return
    options = {"detector": "--detector", "align": "--align"}
    differ = [f"{option} {recorded[key]} (now {getattr(settings, key)})" for key, option in options.items()
              if key in recorded and recorded[key] != getattr(settings, key)]
    if differ:
        log.warning("%s: the labelling ran with %s: give the same options to cut the faces it labelled", record,
                    "; ".join(differ))


def _source_candidates(source: str, csv_path: Path, root: str | Path | None) -> list[Path]:
    given = Path(source).expanduser()
    if given.is_absolute():
        return [given]
    if root is not None:
        return [Path(root) / given]
    here, beside = Path.cwd() / given, csv_path.resolve().parent / given
    return [here] if here == beside else [here, beside]


def cut_faces(photos: list[Photo], recognizer) -> np.ndarray:
    """The 48x48 crop of each photo's largest face, found and cut as ``fer-batch label`` does (``recognizer``: a
    fer_batch EmotionRecognizer). Fills each photo's status, box and score; returns (faces, 48, 48) uint8 for the
    photos whose status is "face", in order."""
    crops = []
    for photo in photos:
        try:
            image = read_image(photo.path)
        except InputError as error:
            photo.status, photo.message = "error", str(error)
            continue
        crop, largest, photo.faces_found = largest_face(image, recognizer)
        if crop is None:
            photo.status, photo.message = "no face", "no face found"
            continue
        crops.append(crop)
        x1, y1, x2, y2 = (float(v) for v in largest.boxes[0])
        photo.status, photo.box, photo.score = "face", (x1, y1, x2 - x1, y2 - y1), float(largest.scores[0])
    return np.stack(crops) if crops else np.zeros((0, 48, 48), np.uint8)


def largest_face(image_bgr: np.ndarray, recognizer) -> tuple[np.ndarray | None, object, int]:
    """The 48x48 crop of the largest face in a BGR image and its Detections (one row), or (None, None, 0); also
    how many faces were found. Detector and crop as ``recognizer`` (an EmotionRecognizer) runs them."""
    found = recognizer.detector.detect_batch([image_bgr])[0]
    if len(found) == 0:
        return None, None, 0
    areas = (found.boxes[:, 2] - found.boxes[:, 0]) * (found.boxes[:, 3] - found.boxes[:, 1])
    largest = found.select(np.array([int(np.argmax(areas))]))
    return recognizer.crops(image_bgr, largest)[0], largest, len(found)


def cut_reviewed(photos: list[Photo], recognizer) -> np.ndarray:
    """The 48x48 crop of each reviewed face (from :func:`read_reviewed`), cut from its source (a photo, or frame
    ``frame`` of a video read with fer_batch.video.VideoReader) by its recorded box, as labelling cut it: the box
    crop of ``recognizer``'s framing; with ``recognizer.align`` the face is found again around the box (RetinaFace)
    for the landmarks the CSV does not keep. Fills each face's status; returns the crops of those with "face"."""
    from fer_batch.video import VideoReader

    crops: dict[int, np.ndarray] = {}
    by_source: dict[Path, list[int]] = {}
    for number, photo in enumerate(photos):
        by_source.setdefault(photo.path, []).append(number)
    for source, numbers in by_source.items():
        if kind_of(source) != "video":
            try:
                image = read_image(source)
            except InputError as error:
                _fail(photos, numbers, str(error))
                continue
            for number in numbers:
                crops[number] = crop_at_box(image, photos[number].box, recognizer)
            continue
        try:
            reader = VideoReader(source)
        except InputError as error:
            _fail(photos, numbers, str(error))
            continue
        with reader:
            wanted: dict[int, list[int]] = {}
            for number in numbers:
                wanted.setdefault(photos[number].frame, []).append(number)
            for start, stop in _frame_runs(sorted(wanted)):
                skip = frozenset(range(start, stop)) - wanted.keys()
                try:
                    for frame in reader.frames(start=start, stop=stop, skip=skip):
                        for number in wanted.get(frame.index, []) if frame.image is not None else []:
                            crops[number] = crop_at_box(frame.image, photos[number].box, recognizer)
                except InputError as error:
                    _fail(photos, [n for f in range(start, stop) for n in wanted.get(f, [])], str(error))
        for number in numbers:
            if number not in crops and not photos[number].status:
                photos[number].status = "error"
                photos[number].message = (f"frame {photos[number].frame} not in the video "
                                          f"({reader.info.frame_count} frames)")
    for number, photo in enumerate(photos):
        if number in crops:
            photo.status, photo.faces_found = "face", 1
    kept = [crops[number] for number in range(len(photos)) if number in crops]
    return np.stack(kept) if kept else np.zeros((0, 48, 48), np.uint8)


def crop_at_box(image_bgr: np.ndarray, box: tuple[float, float, float, float], recognizer) -> np.ndarray:
    """The 48x48 crop of the face at ``box`` (x, y, w, h, as the CSV records it) as ``recognizer`` crops a detected
    face; with alignment on, the detection around the box that overlaps it most gives the landmarks."""
    from fer_batch.crop import crop_face, to_grey

    x, y, w, h = box
    corners = np.array([x, y, x + w, y + h], np.float32)
    landmarks = None
    if recognizer.align and hasattr(recognizer.detector, "detect_around"):
        found = recognizer.detector.detect_around(image_bgr, corners[None])
        if len(found):
            overlaps = [iou(found_box, corners) for found_box in found.boxes]
            best = int(np.argmax(overlaps))
            if overlaps[best] >= 0.5:
                corners, landmarks = found.boxes[best], found.landmarks[best]
    return crop_face(to_grey(image_bgr), corners, landmarks, align=recognizer.align, framing=recognizer.framing)


def _frame_runs(frames: list[int]) -> list[tuple[int, int]]:
    """Sorted frame numbers grouped into ranges (start, stop) decoded in one pass each."""
    runs: list[tuple[int, int]] = []
    for frame in frames:
        if runs and frame - runs[-1][1] < FRAME_RUN_GAP:
            runs[-1] = (runs[-1][0], frame + 1)
        else:
            runs.append((frame, frame + 1))
    return runs


def _fail(photos: list[Photo], numbers: list[int], message: str) -> None:
    for number in numbers:
        photos[number].status, photos[number].message = "error", message


def stratified_folds(labels: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Each face's fold 0..folds-1: every class's faces, shuffled with ``seed``, dealt round the folds in turn (each
    class starting where the last one stopped), so the folds have nearly the same size and mix of classes."""
    fold = np.zeros(len(labels), np.int64)
    rng = np.random.default_rng(seed)
    dealt = 0
    for label in range(len(EMOTIONS)):
        rows = rng.permutation(np.flatnonzero(labels == label))
        fold[rows] = (dealt + np.arange(len(rows))) % folds
        dealt += len(rows)
    return fold


class BalancedBatches:
    """Batches with every class of ``labels`` equally often: each batch deals its places round the classes (the
    remainder to classes drawn at random), and each class hands out its faces in a reshuffled cycle, so every photo
    is seen about as often as the others of its class."""

    def __init__(self, labels: np.ndarray, batch_size: int, rng: np.random.Generator):
        self.rng, self.batch_size = rng, batch_size
        self.classes = np.unique(labels)
        self.members = {int(c): np.flatnonzero(labels == c) for c in self.classes}
        self.queues: dict[int, list[int]] = {int(c): [] for c in self.classes}

    def _take(self, label: int) -> int:
        if not self.queues[label]:
            self.queues[label] = self.rng.permutation(self.members[label]).tolist()
        return self.queues[label].pop()

    def next(self) -> np.ndarray:
        count = len(self.classes)
        places = np.concatenate([np.tile(self.classes, self.batch_size // count),
                                 self.rng.choice(self.classes, self.batch_size % count, replace=False)])
        return np.array([self._take(int(label)) for label in places], np.int64)


def precision_of(precision: str) -> str:
    """Keras' policy for ``precision``: auto is bf16 mixed precision only where the CPU computes bf16 natively
    (training.train.cpu_has_bf16; bf16 emulated on an AVX2 CPU is many times slower), else float32."""
    from training.train import cpu_has_bf16

    if precision not in ("auto", "bf16", "fp32"):
        raise ValueError(f"precision {precision!r}: choose auto, bf16 or fp32")
    if precision == "auto":
        precision = "bf16" if cpu_has_bf16() else "fp32"
    return {"bf16": "mixed_bfloat16", "fp32": "float32"}[precision]


class Trainer:
    """One compiled Keras model for the whole fine-tuning: each fold and the final run start again from the starting
    weights with fresh optimizer state (:meth:`reset`) instead of building and compiling a model each time."""

    def __init__(self, start, config: FinetuneConfig, policy: str, batch_size: int):
        import keras

        from training.model import make_model, precision_policy

        self.config, self.policy, self.batch_size = config, policy, batch_size
        self.flip = bool(start.test_time_flip_averaging)
        with precision_policy(policy):
            self.model = make_model(arch=start.arch, widths=start.widths)
            self.model.set_weights(start.model.get_weights())
            if not config.train_batch_norms:  # a frozen batch norm runs in inference mode: the learnt statistics
                for layer in self.model.layers:
                    if isinstance(layer, keras.layers.BatchNormalization):
                        layer.trainable = False
            self.model.compile(optimizer=keras.optimizers.Adam(config.learning_rate),
                               loss=keras.losses.CategoricalCrossentropy(label_smoothing=LABEL_SMOOTHING),
                               jit_compile=keras.backend.backend() != "tensorflow")
        self.initial = self.model.get_weights()
        self.augment = PHOTO_AUGMENT if config.augment else AugmentConfig.none()

    def reset(self) -> None:
        """Back to the starting weights, with Adam's moments and step count at zero."""
        self.model.set_weights(self.initial)
        for variable in self.model.optimizer.variables:
            variable.assign(np.zeros(variable.shape, variable.dtype))

    def fit(self, faces: np.ndarray, labels: np.ndarray, steps: int, seed: int, checkpoints=(), on_checkpoint=None,
            mix: tuple[np.ndarray, np.ndarray] | None = None) -> list[float]:
        """``steps`` steps on ``faces`` (uint8 N x 48 x 48) and ``labels`` in class-balanced augmented batches;
        ``mix`` (faces, soft targets) fills FER2013_SHARE of each batch. Calls ``on_checkpoint(step)`` after each
        step in ``checkpoints``. Returns the loss of each step."""
        from training.augment import augment_batch

        rng = np.random.default_rng(seed)
        mixed = int(round(self.config.fer2013_share * self.batch_size)) if mix is not None else 0
        batches = BalancedBatches(labels, self.batch_size - mixed, rng)  # one batch shape: one traced step
        one_hot = np.eye(len(EMOTIONS), dtype=np.float32)
        warmup = min(WARMUP_STEPS, max(steps // 4, 1))
        losses = []
        for step in range(1, steps + 1):
            self.model.optimizer.learning_rate = self.config.learning_rate * min(1.0, step / warmup)
            rows = batches.next()
            images, targets = faces[rows], one_hot[labels[rows]]
            if mixed:
                extra = rng.integers(0, len(mix[0]), mixed)
                images, targets = np.concatenate([images, mix[0][extra]]), np.concatenate([targets, mix[1][extra]])
            batch = augment_batch(images, self.augment, rng)[..., None]
            losses.append(float(np.asarray(self.model.train_on_batch(batch, targets)).ravel()[0]))
            if step in checkpoints and on_checkpoint is not None:
                on_checkpoint(step)
        return losses

    def predict(self, faces: np.ndarray) -> np.ndarray:
        """Probabilities (N, 7) float32, averaged with the mirror images where the starting model did so (as
        ``fer-train export`` will bake it in)."""
        if not len(faces):
            return np.zeros((0, len(EMOTIONS)), np.float32)
        batch = faces.astype(np.float32)[..., None]
        probabilities = np.asarray(self.model.predict(batch, batch_size=256, verbose=0), np.float32)
        if self.flip:
            mirrored = np.asarray(self.model.predict(batch[:, :, ::-1], batch_size=256, verbose=0), np.float32)
            probabilities = (probabilities + mirrored) / 2
        return probabilities


def mean_recall(labels: np.ndarray, predicted: np.ndarray) -> float:
    """Mean per-class recall over the classes present in ``labels``."""
    from training.metrics import per_class_recall

    return float(np.nanmean(per_class_recall(labels, predicted)))


def cross_validate(trainer: Trainer, faces: np.ndarray, labels: np.ndarray, before: np.ndarray, folds: np.ndarray,
                   steps: int, seed: int, mix=None) -> tuple[dict[int, np.ndarray], dict[int, dict]]:
    """Out-of-fold probabilities at each candidate step count (0: the starting model's, ``before``) and their
    scores: each fold's model trains ``steps`` steps on the other folds' faces and is scored on its own."""
    candidates = sorted({0, *(max(1, round(share * steps)) for share in CHECKPOINTS)})
    predictions = {count: np.zeros_like(before) for count in candidates}
    predictions[0] = before.copy()
    per_fold: dict[int, list[float]] = {count: [] for count in candidates}
    for fold in range(int(folds.max()) + 1):
        held = folds == fold
        if not held.any():
            continue
        started = time.time()
        trainer.reset()

        def score(step, held=held):
            predictions[step][held] = trainer.predict(faces[held])

        trainer.fit(faces[~held], labels[~held], steps, seed=seed + 1 + fold, checkpoints=set(candidates[1:]),
                    on_checkpoint=score, mix=mix)
        for count in candidates:
            per_fold[count].append(mean_recall(labels[held], predictions[count][held].argmax(1)))
        log.info("fold %d of %d: %d faces held out, %d steps in %.0f s; held-out accuracy %s", fold + 1,
                 int(folds.max()) + 1, int(held.sum()), steps, time.time() - started,
                 ", ".join(f"{count} steps {float((predictions[count][held].argmax(1) == labels[held]).mean()):.2f}"
                           for count in candidates))
    scores = {count: {"mean_recall": round(mean_recall(labels, predicted.argmax(1)), 4),
                      "accuracy": round(float((predicted.argmax(1) == labels).mean()), 4),
                      "fold_mean_recall": [round(value, 4) for value in per_fold[count]]}
              for count, predicted in predictions.items()}
    return predictions, scores


def choose_steps(scores: dict[int, dict]) -> int:
    """0 (the model unchanged) unless some step count beats it on cross-validated mean per-class recall (then
    accuracy); else the fewest steps within one standard error (over the folds) of the best ("one-standard-error
    rule", Hastie et al., The Elements of Statistical Learning 7.10): with a hundred photos the scores are noisy,
    and photos of one person in one pose, in two folds, favour training longer than other people's faces do."""
    best = max(scores, key=lambda count: (scores[count]["mean_recall"], scores[count]["accuracy"], -count))
    if best == 0:
        return 0
    folds = [value for value in scores[best].get("fold_mean_recall", []) if np.isfinite(value)]
    error = float(np.std(folds, ddof=1) / np.sqrt(len(folds))) if len(folds) > 1 else 0.0
    floor = max(scores[best]["mean_recall"] - error, scores[0]["mean_recall"] + 1e-9)
    return min(count for count in scores if count and scores[count]["mean_recall"] >= floor)


def fer2013_faces(data: str | Path, count: int, seed: int) -> np.ndarray:
    """``count`` FER-2013 Training faces, drawn at random with ``seed`` (all of them if fewer)."""
    from training.data import load

    images, _ = load(data).split("Training")
    chosen = np.sort(np.random.default_rng(seed).permutation(len(images))[:count])
    return images[chosen]


def accuracy_table(labels: np.ndarray, before: np.ndarray, after: np.ndarray | None = None) -> str:
    """Per-class accuracy (recall), before and after, as aligned text; then all faces, and the mean per class."""
    from training.metrics import per_class_recall

    rows = [f"{'class':<12}{'photos':>7}{'before':>9}" + (f"{'after':>9}" if after is not None else "")]
    counts = np.bincount(labels, minlength=len(EMOTIONS))
    predictions = [predicted for predicted in (before, after) if predicted is not None]
    recalls = [per_class_recall(labels, predicted) for predicted in predictions]
    for index, name in enumerate(EMOTIONS):
        if counts[index]:
            rows.append(f"{name:<12}{counts[index]:>7}" + "".join(f"{r[index]:>9.3f}" for r in recalls))
    rows.append(f"{'all':<12}{len(labels):>7}" + "".join(f"{float((p == labels).mean()):>9.3f}" for p in predictions))
    rows.append(f"{'mean/class':<12}{int((counts > 0).sum()):>7}" + "".join(f"{float(np.nanmean(r)):>9.3f}"
                                                                           for r in recalls))
    return "\n".join(rows)


def _per_class(labels: np.ndarray, before: np.ndarray, after: np.ndarray | None) -> dict:
    from training.metrics import per_class_recall

    counts = np.bincount(labels, minlength=len(EMOTIONS))
    recall_before = per_class_recall(labels, before)
    recall_after = per_class_recall(labels, after) if after is not None else None
    return {name: {"photos": int(counts[i]), "before": round(float(recall_before[i]), 4),
                   **({"after": round(float(recall_after[i]), 4)} if recall_after is not None else {})}
            for i, name in enumerate(EMOTIONS) if counts[i]}


def finetune(config: FinetuneConfig, command: str | None = None) -> dict:
    """Cut the faces of ``config.photos`` (a folder or a reviewed CSV), fine-tune ``config.init`` on them into
    ``config.out``; returns what is written to RUN/finetune.json (counts, skipped photos, the cross-validation's
    scores, per-class recall before and after)."""
    from fer_batch.classify import default_model_path
    from fer_batch.recognizer import EmotionRecognizer
    from fer_batch.system import describe_hardware

    run = Path(config.out)
    if (run / "state.json").exists():
        raise FileExistsError(f"{run}: holds a run already; pick another --out (or delete it)")
    if config.folds == 1 or config.folds < 0:
        raise ValueError(f"--folds {config.folds}: give 2 or more (or 0: train without choosing the step count)")
    if config.steps is not None and config.steps < 1:
        raise ValueError(f"--steps {config.steps}: give 1 or more")
    if not 0 <= config.fer2013_share < 1:
        raise ValueError(f"--fer2013-share {config.fer2013_share}: give a share of the batch, 0 to under 1")
    init = Path(config.init) if config.init else default_model_path("float")
    policy = precision_of(config.precision)
    source = Path(config.photos)
    from_csv = source.suffix.lower() == ".csv" and not source.is_dir()
    left_out: dict[str, int] = {}
    if from_csv:
        photos, left_out = read_reviewed(source, config.root)
        _check_labelling_settings(source, config.detector)
    else:
        photos = find_photos(source)
    started = time.time()
    settings = config.detector
    recognizer = EmotionRecognizer(model=init, detector=settings.detector, align=settings.align,
                                   face_threshold=settings.face_threshold, min_face=settings.min_face,
                                   detect_size=settings.detect_size)
    faces = cut_reviewed(photos, recognizer) if from_csv else cut_faces(photos, recognizer)
    kept = [photo for photo in photos if photo.status == "face"]
    skipped = [photo for photo in photos if photo.status != "face"]
    for photo in skipped:
        where = f" frame {photo.frame}" if photo.frame is not None else ""
        print(f"fer-train finetune: skipped {photo.path}{where}: {photo.message}", file=sys.stderr)
    labels = np.array([EMOTIONS.index(photo.emotion) for photo in kept], np.int64)
    log.info("%d %s: %d faces cut in %.0f s, %d skipped", len(photos), "reviewed faces" if from_csv else "photos",
             len(kept), time.time() - started, len(skipped))
    if len(kept) < max(config.folds, 2):
        raise FinetuneError(f"{config.photos}: {len(kept)} face(s) to learn from; give at least "
                            f"{max(config.folds, 2)}")
    present = sorted({photo.emotion for photo in kept}, key=EMOTIONS.index)
    if len(present) < len(EMOTIONS) and not config.fer2013:
        log.warning("the photos show %s only: the model will learn to prefer these; --fer2013 FILE mixes in "
                    "FER-2013 faces of every emotion", ", ".join(present))
    folds = stratified_folds(labels, config.folds, config.seed) if config.folds else np.full(len(kept), -1)
    for photo, fold in zip(kept, folds):
        photo.fold = int(fold)
    run.mkdir(parents=True, exist_ok=True)
    write_photos_csv(photos, run / PHOTOS_FILE)

    before = recognizer.classifier.predict(faces)  # the starting model as fer-batch runs it: never saw the photos
    mix = None
    if config.fer2013 and config.fer2013_share > 0:
        fer_faces = fer2013_faces(config.fer2013, FER2013_POOL, config.seed)
        mix = (fer_faces, recognizer.classifier.predict(fer_faces))  # targets: what the model said before
    import keras

    from training.warmstart import keras_from_onnx

    calibration = faces if len(faces) >= 64 or mix is None else np.concatenate([faces, mix[0][:1024]])
    start = keras_from_onnx(init, calibration)
    keras.utils.set_random_seed(config.seed)
    batch = min(config.batch_size, max(len(kept), 2))
    trainer = Trainer(start, config, policy, batch)
    steps = config.steps or default_steps(len(kept), batch)
    training_started = time.time()

    scores: dict[int, dict] = {}
    after = None
    chosen = steps
    if config.folds:
        predictions, scores = cross_validate(trainer, faces, labels, before, folds, steps, config.seed, mix)
        chosen = choose_steps(scores)
        after = predictions[chosen]
        log.info("cross-validated mean per-class recall by steps: %s; chosen: %d",
                 ", ".join(f"{count} {score['mean_recall']:.3f}" for count, score in scores.items()), chosen)
    trainer.reset()
    losses = trainer.fit(faces, labels, chosen, seed=config.seed, mix=mix) if chosen else []
    train_seconds = time.time() - training_started
    trainer.model.save(run / "best.keras")

    write_faces(run / FACES_FILE, faces, labels, mix, config.seed, str(config.photos))

    passes = max(1, round(chosen * batch / len(kept)))
    predicted_before, predicted_after = before.argmax(1), after.argmax(1) if after is not None else None
    finetune_record = {
        "source": str(config.photos), "kind": "reviewed CSV" if from_csv else "photo folder",
        "faces": len(kept), "steps": chosen, "steps_tried": steps, "folds": config.folds,
        "cross_validation": {str(count): score for count, score in scores.items()},
        "batch_size": batch, "learning_rate": config.learning_rate, "train_batch_norms": config.train_batch_norms,
        "fer2013_share": config.fer2013_share if mix is not None else 0.0}
    write_json(run / "config.json", _train_config(config, run, init, batch, passes, policy).to_json())
    hardware = describe_hardware()
    state = {"epochs_done": passes, "best_epoch": passes, "train_seconds": round(train_seconds, 1),
             "best_val_accuracy": float((predicted_after == labels).mean()) if after is not None else -1.0,
             "hardware": hardware, "init": start.record(), "finished": True, "finetune": finetune_record,
             "sessions": [{"from_epoch": 0, "command": command or f"training.finetune.finetune(<{config.photos}>)",
                           "backend": keras.backend.backend(), "device": "cpu", "precision": policy,
                           "hardware": hardware}]}
    write_json(run / "state.json", state)
    report = {
        "photos": len(photos), "faces": len(kept),
        "skipped": [{"file": str(photo.path), **({"frame": photo.frame} if photo.frame is not None else {}),
                     "reason": photo.message} for photo in skipped],
        "rows_left_out": left_out, "classes": present, "init": str(init),
        "test_time_flip_averaging": trainer.flip, "steps_tried": steps, "steps": chosen, "folds": config.folds,
        "cross_validation": {str(count): score for count, score in scores.items()},
        "final_loss": round(float(np.mean(losses[-10:])), 4) if losses else None,
        "accuracy_before": round(float((predicted_before == labels).mean()), 4),
        "accuracy_after": round(float((predicted_after == labels).mean()), 4) if after is not None else None,
        "mean_recall_before": round(mean_recall(labels, predicted_before), 4),
        "mean_recall_after": round(mean_recall(labels, predicted_after), 4) if after is not None else None,
        "per_class": _per_class(labels, predicted_before, predicted_after),
        "table": accuracy_table(labels, predicted_before, predicted_after), "precision": policy,
        "config": {**asdict(config), "detector": {key: getattr(settings, key) for key in DETECTOR_SETTINGS}},
        "train_seconds": round(train_seconds), "seconds": round(time.time() - started)}
    write_json(run / REPORT_FILE, report)
    return report


def write_faces(path: Path, faces: np.ndarray, labels: np.ndarray, mix, seed: int, source: str) -> Path:
    """RUN/faces.npz in training.data's format. Training: the faces, their mirror images and varied copies (and the
    FER-2013 faces mixed in), about CHECK_FACES in all, for ``fer-train quantize`` to calibrate on; PublicTest:
    other copies of them, as many, for the parity checks of ``export`` and ``quantize`` (14 faces calibrate an INT8
    copy badly, and one face in 28 that changes its top class fails a 97 % bar)."""
    from training import data as fer_data
    from training.augment import augment_batch

    rng = np.random.default_rng(seed)
    # Pose, framing and light vary; no erasing, blur or JPEG: copies stay faces as a camera gives them.
    variations = replace(PHOTO_AUGMENT, erase_probability=0.0, blur_probability=0.0, low_resolution_probability=0.0,
                         jpeg_probability=0.0)
    copies = max(0, -(-CHECK_FACES // max(len(faces), 1)) - 2)

    def varied() -> np.ndarray:
        extra = [augment_batch(faces, variations, rng).round().astype(np.uint8) for _ in range(copies)]
        return np.concatenate([faces, faces[:, :, ::-1], *extra])[:max(CHECK_FACES, 2 * len(faces))]

    calibrate, parity = varied(), varied()
    reps = len(calibrate) // len(faces) + 1
    calibrate_labels = np.tile(labels, reps)[:len(calibrate)]
    parity_labels = np.tile(labels, reps)[:len(parity)]
    if mix is not None:
        calibrate = np.concatenate([calibrate, mix[0][:CHECK_FACES]])
        calibrate_labels = np.concatenate([calibrate_labels, mix[1][:CHECK_FACES].argmax(1)])
    usage = np.array(["Training"] * len(calibrate) + ["PublicTest"] * len(parity))
    dataset = fer_data.Dataset(np.concatenate([calibrate, parity]), np.concatenate([calibrate_labels, parity_labels]),
                               usage, source)
    return fer_data.pack(dataset, path, splits=("Training", "PublicTest"))


def _train_config(config: FinetuneConfig, run: Path, init: Path, batch: int, passes: int, policy: str):
    """The run's config.json in training.train's format, so ``fer-train export`` describes the run like any other
    (an "epoch" here is one pass over the photos)."""
    from training.train import TrainConfig

    return TrainConfig(
        data=str((run / FACES_FILE).resolve()), out=str(run), init=str(init.resolve()), epochs=passes,
        batch_size=batch, optimizer="adam", learning_rate=config.learning_rate, warmup_epochs=-1, weight_decay=0.0,
        label_smoothing=LABEL_SMOOTHING, seed=config.seed, patience=passes,
        precision="bf16" if policy == "mixed_bfloat16" else "fp32",
        augment=PHOTO_AUGMENT if config.augment else AugmentConfig.none())


def write_photos_csv(photos: list[Photo], path: Path) -> None:
    """One row per photo (or reviewed face): file, frame, emotion, status (face, no face, error), the fold it was
    held out in, the face kept and why not."""
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["file", "frame", "emotion", "status", "fold", "faces_found",
                                                    "x", "y", "w", "h", "score", "message"])
        writer.writeheader()
        for photo in photos:
            x, y, w, h = (round(v, 1) for v in photo.box) if photo.box else ("",) * 4
            writer.writerow({"file": str(photo.path), "frame": "" if photo.frame is None else photo.frame,
                             "emotion": photo.emotion, "status": photo.status,
                             "fold": photo.fold + 1 if photo.fold >= 0 else "", "faces_found": photo.faces_found,
                             "x": x, "y": y, "w": w, "h": h,
                             "score": "" if photo.score is None else round(photo.score, 3),
                             "message": photo.message})
