"""training/: a short training run on synthetic data, --resume, export with the parity check, evaluate's report."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO

pytest.importorskip("tensorflow")
pytest.importorskip("tf2onnx")

from training.cli import main as fer_train  # noqa: E402


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    from conftest import fer_rows, write_fer_csv

    root = tmp_path_factory.mktemp("train")
    data = write_fer_csv(root / "fer2013.csv.gz", fer_rows(210))
    run = root / "run"
    code = fer_train(["train", "--data", str(data), "--out", str(run), "--epochs", "1", "--batch-size", "16",
                      "--widths", "8,16,16,32", "--warmup-epochs", "0", "--precision", "fp32"])
    assert code == 0
    return data, run


def test_train_writes_the_run_folder(trained_run):
    _, run = trained_run
    for name in ("config.json", "state.json", "last.keras", "best.keras", "log.csv", "curves.png"):
        assert (run / name).is_file(), name
    state = json.loads((run / "state.json").read_text())
    assert state["epochs_done"] == 1 and state["best_epoch"] == 1 and state["finished"]
    rows = list(csv.DictReader(open(run / "log.csv")))
    assert len(rows) == 1 and {"loss", "accuracy", "val_loss", "val_accuracy"} <= set(rows[0])
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_resume_continues_from_the_last_epoch(trained_run, tmp_path):
    import shutil

    data, run = trained_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    config = json.loads((copy / "config.json").read_text())
    config["epochs"] = 2
    (copy / "config.json").write_text(json.dumps(config))
    assert fer_train(["train", "--data", str(data), "--out", str(copy), "--resume"]) == 0
    rows = list(csv.DictReader(open(copy / "log.csv")))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert json.loads((copy / "state.json").read_text())["epochs_done"] == 2
    # A second plain `train` into the same folder refuses to overwrite it.
    assert fer_train(["train", "--data", str(data), "--out", str(copy)]) == 2


def test_export_parity_metadata_and_evaluate(trained_run, tmp_path):
    import onnx

    from fer_batch.classify import EmotionClassifier
    from fer_batch.labels import EMOTIONS

    data, run = trained_run
    model = tmp_path / "model.onnx"
    assert fer_train(["export", str(run), "-o", str(model), "--data", str(data)]) == 0
    metadata = {p.key: p.value for p in onnx.load(str(model)).metadata_props}
    assert json.loads(metadata["fer_batch.labels"]) == list(EMOTIONS)
    assert json.loads(metadata["fer_batch.input"])["layout"] == "NHWC"
    training = json.loads(metadata["fer_batch.training"])
    assert training["epochs_trained"] == 1 and training["parameters"] > 0 and training["flops_per_face"] > 0
    # Dynamic batch axis: any batch size runs; rows are probabilities.
    classifier = EmotionClassifier(model)
    for count in (1, 5, 130):
        probabilities = classifier.predict(np.random.default_rng(count).integers(0, 255, (count, 48, 48), np.uint8))
        assert probabilities.shape == (count, 7)
        np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)

    out = tmp_path / "eval"
    result = subprocess.run([sys.executable, "-m", "training", "evaluate", "--model", str(model), "--data", str(data),
                             "--out", str(out), "--tta-flip"], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stderr
    first = result.stdout.splitlines()[0]
    assert first.startswith("accuracy 0.") and len(first) == len("accuracy 0.0000")
    report = json.loads((out / "metrics.json").read_text())
    assert report["split"] == "PrivateTest" and report["count"] == 70 and report["tta_flip"]
    assert sum(map(sum, report["confusion"])) == 70
    assert abs(report["accuracy"] - float(first.split()[1])) < 1e-4
    assert (out / "confusion.png").is_file()


def test_export_parity_check_fails_loudly(trained_run, tmp_path, monkeypatch):
    from training import export

    _, run = trained_run
    monkeypatch.setattr(export, "PARITY_TOLERANCE", -1.0)  # nothing can pass: the check must raise
    with pytest.raises(export.ExportError, match="differ by"):
        export.export(run, tmp_path / "m.onnx", data=None)


def test_seed_architecture_builds():
    from training.model import count_flops, make_model

    model = make_model(arch="seed")
    assert model.output_shape == (None, 7)
    assert count_flops(model) > 0
    with pytest.raises(ValueError, match="unknown architecture"):
        make_model(arch="resnet9000")


@pytest.mark.fer2013
@pytest.mark.skipif(not __import__("os").environ.get("FER2013_CSV"), reason="set FER2013_CSV to the real file")
def test_shipped_model_reproduces_its_model_card(tmp_path):
    """The figure in models/MODEL.md is what `fer-train evaluate` gives on the real PrivateTest split."""
    import os
    import re

    from training.evaluate import evaluate

    card = (REPO / "models" / "MODEL.md").read_text()
    claimed = float(re.search(r"PrivateTest accuracy: (\d+\.\d+) %", card).group(1))
    report = evaluate(REPO / "models" / "emotion.onnx", os.environ["FER2013_CSV"], out=tmp_path)
    assert report.count == 3589
    assert abs(report.accuracy * 100 - claimed) < 0.5
    assert report.accuracy >= 0.66
