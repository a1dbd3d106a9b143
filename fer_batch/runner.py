"""A whole labelling job: inputs -> decode (background thread) -> detect + classify (batched) -> CSV rows.

Decoding runs in a thread while onnxruntime works (OpenCV and onnxruntime both release the GIL); the frames of
several items go through the detector and the classifier together. One bad file becomes an error row and the
job goes on; rows are written item by item, so an interruption loses nothing that was written.
"""

from __future__ import annotations

import queue
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fer_batch.labels import EMOTIONS
from fer_batch.recognizer import EmotionRecognizer
from fer_batch.sources import InputError, Source, count_frames, discover, open_video, read_image, video_frames
from fer_batch.track import Smoother, Tracker
from fer_batch.writer import CsvSink, Row


class UsageError(Exception):
    """Bad arguments: a missing input, nothing to label, and the like (exit status 2)."""


@dataclass
class LabelConfig:
    model: str | None = None  # None: the bundled models/emotion.onnx
    detector: str = "retinaface"
    align: bool = False  # level the eyes on the landmarks (measured less accurate than the box crop)
    every: int = 1  # analyse every Nth video frame
    min_face: float = 20.0  # px, in the original image
    face_threshold: float = 0.8
    detect_size: int = 640  # the detector sees images shrunk to this long side
    threads: int = 0  # onnxruntime threads per session; 0 = all cores
    providers: list[str] | None = None
    resume: bool = False
    force: bool = False
    progress: bool = True
    batch: int = 8  # items per detector/classifier call
    prefetch: int = 16  # decoded items waiting for the models
    smooth: float = 0.0  # seconds of exponential smoothing along each track (0: raw probabilities)
    track_gap: float = 1.0  # seconds a track survives without a detection
    annotate: str | None = None  # folder for annotated copies and timeline plots
    summary: bool = True  # write OUT.summary.csv next to the CSV


@dataclass
class RunSummary:
    items: int = 0
    faces: int = 0
    no_face: int = 0
    errors: int = 0
    skipped: int = 0  # already in the CSV (--resume)
    elapsed: float = 0.0
    problems: list[str] = field(default_factory=list)
    summary_csv: Path | None = None
    annotated: list[Path] = field(default_factory=list)

    @property
    def items_per_second(self) -> float:
        return self.items / self.elapsed if self.elapsed > 0 else 0.0

    def format(self) -> str:
        text = (f"{self.items} items, {self.faces} faces, {self.no_face} with no face, {self.errors} errors, "
                f"{self.elapsed:.1f} s, {self.items_per_second:.1f} items/s")
        return text + (f" ({self.skipped} already done)" if self.skipped else "")


@dataclass
class Item:
    source: Source
    frame: int | None = None
    time_s: float | None = None
    image: np.ndarray | None = None
    error: str = ""
    fps: float = 0.0


_DONE = object()


def iter_items(sources: list[Source], every: int, done: set[tuple[str, str]], stop: threading.Event
               ) -> Iterator[Item | None]:
    """Decoded items in input order; None for an item skipped because the CSV has it already."""
    frames_done: dict[str, set[int]] = {}
    for name, frame in done:
        if frame:
            frames_done.setdefault(name, set()).add(int(frame))
    for source in sources:
        if stop.is_set():
            return
        if source.kind == "image":
            if (source.name, "") in done:
                yield None
                continue
            try:
                yield Item(source, image=read_image(source.path))
            except InputError as error:
                yield Item(source, error=str(error))
            continue
        yield from _video_items(source, every, done, frames_done.get(source.name, set()), stop)


