"""Worker processes (fer_batch/engines.py) against the in-process engine, black-box through the CLI: the same CSV
on images and on videos split into frame ranges, --resume after kill -9, crashed workers, Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import REPO, moving_face_frames, paste, read_csv, run_cli, write_av_video, write_video

from fer_batch.labels import EMOTIONS
from fer_batch.runner import IMAGES_PER_UNIT, LabelConfig, plan
from fer_batch.sources import discover
from fer_batch.video import VideoReader


@pytest.fixture(scope="module")
def media(tmp_path_factory, astronaut) -> Path:
    """12 photos with one or two faces, an H.264 video with B-frames (96 frames, keyframe every 12) and an
    MPEG-4 Part 2 one, all in one folder."""
    folder = tmp_path_factory.mktemp("media")
    rng = np.random.default_rng(3)
    for index in range(12):
        image = np.full((360, 480, 3), int(rng.integers(20, 200)), np.uint8)
        paste(image, cv2.resize(astronaut, (200, 200)), int(rng.integers(0, 260)), int(rng.integers(0, 150)))
        if index % 3 == 0:
            paste(image, cv2.resize(astronaut, (120, 120))[:, ::-1], 340, 220)
        cv2.imwrite(str(folder / f"photo_{index:02d}.jpg"), image)
    write_av_video(folder / "talk.mp4", moving_face_frames(astronaut, 96, blank_every=17), bframes=3)
    write_video(folder / "old.avi", moving_face_frames(astronaut, 40), fourcc="MJPG")
    return folder


@pytest.fixture(scope="module")
def reference(media, tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("ref") / "one.csv"
    run_cli("label", str(media), "-o", str(out), "--workers", "1", "--quiet", check=True)
    return read_csv(out)


def assert_same_csv(rows: list[dict], expected: list[dict]) -> None:
    """Same rows in the same order; probabilities equal to within 1e-4 (batches of other sizes may round apart)."""
    assert len(rows) == len(expected)
    for row, want in zip(rows, expected):
        for column, value in want.items():
            if column in EMOTIONS or column == "confidence":
                assert value == "" and row[column] == "" or abs(float(row[column]) - float(value)) <= 1e-4, column
            else:
                assert row[column] == value, (column, row, want)


def test_plan_splits_videos_at_keyframes_and_groups_images(media):
    sources, _ = discover([str(media)])
    units = plan(sources, set(), LabelConfig(batch=4), workers=2)
    images = [u for u in units if not u.is_video]
    assert sum(len(u.sources) for u in images) == 12 and all(len(u.sources) <= IMAGES_PER_UNIT for u in images)
    assert len(images) == -(-12 // IMAGES_PER_UNIT)
    talk = [u for u in units if u.sources[0].name.endswith("talk.mp4")]
    assert len(talk) >= 2 and talk[0].start == 0 and talk[-1].stop is None and talk[-1].last
    assert all(a.stop == b.start for a, b in zip(talk, talk[1:]))
    with VideoReader(talk[0].sources[0].path) as reader:
        keyframes = set(reader.keyframes())
    assert all(u.start in keyframes for u in talk)  # ranges start at keyframes: nothing is decoded twice
    assert sum(u.planned_items() for u in talk) == 96
    resumed = plan(sources, {(talk[0].sources[0].name, str(f)) for f in range(0, 40)}, LabelConfig(batch=4), 2)
    assert sum(u.planned_items() for u in resumed if u.sources[0].name.endswith("talk.mp4")) == 56


@pytest.mark.parametrize("workers", ["2", "3"])
def test_workers_write_the_same_csv_as_one_process(media, reference, tmp_path, workers):
    out = tmp_path / "many.csv"
    result = run_cli("label", str(media), "-o", str(out), "--workers", workers, check=True)
    assert "0 errors" in result.stderr
    rows = read_csv(out)
    assert_same_csv(rows, reference)
    talk = [r for r in rows if r["source"].endswith("talk.mp4")]
    assert [int(r["frame"]) for r in talk if r["face"] in ("", "0")] == list(range(96))  # exact frame numbers
    assert len({r["track"] for r in talk if r["track"]}) == 1  # one person, one track across the ranges


def workers_of(pid: int) -> list[int]:
    """PIDs of the worker processes of ``pid``: its children started by multiprocessing's spawn (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                command = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if int(fields[1]) == pid and b"spawn_main" in command:
                found.append(int(entry.name))
    return found


