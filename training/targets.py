"""What each training face is trained towards: a probability vector over the 7 classes, mixed from three sources.

- FER-2013's own label, one-hot.
- FER+'s ten-annotator votes (Barsoum et al., 2016) as a distribution over the same 7 classes (contempt, unknown and
  not-a-face dropped); rows without a usable vote keep the FER label. FER+'s annotators call far more faces
  neutral than the original labels do, which is what real footage needs.
- A teacher ensemble's probabilities (knowledge distillation with soft targets at temperature 1, each teacher
  averaged over the face and its mirror image; Hinton et al., 2015; Beyer et al., 2022).

The teacher probabilities are computed once per run and kept in the run folder (``teachers.npz``), so a resumed
student does not run its teachers again. Teachers are ``.onnx`` files (run through onnxruntime, as users run them),
``.keras`` files, or run folders (their ``best.keras``); or one ``.npz`` that ``fer-train ensemble`` wrote, which
carries their probabilities alone (what comes back from a lent GPU, where teacher files are too large to return).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fer_batch.labels import EMOTIONS
from training.data import FERPLUS_COLUMNS, FERPLUS_TO_FER, DataError

log = logging.getLogger(__name__)
NUM_CLASSES = len(EMOTIONS)


def one_hot(labels: np.ndarray) -> np.ndarray:
    return np.eye(NUM_CLASSES, dtype=np.float32)[labels]


def ferplus_distribution(votes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """FER+ votes (N, 10) as distributions over FER's 7 classes, and a mask of the rows that had a usable vote."""
    mapped = np.zeros((len(votes), NUM_CLASSES), np.float32)
    for column, name in enumerate(FERPLUS_COLUMNS):
        if FERPLUS_TO_FER[name] is not None:
            mapped[:, FERPLUS_TO_FER[name]] += votes[:, column]
    total = mapped.sum(axis=1, keepdims=True)
    usable = total[:, 0] > 0
    return np.divide(mapped, total, out=np.zeros_like(mapped), where=total > 0), usable


def mix_targets(labels: np.ndarray, ferplus_votes: np.ndarray | None = None, ferplus_weight: float = 0.0,
                teacher: np.ndarray | None = None, teacher_weight: float = 0.0) -> np.ndarray:
    """Targets (N, 7): the FER one-hot label, moved towards FER+'s distribution by ``ferplus_weight``, then
    towards the teachers' probabilities by ``teacher_weight``. Weights lie in 0..1."""
    for name, weight in (("ferplus_weight", ferplus_weight), ("teacher_weight", teacher_weight)):
        if not 0.0 <= weight <= 1.0:
            raise ValueError(f"{name} must lie in 0..1, got {weight}")
    targets = one_hot(labels)
    if ferplus_weight > 0:
        if ferplus_votes is None:
            raise ValueError("ferplus_weight needs FER+ votes (--ferplus-votes fer2013new.csv)")
        distribution, usable = ferplus_distribution(ferplus_votes)
        targets[usable] = (1 - ferplus_weight) * targets[usable] + ferplus_weight * distribution[usable]
    if teacher_weight > 0:
        if teacher is None:
            raise ValueError("teacher_weight needs teacher probabilities")
        targets = (1 - teacher_weight) * targets + teacher_weight * teacher.astype(np.float32)
    return targets


def _teacher_path(path: str | Path) -> Path:
    path = Path(path).expanduser()
    return path / "best.keras" if path.is_dir() else path


def resolve_teacher(path: str | Path) -> Path:
    """A teacher file: an .onnx or .keras file, a run folder's best.keras, or an ensemble's .npz."""
    path = _teacher_path(path)
    if not path.is_file() or path.suffix not in (".onnx", ".keras", ".npz"):
        raise FileNotFoundError(f"{path}: not a teacher (an .onnx or .keras file, a run folder with best.keras, "
                                f"or a .npz from fer-train ensemble)")
    return path


