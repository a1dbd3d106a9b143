"""fer-train finetune: a folder of real photos (scikit-image's astronaut and LFW faces, enlarged onto a canvas) or a
reviewed labelling CSV (real photos and a real PyAV video labelled by `fer-batch label`), the recipe's pieces, a
folder's convention learnt, and the errors. The README's fine-tuning block runs in test_finetune_readme.py."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import ASTRONAUT_FACE, REPO, portrait_frames, read_csv, write_av_video

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


# --- the photo folder -------------------------------------------------------------------------------------------

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


# --- the recipe's pieces ------------------------------------------------------------------------------------------

def test_default_steps_follow_the_folder_size_within_bounds(monkeypatch):
    from training.finetune import MAX_STEPS, MIN_STEPS, PASSES, FinetuneError, default_steps

    monkeypatch.delenv("FER_FINETUNE_STEPS", raising=False)
    assert default_steps(108, 32) == round(PASSES * 108 / 32) == 135
    assert default_steps(10, 32) == MIN_STEPS and default_steps(100_000, 32) == MAX_STEPS
    monkeypatch.setenv("FER_FINETUNE_STEPS", "3")
    assert default_steps(108, 32) == 3
    monkeypatch.setenv("FER_FINETUNE_STEPS", "many")
    with pytest.raises(FinetuneError, match="FER_FINETUNE_STEPS='many'"):
        default_steps(108, 32)


def test_stratified_folds_spread_every_class_and_are_seeded():
    from training.finetune import stratified_folds

    labels = np.array([3] * 15 + [6] * 14 + [1] * 5 + [0] * 2)
    folds = stratified_folds(labels, 4, seed=1)
    assert (folds == stratified_folds(labels, 4, seed=1)).all()
    assert not (folds == stratified_folds(labels, 4, seed=2)).all()
    for label, count in ((3, 15), (6, 14), (1, 5)):
        per_fold = np.bincount(folds[labels == label], minlength=4)
        assert per_fold.max() - per_fold.min() <= 1 and per_fold.sum() == count
    sizes = np.bincount(folds, minlength=4)
    assert sizes.max() - sizes.min() <= 1  # 36 faces: 9 a fold


def test_balanced_batches_show_every_class_equally_and_every_photo():
    from training.finetune import BalancedBatches

    labels = np.array([3] * 40 + [1] * 4 + [6] * 10)
    batches = BalancedBatches(labels, 12, np.random.default_rng(0))
    rows = np.concatenate([batches.next() for _ in range(20)])
    assert np.bincount(labels[rows], minlength=7)[[1, 3, 6]].tolist() == [80, 80, 80]
    seen = np.bincount(rows, minlength=len(labels))
    assert seen[labels == 1].min() == seen[labels == 1].max() == 20  # a rare class's 4 photos in turn
    assert seen[labels == 3].min() >= 1  # a common class's every photo comes round
    assert (np.bincount(labels[batches.next()], minlength=7)[[1, 3, 6]] == 4).all()


def test_choose_steps_leaves_the_model_unless_training_helps_and_prefers_fewer_steps():
    from training.finetune import choose_steps

    def scores(recalls, spread=0.0):
        return {count: {"mean_recall": r, "accuracy": r, "fold_mean_recall": [r - spread, r + spread]}
                for count, r in recalls.items()}

    assert choose_steps(scores({0: 0.50, 30: 0.48, 60: 0.45})) == 0
    assert choose_steps(scores({0: 0.50, 30: 0.50, 60: 0.50})) == 0  # a tie: unchanged
    assert choose_steps(scores({0: 0.40, 30: 0.55, 60: 0.60})) == 60  # no spread between folds: the best
    # Within one standard error of the best (folds 0.50 and 0.70: 0.1), the fewest steps; never one no better than 0.
    assert choose_steps(scores({0: 0.40, 30: 0.55, 60: 0.60}, spread=0.1)) == 30
    assert choose_steps(scores({0: 0.52, 30: 0.50, 60: 0.60}, spread=0.1)) == 60


def test_a_folders_convention_is_learnt(real_faces):
    """Faces the model calls neutral, labelled "sad" in the folder (with faces it calls happy, labelled happy): after
    fine-tuning, other people's faces that the model called neutral are called sad far more often."""
    from fer_batch.classify import EmotionClassifier, default_model_path
    from training.finetune import FinetuneConfig, Trainer, precision_of
    from training.warmstart import keras_from_onnx

    faces = real_faces[:100]
    called = EmotionClassifier(default_model_path("float")).predict(faces).argmax(1)
    neutral, happy = np.flatnonzero(called == EMOTIONS.index("neutral")), np.flatnonzero(called == 3)
    assert len(neutral) >= 30 and len(happy) >= 10
    training = np.concatenate([neutral[::2], happy])
    labels = np.array([EMOTIONS.index("sad")] * len(neutral[::2]) + [3] * len(happy))
    others = faces[neutral[1::2]]  # other people the model calls neutral, never trained on

    start = keras_from_onnx(default_model_path("float"), faces)
    trainer = Trainer(start, FinetuneConfig(photos="", out="", learning_rate=3e-4), precision_of("auto"), 16)
    before = trainer.predict(others)
    trainer.fit(faces[training], labels, steps=10, seed=0)
    sad = EMOTIONS.index("sad")
    sad_before, sad_after = (float((p.argmax(1) == sad).mean()) for p in (before, trainer.predict(others)))
    assert sad_before < 0.1 and sad_after > sad_before + 0.4, (sad_before, sad_after)
    trainer.reset()  # back to the starting model, as each fold and the final run start
    assert np.abs(trainer.predict(others) - before).max() < 1e-6


