"""Speed of fer-batch: images/s on a folder, fps on a video, classifier faces/s, and decode-only fps.

    python benchmarks/bench.py                       # makes its own media from scikit-image's astronaut
    python benchmarks/bench.py --video clip.mp4 --folder photos/   # or measure yours

Without --video/--folder it writes, into a temporary folder, a 640x360 25 fps clip of 275 frames (two people,
moving and changing size, with stretches of empty frames, like the `fer` anchor clip) and 100 photos
(640x480 to 1600x1200, one to three faces). Each figure is the best of --repeat runs after a warm-up run, with
models loaded beforehand (start-up is reported separately). Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _astronaut() -> np.ndarray:
    from skimage import data

    return cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)


def _paste(canvas: np.ndarray, image: np.ndarray, x: int, y: int) -> None:
    height, width = min(image.shape[0], canvas.shape[0] - y), min(image.shape[1], canvas.shape[1] - x)
    if height > 0 and width > 0:
        canvas[y:y + height, x:x + width] = image[:height, :width]


def _write_clip(path: Path, frames: int, size, fps: float, seed: int, draw) -> Path:
    """``frames`` frames of ``size`` (w, h) at ``fps`` (mp4v), each a seeded blurred-noise background on which
    ``draw(frame, index)`` pastes the faces."""
    rng = np.random.default_rng(seed)
    background = cv2.GaussianBlur(rng.integers(30, 90, (size[1], size[0], 3), np.uint8), (31, 31), 0)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    for index in range(frames):
        frame = background.copy()
        draw(frame, index)
        writer.write(frame)
    writer.release()
    return path


def make_clip(path: Path, frames: int = 275, size=(640, 360), fps: float = 25.0) -> Path:
    """Two copies of the astronaut's head (one mirrored) drifting and scaling; about 40 % of frames empty."""
    head = _astronaut()[10:330, 110:350]

    def draw(frame: np.ndarray, index: int) -> None:
        if (index // 40) % 5 not in (2, 4):  # two empty 40-frame stretches out of every 200
            for person, (x0, flip) in enumerate(((20, False), (360, True))):
                scale = 0.55 + 0.15 * np.sin(index / 25 + person)
                face = cv2.resize(head[:, ::-1] if flip else head, None, fx=scale, fy=scale)
                _paste(frame, face, max(0, int(x0 + 60 * np.sin(index / 30 + 2 * person))), 15)

    return _write_clip(path, frames, size, fps, 0, draw)


def make_closeup_clip(path: Path, frames: int = 275, size=(1280, 720), fps: float = 25.0) -> Path:
    """One person close up, as in an interview or a webcam study: the astronaut's face about half the frame's
    height (~360 px of 720), drifting and leaning in and out a little, in every frame."""
    head = _astronaut()[20:320, 110:350]

    def draw(frame: np.ndarray, index: int) -> None:
        scale = 2.9 + 0.15 * np.sin(index / 30)
        face = cv2.resize(head, None, fx=scale, fy=scale)
        x = int((size[0] - face.shape[1]) / 2 + 80 * np.sin(index / 40))
        _paste(frame, face, max(0, x), max(0, (size[1] - face.shape[0]) // 2))

    return _write_clip(path, frames, size, fps, 3, draw)


def make_crowd_clip(path: Path, frames: int = 275, size=(640, 360), fps: float = 25.0) -> Path:
    """Six heads in a 3x2 grid (alternately mirrored), each drifting and scaling a little, in every frame: the
    multi-face case, where the emotion classifier's share of the work is largest."""
    head = _astronaut()[10:330, 110:350]
    cell_w, cell_h = size[0] // 3, size[1] // 2

    def draw(frame: np.ndarray, index: int) -> None:
        for person in range(6):
            scale = 0.42 + 0.06 * np.sin(index / 20 + person)
            face = cv2.resize(head[:, ::-1] if person % 2 else head, None, fx=scale, fy=scale)
            x = (person % 3) * cell_w + int((cell_w - face.shape[1]) / 2 + 12 * np.sin(index / 15 + person))
            y = (person // 3) * cell_h + max(0, (cell_h - face.shape[0]) // 2)
            _paste(frame, face, max(0, x), y)

    return _write_clip(path, frames, size, fps, 2, draw)


def fer_faces(fer_csv: Path, count: int, usage: str = "PrivateTest") -> list[np.ndarray]:
    """The first ``count`` 48x48 grey faces of one split of a FER-2013 CSV (.csv or .csv.gz)."""
    import csv
    import gzip

    faces = []
    with (gzip.open(fer_csv, "rt") if fer_csv.suffix == ".gz" else open(fer_csv)) as handle:
        for row in csv.DictReader(handle):
            if row["Usage"] == usage:
                faces.append(np.array(row["pixels"].split(), np.uint8).reshape(48, 48))
                if len(faces) == count:
                    break
    return faces


def make_fer_clip(path: Path, fer_csv: Path, frames: int = 275, size=(640, 360), fps: float = 25.0) -> Path:
    """Six real faces at a time with varied, often ambiguous expressions (FER-2013 PrivateTest, the classifier's
    own test faces, grey, enlarged to ~100 px), in a 3x2 grid, each drifting and scaling a little and replaced by
    the next face every 40 frames (slots change at different times); the sixth slot stays empty for the first 60
    frames, so a face appears beside others. Where labels are uncertain, a crop a pixel off can change them: the
    harder test of agreement than the astronaut clips."""
    faces = fer_faces(fer_csv, 6 * (frames // 40 + 2))
    rng = np.random.default_rng(3)
    background = cv2.GaussianBlur(rng.integers(40, 110, (size[1], size[0]), np.uint8), (31, 31), 0)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    cell_w, cell_h = size[0] // 3, size[1] // 2
    for index in range(frames):
        frame = background.copy()
        for slot in range(6):
            if slot == 5 and index < 60:
                continue
            face = faces[slot + 6 * ((index + 7 * slot) // 40)]
            side = int(100 + 8 * np.sin(index / 20 + slot))
            scaled = cv2.resize(face, (side, side), interpolation=cv2.INTER_CUBIC)
            x = (slot % 3) * cell_w + (cell_w - side) // 2 + int(15 * np.sin(index / 15 + slot))
            y = (slot // 3) * cell_h + (cell_h - side) // 2 + int(8 * np.cos(index / 18 + slot))
            _paste(frame, scaled, max(0, x), max(0, y))
        writer.write(cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR))
    writer.release()
    return path


def make_folder(path: Path, count: int = 100) -> Path:
    astronaut = _astronaut()
    rng = np.random.default_rng(1)
    path.mkdir(parents=True, exist_ok=True)
    sizes = ((640, 480), (1024, 768), (1600, 1200))
    for index in range(count):
        width, height = sizes[index % 3]
        image = np.full((height, width, 3), int(rng.integers(20, 200)), np.uint8)
        for _ in range(1 + index % 3):
            side = int(rng.integers(height // 4, height // 2))
            _paste(image, cv2.resize(astronaut, (side, side)), int(rng.integers(0, width - side)),
                   int(rng.integers(0, height - side)))
        cv2.imwrite(str(path / f"photo_{index:03d}.jpg"), image, [cv2.IMWRITE_JPEG_QUALITY, 90])
    return path


def best_of(repeat: int, run) -> float:
    run()  # warm-up: first-call allocations, page cache
    return min(_timed(run) for _ in range(repeat))


def _timed(run) -> float:
    started = time.perf_counter()
    run()
    return time.perf_counter() - started


def emit(results: dict, path: Path | None) -> None:
    """Print a benchmark's results as JSON, and write them to ``path`` (its --json) when given."""
    print(json.dumps(results, indent=2))
    if path:
        path.write_text(json.dumps(results, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--video", type=Path, help="a video to measure (default: a generated 640x360 clip)")
    parser.add_argument("--folder", type=Path, help="an image folder to measure (default: 100 generated photos)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--detector", default="retinaface")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)

    from fer_batch import EmotionRecognizer, LabelConfig, label_files
    from fer_batch.classify import EmotionClassifier
    from fer_batch.video import VideoReader

    work = Path(tempfile.mkdtemp(prefix="fer-batch-bench-"))
    video = args.video or make_clip(work / "clip.mp4")
    folder = args.folder or make_folder(work / "photos")
    from fer_batch.system import describe_hardware  # no TensorFlow at import

    results: dict = {"machine": describe_hardware(), "python": platform.python_version()}

    from fer_batch.runner import in_process_lanes
    from fer_batch.system import available_cores

    # As `fer-batch label` runs in one process by default: a lane of model batches per core, one thread each.
    lanes = in_process_lanes(available_cores())
    started = time.perf_counter()
    recognizer = EmotionRecognizer(detector=args.detector, threads=max(1, available_cores() // lanes))
    results["startup_s"] = round(time.perf_counter() - started, 2)

    def decode_all() -> int:
        with VideoReader(video) as reader:
            return sum(1 for _ in reader.frames())

    frames = decode_all()
    results["video"] = {"path": str(video), "frames": frames,
                        "decode_only_fps": round(frames / best_of(args.repeat, decode_all), 1)}

    out = work / "video.csv"
    config = LabelConfig(detector=args.detector, force=True, progress=False, lanes=lanes)
    summaries = []

    def label_video() -> None:
        summaries.append(label_files([str(video)], out, config, recognizer=recognizer))

    seconds = best_of(args.repeat, label_video)
    last = summaries[-1]
    frames_with_face = len({row.split(",")[1] for row in out.read_text().splitlines()[1:] if ",ok," in row})
    results["video"].update(fps=round(frames / seconds, 1), frames_with_face=frames_with_face, faces=last.faces)

    images = sorted(p for p in folder.iterdir() if p.suffix.lower() in {".jpg", ".jpeg", ".png"})

    def label_folder() -> None:
        summaries.append(label_files([str(folder)], work / "folder.csv", config, recognizer=recognizer))

    seconds = best_of(args.repeat, label_folder)
    results["folder"] = {"path": str(folder), "images": len(images), "faces": summaries[-1].faces,
                         "images_per_s": round(len(images) / seconds, 1)}

    crops = np.random.default_rng(2).integers(0, 255, (1024, 48, 48), np.uint8)
    classifier = EmotionClassifier(threads=available_cores())  # one call on every core
    seconds = best_of(args.repeat, lambda: classifier.predict(crops))
    results["classifier_faces_per_s"] = round(len(crops) / seconds)

    emit(results, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
