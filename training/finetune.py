"""Fine-tune an exported model on your own labelled photos: ``fer-train finetune PHOTOS --out RUN``.

PHOTOS holds one folder per emotion (angry, disgust, fear, happy, sad, surprise, neutral, any case), each with
photos in any format ``fer-batch`` reads. Every photo takes the path ``fer-batch label`` takes (read_image, the
detector, crop_face: the framing the model sees when labelling) and its largest face is kept; photos without a
face, or unreadable, are listed in RUN/photos.csv and on stderr. A seeded share of each class is held out to
choose the epoch (the run's PublicTest split). The faces, and optionally FER-2013 Training faces mixed in, are
packed into RUN/faces.npz in training.data's format and trained by :func:`training.train.train` from the model
given (default: the bundled float model), so ``--resume``, ``fer-train export`` and ``fer-train quantize --data
RUN/faces.npz`` work as for any run. Per-class accuracy on the held-out photos is printed before (the starting
model, through onnxruntime) and after (the chosen checkpoint).
"""

from __future__ import annotations

import csv
import json
import logging
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from fer_batch.config import LabelConfig
from fer_batch.labels import EMOTIONS
from fer_batch.sources import IMAGE_SUFFIXES, InputError, read_image

log = logging.getLogger(__name__)

# Defaults chosen with benchmarks/finetune_demo.py on PublicTest faces (400 photos; docs/training.md): Adam at 1e-4,
# cosine-decayed over 10 epochs, kept the rare classes that 3e-4 forgot (fear recall 0.67 against 0.44) for the same
# gain on other people's faces, and 400 photos take about 5 minutes on 2 busy cores.
VALIDATION_SHARE = 0.2
EPOCHS = 10
LEARNING_RATE = 1e-4
BATCH_SIZE = 32
FER2013_PER_PHOTO = 1.0  # FER-2013 Training faces mixed in per training photo, with --fer2013
FACES_FILE = "faces.npz"
PHOTOS_FILE = "photos.csv"
REPORT_FILE = "finetune.json"
DETECTOR_SETTINGS = ("detector", "align", "face_threshold", "min_face", "detect_size")  # of LabelConfig, used here


class FinetuneError(ValueError):
    """The photo folder cannot be fine-tuned on (names the folder or file and why)."""


@dataclass
class FinetuneConfig:
    photos: str
    out: str
    init: str | None = None  # the .onnx to start from; None: the bundled float model
    fer2013: str | None = None  # FER-2013 data (csv[.gz], folder or packed .npz) whose Training faces are mixed in
    fer2013_per_photo: float = FER2013_PER_PHOTO
    validation_share: float = VALIDATION_SHARE
    epochs: int = EPOCHS
    learning_rate: float = LEARNING_RATE
    batch_size: int = BATCH_SIZE
    seed: int = 1337
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
    split: str = ""  # Training or PublicTest (the validation share)


def find_photos(root: str | Path) -> list[Photo]:
    """The photos under ``root/<emotion>/`` (any case, searched recursively, sorted), labelled by their folder.

    Raises FinetuneError for a folder that is not an emotion (naming it), a file directly under ``root``, or no
    photo at all. Inside the emotion folders only image suffixes fer-batch reads are taken."""
    root = Path(root)
    if not root.is_dir():
        raise FinetuneError(f"{root}: no such folder (expected one sub-folder per emotion: {', '.join(EMOTIONS)})")
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


def hold_out(labels: np.ndarray, share: float, seed: int) -> np.ndarray:
    """Each face's split: a seeded ``share`` of every class (at least one face of a class with two or more) is
    "PublicTest", the validation share that chooses the epoch; the rest "Training"."""
    usage = np.full(len(labels), "Training", dtype="<U11")
    rng = np.random.default_rng(seed)
    for label in range(len(EMOTIONS)):
        rows = np.flatnonzero(labels == label)
        if len(rows) < 2 or share <= 0:
            continue
        count = min(len(rows) - 1, max(1, int(round(share * len(rows)))))
        usage[rng.permutation(rows)[:count]] = "PublicTest"
    return usage


