"""The README's "Adapting the model to your photos" block, run as written: its commands word for word, in a scratch
folder that holds the folders it names (small real folders of LFW faces) and with HOME there, so ``~/fer-runs/mine``
is a scratch path too. FER_FINETUNE_STEPS=2 keeps the training tiny; the text is not changed. Then the fine-tuned
model's contract: labels, mirror averaging and the model it started from recorded, its INT8 copy, and `fer-batch
label --model` using it."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import subprocess
import sys

import cv2
import numpy as np
import pytest
from conftest import REPO, read_csv

from fer_batch.labels import EMOTIONS

pytest.importorskip("skimage")


def readme_block() -> list[list[str]]:
    """The commands of the first bash block under the README's "Adapting the model to your photos", each split as
    the shell splits it (comments dropped, ``~`` expanded)."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("### Adapting the model to your photos", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.DOTALL).group(1)
    commands = [shlex.split(line, comments=True) for line in block.splitlines()]
    return [[os.path.expanduser(word) if word.startswith("~") else word for word in command]
            for command in commands if command]


# LFW faces the shipped model labels with confidence >= 0.8 (most LFW faces it calls neutral or happy at ~0.5): the
# optional INT8 step's parity bar (97 % of faces keep their top class) is for faces a model is sure of; on the
# unsure ones even the shipped INT8 copy keeps 95 %.
CLEAR_FACES = (1, 18, 19, 21, 23, 27, 36, 37, 38, 50, 52, 53, 61, 69, 74, 79)


def lfw_photo(index: int) -> np.ndarray:
    from skimage import data

    canvas = np.full((240, 240), 110, np.uint8)
    canvas[40:200, 40:200] = cv2.resize((data.lfw_subset()[index] * 255).astype(np.uint8), (160, 160),
                                        interpolation=cv2.INTER_CUBIC)
    return canvas


@pytest.mark.slow
def test_readme_finetune_block_runs_as_written(tmp_path, monkeypatch):
    import matplotlib

    from fer_batch.classify import META_LABELS, META_TRAINING, default_model_path
    from training.cli import main as fer_train

    monkeypatch.setenv("MPLCONFIGDIR", matplotlib.get_cachedir())  # its font cache, not a new one under HOME
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("FER_FINETUNE_STEPS", "2")
    monkeypatch.chdir(tmp_path)
    commands = readme_block()
    assert commands[0][:2] == ["pip", "install"] and commands[0][2] == ".[train]"  # done: this is that install
    programs = [command[:2] for command in commands[1:]]
    assert programs[0] == ["fer-train", "finetune"] and programs[1] == ["fer-train", "export"]
    assert programs[-1] == ["fer-batch", "label"]
    # The folders the block names: its photo folder (one sub-folder per emotion) and the photos it labels.
    photos, new_photos = tmp_path / commands[1][2], tmp_path / commands[-1][2]
    folders = {emotion: photos / (emotion.capitalize() if index % 2 else emotion)  # any case, as it says
               for index, emotion in enumerate(EMOTIONS)}
    for number, index in enumerate(CLEAR_FACES[:14]):
        folder = folders[EMOTIONS[number % 7]]
        folder.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(folder / f"lfw{index}.jpg"), lfw_photo(index))
    new_photos.mkdir()
    for index in CLEAR_FACES[14:]:
        cv2.imwrite(str(new_photos / f"other{index}.png"), lfw_photo(index))

    for command in commands[1:]:
        if command[0] == "fer-train":
            assert fer_train(command[1:]) == 0, command
        else:
            assert command[0] == "fer-batch", command
            result = subprocess.run([sys.executable, "-m", "fer_batch", *command[1:]], capture_output=True,
                                    text=True, timeout=180, env={**os.environ, "PYTHONPATH": str(REPO)})
            assert result.returncode == 0, result.stderr

    # The run folder records what it started from; the model keeps the contract and the test-time settings.
    import onnx

    run = tmp_path / "fer-runs" / "mine"
    state = json.loads((run / "state.json").read_text())
    shipped = default_model_path("float")
    assert state["init"]["file"] == shipped.name
    assert state["init"]["sha256"] == hashlib.sha256(shipped.read_bytes()).hexdigest()
    models = {path.name: {p.key: p.value for p in onnx.load(str(path)).metadata_props}
              for path in tmp_path.glob("*.onnx")}
    assert set(models) == {"mine.onnx", "mine-int8.onnx"}
    for metadata in models.values():
        assert json.loads(metadata[META_LABELS]) == list(EMOTIONS)
        training = json.loads(metadata[META_TRAINING])
        assert training["test_time_flip_averaging"] == state["init"]["test_time_flip_averaging"]  # as it started
        assert training["started_from"]["sha256"] == state["init"]["sha256"]
    assert json.loads(models["mine-int8.onnx"][META_TRAINING])["int8_quantization"]["source"] == "mine.onnx"
    # `fer-batch label --model` used the fine-tuned INT8 copy.
    output = tmp_path / commands[-1][commands[-1].index("-o") + 1]
    labelled = read_csv(output)
    assert len(labelled) == 2 and {row["status"] for row in labelled} == {"ok"}
    run_info = json.loads(output.with_name(output.stem + ".run.json").read_text())
    assert run_info["model"]["path"].endswith("mine-int8.onnx")
