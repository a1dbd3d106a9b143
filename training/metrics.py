"""Scores shared by training (checkpoint choice) and evaluation."""

from __future__ import annotations

import numpy as np

from fer_batch.labels import EMOTIONS


def per_class_recall(labels: np.ndarray, predicted: np.ndarray, num_classes: int = len(EMOTIONS)) -> np.ndarray:
    """Each class's recall (share of its faces predicted as it); NaN for a class with no face."""
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    hits = np.bincount(labels[predicted == labels], minlength=num_classes).astype(np.float64)
    return np.divide(hits, counts, out=np.full(num_classes, np.nan), where=counts > 0)
