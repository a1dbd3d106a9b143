"""fer-batch label, black-box: real faces, real videos written here, every kind of bad file, kill -9 + --resume."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest
from conftest import ASTRONAUT_FACE, REPO, moving_face_frames, paste, read_csv, run_cli, write_video

from fer_batch.labels import EMOTIONS
from fer_batch.writer import COLUMNS


def check_row(row: dict) -> None:
    """Every row is well-formed: ok rows carry a box and seven probabilities that sum to 1."""
    assert list(row) == list(COLUMNS)
    if row["status"] == "ok":
        probabilities = [float(row[e]) for e in EMOTIONS]
        assert abs(sum(probabilities) - 1) < 1e-6
        assert row["emotion"] == EMOTIONS[int(np.argmax(probabilities))]
        assert float(row["confidence"]) == max(probabilities)
        assert int(row["w"]) > 0 and int(row["h"]) > 0 and 0 < float(row["face_score"]) <= 1
        assert row["error"] == ""
    elif row["status"] == "no_face":
        assert row["emotion"] == row["x"] == row["face"] == ""
    else:
        assert row["status"] == "error" and row["error"]


def test_labels_the_astronaut_photo(astronaut_jpg, tmp_path):
    out = tmp_path / "out.csv"
    result = run_cli("label", str(astronaut_jpg), "-o", str(out), check=True)
    assert "1 items, 1 faces, 0 with no face, 0 errors" in result.stderr
    assert result.stdout == ""  # stdout stays clean for data
    rows = read_csv(out)
    assert len(rows) == 1
    row = rows[0]
    check_row(row)
    assert row["source"] == str(astronaut_jpg) and row["frame"] == row["time_s"] == "" and row["face"] == "0"
    x1, y1, x2, y2 = ASTRONAUT_FACE
    assert abs(int(row["x"]) - x1) < 15 and abs(int(row["y"]) - y1) < 15
    assert abs(int(row["x"]) + int(row["w"]) - x2) < 15 and abs(int(row["y"]) + int(row["h"]) - y2) < 15
    # Eileen Collins smiles in this NASA portrait: the shipped model must see it.
    assert row["emotion"] == "happy"


def test_video_frames_timestamps_and_no_face_rows(face_video, tmp_path):
    out = tmp_path / "video.csv"
    run_cli("label", str(face_video), "-o", str(out), "--quiet", check=True)
    rows = read_csv(out)
    for row in rows:
        check_row(row)
    assert [int(r["frame"]) for r in rows] == list(range(30))  # one face or one no_face row per frame
    for row in rows:
        assert float(row["time_s"]) == pytest.approx(int(row["frame"]) / 25.0, abs=1e-3)
    blank = {9, 19, 29}
    assert {int(r["frame"]) for r in rows if r["status"] == "no_face"} == blank
    assert all(r["status"] == "ok" for r in rows if int(r["frame"]) not in blank)
    xs = [int(r["x"]) for r in rows if r["status"] == "ok"]
    assert xs[-1] - xs[0] > 150  # the box follows the moving face

    every = tmp_path / "every.csv"
    run_cli("label", str(face_video), "-o", str(every), "--every", "4", "--quiet", check=True)
    assert [int(r["frame"]) for r in read_csv(every)] == list(range(0, 30, 4))


def test_phone_video_true_times_and_upright_boxes(phone_video, tmp_path):
    """A portrait phone clip (stored sideways with a rotation tag, variable frame rate, B-frames): time_s is each
    frame's own presentation time and boxes are in the upright picture a player shows."""
    from conftest import PHONE_TIMES

    for workers in ("1", "2"):
        out = tmp_path / f"phone{workers}.csv"
        run_cli("label", str(phone_video), "-o", str(out), "--workers", workers, "--quiet", check=True)
        rows = read_csv(out)
        assert [int(r["frame"]) for r in rows] == list(range(len(PHONE_TIMES)))
        assert [float(r["time_s"]) for r in rows] == pytest.approx(PHONE_TIMES, abs=1e-3)
        for row in rows:
            check_row(row)
            index = int(row["frame"])
            assert row["status"] == "ok"  # the face is upright: RetinaFace finds it in every frame
            # Where the face was pasted in the upright 360x480 picture (see conftest.portrait_frames).
            assert abs(int(row["x"]) - (106 + 2 * index)) < 15 and abs(int(row["y"]) - (40 + 6 * index)) < 15
            assert int(row["x"]) + int(row["w"]) <= 360 and int(row["y"]) + int(row["h"]) <= 480