def fer2013_faces(data: str | Path, count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``count`` FER-2013 Training faces and labels, drawn at random with ``seed`` (all of them if fewer)."""
    from training.data import load

    images, labels = load(data).split("Training")
    chosen = np.sort(np.random.default_rng(seed).permutation(len(images))[:count])
    return images[chosen], labels[chosen]


def accuracy_table(labels: np.ndarray, before: np.ndarray, after: np.ndarray | None = None) -> str:
    """Per-class accuracy (recall) on the validation share, before and after, as aligned text."""
    from training.metrics import per_class_recall

    rows = [f"{'class':<10}{'photos':>7}{'before':>9}" + (f"{'after':>9}" if after is not None else "")]
    counts = np.bincount(labels, minlength=len(EMOTIONS))
    recalls = [per_class_recall(labels, predicted) for predicted in (before, after) if predicted is not None]
    for index, name in enumerate(EMOTIONS):
        if counts[index]:
            rows.append(f"{name:<10}{counts[index]:>7}" + "".join(f"{r[index]:>9.3f}" for r in recalls))
    overall = [float((predicted == labels).mean()) for predicted in (before, after) if predicted is not None]
    rows.append(f"{'all':<10}{len(labels):>7}" + "".join(f"{value:>9.3f}" for value in overall))
    return "\n".join(rows)


def finetune(config: FinetuneConfig, command: str | None = None) -> dict:
    """Cut the faces of ``config.photos``, fine-tune ``config.init`` on them into ``config.out``; returns what is
    written to RUN/finetune.json (counts, skipped photos, per-class accuracy before and after)."""
    from fer_batch.classify import default_model_path
    from fer_batch.recognizer import EmotionRecognizer
    from training import data as fer_data
    from training.train import TrainConfig, train

    run = Path(config.out)
    if (run / "state.json").exists():
        raise FileExistsError(f"{run}: holds a run already; continue it with `fer-train train --resume --out {run}` "
                              f"or pick another --out")
    init = Path(config.init) if config.init else default_model_path("float")
    if not 0 <= config.validation_share < 1:
        raise ValueError(f"--validation {config.validation_share}: give a share between 0 and 1")
    photos = find_photos(config.photos)
    started = time.time()
    settings = config.detector
    recognizer = EmotionRecognizer(model=init, detector=settings.detector, align=settings.align,
                                   face_threshold=settings.face_threshold, min_face=settings.min_face,
                                   detect_size=settings.detect_size)
    faces = cut_faces(photos, recognizer)
    kept = [photo for photo in photos if photo.status == "face"]
    labels = np.array([EMOTIONS.index(photo.emotion) for photo in kept], np.int64)
    usage = hold_out(labels, config.validation_share, config.seed)
    for photo, split in zip(kept, usage):
        photo.split = str(split)
    run.mkdir(parents=True, exist_ok=True)
    write_photos_csv(photos, run / PHOTOS_FILE)
    skipped = [photo for photo in photos if photo.status != "face"]
    for photo in skipped:
        print(f"fer-train finetune: skipped {photo.path}: {photo.message}", file=sys.stderr)
    log.info("%d photos: %d faces cut in %.0f s, %d skipped (listed in %s)", len(photos), len(kept),
             time.time() - started, len(skipped), run / PHOTOS_FILE)
    validation = usage == "PublicTest"
    if not validation.any():
        raise FinetuneError(f"{config.photos}: no photo to hold out for validation: give at least two photos "
                            f"(with a face) of some emotion")
    if not (~validation).any():
        raise FinetuneError(f"{config.photos}: every face went to validation; give more photos")

    present = sorted({photo.emotion for photo in kept}, key=EMOTIONS.index)
    if len(present) < len(EMOTIONS) and not config.fer2013:
        log.warning("the photos show %s only: the model will learn to prefer these; --fer2013 FILE mixes in "
                    "FER-2013 faces of every emotion", ", ".join(present))
    images, targets, splits = faces, labels, usage
    mixed = 0
    if config.fer2013:
        mixed = int(round(config.fer2013_per_photo * int((~validation).sum())))
        fer_images, fer_labels = fer2013_faces(config.fer2013, mixed, config.seed)
        mixed = len(fer_images)
        images = np.concatenate([faces, fer_images])
        targets = np.concatenate([labels, fer_labels])
        splits = np.concatenate([usage, np.full(mixed, "Training", dtype=usage.dtype)])
    packed = fer_data.pack(fer_data.Dataset(images, targets, splits, str(config.photos)), run / FACES_FILE,
                           splits=("Training", "PublicTest"))

    before = recognizer.classifier.predict(faces[validation]).argmax(axis=1)
    training_faces = int((~validation).sum()) + mixed
    train_config = TrainConfig(
        data=str(packed.resolve()), out=str(run), init=str(init.resolve()), epochs=config.epochs,
        batch_size=min(config.batch_size, training_faces), optimizer="adam", learning_rate=config.learning_rate,
        warmup_epochs=0, weight_decay=0.0, patience=config.epochs, seed=config.seed)
    from training.model import precision_policy

    with precision_policy():  # train() sets bf16 mixed precision where the CPU has it; later layers here as before
        train(train_config, command=command)
    # Mirror averaging as `fer-train export` will bake it in: as the model the run started from.
    flip = bool(json.loads((run / "state.json").read_text())["init"]["test_time_flip_averaging"])
    after = predict_run(run, faces[validation], flip).argmax(axis=1)

    table = accuracy_table(labels[validation], before, after)
    report = {"photos": len(photos), "faces": len(kept), "skipped": [
        {"file": str(photo.path), "reason": photo.message} for photo in skipped],
        "training_faces": int((~validation).sum()), "validation_faces": int(validation.sum()),
        "fer2013_faces_mixed_in": mixed, "init": str(init), "test_time_flip_averaging": flip,
        "accuracy_before": float((before == labels[validation]).mean()),
        "accuracy_after": float((after == labels[validation]).mean()),
        "per_class": _per_class(labels[validation], before, after), "table": table,
        "config": {**asdict(config), "detector": {key: getattr(settings, key) for key in DETECTOR_SETTINGS}},
        "seconds": round(time.time() - started)}
    (run / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
    return report


def predict_run(run: Path, faces: np.ndarray, flip: bool) -> np.ndarray:
    """Probabilities of the run's chosen checkpoint (best.keras) as `fer-train export` will compute them (mirror
    averaging as the model it started from)."""
    from training.export import load_float32

    model = load_float32(run / "best.keras")
    batch = faces.astype(np.float32)[..., None]
    probabilities = np.asarray(model.predict(batch, batch_size=256, verbose=0))
    if flip:
        probabilities = (probabilities + np.asarray(model.predict(batch[:, :, ::-1], batch_size=256, verbose=0))) / 2
    return probabilities


def _per_class(labels: np.ndarray, before: np.ndarray, after: np.ndarray) -> dict:
    from training.metrics import per_class_recall

    counts = np.bincount(labels, minlength=len(EMOTIONS))
    recall_before, recall_after = per_class_recall(labels, before), per_class_recall(labels, after)
    return {name: {"photos": int(counts[i]), "before": round(float(recall_before[i]), 4),
                   "after": round(float(recall_after[i]), 4)}
            for i, name in enumerate(EMOTIONS) if counts[i]}


def write_photos_csv(photos: list[Photo], path: Path) -> None:
    """One row per photo: file, emotion, status (face, no face, error), split, the face kept and why not."""
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["file", "emotion", "status", "split", "faces_found", "x", "y",
                                                    "w", "h", "score", "message"])
        writer.writeheader()
        for photo in photos:
            x, y, w, h = (round(v, 1) for v in photo.box) if photo.box else ("",) * 4
            writer.writerow({"file": str(photo.path), "emotion": photo.emotion, "status": photo.status,
                             "split": photo.split, "faces_found": photo.faces_found, "x": x, "y": y, "w": w, "h": h,
                             "score": "" if photo.score is None else round(photo.score, 3),
                             "message": photo.message})
