"""--annotate, tracks, --smooth, summaries and timelines on real videos written by the tests: a two-face clip, and
a phone-like one (H.264 with B-frames, variable frame rate, rotation tag, AAC sound)."""

from __future__ import annotations

import ast
import json
import os
import shutil
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from conftest import PHONE_TIMES, REPO, paste, read_csv, run_cli, write_av_video, write_video

from fer_batch import annotate, draw, plots
from fer_batch.annotate import CODECS, output_names, render, safe_target
from fer_batch.labels import EMOTIONS
from fer_batch.summary import read_rows, summarize


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


@pytest.fixture(scope="module")
def phone_run(tmp_path_factory, phone_video):
    """The phone video labelled (every frame) and annotated through the CLI, as a user would."""
    root = tmp_path_factory.mktemp("phone-run")
    out = root / "out.csv"
    result = run_cli("label", str(phone_video), "-o", str(out), "--annotate", str(root / "ann"), "--quiet",
                     check=True)
    return root, out, root / "ann" / phone_video.name, result


def video_times(path: Path) -> list[float]:
    """Presentation times (s) of every frame, in display order, as a player sees them."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return sorted(float(frame.pts * stream.time_base) for frame in container.decode(stream))


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


def test_copies_are_named_after_the_inputs_and_keep_every_frame(labelled, crossing_video, astronaut_jpg):
    root, _ = labelled
    folder = root / "annotated"
    # Absolute file inputs: their own names, not the whole path mirrored under the folder.
    assert sorted(p.name for p in folder.iterdir()) == ["astronaut.jpg", "two people.mp4",
                                                        "two people.mp4.timeline.svg"]
    video = folder / "two people.mp4"
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
    drawn, plain = cv2.imread(str(folder / "astronaut.jpg")), cv2.imread(str(astronaut_jpg))
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
    timeline = (root / "annotated" / "two people.mp4.timeline.svg").read_text()
    assert timeline.startswith("<svg") and timeline.count("<polyline") == 2 * len(EMOTIONS)  # two tracks
    assert "track 0: 25 frames" in timeline or "track 0: 2" in timeline

    rebuilt = root / "rebuilt.csv"
    result = run_cli("summarize", str(out), "-o", str(rebuilt), "--plots", str(root / "plots"))
    assert result.returncode == 0, result.stderr
    assert read_csv(rebuilt) == summary
    assert [p.name for p in (root / "plots").iterdir()] == ["two people.mp4.timeline.svg"]  # timelines only


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
    assert mismatch.returncode == 2 and "--smooth 1 (now 2)" in mismatch.stderr  # as OUT.run.json recorded it
    out.with_suffix(".run.json").unlink()  # without the run record, the rows' own smooth_s column still says it
    mismatch = run_cli("label", str(crossing_video), "-o", str(out), "--every", "2", "--smooth", "2", "--resume")
    assert mismatch.returncode == 2 and "same --smooth" in mismatch.stderr
    first = [(a, b) for a, b in zip(smooth, raw) if a["frame"] == "0"]
    assert all(a["happy"] == b["happy"] for a, b in first)  # a track starts from its raw value


# ---------------------------------------------------------------------------------------- browser-ready videos

def test_phone_video_copy_plays_like_the_source(phone_run, phone_video):
    root, out, copy, result = phone_run
    assert copy.is_file(), result.stderr
    data = copy.read_bytes()
    assert data.find(b"moov") < data.find(b"mdat")  # +faststart: playable while it downloads
    with av.open(str(copy)) as container:
        video = container.streams.video[0]
        assert video.codec_context.name == "h264" and video.codec_context.format.name == "yuv420p"
        assert (video.codec_context.width, video.codec_context.height) == (360, 480)  # upright, as displayed
        frames = list(container.decode(video))
        assert all(not frame.rotation for frame in frames)  # drawn upright: no rotation tag left to apply
    times = video_times(copy)
    assert len(times) == len(PHONE_TIMES)  # every frame
    assert times == pytest.approx(video_times(phone_video), abs=1e-3)  # at its own (variable) time
    assert times == pytest.approx(PHONE_TIMES, abs=1e-3)
    # The sound is the source's AAC track, copied packet for packet.
    with av.open(str(phone_video)) as source, av.open(str(copy)) as copied:
        original = [bytes(p) for p in source.demux(source.streams.audio[0]) if p.size]
        carried = [bytes(p) for p in copied.demux(copied.streams.audio[0]) if p.size]
        assert copied.streams.audio[0].codec_context.name == "aac"
    assert carried == original
    # Boxes are drawn where the CSV says, in upright coordinates.
    rows = [r for r in read_csv(out) if r["status"] == "ok"]
    assert len({r["frame"] for r in rows}) >= 20
    row = next(r for r in rows if r["frame"] == "0")
    with av.open(str(copy)) as container:
        drawn = next(container.decode(video=0)).to_ndarray(format="bgr24").astype(int)
    with av.open(str(phone_video)) as container:
        plain = cv2.rotate(next(container.decode(video=0)).to_ndarray(format="bgr24"), cv2.ROTATE_90_COUNTERCLOCKWISE)
    difference = np.abs(drawn - plain).sum(axis=2)
    x, y, w, h = (int(row[k]) for k in ("x", "y", "w", "h"))
    assert difference[y + 2:y + h - 2, max(x - 1, 0):x + 2].mean() > 60  # the box's left edge
    assert difference[y + h // 4:y + h * 3 // 4, x + w // 4:x + w * 3 // 4].mean() < 15  # the face inside it


@pytest.fixture(scope="module")
def sound_variants(tmp_path_factory, astronaut):
    """Three short sources whose sound needs different handling, labelled together (every 6th frame)."""
    from conftest import portrait_frames

    root = tmp_path_factory.mktemp("sounds")
    frames = list(portrait_frames(astronaut, 12))
    videos = [write_av_video(root / "opus.mkv", frames, audio="libopus"),
              write_av_video(root / "pcm.mov", frames, audio="pcm_s16le"),
              write_av_video(root / "silent.mp4", frames, audio=None)]
    out = root / "out.csv"
    run_cli("label", *map(str, videos), "-o", str(out), "--every", "6", "--quiet", check=True)
    return root, out


def test_sound_is_copied_reencoded_or_reported(sound_variants):
    root, out = sound_variants
    result = run_cli("summarize", str(out), "--annotate", str(root / "ann"))
    assert result.returncode == 0, result.stderr
    expected = {"opus.mkv.mp4": "opus", "pcm.mov.mp4": "aac", "silent.mp4": None}
    for name, audio in expected.items():
        with av.open(str(root / "ann" / name)) as container:
            assert [s.codec_context.name for s in container.streams.audio] == ([audio] if audio else [])
            assert container.streams.video[0].frames == 12
    assert "pcm.mov: audio (pcm_s16le) cannot be copied into mp4; re-encoded to aac" in result.stderr
    assert "silent.mp4: no audio stream; the annotated copy is silent" in result.stderr
    assert "opus.mkv" not in result.stderr  # copied as is: nothing to say


@pytest.mark.parametrize("codec, suffix, name, audio", [("vp9", ".webm", "vp9", "opus"),
                                                        ("av1", ".webm", "av1", "opus"),
                                                        ("mp4v", ".mp4", "mpeg4", "aac")])
def test_other_codecs(tmp_path, phone_run, phone_video, capfd, codec, suffix, name, audio):
    _, out, _, _ = phone_run
    written = render(read_rows(out), tmp_path, codec=codec, plots=False)
    copy = tmp_path / ("phone clip.mp4" if suffix == ".mp4" else "phone clip.mp4.webm")
    assert written == [copy]
    with av.open(str(copy)) as container:
        assert container.streams.video[0].codec_context.name in (name, "libdav1d", "libaom-av1")
        assert [s.codec_context.name for s in container.streams.audio] == [audio]
        assert container.streams.video[0].codec_context.width == 360
    assert video_times(copy) == pytest.approx(PHONE_TIMES, abs=1.5e-3)  # WebM keeps milliseconds
    if suffix == ".webm":  # WebM takes no AAC: the sound is re-encoded, and the user is told
        assert "audio (aac) cannot be copied into webm; re-encoded to libopus" in capfd.readouterr().err


def test_odd_sizes_are_padded_to_even(tmp_path, astronaut):
    frames = [cv2.resize(frame, (321, 241)) for frame in
              (np.roll(astronaut[:, :, :], 4 * i, axis=1) for i in range(6))]
    source = write_av_video(tmp_path / "odd.mp4", frames, audio=None, pix_fmt="yuv444p")  # 4:4:4 takes odd sizes
    out = tmp_path / "out.csv"
    run_cli("label", str(source), "-o", str(out), "--every", "3", "--quiet", check=True)
    written = render(read_rows(out), tmp_path / "ann", [str(source)], plots=False)
    with av.open(str(written[0])) as container:
        stream = container.streams.video[0]
        assert (stream.codec_context.width, stream.codec_context.height) == (322, 242)
        assert stream.codec_context.format.name == "yuv420p" and stream.frames == 6


def test_unreadable_sources_are_reported_and_the_rest_rendered(tmp_path, phone_run, astronaut_jpg, capfd):
    _, out, _, _ = phone_run
    rows = read_rows(out)
    broken = tmp_path / "in" / "broken.mp4"
    broken.parent.mkdir()
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(3000))  # an MP4 header, then noise
    gone = tmp_path / "in" / "deleted.mp4"
    rows += [{**rows[0], "source": str(broken)}, {**rows[0], "source": str(gone)},
             {**rows[0], "source": str(astronaut_jpg), "frame": "", "time_s": "", "track": ""}]
    before = {p for p in tmp_path.rglob("*")}
    written = render(rows, tmp_path / "ann", plots=False)
    err = capfd.readouterr().err
    assert f"{broken}: not annotated" in err and f"{gone}: not annotated" in err
    assert {p.name for p in written} == {"phone clip.mp4", "astronaut.jpg"}
    created = {p for p in tmp_path.rglob("*")} - before
    assert all(p.is_relative_to(tmp_path / "ann") for p in created)  # nothing outside the folder
    assert not list((tmp_path / "ann").rglob("*.part"))  # no half-written files left behind


# ---------------------------------------------------------------------------------------------------- naming

def test_output_names_follow_the_inputs(capsys):
    sources = ["/data/clips/talk.mp4", "photos/a.jpg", "photos/sub/b.jpg", "other/a.jpg", "other/A.JPG",
               "x/t.avi", "y/t.avi.mp4"]
    names = output_names(sources, ["/data/clips/talk.mp4", "photos/", "./other", "x/t.avi", "y/t.avi.mp4"],
                         announce=True)
    assert names == {"/data/clips/talk.mp4": "talk.mp4", "photos/a.jpg": "a.jpg", "photos/sub/b.jpg": "sub/b.jpg",
                     "other/a.jpg": "a (2).jpg", "other/A.JPG": "A (3).JPG",  # case-insensitive clash
                     "x/t.avi": "t.avi", "y/t.avi.mp4": "t.avi (2).mp4"}  # t.avi's copy is t.avi.mp4
    err = capsys.readouterr().err
    assert "other/a.jpg: annotated as 'a (2).jpg' ('a.jpg' is already photos/a.jpg's)" in err
    assert err.count("annotated as") == 3


def test_output_names_without_inputs_use_the_common_parent():
    assert output_names(["/data/clips/talk.mp4"]) == {"/data/clips/talk.mp4": "talk.mp4"}
    assert output_names(["/d/a/x.jpg", "/d/b/y.jpg", "rel/z.jpg"]) == {
        "/d/a/x.jpg": "a/x.jpg", "/d/b/y.jpg": "b/y.jpg", "rel/z.jpg": "z.jpg"}
    assert output_names(["sub/x.jpg", "y.jpg"], ["."]) == {"sub/x.jpg": "sub/x.jpg", "y.jpg": "y.jpg"}


def test_folder_and_file_inputs_on_the_command_line(tmp_path, astronaut_jpg):
    photos = tmp_path / "photos"
    (photos / "sub").mkdir(parents=True)
    shutil.copy(astronaut_jpg, photos / "astronaut.jpg")
    shutil.copy(astronaut_jpg, photos / "sub" / "astronaut.jpg")
    out = tmp_path / "out.csv"
    result = run_cli("label", str(photos), str(astronaut_jpg), "-o", str(out), "--annotate", str(tmp_path / "ann"),
                     "--quiet", check=True)
    made = sorted(str(p.relative_to(tmp_path / "ann")) for p in (tmp_path / "ann").rglob("*.jpg"))
    assert made == ["astronaut (2).jpg", "astronaut.jpg", "sub/astronaut.jpg"]
    assert f"{astronaut_jpg}: annotated as 'astronaut (2).jpg'" in result.stderr
    # summarize --annotate names them the same way, from the inputs OUT.run.json recorded.
    redo = run_cli("summarize", str(out), "--annotate", str(tmp_path / "again"))
    assert redo.returncode == 0, redo.stderr
    assert sorted(str(p.relative_to(tmp_path / "again")) for p in (tmp_path / "again").rglob("*.jpg")) == made
    assert json.loads((tmp_path / "out.run.json").read_text())["inputs"] == [str(photos), str(astronaut_jpg)]


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


# ---------------------------------------------------------------------------------------------------- modules

def test_timelines_need_no_matplotlib(tmp_path, labelled):
    _, out = labelled
    blocker = tmp_path / "blocker" / "matplotlib"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('matplotlib is not installed here')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(blocker.parent), str(REPO)])}
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "fer_batch", "summarize", str(out), "-o", str(tmp_path / "s.csv"),
                             "--plots", str(tmp_path / "plots")], capture_output=True, text=True, env=env,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert "matplotlib" not in result.stderr
    assert list((tmp_path / "plots").glob("*.timeline.svg"))


def test_drawing_modules_import_in_one_direction():
    def imports(module) -> set[str]:
        tree = ast.parse(Path(module.__file__).read_text())
        return {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}

    assert "fer_batch.annotate" not in imports(plots) | imports(draw)
    assert "fer_batch.plots" not in imports(draw)
    assert annotate.COLORS is draw.COLORS


def test_cli_codec_choices_are_the_codecs():
    from fer_batch.cli import build_parser

    parser = build_parser()
    help_text = parser._subparsers._group_actions[0].choices["label"].format_help()
    assert "{" + ",".join(CODECS) + "}" in help_text


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


def test_damaged_sound_costs_only_the_damaged_packets(tmp_path, phone_video, capfd):
    """A repeated (out-of-order) audio packet is dropped with one message; picture and the other packets stay."""
    from fer_batch.annotate import VideoWriter
    from fer_batch.video import VideoReader

    target = tmp_path / "copy.mp4"
    seen = []

    def twice(packet):
        seen.append(packet)
        writer.audio_packet(packet)
        if len(seen) == 3:
            writer.audio_packet(packet)  # the same timestamps again: the muxer would refuse the whole file

    with VideoReader(phone_video) as reader:
        writer = VideoWriter(target, reader, CODECS["h264"], str(phone_video))
        for frame in reader.frames(on_packet=twice):
            writer.write(frame.image, frame.pts, frame.time_s)
        writer.close()
    assert "audio stream 1: dropped a damaged packet" in capfd.readouterr().err
    with av.open(str(target)) as container:
        assert container.streams.video[0].frames == len(PHONE_TIMES)
        assert len([p for p in container.demux(container.streams.audio[0]) if p.size]) == len(seen)