def start_label(*args: str, env_extra: dict | None = None) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), **(env_extra or {})}
    return subprocess.Popen([sys.executable, "-m", "fer_batch", "label", *args, "--quiet"], env=env,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def wait_for_rows(out: Path, rows: int, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and (not out.exists() or len(out.read_bytes().splitlines()) < rows):
        assert process.poll() is None, process.stderr.read()
        time.sleep(0.02)


def test_kill_9_then_resume_with_workers(media, reference, tmp_path):
    out = tmp_path / "killed.csv"
    process = start_label(str(media), "-o", str(out), "--workers", "2")
    wait_for_rows(out, 30, process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    partial = read_csv(out)
    assert 29 <= len(partial) < len(reference) and out.read_bytes().endswith(b"\n")
    run_cli("label", str(media), "-o", str(out), "--workers", "2", "--resume", "--quiet", check=True)
    assert_same_csv(read_csv(out), reference)


def test_a_worker_killed_mid_run_is_replaced_and_nothing_is_lost(media, reference, tmp_path):
    out = tmp_path / "crash.csv"
    process = start_label(str(media), "-o", str(out), "--workers", "2")
    wait_for_rows(out, 10, process)
    workers = workers_of(process.pid)
    assert workers, "no worker processes found"
    os.kill(workers[0], signal.SIGSEGV)  # as a decoder crash would end it
    assert process.wait(timeout=180) == 0, process.stderr.read()
    assert_same_csv(read_csv(out), reference)  # its unit was retried on a fresh worker
    assert '"restarts": 1' in out.with_name("crash.run.json").read_text()


def test_a_file_that_always_crashes_its_worker_becomes_an_error_row(media, reference, tmp_path):
    # A real decoder segfault on demand: every process of this run (workers included) reads images through a
    # wrapper that kills its own process with SIGSEGV on one file name.
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(
        "import os, signal\n"
        "import fer_batch.sources as sources\n"
        "_read = sources.read_image\n"
        "def read_image(path):\n"
        "    if 'photo_05' in str(path):\n"
        "        os.kill(os.getpid(), signal.SIGSEGV)\n"
        "    return _read(path)\n"
        "sources.read_image = read_image\n"
        "import fer_batch.work as work\n"
        "work.read_image = read_image\n")
    out = tmp_path / "segfault.csv"
    env = {"PYTHONPATH": f"{hook}{os.pathsep}{REPO}"}
    process = start_label(str(media), "-o", str(out), "--workers", "2", env_extra=env)
    assert process.wait(timeout=240) == 0, process.stderr.read()
    rows = read_csv(out)
    crashed = [r for r in rows if r["source"].endswith("photo_05.jpg")]
    assert len(crashed) == 1 and crashed[0]["status"] == "error"
    assert "worker process crashed (killed by SIGSEGV)" in crashed[0]["error"]
    others = [r for r in rows if not r["source"].endswith("photo_05.jpg")]
    assert_same_csv(others, [r for r in reference if not r["source"].endswith("photo_05.jpg")])


def test_a_file_that_hangs_its_worker_becomes_an_error_row(media, reference, tmp_path):
    # A decoder stuck in a loop on one file: the worker's reads of photo_07 never return. The watchdog stops the
    # worker after --stall-timeout, retries the file once on a fresh one, then writes an error row.
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(
        "import time\n"
        "import fer_batch.sources as sources\n"
        "_read = sources.read_image\n"
        "def read_image(path):\n"
        "    while 'photo_07' in str(path):\n"
        "        time.sleep(1)\n"
        "    return _read(path)\n"
        "sources.read_image = read_image\n"
        "import fer_batch.work as work\n"
        "work.read_image = read_image\n")
    out = tmp_path / "hang.csv"
    env = {"PYTHONPATH": f"{hook}{os.pathsep}{REPO}"}
    started = time.monotonic()
    process = start_label(str(media), "-o", str(out), "--workers", "2", "--stall-timeout", "4", env_extra=env)
    assert process.wait(timeout=240) == 0, process.stderr.read()
    rows = read_csv(out)
    hung = [r for r in rows if r["source"].endswith("photo_07.jpg")]
    assert len(hung) == 1 and hung[0]["status"] == "error"
    assert "worker process stalled (no result for 4 s; stopped)" in hung[0]["error"]
    others = [r for r in rows if not r["source"].endswith("photo_07.jpg")]
    assert_same_csv(others, [r for r in reference if not r["source"].endswith("photo_07.jpg")])
    # Stopped twice on photo_07 itself, plus once more if an earlier photo shared its first batch (then the unit
    # is retried one photo at a time until the culprit stalls alone).
    assert json.loads(out.with_name("hang.run.json").read_text())["restarts"] in (2, 3)
    assert time.monotonic() - started < 120


def test_ctrl_c_stops_every_worker_within_a_second(media, tmp_path):
    out = tmp_path / "interrupted.csv"
    process = start_label(str(media), "-o", str(out), "--workers", "2")
    wait_for_rows(out, 5, process)
    workers = workers_of(process.pid)
    assert len(workers) == 2
    started = time.monotonic()
    os.killpg(process.pid, signal.SIGINT)  # what a terminal sends to the whole foreground group
    assert process.wait(timeout=10) == 130
    assert time.monotonic() - started < 1.5
    assert "--resume" in process.stderr.read()
    time.sleep(0.2)
    assert not [pid for pid in workers if Path(f"/proc/{pid}").exists() and
                (Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0] != "Z")]
    assert out.read_bytes().endswith(b"\n")


def test_lanes_return_the_same_results_in_the_same_order(media):
    """Model batches run in parallel threads (lanes) come back exactly as one lane gives them."""
    from fer_batch.recognizer import EmotionRecognizer
    from fer_batch.work import WorkUnit, analyse

    recognizer = EmotionRecognizer(threads=1)
    sources, _ = discover([str(media)])
    talk = next(s for s in sources if s.name.endswith("talk.mp4"))
    photos = tuple(s for s in sources if s.kind == "image")
    for unit in (WorkUnit(0, (talk,)), WorkUnit(1, photos)):
        one = [r for batch in analyse(unit, recognizer, batch=4) for r in batch]
        timings: dict = {}
        three = [r for batch in analyse(unit, recognizer, batch=4, prefetch=8, lanes=3, timings=timings)
                 for r in batch]
        assert [(r.source, r.frame) for r in three] == [(r.source, r.frame) for r in one]
        assert len(one) == (96 if unit.is_video else 12) and sum(r.faces for r in one) > 0
        for a, b in zip(one, three):
            np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-3)
            np.testing.assert_allclose(a.probabilities, b.probabilities, atol=1e-5)
        assert timings["detect_onnx"] > 0 and timings["classify_onnx"] > 0  # summed over the lanes


def test_one_process_runs_a_lane_per_core_and_threads_asks_for_one(media, tmp_path):
    from fer_batch.runner import MAX_LANES
    from fer_batch.system import available_cores

    photo = str(media / "photo_00.jpg")
    run_cli("label", photo, "-o", str(tmp_path / "a.csv"), "--workers", "1", "--quiet", check=True)
    info = json.loads((tmp_path / "a.run.json").read_text())
    lanes = min(available_cores(), MAX_LANES)
    assert (info["workers"], info["lanes"], info["threads"]) == (1, lanes, max(1, available_cores() // lanes))
    run_cli("label", photo, "-o", str(tmp_path / "b.csv"), "--workers", "1", "--threads", "2", "--quiet", check=True)
    info = json.loads((tmp_path / "b.run.json").read_text())
    assert (info["workers"], info["lanes"], info["threads"]) == (1, 1, 2)


def test_ctrl_c_stops_a_one_process_run_with_lanes(media, tmp_path):
    out = tmp_path / "interrupted.csv"
    process = start_label(str(media), "-o", str(out), "--workers", "1")
    wait_for_rows(out, 5, process)
    started = time.monotonic()
    os.killpg(process.pid, signal.SIGINT)
    assert process.wait(timeout=10) == 130
    assert time.monotonic() - started < 1.5
    assert "--resume" in process.stderr.read()
    assert out.read_bytes().endswith(b"\n")


def test_detection_windows_find_the_same_faces_however_a_video_is_split(media):
    """With --detect-every, a unit that starts inside a detection window (a Ray piece, a worker's retry after a
    crash) or has frames already written (--resume) gives exactly the faces the whole video gives in one unit."""
    from dataclasses import replace

    from fer_batch.recognizer import EmotionRecognizer
    from fer_batch.work import WorkUnit, analyse

    recognizer = EmotionRecognizer(threads=1)
    sources, _ = discover([str(media)])
    talk = next(s for s in sources if s.name.endswith("talk.mp4"))
    with VideoReader(talk.path) as reader:
        index = reader.index
    whole = WorkUnit(0, (talk,), expected=96, index=index, detect_every=8)

    def run(*units: WorkUnit) -> list:
        return [r for unit in units for batch in analyse(unit, recognizer, batch=4, lanes=2) for r in batch]

    def assert_same(results: list, expected: list) -> None:
        assert [(r.frame, r.faces) for r in results] == [(r.frame, r.faces) for r in expected]
        for a, b in zip(results, expected):
            np.testing.assert_array_equal(a.boxes, b.boxes)
            np.testing.assert_allclose(a.probabilities, b.probabilities, atol=1e-6)

    one = run(whole)
    assert [r.frame for r in one] == list(range(96))
    for starts in ((0, 13, 50, 83), (0, 5, 37)):  # 13, 50, 83, 5, 37: inside windows (keyframes every 12)
        bounds = [*starts, None]
        units = [replace(whole, start=a, stop=b, last=b is None) for a, b in zip(bounds, bounds[1:])]
        assert_same(run(*units), one)
    written = frozenset(range(0, 30)) | {45, 46, 47, 61}
    assert_same(run(replace(whole, skip=written)), [r for r in one if r.frame not in written])
    # Between whole-frame searches faces are found around the ones before: boxes a little apart, the same frames
    # with a face and the same labels.
    full = run(replace(whole, detect_every=1))
    assert [r.faces for r in full] == [r.faces for r in one] and sum(r.faces for r in one) >= 50
    assert any((a.boxes != b.boxes).any() for a, b in zip(one, full) if a.faces)  # the cheaper search ran
    for a, b in zip(one, full):
        np.testing.assert_allclose(a.boxes, b.boxes, atol=6)
        assert (a.probabilities.argmax(1) == b.probabilities.argmax(1)).all()


def test_video_ranges_start_detection_windows(media, astronaut, tmp_path):
    """Ranges start at keyframes, or - in a video with few - at the first frame of a detection window: each range
    starts a window, so nothing is analysed twice and the split gives the faces one unit gives."""
    from fer_batch.recognizer import EmotionRecognizer
    from fer_batch.work import analyse

    write_av_video(tmp_path / "long-gop.mp4", moving_face_frames(astronaut, 80, blank_every=0), gop=250, audio=None)
    sources, _ = discover([str(media), str(tmp_path / "long-gop.mp4")])
    for workers in (2, 3, 5):
        units = plan(sources, set(), LabelConfig(), workers=workers)
        videos = [u for u in units if u.is_video]
        assert len(videos) > 4 and all(u.detect_every == LabelConfig.detect_every for u in videos)
        assert all(u.window_start() == u.start for u in videos)
    long_gop = [u for u in units if u.sources[0].name.endswith("long-gop.mp4")]
    assert len(long_gop) > 1 and all(u.start % LabelConfig.detect_every == 0 for u in long_gop)
    recognizer = EmotionRecognizer(threads=1)
    split = [r for unit in long_gop for batch in analyse(unit, recognizer) for r in batch]
    one = [r for u in plan(sources[-1:], set(), LabelConfig(), workers=1) for batch in analyse(u, recognizer)
           for r in batch]
    assert [(r.frame, r.faces) for r in split] == [(r.frame, r.faces) for r in one] and len(one) == 80
    assert all((a.boxes == b.boxes).all() for a, b in zip(split, one))
    assert all(u.detect_every == 1 for u in plan(sources, set(), LabelConfig(detector="haar"), workers=2))
