"""--annotate, tracks, --smooth, summaries and timelines on a real two-face video written by the test."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from conftest import paste, read_csv, run_cli, write_video

from fer_batch.annotate import safe_target, video_target
from fer_batch.labels import EMOTIONS
from fer_batch.summary import summarize


def two_faces_crossing(astronaut, count: int = 50):
    """Two heads (one mirrored) sliding past each other in opposite directions, 640x360."""
    head = cv2.resize(astronaut[20:300, 120:340], None, fx=0.6, fy=0.6)
    mirrored = head[:, ::-1]
    for index in range(count):
        frame = np.full((360, 640, 3), 35, np.uint8)
        paste(frame, head, 10 + 9 * index, 10)
        paste(frame, mirrored, max(0, 490 - 9 * index), 60)  # overlaps the first head as they cross
        yield frame


@pytest.fixture(scope="module")
def crossing_video(tmp_path_factory, astronaut):
    return write_video(tmp_path_factory.mktemp("cross") / "two people.mp4", two_faces_crossing(astronaut))


@pytest.fixture(scope="module")
def labelled(tmp_path_factory, crossing_video, astronaut_jpg):
    root = tmp_path_factory.mktemp("run")
    out = root / "out.csv"
    run_cli("label", str(crossing_video), str(astronaut_jpg), "-o", str(out), "--annotate", str(root / "annotated"),
            "--every", "2", "--quiet", check=True)
    return root, out


def test_exactly_two_stable_tracks(labelled):
    _, out = labelled
    rows = [r for r in read_csv(out) if r["frame"]]
    assert {r["frame"] for r in rows} == {str(i) for i in range(0, 50, 2)}
    assert all(r["status"] == "ok" for r in rows)
    assert {r["track"] for r in rows} == {"0", "1"}
    for row in rows:  # track 0 is the upper head (moving right), track 1 the lower one, through the crossing
        assert (row["track"] == "0") == (int(row["y"]) < 57), row
    frames_with_both = {r["frame"] for r in rows if r["track"] == "1"} & {r["frame"] for r in rows if r["track"] == "0"}
    assert len(frames_with_both) >= 20
    image_rows = [r for r in read_csv(out) if not r["frame"]]
    assert image_rows[0]["track"] == "" and image_rows[0]["status"] == "ok"


def test_annotated_copies_mirror_inputs_and_keep_every_frame(labelled, crossing_video, astronaut_jpg):
    root, _ = labelled
    video = video_target(root / "annotated", str(crossing_video))
    assert video.is_file() and video.is_relative_to(root / "annotated")
    capture = cv2.VideoCapture(str(video))
    assert capture.isOpened()
    assert int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)) == 640 and int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)) == 360
    assert capture.get(cv2.CAP_PROP_FPS) == pytest.approx(25.0)
    frames = 0
    source = cv2.VideoCapture(str(crossing_video))
    changed = []
    while True:
        ok, frame = capture.read()
        ok_source, original = source.read()
        if not ok:
            break
        frames += 1
        changed.append(float(np.abs(frame.astype(int) - original).mean()))
    assert frames == 50  # every source frame, analysed (--every 2) or not
    assert min(changed[1::2]) > 0.5  # frames between analysed ones still carry boxes
    image = safe_target(root / "annotated", str(astronaut_jpg))
    drawn, plain = cv2.imread(str(image)), cv2.imread(str(astronaut_jpg))
    assert drawn.shape == plain.shape and np.abs(drawn.astype(int) - plain).mean() > 0.5


def test_summary_and_timeline_match_the_csv(labelled, crossing_video):
    root, out = labelled
    summary = read_csv(root / "out.summary.csv")
    rows = read_csv(out)
    video_rows = [s for s in summary if s["source"] == str(crossing_video)]
    assert [s["track"] for s in video_rows] == ["0", "1"]
    for entry in video_rows:
        members = [r for r in rows if r["source"] == entry["source"] and r["track"] == entry["track"]]
        assert int(entry["frames"]) == len(members) >= 20  # the hidden head is missed for a frame or two
        assert float(entry["first_s"]) == min(float(r["time_s"]) for r in members)
        assert float(entry["last_s"]) == max(float(r["time_s"]) for r in members)
        for emotion in EMOTIONS:
            mean = np.mean([float(r[emotion]) for r in members])
            assert float(entry[f"mean_{emotion}"]) == pytest.approx(mean, abs=1e-6)
        shares = [float(entry[f"share_{e}"]) for e in EMOTIONS]
        assert sum(shares) == pytest.approx(1.0, abs=1e-3)
        assert entry["dominant"] == EMOTIONS[int(np.argmax(shares))]
    timeline = safe_target(root / "annotated", str(crossing_video), ".timeline.png")
    assert timeline.read_bytes()[:4] == b"\x89PNG"

    rebuilt = root / "rebuilt.csv"
    result = run_cli("summarize", str(out), "-o", str(rebuilt), "--plots", str(root / "plots"))
    assert result.returncode == 0, result.stderr
    assert read_csv(rebuilt) == summary
    assert list((root / "plots").rglob("*.timeline.png"))


def test_smoothing_changes_probabilities_not_rows(tmp_path, crossing_video, labelled):
    _, raw_csv = labelled
    out = tmp_path / "smooth.csv"
    run_cli("label", str(crossing_video), "-o", str(out), "--every", "2", "--smooth", "1.0", "--quiet", check=True)
    smooth = read_csv(out)
    raw = [r for r in read_csv(raw_csv) if r["source"] == str(crossing_video)]
    assert [(r["frame"], r["track"]) for r in smooth] == [(r["frame"], r["track"]) for r in raw]
    assert {r["smooth_s"] for r in smooth} == {"1"} and {r["smooth_s"] for r in raw} == {"0"}
    difference = max(abs(float(a["happy"]) - float(b["happy"])) for a, b in zip(smooth, raw))
    assert difference > 1e-4
    mismatch = run_cli("label", str(crossing_video), "-o", str(out), "--every", "2", "--smooth", "2", "--resume")
    assert mismatch.returncode == 2 and "same --smooth" in mismatch.stderr
    first = [(a, b) for a, b in zip(smooth, raw) if a["frame"] == "0"]
    assert all(a["happy"] == b["happy"] for a, b in first)  # a track starts from its raw value


@pytest.mark.parametrize("name", ["../../escape.jpg", "/etc/passwd.jpg", "a/../../../b.jpg", "..\\..\\win.jpg",
                                  "C:/temp/x.jpg"])
def test_annotated_paths_never_leave_the_folder(tmp_path, name):
    folder = tmp_path / "annotated"
    target = safe_target(folder, name)
    assert target.resolve().is_relative_to(folder.resolve())
    assert target.name.endswith(".jpg")


def test_symlinked_subfolder_cannot_redirect_writes(tmp_path):
    folder = tmp_path / "annotated"
    folder.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (folder / "link").symlink_to(outside)
    with pytest.raises(ValueError, match="outside"):
        safe_target(folder, "link/x.jpg")


def test_summarize_counts_images_per_source():
    rows = [{"source": "a.jpg", "frame": "", "time_s": "", "track": "", "status": "ok",
             **{e: str(1.0 if e == "sad" else 0.0) for e in EMOTIONS}}] * 2
    entry = summarize(rows)[0]
    assert entry["frames"] == "1" and entry["faces"] == "2" and entry["dominant"] == "sad"


def test_summarize_refuses_a_foreign_csv(tmp_path):
    foreign = tmp_path / "other.csv"
    foreign.write_text("name,value\nx,1\n")
    result = run_cli("summarize", str(foreign))
    assert result.returncode == 2 and "not a fer-batch CSV" in result.stderr
