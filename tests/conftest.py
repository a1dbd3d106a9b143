"""Shared fixtures: real faces (scikit-image's public-domain astronaut photo), videos written with
cv2.VideoWriter, and small synthetic FER-2013 files."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent

# Every process the tests start carries this mark in its environment (children inherit it, daemons and new
# sessions included), so the session's end can find and stop any that outlived their test: a leftover server,
# browser or worker holding the terminal's output open would keep CI waiting after pytest is done. No test opens a
# real browser: webbrowser.open runs `true`.
SESSION_MARK = f"{os.getpid()}-{os.urandom(6).hex()}"
os.environ["FER_BATCH_TEST_SESSION"] = SESSION_MARK
os.environ["BROWSER"] = "true"


def _marked_processes() -> list[tuple[int, str]]:
    """(pid, command line) of every other process whose environment carries this session's mark."""
    found = []
    needle = f"FER_BATCH_TEST_SESSION={SESSION_MARK}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                found.append((int(entry.name), command.strip()[:200]))
        except OSError:  # gone meanwhile, or not ours to read
            continue
    return found


def pytest_sessionfinish(session, exitstatus):
    import signal

    leftovers = _marked_processes() if Path("/proc/self/environ").exists() else []
    for pid, _ in leftovers:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    if leftovers:
        print(f"\nconftest: stopped {len(leftovers)} process(es) the tests left running: " +
              "; ".join(f"{pid} {command}" for pid, command in leftovers), file=sys.stderr)
# Where the face is in skimage.data.astronaut() (512x512), x1 y1 x2 y2, checked by eye.
ASTRONAUT_FACE = (178, 57, 273, 177)


@pytest.fixture(scope="session")
def astronaut() -> np.ndarray:
    from skimage import data

    return cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)


@pytest.fixture(scope="session")
def astronaut_jpg(tmp_path_factory, astronaut) -> Path:
    path = tmp_path_factory.mktemp("photos") / "astronaut.jpg"
    cv2.imwrite(str(path), astronaut)
    return path


def paste(canvas: np.ndarray, image: np.ndarray, x: int, y: int) -> None:
    """Paste image into canvas at (x, y), clipped to the canvas."""
    height = min(image.shape[0], canvas.shape[0] - y)
    width = min(image.shape[1], canvas.shape[1] - x)
    if height > 0 and width > 0:
        canvas[y:y + height, x:x + width] = image[:height, :width]


def write_video(path: Path, frames, fps: float = 25.0, size=(640, 360), fourcc: str = "mp4v") -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, size)
    assert writer.isOpened(), f"cannot write {path}"
    for frame in frames:
        writer.write(frame)
    writer.release()
    return path


def moving_face_frames(astronaut: np.ndarray, count: int = 30, blank_every: int = 10, size=(640, 360)):
    """The astronaut's head and shoulders moving right and growing; every ``blank_every``-th frame is blank."""
    head = astronaut[20:300, 120:340]
    for index in range(count):
        frame = np.full((size[1], size[0], 3), 30, np.uint8)
        if blank_every and index % blank_every == blank_every - 1:
            yield frame
            continue
        scale = 0.8 + 0.01 * index
        scaled = cv2.resize(head, None, fx=scale, fy=scale)
        paste(frame, scaled, 20 + 8 * index, 20)
        yield frame


@pytest.fixture(scope="session")
def face_video(tmp_path_factory, astronaut) -> Path:
    """30 frames at 25 fps, 640x360; frames 9, 19 and 29 are blank."""
    path = tmp_path_factory.mktemp("videos") / "moving_face.mp4"
    return write_video(path, moving_face_frames(astronaut))


def fer_rows(count: int, seed: int = 0, usages=("Training", "PublicTest", "PrivateTest")):
    """Synthetic FER rows: label-dependent blobs, so a model can learn something in one epoch."""
    rng = np.random.default_rng(seed)
    rows = []
    for index in range(count):
        label = index % 7
        image = rng.integers(0, 60, (48, 48))
        image[5 + 5 * label: 12 + 5 * label, 10:38] += 150
        rows.append((label, image.astype(np.uint8), usages[index % len(usages)]))
    return rows


def write_fer_csv(path: Path, rows, header="emotion,pixels,Usage") -> Path:
    lines = [header] + [f"{label},{' '.join(map(str, image.ravel()))},{usage}" for label, image, usage in rows]
    text = "\n".join(lines) + "\n"
    if path.suffix == ".gz":
        with gzip.open(path, "wt") as handle:
            handle.write(text)
    else:
        path.write_text(text)
    return path


@pytest.fixture(scope="session")
def real_faces() -> np.ndarray:
    """200 real faces, uint8 48x48: the 100 faces of scikit-image's LFW subset (its other 100 images are not faces)
    and their mirror images."""
    from skimage import data

    faces = np.stack([cv2.resize(np.round(face * 255).astype(np.uint8), (48, 48))
                      for face in data.lfw_subset()[:100]])
    return np.concatenate([faces, faces[:, :, ::-1]])


