"""training/average.py: two runs from one exported model averaged into one (weights meaned, batch norms measured
again on real faces as training would), exported with the starting model's settings; the model card lists both."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import write_real_fer_csv

pytest.importorskip("tensorflow")
pytest.importorskip("tf2onnx")

from training.cli import main as fer_train  # noqa: E402

TINY = ["--epochs", "1", "--batch-size", "16", "--widths", "8,16,16,32", "--warmup-epochs", "0", "--precision", "fp32"]


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory, real_faces):
    """Real faces as FER rows; a tiny model exported with mirror averaging; two one-epoch runs started from it with
    different seeds."""
    faces = real_faces
    root = tmp_path_factory.mktemp("average")
    data = write_real_fer_csv(root / "fer2013.csv", faces)
    assert fer_train(["train", "--data", str(data), "--out", str(root / "start"), *TINY]) == 0
    start = root / "start.onnx"
    assert fer_train(["export", str(root / "start"), "-o", str(start), "--data", str(data), "--tta-flip"]) == 0
    for seed in ("1", "2"):
        assert fer_train(["train", "--data", str(data), "--init", str(start), "--seed", seed, "--lr", "0.05",
                          "--out", str(root / f"run{seed}"), *TINY]) == 0
    return data, start, root / "run1", root / "run2", faces


def test_average_means_the_weights_and_measures_the_batch_norms_again(two_runs, tmp_path, capsys):
    import keras

    from training.export import load_float32

    data, start, run1, run2, faces = two_runs
    out = tmp_path / "soup"
    assert fer_train(["average", str(run1), str(run2), "--out", str(out), "--data", str(data)]) == 0
    printed = capsys.readouterr().out
    assert "the average" in printed and "fer_accuracy" in printed and f"fer-train export {out}" in printed
    one, two, soup = (load_float32(path / "best.keras") for path in (run1, run2, out))
    for layer_one, layer_two, layer in zip(one.layers, two.layers, soup.layers):
        if isinstance(layer, keras.layers.BatchNormalization):
            gamma, beta, mean, variance = layer.get_weights()
            np.testing.assert_allclose(gamma, (layer_one.get_weights()[0] + layer_two.get_weights()[0]) / 2,
                                       rtol=1e-6)
            np.testing.assert_allclose(beta, (layer_one.get_weights()[1] + layer_two.get_weights()[1]) / 2,
                                       rtol=1e-6, atol=1e-7)
        else:
            for w, w1, w2 in zip(layer.get_weights(), layer_one.get_weights(), layer_two.get_weights()):
                np.testing.assert_allclose(w, (w1 + w2) / 2, rtol=1e-6, atol=1e-7)
    # The batch norms' statistics were measured again (not averaged): the average's differ from the mean of the
    # runs' own.
    first = next(i for i, layer in enumerate(soup.layers) if isinstance(layer, keras.layers.BatchNormalization))
    averaged_mean = (one.layers[first].get_weights()[2] + two.layers[first].get_weights()[2]) / 2
    assert np.abs(soup.layers[first].get_weights()[2] - averaged_mean).max() > 1e-3
    state = json.loads((out / "state.json").read_text())
    assert [run["model"] for run in state["averaged"]["runs"]] == [str(run1 / "best.keras"), str(run2 / "best.keras")]
    assert state["init"]["file"] == "start.onnx" and state["best_scores"]["public_fer_accuracy"] >= 0

    # Export: the starting model's mirror averaging, the chain, and both runs in the model card.
    exported = tmp_path / "soup.onnx"
    assert fer_train(["export", str(out), "-o", str(exported), "--data", str(data)]) == 0
    from fer_batch.classify import EmotionClassifier
    from training.model_card import _chain

    training = EmotionClassifier(exported).training
    assert training["test_time_flip_averaging"] and training["started_from"]["file"] == "start.onnx"
    chain = _chain(training)
    assert "the weights of 2 runs averaged" in chain and "Run A" in chain and "Run B" in chain
    assert "fer-train average" in chain and "--seed 2" in chain


def test_batch_norms_get_the_statistics_training_would_give_them(two_runs):
    """Measured in training mode, batch by batch: the first norm's mean is its input's mean over the faces (no
    augmentation here); the head's norm, after dropout, sees a larger variance than inference would show it."""
    import keras

    from training.augment import AugmentConfig
    from training.average import calibrate_batch_norms
    from training.export import load_float32

    _, _, run1, _, faces = two_runs
    model = load_float32(run1 / "best.keras")
    faces = faces[:192]  # three batches of 64
    calibrate_batch_norms(model, faces, AugmentConfig.none(), batch_size=64)
    norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    batch = faces.astype(np.float32)[..., None]
    first_input = np.asarray(keras.Model(model.input, norms[0].input).predict(batch, verbose=0), np.float64)
    np.testing.assert_allclose(norms[0].get_weights()[2], first_input.mean(axis=(0, 1, 2)), rtol=1e-4, atol=1e-5)
    head_input = np.asarray(keras.Model(model.input, norms[-1].input).predict(batch, verbose=0), np.float64)
    assert norms[-1].name == "head_bn"
    assert np.median(norms[-1].get_weights()[3] / np.maximum(head_input.var(axis=0), 1e-12)) > 1.2
    with pytest.raises(ValueError, match="needs 64 faces or more"):
        calibrate_batch_norms(model, faces[:10], AugmentConfig.none(), batch_size=64)


