"""Losses for long-tailed classes.

``LogitAdjustedCrossentropy`` (Menon et al. 2021, "Long-tail learning via logit adjustment"): the loss sees the
model's logits shifted by ``tau * log(prior)``, softmax(log p + tau log prior), so during training the common classes
get a head start they do not need to earn, and the whole network has to learn the rare ones. At test time the
unshifted output is the class-balanced classifier; adding back a share ``P`` of the shift (0 <= P <= tau) moves it
towards the data's own prior (``adjust_probabilities``). Kept in a module of its own, imported before a run's
``last.keras`` is loaded, so Keras can rebuild the loss on ``--resume``.
"""

from __future__ import annotations

import keras
import numpy as np


def adjust_probabilities(probabilities: np.ndarray, log_prior: np.ndarray, power: float) -> np.ndarray:
    """softmax(log p + power * log prior), row by row (float64 inside; float32 out)."""
    logits = np.log(np.clip(probabilities.astype(np.float64), 1e-12, 1.0)) + power * np.asarray(log_prior)
    logits -= logits.max(axis=1, keepdims=True)
    shifted = np.exp(logits)
    return (shifted / shifted.sum(axis=1, keepdims=True)).astype(np.float32)


@keras.saving.register_keras_serializable(package="fer_train")
class LogitAdjustedCrossentropy(keras.losses.Loss):
    """Cross-entropy of softmax(log p + tau * log prior) against (label-smoothed) soft targets; ``y_pred`` are the
    model's probabilities (its float32 softmax output)."""

    def __init__(self, log_prior, tau: float = 1.0, label_smoothing: float = 0.0,
                 name: str = "logit_adjusted_crossentropy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.log_prior = [float(value) for value in log_prior]
        self.tau = float(tau)
        self.label_smoothing = float(label_smoothing)

    def call(self, y_true, y_pred):
        ops = keras.ops
        y_pred = ops.cast(y_pred, "float32")
        y_true = ops.cast(y_true, "float32")
        shift = ops.convert_to_tensor(np.asarray(self.log_prior, np.float32) * self.tau)
        logits = ops.log(ops.clip(y_pred, 1e-7, 1.0)) + shift
        if self.label_smoothing:
            y_true = y_true * (1.0 - self.label_smoothing) + self.label_smoothing / len(self.log_prior)
        return -ops.sum(y_true * ops.log_softmax(logits, axis=-1), axis=-1)

    def get_config(self) -> dict:
        return {**super().get_config(), "log_prior": self.log_prior, "tau": self.tau,
                "label_smoothing": self.label_smoothing}
