"""Score an exported ONNX model through onnxruntime - the same classifier wrapper fer-batch users run."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from fer_batch.labels import EMOTIONS


@dataclass
class Report:
    model: str
    data: str
    split: str
    count: int
    accuracy: float
    precision: list[float]
    recall: list[float]
    f1: list[float]
    support: list[int]
    confusion: list[list[int]]  # rows: true label, columns: predicted
    tta_flip: bool
    labels: str = "FER-2013"  # which label set: FER-2013's own, or FER+'s majority (see FERPLUS_DEFINITION)
    mean_recall: float = 0.0  # mean of the per-class recalls over the classes with faces

    def weakest_class(self) -> tuple[str, float]:
        """The class with the lowest recall among those with faces, and its recall."""
        return min(((name, recall) for name, recall, faces in zip(EMOTIONS, self.recall, self.support) if faces),
                   key=lambda item: item[1], default=("-", 0.0))

    def format(self) -> str:
        """Plain text: the accuracy line first (``accuracy 0.xxxx``), then per-class metrics and the matrix."""
        neutral = self.recall[EMOTIONS.index("neutral")]
        weakest, weakest_recall = self.weakest_class()
        lines = [f"accuracy {self.accuracy:.4f}",
                 f"mean per-class recall {self.mean_recall:.4f}, weakest class {weakest} {weakest_recall:.4f}, "
                 f"neutral recall {neutral:.4f}",
                 f"{self.split}: {self.count} faces, {self.labels} labels, model {self.model}" +
                 (" (+ flip averaging)" if self.tta_flip else "")]
        if self.labels != "FER-2013":
            lines.append(FERPLUS_DEFINITION)
        lines += ["", f"{'class':<10}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>10}"]
        for name, p, r, f, n in zip(EMOTIONS, self.precision, self.recall, self.f1, self.support):
            lines.append(f"{name:<10}{p:>10.4f}{r:>10.4f}{f:>10.4f}{n:>10d}")
        lines += ["", "confusion matrix (rows: true, columns: predicted)",
                  " " * 10 + "".join(f"{name[:8]:>9}" for name in EMOTIONS)]
        for name, row in zip(EMOTIONS, self.confusion):
            lines.append(f"{name:<10}" + "".join(f"{v:>9d}" for v in row))
        return "\n".join(lines)


FERPLUS_DEFINITION = ("FER+ majority label: the single most-voted of fer2013new.csv's ten columns; faces where that is "
                      "contempt, unknown or NF, or where two columns tie, are left out")


def metrics(labels: np.ndarray, predicted: np.ndarray, num_classes: int = len(EMOTIONS)) -> dict:
    """Accuracy, per-class precision/recall/F1/support and the confusion matrix (rows true, columns predicted)."""
    confusion = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(confusion, (labels, predicted), 1)
    true_positive = np.diag(confusion).astype(np.float64)
    precision = np.divide(true_positive, confusion.sum(axis=0), out=np.zeros(num_classes), where=confusion.sum(0) > 0)
    recall = np.divide(true_positive, confusion.sum(axis=1), out=np.zeros(num_classes), where=confusion.sum(1) > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(num_classes),
                   where=(precision + recall) > 0)
    return {"accuracy": float(true_positive.sum() / max(len(labels), 1)),
            "precision": precision.round(4).tolist(), "recall": recall.round(4).tolist(), "f1": f1.round(4).tolist(),
            "support": confusion.sum(axis=1).tolist(), "confusion": confusion.tolist()}


def mean_recall(metrics: dict) -> float:
    """The mean of the per-class recalls of ``metrics`` (as ``metrics()`` returns them) over classes with faces."""
    recalls = [recall for recall, faces in zip(metrics["recall"], metrics["support"]) if faces]
    return sum(recalls) / max(len(recalls), 1)


def predict_split(classifier, images: np.ndarray, tta_flip: bool = False) -> np.ndarray:
    """Probabilities for uint8 faces (N, 48, 48), optionally averaged with their mirror images."""
    probabilities = classifier.predict(images)
    if tta_flip:
        probabilities = (probabilities + classifier.predict(images[:, :, ::-1])) / 2
    return probabilities


def evaluate(model: str | Path, data: str | Path, split: str = "PrivateTest", ferplus: str | None = None,
             tta_flip: bool = False, out: str | Path | None = None) -> Report:
    """Run ``model`` through onnxruntime on one split of ``data``; writes metrics.json and confusion.png to out."""
    from fer_batch.classify import EmotionClassifier
    from training.data import load

    classifier = EmotionClassifier(model)
    images, labels = load(data, ferplus).split(split)
    predicted = predict_split(classifier, images, tta_flip).argmax(axis=1)
    scores = metrics(labels, predicted)
    report = Report(model=str(model), data=str(data), split=split, count=len(labels), tta_flip=tta_flip,
                    labels="FER+ majority" if ferplus else "FER-2013",
                    **scores, mean_recall=mean_recall(scores))
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.json").write_text(json.dumps(asdict(report), indent=2) + "\n")
        plot_confusion(np.asarray(report.confusion), out / "confusion.png",
                       f"{split}: accuracy {report.accuracy:.4f}")
    return report


def plot_confusion(confusion: np.ndarray, png: Path, title: str) -> None:
    """The confusion matrix, normalised per true class, with counts, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shares = confusion / np.maximum(confusion.sum(axis=1, keepdims=True), 1)
    figure, axis = plt.subplots(figsize=(7, 6))
    axis.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    for (row, column), count in np.ndenumerate(confusion):
        axis.text(column, row, f"{shares[row, column]:.2f}\n{count}", ha="center", va="center", fontsize=8,
                  color="white" if shares[row, column] > 0.5 else "black")
    axis.set_xticks(range(len(EMOTIONS)), EMOTIONS, rotation=45, ha="right")
    axis.set_yticks(range(len(EMOTIONS)), EMOTIONS)
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    axis.set_title(title)
    figure.tight_layout()
    figure.savefig(png, dpi=100)
    plt.close(figure)