def test_the_same_command_gives_the_same_model(two_runs, tmp_path):
    """The calibration runs dropout in training mode; its masks are seeded, so an average can be made again."""
    from training.export import load_float32

    data, _, run1, run2, _ = two_runs
    for name in ("a", "b"):
        assert fer_train(["average", str(run1), str(run2), "--out", str(tmp_path / name), "--data", str(data)]) == 0
    first, second = (load_float32(tmp_path / name / "best.keras").get_weights() for name in ("a", "b"))
    for one, two in zip(first, second):
        np.testing.assert_array_equal(one, two)


def test_average_refuses_one_run_other_architectures_and_a_used_folder(two_runs, tmp_path, capsys):
    data, _, run1, run2, _ = two_runs
    assert fer_train(["average", str(run1), "--out", str(tmp_path / "a"), "--data", str(data)]) == 2
    assert "two or more runs" in capsys.readouterr().err
    wider = tmp_path / "wider"
    widths = ["--widths" if arg == "--widths" else "8,16,16,48" if arg == "8,16,16,32" else arg for arg in TINY]
    assert fer_train(["train", "--data", str(data), "--out", str(wider), *widths]) == 0
    assert fer_train(["average", str(run1), str(wider), "--out", str(tmp_path / "b"), "--data", str(data)]) == 2
    assert f"{wider / 'best.keras'}: its weights differ in shape" in capsys.readouterr().err
    assert not (tmp_path / "b" / "best.keras").exists()
    assert fer_train(["average", str(run1), str(run2), "--out", str(run1), "--data", str(data)]) == 2
    assert "holds a run already" in capsys.readouterr().err


def test_logit_adjusted_runs_average_at_their_best_shift(two_runs, tmp_path, capsys):
    """Runs trained with --logit-adjust: the average is scored at its best output shift on PublicTest, which its
    state records with the class prior for export; a plain run and an adjusted one are not averaged."""
    data, start, run1, _, _ = two_runs
    adjusted = []
    for seed in ("3", "4"):
        adjusted.append(tmp_path / f"la{seed}")
        assert fer_train(["train", "--data", str(data), "--init", str(start), "--seed", seed, "--lr", "0.05",
                          "--logit-adjust", "1.0", "--out", str(adjusted[-1]), *TINY]) == 0
    out = tmp_path / "soup"
    assert fer_train(["average", *map(str, adjusted), "--out", str(out), "--data", str(data)]) == 0
    state = json.loads((out / "state.json").read_text())
    prior = json.loads((adjusted[0] / "state.json").read_text())["class_prior"]
    assert state["class_prior"] == pytest.approx(prior) and 0.0 <= state["prior_power"] <= 1.0
    assert all("prior_power" in run["public_test"] for run in state["averaged"]["runs"])
    assert fer_train(["average", str(run1), str(adjusted[0]), "--out", str(tmp_path / "mixed"), "--data",
                      str(data)]) != 0
    assert "different class priors" in capsys.readouterr().err
