"""training/priors.py: class weights chosen on PublicTest and baked into the ONNX graph."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import REPO, fer_rows, write_fer_csv

pytest.importorskip("onnx")

from fer_batch.classify import EmotionClassifier  # noqa: E402
from fer_batch.labels import EMOTIONS  # noqa: E402
from training import priors  # noqa: E402
from training.cli import main as fer_train  # noqa: E402

NEUTRAL = EMOTIONS.index("neutral")


def test_choose_weights_undoes_a_prior_shift():
    """Probabilities whose neutral column was divided by 3 after the fact: a neutral weight near 3 repairs them."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 7, 4000)
    logits = rng.normal(0, 1, (4000, 7))
    logits[np.arange(4000), labels] += 1.5
    clean = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    shifted = clean.copy()
    shifted[:, NEUTRAL] /= 3
    shifted /= shifted.sum(axis=1, keepdims=True)
    weights = priors.choose_weights(shifted, labels, classes=("neutral",))
    assert np.exp(weights[NEUTRAL]) == pytest.approx(3, rel=0.35)
    assert np.count_nonzero(weights) == 1
    assert priors.accuracy(shifted, labels, weights) > priors.accuracy(shifted, labels, np.zeros(7)) + 0.01
    # Nothing to repair: the weight stays near 1.
    assert abs(priors.choose_weights(clean, labels, classes=("neutral",))[NEUTRAL]) <= 0.2
    # FER+ objective: moves towards the second labelling without losing more than max_loss on the first.
    relabelled = np.where(rng.random(4000) < 0.3, NEUTRAL, labels)
    weights = priors.choose_weights(clean, labels, relabelled, objective="ferplus", max_loss=0.5,
                                    classes=("neutral",))
    assert weights[NEUTRAL] > 0
    assert priors.accuracy(clean, labels, weights) >= priors.accuracy(clean, labels, np.zeros(7)) - 0.005
    with pytest.raises(ValueError, match="needs FER\\+ votes"):
        priors.choose_weights(clean, labels, objective="ferplus")
    with pytest.raises(ValueError, match="unknown class"):
        priors.choose_weights(clean, labels, classes=("bored",))


def test_priors_command_bakes_weights_into_the_shipped_model(tmp_path, capsys):
    data = write_fer_csv(tmp_path / "fer.csv", fer_rows(210))
    output = tmp_path / "priors.onnx"
    assert fer_train(["priors", str(REPO / "models" / "emotion.onnx"), "-o", str(output), "--data", str(data),
                      "--classes", "neutral,sad"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("class weights: angry 1, ") and "PublicTest, FER labels: accuracy" in printed
    import onnx

    training = json.loads({p.key: p.value for p in onnx.load(str(output)).metadata_props}["fer_batch.training"])
    note = training["class_priors"]
    assert note["chosen_on"] == "PublicTest" and note["classes"] == ["neutral", "sad"]
    assert training["parameters"] > 0  # the export's summary is kept
    weights = np.array([note["weights"][name] for name in EMOTIONS])
    faces = np.random.default_rng(1).integers(0, 255, (40, 48, 48), np.uint8)
    before = EmotionClassifier(REPO / "models" / "emotion.onnx").predict(faces)
    after = EmotionClassifier(output).predict(faces)
    expected = before * weights
    np.testing.assert_allclose(after, expected / expected.sum(axis=1, keepdims=True), atol=1e-5)
    assert fer_train(["priors", str(output), "-o", str(output), "--data", str(data)]) == 2
    assert "would overwrite" in capsys.readouterr().err