# --- a reviewed labelling CSV ---------------------------------------------------------------------------------------

REVIEW_EXTRA = ("decided_by", "model_emotion", "model_confidence")


def write_reviewed(path: Path, rows: list[dict], decisions: list[tuple[str, str]]) -> Path:
    """The labelling ``rows`` with the review's three columns appended: (decided_by, emotion) per row, "" to leave
    the model's label (status "not_a_face" for that decision)."""
    from fer_batch.writer import COLUMNS

    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=[*COLUMNS, *REVIEW_EXTRA])
        writer.writeheader()
        for row, (decided_by, emotion) in zip(rows, decisions):
            out = {**row, "decided_by": decided_by, "model_emotion": row["emotion"],
                   "model_confidence": row["confidence"]}
            if emotion == "not_a_face":
                out["status"] = "not_a_face"
            elif emotion:
                out["emotion"] = emotion
            writer.writerow(out)
    return path


@pytest.fixture(scope="module")
def labelled(tmp_path_factory, astronaut):
    """Real photos and a real phone video (PyAV: H.264, rotated, variable frame rate) labelled by `fer-batch label`
    with the float model, run from the folder holding them (sources relative, as a user's are)."""
    root = tmp_path_factory.mktemp("labelled")
    (root / "media").mkdir()
    cv2.imwrite(str(root / "media" / "astronaut.jpg"), astronaut)
    for index in range(4):
        cv2.imwrite(str(root / "media" / f"lfw{index}.png"), lfw_photo(index))
    write_av_video(root / "media" / "clip.mp4", portrait_frames(astronaut, count=12), rotation=90, gop=6)
    result = subprocess.run([sys.executable, "-m", "fer_batch", "label", "media", "-o", "out.csv", "--precision",
                             "float", "--quiet"], cwd=root, capture_output=True, text=True, timeout=180,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stderr
    rows = read_csv(root / "out.csv")
    assert {row["status"] for row in rows} == {"ok"} and sum(row["frame"] != "" for row in rows) == 12
    return root, rows


def test_reviewed_faces_are_cut_as_labelling_cut_them(labelled, monkeypatch):
    """The crop from each recorded box (a photo, or frame N of the video) gives the probabilities labelling wrote."""
    from fer_batch.recognizer import EmotionRecognizer
    from training.finetune import cut_reviewed, read_reviewed

    root, rows = labelled
    reviewed = write_reviewed(root / "reviewed.csv", rows, [("person", "")] * len(rows))
    monkeypatch.chdir(root)
    faces, left_out = read_reviewed(reviewed)
    assert len(faces) == len(rows) and not any(left_out.values())
    video = [face for face in faces if face.frame is not None]
    assert sorted(face.frame for face in video) == list(range(12)) and video[0].path == root / "media" / "clip.mp4"
    crops = cut_reviewed(faces, EmotionRecognizer(precision="float"))
    assert crops.shape == (len(rows), 48, 48) and {face.status for face in faces} == {"face"}
    recognizer = EmotionRecognizer(precision="float")
    written = np.array([[float(row[name]) for name in EMOTIONS] for row in rows])
    difference = np.abs(recognizer.classifier.predict(crops) - written).max()
    assert difference < 0.05, difference  # the CSV's boxes are rounded to whole pixels


def test_with_align_the_face_is_found_again_for_its_landmarks(astronaut):
    """A run labelled with --align cropped on landmarks the CSV does not keep: they are found again around the box."""
    from fer_batch.recognizer import EmotionRecognizer
    from training.finetune import crop_at_box

    aligned = EmotionRecognizer(precision="float", align=True)
    found = aligned.detector.detect(astronaut)
    labelling = aligned.crops(astronaut, found)[0].astype(np.float32)
    x1, y1, x2, y2 = found.boxes[0]
    box = (round(float(x1)), round(float(y1)), round(float(x2 - x1)), round(float(y2 - y1)))  # as the CSV keeps it
    again = np.abs(crop_at_box(astronaut, box, aligned) - labelling).mean()
    boxed = np.abs(crop_at_box(astronaut, box, EmotionRecognizer(precision="float")) - labelling).mean()
    assert again < 2.0 and boxed > 3 * again, (again, boxed)


def test_read_reviewed_takes_people_s_decisions_only(labelled, tmp_path):
    from training.finetune import read_reviewed

    root, rows = labelled
    decisions = [("person", "disgust"), ("person", "not_a_face"), ("model", ""), ("person", "")] + \
        [("model", "")] * (len(rows) - 4)
    reviewed = write_reviewed(tmp_path / "reviewed.csv", rows, decisions)
    faces, left_out = read_reviewed(reviewed, root=root)  # sources relative to where labelling ran
    assert [face.emotion for face in faces] == ["disgust", rows[3]["emotion"]]
    assert [face.line for face in faces] == [2, 5]
    assert left_out == {"decided by the model": len(rows) - 3, "not a face": 1, "no face or error": 0}


@pytest.mark.parametrize("change, message", [
    ({"drop": "decided_by"}, "no column decided_by (a labelling CSV nobody reviewed"),
    ({"source": "gone/away.jpg"}, "line 2: source gone/away.jpg not found"),
    ({"emotion": "grumpy"}, "line 2: emotion 'grumpy' is not one of"),
    ({"frame": ""}, "is a video but the row has no frame number"),
    ({"decided_by": "model"}, "no face a person labelled"),
])
def test_bad_reviewed_csvs_are_clear_errors(labelled, tmp_path, change, message):
    from training.finetune import FinetuneError, read_reviewed

    root, rows = labelled
    row = dict(next(row for row in rows if row["frame"] != "")) if "frame" in change else dict(rows[0])
    row.update({key: value for key, value in change.items() if key != "drop"})
    decided = row.pop("decided_by", "person")
    reviewed = write_reviewed(tmp_path / "reviewed.csv", [row], [(decided, "")])
    if "drop" in change:
        text = reviewed.read_text().splitlines()
        header = text[0].split(",")
        keep = [i for i, name in enumerate(header) if name != change["drop"]]
        reviewed.write_text("\n".join(",".join(line.split(",")[i] for i in keep) for line in text) + "\n")
    with pytest.raises(FinetuneError, match=re.escape(message)) as error:
        read_reviewed(reviewed, root=root)
    assert str(reviewed) in str(error.value)


@pytest.mark.slow
def test_finetune_from_a_reviewed_csv(labelled, tmp_path, monkeypatch, capsys):
    """`fer-train finetune REVIEWED.csv`: the faces people labelled, cut from photos and video frames, train a run
    like a photo folder's."""
    from training.cli import main as fer_train_main

    root, rows = labelled
    decisions = [("person", "sad" if index % 2 else "angry") for index in range(len(rows) - 2)] + \
        [("person", "not_a_face"), ("model", "")]
    reviewed = write_reviewed(tmp_path / "reviewed.csv", rows, decisions)
    monkeypatch.setenv("FER_FINETUNE_STEPS", "2")
    run = tmp_path / "run"
    assert fer_train_main(["finetune", str(reviewed), "--out", str(run), "--root", str(root), "--folds", "2"]) == 0
    printed = capsys.readouterr().out
    assert "2-fold cross-validation" in printed and any(line.startswith("angry") for line in printed.splitlines())
    report = json.loads((run / "finetune.json").read_text())
    assert report["faces"] == len(rows) - 2 and report["classes"] == ["angry", "sad"]
    assert report["rows_left_out"] == {"decided by the model": 1, "not a face": 1, "no face or error": 0}
    listed = read_csv(run / "photos.csv")
    assert sum(row["frame"] != "" for row in listed) == sum(row["frame"] != "" for row in rows[:-2])
    assert {row["fold"] for row in listed} == {"1", "2"}
    state = json.loads((run / "state.json").read_text())
    assert state["init"]["file"] == "emotion.onnx" and state["finetune"]["kind"] == "reviewed CSV"