def write_real_fer_csv(path: Path, faces: np.ndarray) -> Path:
    """A FER-2013 CSV of real ``faces``, alternately Training and PublicTest (labels 0..6 in turn), and 14 synthetic
    PrivateTest rows."""
    rows = [(index % 7, face, ("Training", "PublicTest")[index % 2]) for index, face in enumerate(faces)]
    return write_fer_csv(path, rows + fer_rows(14, usages=("PrivateTest",)))


@pytest.fixture
def fer_csv(tmp_path) -> Path:
    return write_fer_csv(tmp_path / "fer2013.csv", fer_rows(84))


def run_cli(*args: str, timeout: float = 300, check: bool = False) -> subprocess.CompletedProcess:
    """Run ``python -m fer_batch ...`` in a subprocess, as a user would."""
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    result = subprocess.run([sys.executable, "-m", "fer_batch", *args], capture_output=True, text=True,
                            timeout=timeout, env=env)
    if check:
        assert result.returncode == 0, result.stderr
    return result


def read_csv(path: Path) -> list[dict]:
    import csv

    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


_STORE_ROTATED = {90: cv2.ROTATE_90_CLOCKWISE, 180: cv2.ROTATE_180, 270: cv2.ROTATE_90_COUNTERCLOCKWISE,
                  -90: cv2.ROTATE_90_COUNTERCLOCKWISE}


def write_av_video(path: Path, frames, times_s=None, fps: float = 25.0, rotation: int = 0, audio: str | None = "aac",
                   bframes: int = 2, codec: str = "libx264", audio_seconds: float | None = None,
                   pix_fmt: str = "yuv420p", gop: int = 12) -> Path:
    """Write upright BGR ``frames`` with PyAV the way phones and cameras do: H.264 with B-frames, each frame at
    its own time (``times_s``: variable frame rate; default 1/fps apart), stored sideways with a display-rotation
    tag (``rotation``: degrees counter-clockwise a player turns it), and a 440 Hz tone as audio (``audio``: an
    FFmpeg encoder such as "aac", "libopus", "pcm_s16le" in .mov/.mkv; None for a silent video). Odd sizes need
    ``pix_fmt="yuv444p"`` (4:2:0 needs even ones); ``gop``: frames from one keyframe to the next (H.264)."""
    import fractions

    import av

    frames = list(frames)
    times_s = [index / fps for index in range(len(frames))] if times_s is None else list(times_s)
    time_base = fractions.Fraction(1, 1000)
    height, width = frames[0].shape[:2]
    if rotation % 180:
        width, height = height, width
    with av.open(str(path), "w") as output:
        options = {"bf": str(bframes), "g": str(gop), "preset": "veryfast"} if codec == "libx264" else {}
        video = output.add_stream(codec, rate=fractions.Fraction(fps).limit_denominator(1001), options=options)
        video.width, video.height, video.pix_fmt = width, height, pix_fmt
        video.time_base = time_base  # both, or PyAV 18 fails with "pts < dts"
        video.codec_context.time_base = time_base
        if rotation:
            video.set_display_rotation(rotation)
        sound = output.add_stream(audio, rate=48000, layout="mono") if audio else None
        for image, time_s in zip(frames, times_s):
            stored = cv2.rotate(image, _STORE_ROTATED[rotation]) if rotation else image
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(stored), format="bgr24")
            frame.pts, frame.time_base = round(time_s * 1000), time_base
            for packet in video.encode(frame):
                output.mux(packet)
        for packet in video.encode():
            output.mux(packet)
        if sound is not None:
            seconds = audio_seconds or (times_s[-1] + 1 / fps)
            samples = (0.3 * np.sin(2 * np.pi * 440 * np.arange(int(48000 * seconds)) / 48000)).astype(np.float32)
            for start in range(0, len(samples), 960):
                chunk = av.AudioFrame.from_ndarray(samples[None, start:start + 960], format="flt", layout="mono")
                chunk.sample_rate, chunk.pts, chunk.time_base = 48000, start, fractions.Fraction(1, 48000)
                for packet in sound.encode(chunk):
                    output.mux(packet)
            for packet in sound.encode():
                output.mux(packet)
    return path


def portrait_frames(astronaut: np.ndarray, count: int = 24, size=(360, 480)):
    """Upright portrait frames (width x height ``size``): the astronaut's head moving down the picture."""
    head = cv2.resize(astronaut[20:300, 120:340], None, fx=0.8, fy=0.8)
    for index in range(count):
        frame = np.full((size[1], size[0], 3), 40, np.uint8)
        paste(frame, head, 60 + 2 * index, 10 + 6 * index)
        yield frame


# A phone's variable frame rate: gaps alternate 1/30 s and 1/15 s.
PHONE_TIMES = [round(sum(1 / 30 if i % 2 else 1 / 15 for i in range(index)), 4) for index in range(24)]


@pytest.fixture(scope="session")
def phone_video(tmp_path_factory, astronaut) -> Path:
    """What a phone records upright: 360x480 portrait as displayed, stored 480x360 with a 90 degree rotation tag,
    H.264 with B-frames at a variable frame rate (PHONE_TIMES), and an AAC sound track."""
    path = tmp_path_factory.mktemp("phone") / "phone clip.mp4"
    return write_av_video(path, portrait_frames(astronaut), times_s=PHONE_TIMES, rotation=90)
