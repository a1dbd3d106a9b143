"""fer_batch/video.py: exact frame numbers, true timestamps and upright frames, on videos the tests write with
PyAV (H.264 with B-frames, variable frame rate, rotation, audio) and OpenCV."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from conftest import write_av_video, write_video

from fer_batch.sources import InputError
from fer_batch.video import VideoReader


def numbered_frames(count: int, size=(160, 96)):
    """Frames whose number can be read back from the picture: a bright bar at x = 2 * number, on grey."""
    for number in range(count):
        frame = np.full((size[1], size[0], 3), 60, np.uint8)
        frame[20:76, 2 * number % size[0]: 2 * number % size[0] + 4] = 250
        frame[:8, :8] = (0, 0, 255)  # a red corner: top-left in the upright picture
        yield frame


def bar_position(image: np.ndarray) -> int:
    column = image[20:76].mean(axis=(0, 2))
    return int(np.argmax(column > 200))


# Variable frame rate: gaps of 40 and 80 ms, as phones and screen recorders write them.
VFR_TIMES = np.cumsum([0.0] + [0.08 if i % 3 == 0 else 0.04 for i in range(1, 60)])


@pytest.fixture(scope="module")
def vfr_video(tmp_path_factory):
    path = tmp_path_factory.mktemp("video") / "vfr bframes.mp4"
    return write_av_video(path, numbered_frames(60), times_s=VFR_TIMES, bframes=3)


def test_frames_are_numbered_in_presentation_order_with_their_own_times(vfr_video):
    with VideoReader(vfr_video) as reader:
        info = reader.info
        frames = list(reader.frames())
    assert info.frame_count == 60 and (info.width, info.height) == (160, 96) and info.rotation == 0
    assert info.has_audio and info.audio_codec == "aac"
    assert [f.index for f in frames] == list(range(60))
    # Each picture is the frame its number says (B-frames are decoded out of order, shown in order).
    assert [bar_position(f.image) for f in frames] == [2 * i for i in range(60)]
    np.testing.assert_allclose([f.time_s for f in frames], VFR_TIMES, atol=1e-3)
    assert info.fps == pytest.approx(59 / VFR_TIMES[-1], rel=1e-3)  # the average, not a header's guess


def test_ranges_after_a_seek_are_exact(vfr_video):
    with VideoReader(vfr_video) as reader:
        whole = [(f.index, f.time_s, f.pts, bar_position(f.image)) for f in reader.frames()]
        assert reader.seekable and reader.keyframes()[0] == 0 and len(reader.keyframes()) >= 4
        for start, stop in [(0, 12), (5, 30), (12, 13), (37, None), (59, 60), (13, 47)]:
            part = [(f.index, f.time_s, f.pts, bar_position(f.image)) for f in reader.frames(start, stop)]
            assert part == whole[start:stop], (start, stop)
            # A worker gets only the window of the index for its range and never demuxes the whole file.
            window = reader.index.window(start, stop or 60)
            with VideoReader(vfr_video, index=window) as worker:
                assert worker.info.frame_count == 60 and worker.info.fps == reader.info.fps
                part = [(f.index, f.time_s, f.pts, bar_position(f.image)) for f in worker.frames(start, stop)]
            assert part == whole[start:stop], ("window", start, stop)


def test_every_and_skip_leave_frames_undecoded_into_images(vfr_video):
    with VideoReader(vfr_video) as reader:
        frames = list(reader.frames(10, 30, every=4, skip={12}))
    assert [f.index for f in frames] == list(range(10, 30))
    assert [f.index for f in frames if f.image is not None] == [16, 20, 24, 28]


@pytest.mark.parametrize("rotation", [90, -90, 180])
def test_rotation_metadata_gives_upright_frames(tmp_path, rotation):
    path = write_av_video(tmp_path / f"rotated {rotation}.mp4", numbered_frames(8), rotation=rotation, audio=None)
    with VideoReader(path) as reader:
        frames = list(reader.frames())
        assert reader.info.rotation == rotation and not reader.info.has_audio
        assert (reader.info.width, reader.info.height) == (160, 96)  # as displayed
    for number, frame in enumerate(frames):
        assert frame.image.shape == (96, 160, 3)
        assert bar_position(frame.image) == 2 * number
        blue, green, red = frame.image[:6, :6].mean(axis=(0, 1))
        assert red > 150 and blue < 100  # the red corner is top-left, as a player shows it


def test_opencv_written_videos_and_their_timestamps(tmp_path):
    path = write_video(tmp_path / "plain.avi", numbered_frames(20), fps=10.0, size=(160, 96), fourcc="MJPG")
    with VideoReader(path) as reader:
        assert reader.info.fps == pytest.approx(10.0) and reader.info.frame_count == 20
        frames = list(reader.frames(7))
    assert [f.index for f in frames] == list(range(7, 20))
    assert [round(f.time_s, 3) for f in frames] == [round(i / 10, 3) for i in range(7, 20)]


@pytest.mark.parametrize("content, message", [(b"", "empty file"), (b"not a video at all" * 10, "cannot open video")])
def test_bad_files_raise_input_error_with_the_reason(tmp_path, content, message):
    path = tmp_path / "bad.mp4"
    path.write_bytes(content)
    with pytest.raises(InputError, match=message):
        VideoReader(path)


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="cannot read file"):
        VideoReader(tmp_path / "gone.mp4")


def test_a_truncated_video_yields_what_it_has(tmp_path):
    full = write_video(tmp_path / "full.avi", numbered_frames(40), fps=10.0, size=(160, 96), fourcc="MJPG")
    cut = tmp_path / "cut.avi"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with VideoReader(cut) as reader:
        frames = list(reader.frames())
        assert reader.info.announced_frames == 40
    assert 10 <= len(frames) < 40
    assert [bar_position(f.image) for f in frames] == [2 * f.index for f in frames]
    assert cv2.countNonZero(frames[0].image[:, :, 0]) > 0
