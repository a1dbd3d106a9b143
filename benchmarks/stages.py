"""Where a photo's and a video frame's time goes: decode, detect, crop, classify, write, in milliseconds per item.

    python benchmarks/stages.py                                  # generated photos and clip
    python benchmarks/stages.py --folder photos/ --video clip.mp4 --rounds 7
    python benchmarks/stages.py --precisions float               # one detector copy only

One thread does what one lane of `fer-batch label` does, stage by stage, with the models loaded beforehand:
``decode`` (fer_batch.sources.read_image, or PyAV's frames), ``detect`` (RetinaFace: photos in batches of 4 of
one size, a video in detection windows of --detect-every frames as the runner plans them, pre- and
post-processing included), ``crop`` (48x48 grey crops), ``classify`` (the emotion classifier, INT8 by default, its
mirror averaging included) and ``write`` (CSV rows built, tracked and written, as the runner writes them). Each
stage is timed in CPU seconds of that thread (time.thread_time), which a busy machine disturbs less than wall
time; every round runs each --precisions' detector in turn, and the medians over rounds are printed with the CPU.

Photos by default: --photos 350x350 JPEGs of real faces (scikit-image's astronaut and cameraman and its LFW
subset's faces on its photographs and textures, a fifth without a face; fer_batch.detector_quant.real_images),
the size of the in-the-wild photo sets the detector's speed was planned on. Video by default: benchmarks/bench.py's
640x360 clip (two people, 275 frames, ~40 % without a face).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

STAGES = ("decode", "detect", "crop", "classify", "write")
PHOTO_SEED = 350


def write_photos(folder: Path, count: int) -> Path:
    from fer_batch.detector_quant import real_images

    folder.mkdir(parents=True, exist_ok=True)
    for index, image in enumerate(real_images(count, PHOTO_SEED, sizes=((350, 350),))):
        cv2.imwrite(str(folder / f"photo_{index:04d}.jpg"), image, [cv2.IMWRITE_JPEG_QUALITY, 92])
    return folder


class Clock:
    """CPU seconds of this thread per stage."""

    def __init__(self) -> None:
        self.seconds = dict.fromkeys(STAGES, 0.0)
        self.started = 0.0

    def start(self) -> None:
        self.started = time.thread_time()

    def stop(self, stage: str) -> None:
        now = time.thread_time()
        self.seconds[stage] += now - self.started
        self.started = now


def photo_stages(recognizer, paths: list[Path], csv_path: Path, batch: int = 4) -> dict:
    from fer_batch.runner import rows_for
    from fer_batch.sources import read_image
    from fer_batch.work import ItemResult
    from fer_batch.writer import CsvSink

    clock = Clock()
    with CsvSink(csv_path, force=True) as sink:
        for start in range(0, len(paths), batch):
            group = paths[start:start + batch]
            clock.start()
            images = [read_image(path) for path in group]
            clock.stop("decode")
            found = recognizer.detector.detect_batch(images)
            clock.stop("detect")
            crops = [recognizer.crops(image, faces) for image, faces in zip(images, found)]
            clock.stop("crop")
            probabilities = recognizer.classifier.predict(np.concatenate(crops))
            clock.stop("classify")
            offset = 0
            for path, faces in zip(group, found):
                result = _result(ItemResult(str(path)), recognizer, faces, probabilities[offset:offset + len(faces)])
                offset += len(faces)
                sink.write_item(rows_for(result))
            clock.stop("write")
    return clock.seconds


def _result(result, recognizer, faces, probabilities):
    recognized = recognizer.faces(faces, probabilities)
    if recognized:
        result.boxes = np.array([face.box for face in recognized], np.float32)
        result.scores = np.array([face.score for face in recognized], np.float32)
        result.probabilities = np.stack([face.probabilities for face in recognized]).astype(np.float32)
    return result


def video_stages(recognizer, video: Path, csv_path: Path, detect_every: int) -> tuple[dict, int]:
    from fer_batch.config import LabelConfig
    from fer_batch.runner import VideoState, rows_for
    from fer_batch.sources import Source
    from fer_batch.video import VideoReader
    from fer_batch.work import ItemResult, WorkUnit
    from fer_batch.writer import CsvSink

    unit = WorkUnit(0, (Source(video, str(video), "video"),), detect_every=detect_every)
    clock = Clock()
    frames = 0
    with CsvSink(csv_path, force=True) as sink, VideoReader(video, threads=1) as reader:
        state = VideoState(str(video), reader.info.fps, LabelConfig(), [])
        window: list = []
        iterator = iter(reader.frames())

        def flush() -> None:
            clock.start()
            found = recognizer.detector.detect_sequence([frame.image for frame in window])
            clock.stop("detect")
            crops = [recognizer.crops(frame.image, faces) for frame, faces in zip(window, found)]
            clock.stop("crop")
            probabilities = recognizer.classifier.predict(np.concatenate(crops))
            clock.stop("classify")
            offset = 0
            for frame, faces in zip(window, found):
                result = _result(ItemResult(str(video), frame.index, frame.time_s, fps=reader.info.fps), recognizer,
                                 faces, probabilities[offset:offset + len(faces)])
                offset += len(faces)
                sink.write_item(state.rows(result) if result.faces else rows_for(result))
            clock.stop("write")
            window.clear()

        while True:
            clock.start()
            frame = next(iterator, None)
            clock.stop("decode")
            if frame is None:
                break
            frames += 1
            if window and unit.starts_window(window[-1].index, frame.index):
                flush()
            window.append(frame)
        if window:
            flush()
    return clock.seconds, frames


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folder", type=Path, help="photos to measure (default: --photos generated 350x350 JPEGs)")
    parser.add_argument("--photos", type=int, default=300)
    parser.add_argument("--video", type=Path, help="a video to measure (default: benchmarks/bench.py's clip)")
    parser.add_argument("--precisions", nargs="+", default=["int8", "float"], help="detector copies to measure")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)

    from bench import emit, make_clip

    from fer_batch.config import LabelConfig
    from fer_batch.recognizer import EmotionRecognizer
    from fer_batch.sources import IMAGE_SUFFIXES
    from fer_batch.system import describe_hardware

    work = Path(tempfile.mkdtemp(prefix="fer-batch-stages-"))
    folder = args.folder or write_photos(work / "photos", args.photos)
    video = args.video or make_clip(work / "clip.mp4")
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    recognizers = {p: EmotionRecognizer(threads=1, detector_precision=p) for p in args.precisions}
    detect_every = LabelConfig.detect_every
    for recognizer in recognizers.values():  # warm-up: first-call allocations, page cache
        photo_stages(recognizer, paths[:8], work / "warm.csv")
    per_photo: dict[str, list[dict]] = {p: [] for p in recognizers}
    per_frame: dict[str, list[dict]] = {p: [] for p in recognizers}
    frames = 0
    for _ in range(args.rounds):
        for precision, recognizer in recognizers.items():
            seconds = photo_stages(recognizer, paths, work / f"photos-{precision}.csv")
            per_photo[precision].append({k: 1000 * v / len(paths) for k, v in seconds.items()})
            seconds, frames = video_stages(recognizer, video, work / f"video-{precision}.csv", detect_every)
            per_frame[precision].append({k: 1000 * v / frames for k, v in seconds.items()})

    def medians(rounds: list[dict]) -> dict:
        stages = {stage: round(statistics.median(r[stage] for r in rounds), 3) for stage in STAGES}
        return {**stages, "total": round(statistics.median(sum(r.values()) for r in rounds), 3)}

    results = {"machine": describe_hardware(), "unit": "CPU ms of one thread per item, median of rounds",
               "rounds": args.rounds, "photos": {"folder": str(folder), "items": len(paths)},
               "video": {"path": str(video), "frames": frames, "detect_every": detect_every}}
    for precision in recognizers:
        results["photos"][precision] = medians(per_photo[precision])
        results["video"][precision] = medians(per_frame[precision])
    if "float" in recognizers:
        for precision in recognizers:
            for kind in ("photos", "video"):
                results[kind][precision]["detect_vs_float"] = round(
                    results[kind]["float"]["detect"] / results[kind][precision]["detect"], 2)
                results[kind][precision]["total_vs_float"] = round(
                    results[kind]["float"]["total"] / results[kind][precision]["total"], 2)
    emit(results, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
