"""training/warmstart.py: the shipped model rebuilt in Keras matches its ONNX file on real faces; `fer-train train
--init` starts from an exported model, records it, and its export keeps the test-time settings and the chain."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from conftest import REPO, write_real_fer_csv

pytest.importorskip("tensorflow")
pytest.importorskip("tf2onnx")

from training.cli import main as fer_train  # noqa: E402
from training.warmstart import WarmStartError, keras_from_onnx  # noqa: E402

TINY = ["--epochs", "1", "--batch-size", "16", "--widths", "8,16,16,32", "--warmup-epochs", "0", "--precision", "fp32"]


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory, real_faces):
    """A tiny model trained one epoch on real faces, exported with mirror averaging baked in; and its data."""
    root = tmp_path_factory.mktemp("warm")
    data = write_real_fer_csv(root / "fer2013.csv", real_faces)
    assert fer_train(["train", "--data", str(data), "--out", str(root / "run"), *TINY]) == 0
    model = root / "tiny.onnx"
    assert fer_train(["export", str(root / "run"), "-o", str(model), "--data", str(data), "--tta-flip"]) == 0
    return data, model


def test_shipped_model_rebuilt_in_keras_matches_it_on_real_faces(real_faces):
    from fer_batch.classify import EmotionClassifier, default_model_path

    path = default_model_path("float")
    start = keras_from_onnx(path, real_faces)
    assert start.parity <= 1e-4 and start.arch == "vgg" and start.test_time_flip_averaging
    assert start.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    # The batch norms hold the statistics of their inputs on real faces, so training mode starts near inference:
    # in training mode (batch statistics) the model still agrees with the file on most faces.
    expected = EmotionClassifier(path).predict(real_faces)
    batch = real_faces.astype(np.float32)[..., None]
    training_mode = np.asarray(start.model(batch, training=True))
    mirrored = np.asarray(start.model(batch[:, :, ::-1], training=True))
    agreement = (((training_mode + mirrored) / 2).argmax(1) == expected.argmax(1)).mean()
    assert agreement >= 0.8, agreement


def test_train_init_records_the_start_and_export_keeps_its_settings(tiny_onnx, tmp_path):
    import onnx

    data, model = tiny_onnx
    run = tmp_path / "run"
    assert fer_train(["train", "--data", str(data), "--out", str(run), "--init", str(model), *TINY]) == 0
    state = json.loads((run / "state.json").read_text())
    assert state["init"]["file"] == "tiny.onnx"
    assert state["init"]["sha256"] == hashlib.sha256(model.read_bytes()).hexdigest()
    assert state["init"]["parity_max_abs_difference"] <= 1e-4
    assert json.loads((run / "config.json").read_text())["init"] == str(model)
    again = tmp_path / "again.onnx"
    assert fer_train(["export", str(run), "-o", str(again), "--data", str(data)]) == 0  # no --tta-flip given
    training = json.loads({p.key: p.value for p in onnx.load(str(again)).metadata_props}["fer_batch.training"])
    assert training["test_time_flip_averaging"] is True  # as the model it started from
    assert training["started_from"]["sha256"] == state["init"]["sha256"]
    assert training["started_from"]["training"]["test_time_flip_averaging"] is True  # the chain goes back
    assert training["architecture"] == {"arch": "vgg", "widths": [8, 16, 16, 32]}
    # The model card shows the chain of runs.
    from training.evaluate import evaluate
    from training.model_card import render

    metrics = evaluate(again, data).__dict__
    card = render(again, metrics, ferplus=metrics)
    assert "### Round 2: started from `tiny.onnx`" in card and "### Round 1: trained from scratch" in card


def test_init_errors_name_the_file(tiny_onnx, tmp_path, capsys):
    data, model = tiny_onnx
    # Widths that are not the file's.
    code = fer_train(["train", "--data", str(data), "--out", str(tmp_path / "a"), "--init", str(model),
                      "--epochs", "1", "--precision", "fp32"])
    assert code == 2 and "tiny.onnx" in capsys.readouterr().err
    # An INT8 copy: train from its float model.
    code = fer_train(["train", "--data", str(data), "--out", str(tmp_path / "b"), "--init",
                      str(REPO / "models" / "emotion-int8.onnx"), "--epochs", "1", "--precision", "fp32"])
    error = capsys.readouterr().err
    assert code == 2 and "emotion-int8.onnx" in error and "INT8" in error
    # Not a model at all.
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not an onnx file")
    with pytest.raises(WarmStartError, match="junk.onnx"):
        keras_from_onnx(junk, np.zeros((4, 48, 48), np.uint8))
    with pytest.raises(FileNotFoundError, match="missing.onnx"):
        keras_from_onnx(tmp_path / "missing.onnx", np.zeros((4, 48, 48), np.uint8))