def _video_items(source: Source, every: int, done: set[tuple[str, str]], skip: set[int], stop: threading.Event
                 ) -> Iterator[Item | None]:
    if (source.name, "") in done:  # the video failed to open last time: its error row is there
        yield None
        return
    try:
        capture, info = open_video(source.path)
    except InputError as error:
        yield Item(source, error=str(error))
        return
    analysed = read = 0
    try:
        for index, frame in video_frames(capture, every, skip):
            read = index + 1
            if stop.is_set():
                return
            if frame is None:
                yield None
            else:
                analysed += 1
                yield Item(source, frame=index, time_s=index / info.fps, image=frame, fps=info.fps)
    finally:
        capture.release()
    if analysed == 0 and not skip:
        yield Item(source, error="video has no decodable frames")
    elif info.frame_count and read < info.frame_count - max(2, info.frame_count // 100):
        if read not in skip:
            yield Item(source, frame=read, time_s=read / info.fps,
                       error=f"video ended early: decoded {read} of the {info.frame_count} frames its container "
                             f"announces (truncated or corrupt)")


def _producer(sources, every, done, out: queue.Queue, stop: threading.Event) -> None:
    try:
        for item in iter_items(sources, every, done, stop):
            while not stop.is_set():
                try:
                    out.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
    except BaseException as error:  # hand unexpected failures to the main thread rather than dying silently
        out.put(error)
    finally:
        out.put(_DONE)


class VideoState:
    """Tracks and smoothing for the video being labelled; restored from its rows when a run is resumed."""

    def __init__(self, source: str, fps: float, config: LabelConfig, existing: list[dict[str, str]]):
        self.source = source
        self.tracker = Tracker(max_gap=max(1, round(fps * config.track_gap)))
        self.smoother = Smoother(config.smooth) if config.smooth > 0 else None
        by_frame: dict[int, list[dict[str, str]]] = {}
        for row in existing:
            if row["track"]:
                by_frame.setdefault(int(row["frame"]), []).append(row)
        for frame in sorted(by_frame):
            rows = by_frame[frame]
            boxes = np.array([[float(r["x"]), float(r["y"]), float(r["x"]) + float(r["w"]),
                               float(r["y"]) + float(r["h"])] for r in rows])
            self.tracker.restore(frame, boxes, [int(r["track"]) for r in rows])
            if self.smoother:
                for row in rows:
                    self.smoother.restore(int(row["track"]), float(row["time_s"]),
                                          np.array([float(row[e]) for e in EMOTIONS]))

    def rows(self, item: Item, faces) -> list[Row]:
        tracks = self.tracker.update(item.frame, np.array([_corners(f.box) for f in faces]).reshape(-1, 4))
        rows = []
        for index, (face, track) in enumerate(zip(faces, tracks)):
            probabilities = face.probabilities
            if self.smoother:
                probabilities = self.smoother.update(track, item.time_s, probabilities)
            rows.append(Row(source=item.source.name, frame=item.frame, time_s=item.time_s, face=index, track=track,
                            box=face.box, face_score=face.score, probabilities=probabilities,
                            smooth_s=self.smoother.seconds if self.smoother else 0.0))
        return rows


def _corners(box: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
    x, y, w, h = box
    return x, y, x + w, y + h


def rows_for(item: Item, faces) -> list[Row]:
    """The CSV rows of an image, or of a video frame without faces (an empty list gives one no_face row)."""
    base = dict(source=item.source.name, frame=item.frame, time_s=item.time_s)
    if not faces:
        return [Row(**base, status="no_face")]
    return [Row(**base, face=i, box=face.box, face_score=face.score, probabilities=face.probabilities)
            for i, face in enumerate(faces)]


def label_files(inputs: list[str], output: str | Path, config: LabelConfig | None = None,
                recognizer: EmotionRecognizer | None = None) -> RunSummary:
    """Label every image and video frame under ``inputs`` into the CSV ``output``; returns the run's summary.

    Raises UsageError (missing inputs, nothing to label), OutputError (output exists or is unwritable) and
    ModelError (bad model) before any work starts; per-file problems become error rows instead.
    """
    from tqdm import tqdm

    config = config or LabelConfig()
    missing = [given for given in inputs if not Path(given).exists()]
    if missing:
        raise UsageError(f"no such file or folder: {', '.join(missing)}")
    if config.every < 1:
        raise UsageError("--every must be 1 or more")
    sources, problems = discover(inputs)
    if not sources and not problems:
        raise UsageError(f"no images or videos found in {', '.join(inputs)}")
    recognizer = recognizer or EmotionRecognizer(
        config.model, detector=config.detector, align=config.align, face_threshold=config.face_threshold,
        min_face=config.min_face, detect_size=config.detect_size, threads=config.threads, providers=config.providers)
    summary = RunSummary()
    started = time.perf_counter()
    with CsvSink(output, resume=config.resume, force=config.force) as sink:
        mixed = sink.smooth_values - {f"{config.smooth:g}"}
        if mixed:
            raise UsageError(f"{output} holds video rows with smooth_s {', '.join(sorted(mixed))}; resume with the "
                             f"same --smooth as the interrupted run")
        for problem in problems:
            summary.problems.append(f"{problem.path}: {problem.message}")
            if (problem.path, "") not in sink.done:
                sink.write_item([Row(source=problem.path, status="error", error=problem.message)])
                summary.errors += 1
        total = sum(_planned_items(source, config.every) for source in sources)
        progress = tqdm(total=total or None, unit="item", disable=not config.progress, file=sys.stderr,
                        dynamic_ncols=True, smoothing=0.1)
        items: queue.Queue = queue.Queue(maxsize=max(config.prefetch, config.batch))
        stop = threading.Event()
        decoder = threading.Thread(target=_producer, args=(sources, config.every, sink.done, items, stop),
                                   name="fer-batch-decode", daemon=True)
        decoder.start()
        try:
            _consume(items, recognizer, sink, summary, config, progress)
        finally:
            stop.set()
            progress.close()
            decoder.join(timeout=5)
    summary.elapsed = time.perf_counter() - started
    if config.summary or config.annotate:
        from fer_batch.summary import read_rows, write_summary

        if config.summary:
            summary.summary_csv = write_summary(output)
        if config.annotate:
            from fer_batch.annotate import render

            summary.annotated = render(read_rows(output), config.annotate)
    return summary


def _planned_items(source: Source, every: int) -> int:
    return 1 if source.kind == "image" else max(count_frames(source.path, every), 1)


def _consume(items: queue.Queue, recognizer, sink: CsvSink, summary: RunSummary, config: LabelConfig,
             progress) -> None:
    """Take decoded items in batches, run the models, write each item's rows in order."""
    batch = config.batch
    video: list[VideoState | None] = [None]  # the video being labelled, if any
    finished = False
    while not finished:
        pending: list[Item] = []
        entry = items.get()
        while True:
            if entry is _DONE:
                finished = True
                break
            if isinstance(entry, BaseException):
                raise entry
            if entry is None:
                summary.skipped += 1
                progress.update(1)
            else:
                pending.append(entry)
            if len(pending) >= batch:
                break
            try:
                entry = items.get_nowait()
            except queue.Empty:
                break
        _process(pending, recognizer, sink, summary, config, video)
        progress.update(len(pending))


def _process(pending: list[Item], recognizer, sink: CsvSink, summary: RunSummary, config: LabelConfig,
             video: list[VideoState | None]) -> None:
    decoded = [item for item in pending if item.image is not None]
    try:
        results = recognizer.predict_batch([item.image for item in decoded])
    except Exception:  # isolate the failing item: redo the batch one by one below
        results = None
    by_item = {}
    for position, item in enumerate(decoded):
        if results is not None:
            by_item[id(item)] = results[position]
            continue
        try:
            by_item[id(item)] = recognizer.predict(item.image)
        except Exception as error:  # one bad item never stops the batch: it becomes an error row
            item.error = f"analysis failed: {type(error).__name__}: {error}"
    for item in pending:
        if item.error:
            rows = [Row(source=item.source.name, frame=item.frame, time_s=item.time_s, status="error",
                        error=item.error)]
            summary.errors += 1
        else:
            faces = by_item[id(item)]
            if item.frame is None or not faces:
                rows = rows_for(item, faces)
            else:
                if video[0] is None or video[0].source != item.source.name:
                    video[0] = VideoState(item.source.name, item.fps, config,
                                          sink.video_rows.pop(item.source.name, []))
                rows = video[0].rows(item, faces)
            summary.faces += len(faces)
            summary.no_face += not faces
        sink.write_item(rows)
        summary.items += 1