def test_every_bad_input_is_a_row_and_the_batch_goes_on(tmp_path, astronaut):
    from PIL import Image

    folder = tmp_path / "mixed"
    folder.mkdir()
    good = folder / "good.jpg"
    cv2.imwrite(str(good), astronaut)
    (folder / "zero.jpg").write_bytes(b"")
    (folder / "truncated.jpg").write_bytes(good.read_bytes()[:2000])
    (folder / "text.png").write_text("I am a text file with an image extension\n")
    cv2.imwrite(str(folder / "tiny.png"), np.full((2, 2, 3), 128, np.uint8))
    cv2.imwrite(str(folder / "alpha.png"), cv2.cvtColor(astronaut, cv2.COLOR_BGR2BGRA))
    cv2.imwrite(str(folder / "depth16.png"), astronaut.astype(np.uint16) * 257)
    cv2.imwrite(str(folder / "grey.png"), cv2.cvtColor(astronaut, cv2.COLOR_BGR2GRAY))
    Image.fromarray(cv2.cvtColor(astronaut, cv2.COLOR_BGR2RGB)).convert("P").save(folder / "palette.png")
    huge = np.full((6000, 8000, 3), 90, np.uint8)
    paste(huge, cv2.resize(astronaut, (2048, 2048)), 3000, 1500)
    cv2.imwrite(str(folder / "huge.jpg"), huge)
    cv2.imwrite(str(folder / "ünïcödé 顔.jpg"), astronaut)
    (folder / "zero.mp4").write_bytes(b"")
    (folder / "text.mp4").write_text("not a video")
    full = write_video(tmp_path / "full.avi", moving_face_frames(astronaut, 40, blank_every=0), fourcc="MJPG")
    (folder / "ends_early.avi").write_bytes(full.read_bytes()[: full.stat().st_size // 2])

    out = tmp_path / "mixed.csv"
    result = run_cli("label", str(folder), "-o", str(out), "--quiet")
    assert result.returncode == 0, result.stderr
    rows = read_csv(out)
    for row in rows:
        check_row(row)
    by_name = {}
    for row in rows:
        by_name.setdefault(os.path.basename(row["source"]), []).append(row)

    def only(name):
        assert len(by_name[name]) == 1, by_name[name]
        return by_name[name][0]

    assert "empty file" in only("zero.jpg")["error"] and only("zero.jpg")["status"] == "error"
    assert "not a decodable image" in only("truncated.jpg")["error"]
    assert "not a decodable image" in only("text.png")["error"]
    assert only("tiny.png")["status"] == "no_face"
    for name in ("good.jpg", "alpha.png", "depth16.png", "grey.png", "palette.png", "huge.jpg", "ünïcödé 顔.jpg"):
        assert only(name)["status"] == "ok", (name, only(name))
    big = only("huge.jpg")
    assert 3000 < int(big["x"]) < 3000 + 2048 and int(big["w"]) > 300  # box in the original's pixels
    assert "empty file" in only("zero.mp4")["error"]
    assert "cannot open video" in only("text.mp4")["error"]
    early = by_name["ends_early.avi"]
    assert early[-1]["status"] == "error" and "ended early" in early[-1]["error"]
    assert sum(r["status"] == "ok" for r in early) >= 10


def test_kill_9_then_resume_gives_the_uninterrupted_result(tmp_path, astronaut):
    folder = tmp_path / "many"
    folder.mkdir()
    for index in range(40):
        image = np.full((360, 480, 3), 20 + index, np.uint8)
        paste(image, cv2.resize(astronaut, (300, 300)), 10 + 3 * index, 20)
        cv2.imwrite(str(folder / f"img_{index:02d}.jpg"), image)
    write_video(folder / "clip.mp4", moving_face_frames(astronaut, 120))  # long enough to be killed inside
    reference = tmp_path / "reference.csv"
    run_cli("label", str(folder), "-o", str(reference), "--quiet", check=True)

    out = tmp_path / "killed.csv"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen([sys.executable, "-m", "fer_batch", "label", str(folder), "-o", str(out), "--quiet",
                                "--threads", "1"], env=env, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and (not out.exists() or len(out.read_bytes().splitlines()) < 52):
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    partial = read_csv(out)
    assert 51 <= len(partial) < len(read_csv(reference)), "the kill must land in the middle of the video"
    assert out.read_bytes().endswith(b"\n")  # only whole items

    result = run_cli("label", str(folder), "-o", str(out), "--quiet")
    assert result.returncode == 2 and "--resume" in result.stderr  # never silently overwritten
    run_cli("label", str(folder), "-o", str(out), "--quiet", "--resume", check=True)
    resumed, expected = read_csv(out), read_csv(reference)
    key = lambda r: (r["source"], r["frame"], r["face"])  # noqa: E731
    assert len(resumed) == len(expected)
    assert len({key(r) for r in resumed}) == len(resumed)  # no duplicates
    same = lambda r: (key(r), r["track"], r["x"], r["emotion"], r["status"])  # noqa: E731
    assert sorted(map(same, resumed)) == sorted(map(same, expected))  # tracks continue across the resume


def test_resume_refuses_settings_that_change_the_rows(tmp_path, astronaut_jpg):
    out = tmp_path / "out.csv"
    run_cli("label", str(astronaut_jpg), "-o", str(out), "--quiet", check=True)
    written = out.read_bytes()
    changed = run_cli("label", str(astronaut_jpg), "-o", str(out), "--quiet", "--resume", "--detect-every", "4",
                      "--min-face", "30")
    assert changed.returncode == 2 and len(changed.stderr.strip().splitlines()) == 1, changed.stderr
    assert "--detect-every 8 (now 4)" in changed.stderr and "--min-face 20 (now 30)" in changed.stderr
    other_model = run_cli("label", str(astronaut_jpg), "-o", str(out), "--quiet", "--resume", "--precision", "float")
    assert other_model.returncode == 2 and "emotion-int8.onnx" in other_model.stderr
    assert "a different file" in other_model.stderr
    assert out.read_bytes() == written  # refused before anything was touched
    # Settings that only change speed may differ; --force starts over with anything.
    run_cli("label", str(astronaut_jpg), "-o", str(out), "--quiet", "--resume", "--workers", "1", "--batch", "1",
            check=True)
    assert out.read_bytes() == written
    run_cli("label", str(astronaut_jpg), "-o", str(out), "--quiet", "--force", "--detect-every", "4", check=True)
    assert json.loads((tmp_path / "out.run.json").read_text())["settings"]["detect_every"] == 4


def test_usage_errors_exit_2_with_one_line(tmp_path, astronaut_jpg):
    out = tmp_path / "out.csv"
    missing = run_cli("label", str(tmp_path / "nowhere"), "-o", str(out))
    assert missing.returncode == 2 and "no such file or folder" in missing.stderr
    unknown = run_cli("label", str(astronaut_jpg), "-o", str(out), "--frobnicate")
    assert unknown.returncode == 2 and "unrecognized arguments: --frobnicate" in unknown.stderr
    fake = tmp_path / "fake.onnx"
    fake.write_text("not a model")
    bad_model = run_cli("label", str(astronaut_jpg), "-o", str(out), "--model", str(fake))
    assert bad_model.returncode == 2 and "not a loadable ONNX model" in bad_model.stderr
    from retinaface.weights import WEIGHTS

    foreign = tmp_path / "detector.onnx"
    foreign.write_bytes(WEIGHTS)  # a valid ONNX model, but not an emotion model
    wrong = run_cli("label", str(astronaut_jpg), "-o", str(out), "--model", str(foreign))
    assert wrong.returncode == 2 and "not a fer-batch emotion model" in wrong.stderr
    blocker = tmp_path / "file"
    blocker.write_text("x")
    unwritable = run_cli("label", str(astronaut_jpg), "-o", str(blocker / "out.csv"))
    assert unwritable.returncode == 2 and "cannot write" in unwritable.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    nothing = run_cli("label", str(empty), "-o", str(out))
    assert nothing.returncode == 2 and "no images or videos found" in nothing.stderr
    for result in (missing, unknown, bad_model, wrong, unwritable, nothing):
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_detector_choices_and_pre_cropped_faces(tmp_path, astronaut, astronaut_jpg):
    aligned = tmp_path / "aligned.csv"
    run_cli("label", str(astronaut_jpg), "-o", str(aligned), "--align", "--quiet", check=True)
    assert read_csv(aligned)[0]["emotion"] == "happy"
    out = tmp_path / "haar.csv"
    run_cli("label", str(astronaut_jpg), "-o", str(out), "--detector", "haar", "--quiet", check=True)
    assert read_csv(out)[0]["status"] == "ok"
    crop = tmp_path / "crop.png"
    cv2.imwrite(str(crop), cv2.resize(cv2.cvtColor(astronaut[57:177, 170:280], cv2.COLOR_BGR2GRAY), (48, 48)))
    out = tmp_path / "none.csv"
    run_cli("label", str(crop), "-o", str(out), "--detector", "none", "--quiet", check=True)
    row = read_csv(out)[0]
    assert (row["x"], row["y"], row["w"], row["h"]) == ("0", "0", "48", "48") and row["status"] == "ok"
    # A pre-cropped face reaches the model untouched: the same probabilities as the classifier on its own.
    from fer_batch.classify import EmotionClassifier

    expected = EmotionClassifier().predict(cv2.imread(str(crop), cv2.IMREAD_GRAYSCALE)[None])[0]
    np.testing.assert_allclose([float(row[e]) for e in EMOTIONS], expected, atol=2e-6)


def test_works_from_any_folder_with_the_bundled_model(tmp_path, astronaut_jpg):
    shutil.copy(astronaut_jpg, tmp_path / "a.jpg")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-m", "fer_batch", "label", "a.jpg", "-o", "out.csv", "--quiet"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert read_csv(tmp_path / "out.csv")[0]["source"] == "a.jpg"


def test_precision_int8_is_the_default_labels_like_float_and_every_run_names_its_model(tmp_path, astronaut_jpg):
    import hashlib

    from fer_batch.classify import META_TRAINING, EmotionClassifier, default_model_path

    int8, float_model = default_model_path("int8"), default_model_path("float")
    assert default_model_path() == int8 and int8.name == "emotion-int8.onnx" and float_model.name == "emotion.onnx"
    training = json.loads(EmotionClassifier(int8).session.get_modelmeta().custom_metadata_map[META_TRAINING])
    # Quantized from the float model shipped beside it: re-run `fer-train quantize` whenever that one changes.
    assert training["int8_quantization"]["source_sha256"] == hashlib.sha256(float_model.read_bytes()).hexdigest()
    rows = {}
    for name, extra, path, precision in (("default", (), int8, "int8"),
                                         ("float", ("--precision", "float"), float_model, "float"),
                                         ("int8", ("--precision", "int8"), int8, "int8"),
                                         ("given", ("--model", str(float_model)), float_model, "as given")):
        out = tmp_path / f"{name}.csv"
        run_cli("label", str(astronaut_jpg), "-o", str(out), "--quiet", "--report", str(tmp_path / f"{name}.html"),
                *extra, check=True)
        rows[name] = read_csv(out)
        info = json.loads(out.with_suffix(".run.json").read_text())
        assert info["model"] == {"path": str(path), "precision": precision,
                                 "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}  # what --resume compares
        assert f"<th>model</th><td>{path.name} ({precision})</td>" in (tmp_path / f"{name}.html").read_text()
    assert rows["default"] == rows["int8"] and rows["given"] == rows["float"]
    # Worker processes (and Ray actors) resolve the bundled copy themselves from the same option.
    for extra in ((), ("--precision", "float")):
        out = tmp_path / "workers.csv"
        run_cli("label", str(astronaut_jpg), "-o", str(out), "--quiet", "--force", "--workers", "2", *extra,
                check=True)
        assert read_csv(out) == rows["float" if extra else "default"]
    assert len(rows["float"]) == len(rows["int8"]) == 1
    float_row, int8_row = rows["float"][0], rows["int8"][0]
    assert int8_row["emotion"] == float_row["emotion"] and int8_row["x"] == float_row["x"]
    assert max(abs(float(int8_row[e]) - float(float_row[e])) for e in EMOTIONS) < 0.05
    # A model file has its own precision; --int8 is gone (0.3) with a message that says what replaced it.
    for extra, word in ((("--precision", "float", "--model", str(int8)), "--precision"), (("--int8",), "--int8")):
        result = run_cli("label", str(astronaut_jpg), "-o", str(tmp_path / "x.csv"), *extra)
        assert result.returncode == 2 and word in result.stderr and not (tmp_path / "x.csv").exists()


def test_recognizer_takes_a_precision_or_a_model_not_both(astronaut):
    from fer_batch import EmotionRecognizer
    from fer_batch.classify import default_model_path

    default, float_model = EmotionRecognizer(threads=1), EmotionRecognizer(threads=1, precision="float")
    assert default.classifier.path == default_model_path("int8")
    assert float_model.classifier.path == default_model_path("float")
    assert default.predict(astronaut)[0].label == float_model.predict(astronaut)[0].label
    with pytest.raises(ValueError, match="precision 'float'"):
        EmotionRecognizer(model=default_model_path("float"), precision="float")
    with pytest.raises(ValueError, match="unknown precision 'fp16'"):
        EmotionRecognizer(precision="fp16")
    # label_files says the same, as a usage error (exit status 2 from the CLI), before any worker starts.
    from fer_batch.runner import LabelConfig, UsageError, label_files

    for config, message in ((LabelConfig(model=str(default_model_path("float")), precision="float"), "precision 'f"),
                            (LabelConfig(precision="fp16"), "unknown precision 'fp16'")):
        with pytest.raises(UsageError, match=message):
            label_files([str(REPO / "examples")], REPO / "never-written.csv", config)


def test_detect_every_searches_videos_around_known_faces_and_images_in_full(tmp_path, face_video, astronaut_jpg):
    from fer_batch.config import LabelConfig

    rows = {}
    for every in (1, LabelConfig.detect_every):
        out = tmp_path / f"every{every}.csv"
        extra = ("--detect-every", "1") if every == 1 else ()  # the default otherwise
        run_cli("label", str(face_video), str(astronaut_jpg), "-o", str(out), "--quiet", *extra, check=True)
        rows[every] = read_csv(out)
        assert json.loads(out.with_suffix(".run.json").read_text())["settings"]["detect_every"] == every
    full, windows = rows[1], rows[LabelConfig.detect_every]
    assert LabelConfig.detect_every > 1
    key = ("source", "frame", "status", "face", "track", "emotion")
    assert [tuple(r[k] for k in key) for r in windows] == [tuple(r[k] for k in key) for r in full]
    for a, b in zip(windows, full):
        check_row(a)
        if a["source"].endswith(".jpg"):
            assert a == b  # images: the whole image, always
        elif a["status"] == "ok":
            assert all(abs(int(a[k]) - int(b[k])) <= 6 for k in ("x", "y", "w", "h"))
    assert any(a != b for a, b in zip(windows, full) if a["status"] == "ok")  # found around the faces before
    result = run_cli("label", str(face_video), "-o", str(tmp_path / "x.csv"), "--detect-every", "0")
    assert result.returncode == 2 and "--detect-every" in result.stderr


def test_import_does_not_pull_in_tensorflow():
    code = "import sys, fer_batch, fer_batch.cli, fer_batch.runner; print('tensorflow' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert result.stdout.strip() == "False", result.stderr
