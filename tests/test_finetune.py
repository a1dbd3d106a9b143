"""fer-train finetune: a folder of real photos (scikit-image's astronaut and LFW faces, enlarged onto a canvas)
-> fine-tune -> export -> quantize -> fer-batch label, and the folder's errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import ASTRONAUT_FACE, REPO, read_csv, run_cli

from fer_batch.labels import EMOTIONS

pytest.importorskip("skimage")


def lfw_photo(index: int) -> np.ndarray:
    """LFW face ``index`` (scikit-image's 25x25 lfw_subset, 0..99 are faces) enlarged onto a grey 320x320 photo:
    big enough for RetinaFace, which finds all 100."""
    from skimage import data

    face = (data.lfw_subset()[index] * 255).astype(np.uint8)
    canvas = np.full((320, 320), 110, np.uint8)
    canvas[60:220, 80:240] = cv2.resize(face, (160, 160), interpolation=cv2.INTER_CUBIC)
    return canvas


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """Three emotion folders (in mixed case) of photos in five formats, a photo with no face and a broken file."""
    from skimage import data

    root = tmp_path_factory.mktemp("finetune") / "photos"
    for name in ("Happy", "NEUTRAL", "sad"):
        (root / name).mkdir(parents=True)
    astronaut = cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)
    cv2.imwrite(str(root / "Happy" / "astronaut.jpg"), astronaut)
    cv2.imwrite(str(root / "Happy" / "astronaut mirrored.png"), np.ascontiguousarray(astronaut[:, ::-1]))
    for index in range(0, 3):
        cv2.imwrite(str(root / "Happy" / f"lfw{index}.webp"), lfw_photo(index))
    for index in range(3, 7):
        cv2.imwrite(str(root / "NEUTRAL" / f"lfw{index}.png"), lfw_photo(index))
    for index in range(7, 10):
        cv2.imwrite(str(root / "sad" / f"lfw{index}.bmp"), lfw_photo(index))
    cv2.imwrite(str(root / "sad" / "lfw10.tif"), lfw_photo(10))
    cv2.imwrite(str(root / "sad" / "coins.png"), data.coins())  # no face
    (root / "sad" / "broken.jpg").write_bytes(b"not a jpeg")
    (root / "sad" / "notes.txt").write_text("not a photo: ignored")
    return root


def fer_train(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-m", "training", *args], capture_output=True, text=True, timeout=timeout,
                          env=env)


def test_find_photos_labels_by_folder_in_any_case(photos):
    from training.finetune import find_photos

    found = find_photos(photos)
    assert {photo.emotion for photo in found} == {"happy", "neutral", "sad"}
    assert sum(photo.emotion == "sad" for photo in found) == 6  # four faces, coins, broken; not notes.txt
    assert [photo.path for photo in found] == sorted(photo.path for photo in found)


@pytest.mark.parametrize("layout, message", [
    ({"happy": ["a.png"], "Smiling": ["b.png"]}, "'Smiling' is not an emotion"),
    ({"happy": ["a.png"], "HAPPY": ["b.png"]}, "are the same emotion"),
    ({"happy": ["a.png"], ".": ["loose.jpg"]}, "loose.jpg directly in it"),
    ({"happy": ["notes.txt"]}, "no photos"),
])
def test_find_photos_errors_name_the_problem(tmp_path, layout, message):
    from training.finetune import FinetuneError, find_photos

    for folder, files in layout.items():
        (tmp_path / folder).mkdir(exist_ok=True)
        for name in files:
            (tmp_path / folder / name).write_bytes(b"x")
    with pytest.raises(FinetuneError, match=message):
        find_photos(tmp_path)


def test_bad_folder_name_is_a_clear_cli_error(tmp_path):
    (tmp_path / "happy").mkdir()
    (tmp_path / "grumpy").mkdir()
    result = fer_train("finetune", str(tmp_path), "--out", str(tmp_path / "run"), timeout=120)
    assert result.returncode == 2
    assert "'grumpy' is not an emotion" in result.stderr and str(tmp_path) in result.stderr
    assert not (tmp_path / "run").exists()


def test_hold_out_is_per_class_seeded_and_leaves_training_faces():
    from training.finetune import hold_out

    labels = np.array([3] * 10 + [6] * 5 + [4] * 2 + [0])
    usage = hold_out(labels, 0.2, seed=1)
    assert (usage == hold_out(labels, 0.2, seed=1)).all()
    held = {label: int(((labels == label) & (usage == "PublicTest")).sum()) for label in (3, 6, 4, 0)}
    assert held == {3: 2, 6: 1, 4: 1, 0: 0}  # at least one of a class with two; never a class's only face


def test_cut_faces_keeps_the_largest_face_and_lists_the_rest(photos):
    from fer_batch.recognizer import EmotionRecognizer
    from training.finetune import cut_faces, find_photos

    found = [photo for photo in find_photos(photos) if photo.emotion == "sad" or "astronaut" in photo.path.name]
    faces = cut_faces(found, EmotionRecognizer(precision="float"))
    status = {photo.path.name: photo.status for photo in found}
    assert status["coins.png"] == "no face" and status["broken.jpg"] == "error"
    assert faces.shape == (sum(s == "face" for s in status.values()), 48, 48) and faces.dtype == np.uint8
    astronaut = next(photo for photo in found if photo.path.name == "astronaut.jpg")
    x1, y1, x2, _ = ASTRONAUT_FACE
    x, y, w, _ = astronaut.box
    assert abs(x - x1) < 10 and abs(y - y1) < 10 and abs(w - (x2 - x1)) < 10


@pytest.mark.slow
def test_finetune_export_quantize_label_end_to_end(photos, tmp_path, capsys):
    from training.cli import main as fer_train

    run, model = tmp_path / "run", tmp_path / "my.onnx"
    assert fer_train(["finetune", str(photos), "--out", str(run), "--epochs", "1"]) == 0
    printed = capsys.readouterr()
    # Per-class accuracy before and after on the held-out photos, on stdout.
    assert "before" in printed.out and "after" in printed.out
    assert any(line.startswith("neutral") for line in printed.out.splitlines())
    # Photos without a face, or unreadable, are listed on stderr and in the run folder.
    assert "coins.png: no face found" in printed.err and "broken.jpg: not a decodable image" in printed.err
    rows = {Path(row["file"]).name: row for row in read_csv(run / "photos.csv")}
    assert rows["coins.png"]["status"] == "no face" and rows["broken.jpg"]["status"] == "error"
    assert "notes.txt" not in rows
    assert {row["split"] for row in rows.values() if row["status"] == "face"} == {"Training", "PublicTest"}
    report = json.loads((run / "finetune.json").read_text())
    assert report["faces"] == 13 and report["validation_faces"] == 3 and len(report["skipped"]) == 2
    state = json.loads((run / "state.json").read_text())
    assert state["init"]["file"] == "emotion.onnx" and state["epochs_done"] == 1

    # The run exports with the contract and test-time settings of the model it started from.
    assert fer_train(["export", str(run), "-o", str(model), "--data", str(run / "faces.npz")]) == 0
    import onnx

    from fer_batch.classify import META_TRAINING

    training = json.loads({p.key: p.value for p in onnx.load(str(model)).metadata_props}[META_TRAINING])
    assert training["test_time_flip_averaging"] == state["init"]["test_time_flip_averaging"]
    assert training["started_from"]["sha256"] == state["init"]["sha256"]
    # Its INT8 copy: calibrated on the run's training faces, checked on its held-out ones.
    assert fer_train(["quantize", str(model), "-o", str(tmp_path / "my-int8.onnx"),
                      "--data", str(run / "faces.npz")]) == 0

    out = tmp_path / "labels.csv"
    run_cli("label", str(photos / "Happy"), "-o", str(out), "--model", str(model), "--quiet", check=True)
    labelled = read_csv(out)
    assert len(labelled) == 5 and all(row["status"] == "ok" for row in labelled)
    probabilities = np.array([[float(row[name]) for name in EMOTIONS] for row in labelled])
    assert np.allclose(probabilities.sum(axis=1), 1, atol=1e-3)