def predict_with_flip(path: Path, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """One teacher's probabilities for uint8 faces (N, 48, 48), averaged with the mirror images'."""
    if path.suffix == ".onnx":
        from fer_batch.classify import EmotionClassifier

        classifier = EmotionClassifier(path)
        predict = classifier.predict
    else:
        import keras

        model = keras.models.load_model(path, compile=False)

        def predict(faces):
            return np.asarray(model.predict(faces.astype(np.float32)[..., None], batch_size=batch_size, verbose=0))
    probabilities = [(predict(images[start:start + batch_size]) + predict(images[start:start + batch_size, :, ::-1]))
                     / 2 for start in range(0, len(images), batch_size)]
    return np.concatenate(probabilities).astype(np.float32)


@dataclass
class TeacherTargets:
    """The ensemble's probabilities on the Training and PublicTest faces, and how well each teacher did there."""

    teachers: list[str]
    training: np.ndarray  # (N_training, 7)
    public_test: np.ndarray  # (N_public, 7)
    public_test_accuracy: dict[str, float]  # per teacher, and "ensemble"
    sources: list[str] | None = None  # what the run was given: the teachers, or the .npz that held them

    def save(self, path: Path) -> None:
        temporary = path.with_name(path.name + ".tmp.npz")
        np.savez_compressed(temporary, training=self.training, public_test=self.public_test,
                            teachers=np.array(self.teachers), sources=np.array(self.sources or self.teachers),
                            public_test_accuracy=np.array(json.dumps(self.public_test_accuracy)))
        temporary.replace(path)

    @classmethod
    def load(cls, path: Path) -> TeacherTargets:
        with np.load(path) as stored:
            teachers = [str(t) for t in stored["teachers"]]
            sources = [str(t) for t in stored["sources"]] if "sources" in stored else teachers
            return cls(teachers, stored["training"], stored["public_test"],
                       json.loads(str(stored["public_test_accuracy"])), sources)


def teacher_targets(teachers: list[str], training_images: np.ndarray, public_images: np.ndarray,
                    public_labels: np.ndarray, cache: Path | None = None) -> TeacherTargets:
    """Average the teachers' (mirror-averaged) probabilities; reuse ``cache`` when it was made from the same
    teachers (or the same .npz), even if they are gone since.

    Logs each teacher's and the ensemble's PublicTest accuracy: the student can only be as good as what it learns
    from, so this is the first figure to look at.
    """
    names = [str(_teacher_path(t)) for t in teachers]
    if cache is not None and cache.exists():  # the run's own copy: a resume needs neither teachers nor their .npz
        stored = TeacherTargets.load(cache)
        if stored.sources == names and len(stored.training) == len(training_images):
            log.info("teacher probabilities from %s (ensemble PublicTest accuracy %.4f)", cache,
                     stored.public_test_accuracy["ensemble"])
            return stored
        raise DataError(f"{cache}: made from other teachers or data ({', '.join(stored.sources)}); remove it to "
                        f"recompute")
    paths = [resolve_teacher(t) for t in teachers]
    if any(p.suffix == ".npz" for p in paths):
        if len(paths) > 1:
            raise ValueError("an ensemble's .npz stands for all the teachers: give it alone")
        stored = TeacherTargets.load(paths[0])
        if len(stored.training) != len(training_images) or len(stored.public_test) != len(public_images):
            raise DataError(f"{paths[0]}: holds {len(stored.training)} + {len(stored.public_test)} faces, but the "
                            f"data has {len(training_images)} Training + {len(public_images)} PublicTest")
        log.info("teacher probabilities of %d teacher(s) from %s (ensemble PublicTest accuracy %.4f)",
                 len(stored.teachers), paths[0], stored.public_test_accuracy["ensemble"])
        stored.sources = names
        if cache is not None:
            stored.save(cache)  # the run folder keeps what it learnt from
        return stored
    training, public, accuracy = [], [], {}
    for path in paths:
        log.info("teacher %s: predicting %d + %d faces (and their mirror images)", path, len(training_images),
                 len(public_images))
        training.append(predict_with_flip(path, training_images))
        public.append(predict_with_flip(path, public_images))
        accuracy[str(path)] = float((public[-1].argmax(1) == public_labels).mean())
        log.info("teacher %s: PublicTest accuracy %.4f", path, accuracy[str(path)])
    result = TeacherTargets(names, np.mean(training, axis=0), np.mean(public, axis=0), accuracy, names)
    accuracy["ensemble"] = float((result.public_test.argmax(1) == public_labels).mean())
    log.info("ensemble of %d teacher(s): PublicTest accuracy %.4f", len(paths), accuracy["ensemble"])
    if cache is not None:
        result.save(cache)
    return result
