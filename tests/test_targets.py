"""training/targets.py: FER+ vote distributions, target mixing, and teacher probabilities (with their cache)."""

from __future__ import annotations

import numpy as np
import pytest

from training import targets
from training.data import DataError


def test_ferplus_distribution_maps_votes_onto_fer_classes():
    # columns: neutral happiness surprise sadness anger disgust fear contempt unknown NF
    votes = np.array([[6, 2, 0, 0, 0, 0, 0, 2, 0, 0],    # 6/8 neutral, 2/8 happy (contempt dropped)
                      [0, 0, 0, 0, 0, 0, 0, 0, 0, 10],   # not a face: unusable
                      [0, 0, 1, 0, 0, 0, 3, 0, 0, 0]])   # 3/4 fear, 1/4 surprise
    distribution, usable = targets.ferplus_distribution(votes)
    assert usable.tolist() == [True, False, True]
    np.testing.assert_allclose(distribution[0], [0, 0, 0, 0.25, 0, 0, 0.75])
    np.testing.assert_allclose(distribution[2], [0, 0, 0.75, 0, 0, 0.25, 0])
    assert distribution[1].sum() == 0


def test_mix_targets():
    labels = np.array([4, 0, 2])
    votes = np.array([[10, 0, 0, 0, 0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0, 0, 0, 0, 10], [0, 0, 0, 0, 0, 0, 4, 0, 0, 0]])
    mixed = targets.mix_targets(labels, votes, ferplus_weight=0.5)
    np.testing.assert_allclose(mixed[0], [0, 0, 0, 0, 0.5, 0, 0.5])  # half FER "sad", half FER+ "neutral"
    np.testing.assert_allclose(mixed[1], np.eye(7)[0])  # no usable vote: the FER label stays
    np.testing.assert_allclose(mixed[2], np.eye(7)[2])  # both agree
    teacher = np.full((3, 7), 1 / 7, np.float32)
    both = targets.mix_targets(labels, votes, 0.5, teacher, 0.3)
    np.testing.assert_allclose(both, 0.7 * mixed + 0.3 / 7, rtol=1e-6)
    np.testing.assert_allclose(both.sum(axis=1), 1.0, rtol=1e-6)
    with pytest.raises(ValueError, match="needs FER\\+ votes"):
        targets.mix_targets(labels, None, 0.5)
    with pytest.raises(ValueError, match="must lie in 0..1"):
        targets.mix_targets(labels, votes, 1.5)


def test_teacher_targets_from_onnx_with_cache(tmp_path, monkeypatch):
    """The shipped ONNX model as a teacher: mirror-averaged probabilities, PublicTest accuracy, a reused cache."""
    from conftest import REPO

    rng = np.random.default_rng(0)
    training = rng.integers(0, 255, (20, 48, 48), np.uint8)
    public = rng.integers(0, 255, (10, 48, 48), np.uint8)
    labels = rng.integers(0, 7, 10)
    model = REPO / "models" / "emotion.onnx"
    cache = tmp_path / "teachers.npz"
    first = targets.teacher_targets([str(model), str(model)], training, public, labels, cache=cache)
    assert first.training.shape == (20, 7) and first.public_test.shape == (10, 7)
    np.testing.assert_allclose(first.training.sum(axis=1), 1.0, rtol=1e-5)
    from fer_batch.classify import EmotionClassifier

    classifier = EmotionClassifier(model)
    expected = (classifier.predict(training) + classifier.predict(training[:, :, ::-1])) / 2
    np.testing.assert_allclose(first.training, expected, atol=1e-5)
    assert first.public_test_accuracy == {str(model): pytest.approx(float((first.public_test.argmax(1) == labels)
                                                                           .mean())),
                                          "ensemble": pytest.approx(float((first.public_test.argmax(1) == labels)
                                                                          .mean()))}
    # A second call reads the cache instead of running the teachers.
    monkeypatch.setattr(targets, "predict_with_flip", lambda *a, **k: pytest.fail("teachers ran again"))
    again = targets.teacher_targets([str(model), str(model)], training, public, labels, cache=cache)
    np.testing.assert_array_equal(again.training, first.training)
    with pytest.raises(DataError, match="made from other teachers"):
        targets.teacher_targets([str(model)], training, public, labels, cache=cache)
    with pytest.raises(FileNotFoundError, match="not a teacher"):
        targets.resolve_teacher(tmp_path / "missing.onnx")
