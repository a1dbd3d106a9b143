"""Work units and their analysis: the seam between the runner and its engines.

The runner plans :class:`WorkUnit` s (a group of images, or a frame range of one video); an engine (in-process,
worker processes, Ray) runs :func:`analyse` on each unit where it is, decoding what it analyses, and sends back
only small :class:`ItemResult` s (boxes, scores, probabilities). The runner merges them in plan order, tracks,
smooths and writes. The pipeline is written once, here; engines differ only in where ``analyse`` runs.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from fer_batch.sources import InputError, Source, read_image

# A video stopping this many frames (or 1 %) short of what its index or header announces is reported as ending early.
_EARLY_END_SLACK = 2


@dataclass(frozen=True)
class WorkUnit:
    """Images to analyse, or frames ``start`` .. ``stop`` (exclusive) of one video."""

    id: int
    sources: tuple[Source, ...]
    start: int = 0
    stop: int | None = None  # None: to the end of the video
    every: int = 1
    skip: frozenset[int] = frozenset()  # frames already in the CSV (--resume)
    expected: int = 0  # frames the video should have (index or header), to report an early end; 0: unknown
    last: bool = True  # the video's final range: it reports an early end
    index: object = None  # fer_batch.video.FrameIndex window of the range, so workers need not demux the file
    detect_every: int = 1  # videos: the whole-frame detector runs on the first of each window of this many frames

    @property
    def is_video(self) -> bool:
        return self.sources[0].kind == "video"

    def next_frame(self, start: int) -> int:
        """The first frame at or after ``start`` (and the range's start) that this unit analyses: a multiple of
        ``every``, not already done."""
        frame = -(-max(start, self.start) // self.every) * self.every
        while frame in self.skip:
            frame += self.every
        return frame

    def starts_window(self, previous: int | None, frame: int) -> bool:
        """Whether analysed frame ``frame``, after the analysed frame ``previous`` (None: the first), starts a
        detection window: the frames of a window are analysed together, the first with the whole-frame detector
        and the others around the faces of the frame before (``EmotionRecognizer.predict_frames``). Windows start
        at every ``detect_every``-th analysed frame and at the first one from each keyframe on, so they depend on
        the video alone: a range that starts at a keyframe or a window's frame (see ``plan``) starts a window,
        and any split of a video into ranges gives the same windows, hence the same faces."""
        if previous is None or self.detect_every <= 1:
            return True
        span = self.every * self.detect_every
        if frame // span != previous // span:
            return True
        keyframes = getattr(self.index, "keyframes", None)
        if keyframes is None or not len(keyframes):
            return False
        after = int(np.searchsorted(keyframes, previous, side="right"))
        return after < len(keyframes) and keyframes[after] <= frame

    def window_start(self) -> int:
        """The frame to decode from: the start of the detection window that holds the unit's first analysed
        frame. A unit that starts inside a window (a worker's retry after a crash, a Ray piece) analyses that
        window's frames before its start again, without writing them, to find the same faces."""
        first = -(-self.start // self.every) * self.every
        if self.detect_every <= 1:
            return self.start
        span = self.every * self.detect_every
        candidates = [first // span * span, getattr(self.index, "offset", 0)]
        keyframes = getattr(self.index, "keyframes", None)
        if keyframes is not None and len(keyframes):
            before = int(np.searchsorted(keyframes, first, side="right"))
            candidates += [int(keyframes[before - 1])] if before else []
        return min(self.start, max(candidates))

    def lead_in(self, first: int) -> frozenset[int]:
        """Frames, decoding from ``first`` (``window_start``), to analyse without writing them: those before the
        unit's start or already written (``skip``, --resume) that a frame to write needs, as its window's
        detections run from the window's first frame."""
        if self.detect_every <= 1 or (first >= self.start and not self.skip):
            return frozenset()
        needed: set[int] = set()
        written: list[int] = []  # of the current window, since its start or its last frame to write
        # No frame already written has a window that reaches beyond this.
        end = max(self.skip, default=self.start) + self.every * (self.detect_every + 1)
        stop = min(self.stop, end) if self.stop is not None else end
        previous = None
        for frame in range(-(-first // self.every) * self.every, stop, self.every):
            if self.starts_window(previous, frame):
                written = []
            if frame < self.start or frame in self.skip:
                written.append(frame)
            else:
                needed.update(written)
                written = []
            previous = frame
        return frozenset(needed)

    def failed_item(self, returned: int, last_frame: int, message: str) -> ItemResult:
        """An error result for the first item after the ``returned`` items (videos: after frame ``last_frame``)
        that came back before a worker failed."""
        if self.is_video:
            return ItemResult(self.sources[0].name, frame=self.next_frame(last_frame + 1), error=message)
        return ItemResult(self.sources[min(returned, len(self.sources) - 1)].name, error=message)

    def planned_items(self) -> int:
        """Items this unit will yield (for progress bars): images, or analysed frames of the range."""
        if not self.is_video:
            return len(self.sources)
        stop = self.stop if self.stop is not None else max(self.expected, self.start)
        first = -(-self.start // self.every) * self.every
        return max(0, len(range(first, stop, self.every)) - sum(1 for f in self.skip if self.start <= f < stop))


@dataclass
class ItemResult:
    """The faces of one image or one analysed video frame, or why it could not be analysed."""

    source: str
    frame: int | None = None
    time_s: float | None = None
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))  # x, y, w, h
    scores: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    probabilities: np.ndarray = field(default_factory=lambda: np.zeros((0, 7), np.float32))
    error: str = ""
    fps: float = 0.0  # videos: the average frame rate (the parent's tracker counts gaps in frames)

    @property
    def faces(self) -> int:
        return len(self.scores)


@dataclass
class _Pending:
    """A decoded item on its way to the models."""

    source: Source
    frame: int | None = None
    time_s: float | None = None
    image: np.ndarray | None = None
    error: str = ""
    fps: float = 0.0
    write: bool = True  # False: analysed only for the frames after it in its detection window (--resume)


def analyse(unit: WorkUnit, recognizer, batch: int = 4, prefetch: int = 0, timings: dict | None = None,
            lanes: int = 1) -> Iterator[list[ItemResult]]:
    """Decode and analyse one unit; yields its results in order, a model batch at a time.

    ``prefetch`` > 0 decodes in a background thread, up to that many items ahead (decoders and onnxruntime both
    release the GIL). ``lanes`` > 1 runs that many batches through the models at once, in threads that share the
    recognizer's sessions (onnxruntime sessions may run concurrently); results still come out in order. Per-item
    failures (an unreadable image, a frame the models reject) become error results; ``timings``, when given,
    accumulates seconds spent decoding and in each model (summed over lanes). A video unit with ``detect_every``
    > 1 goes through the models a detection window at a time (``WorkUnit.starts_window``) instead of ``batch``
    frames at a time.
    """
    items = _decoded(unit)
    if prefetch > 0:
        items = _prefetched(items, prefetch)
    windows = unit if unit.is_video and unit.detect_every > 1 else None
    batches = _batched(items, batch, timings, windows)
    if lanes <= 1:
        for pending in batches:
            yield _run_models(pending, recognizer, timings, sequence=windows is not None)
        return
    yield from _in_lanes(batches, recognizer, lanes, timings, sequence=windows is not None)


def _batched(items: Iterator[_Pending], batch: int, timings: dict | None, windows: WorkUnit | None = None
             ) -> Iterator[list[_Pending]]:
    """Items in batches of ``batch``, or with ``windows`` (a video unit) a detection window per batch."""
    pending: list[_Pending] = []
    clock = time.perf_counter
    while True:
        started = clock()
        item = next(items, None)
        if timings is not None:
            timings["decode"] = timings.get("decode", 0.0) + clock() - started
        if windows is not None:
            if pending and (item is None or windows.starts_window(pending[-1].frame, item.frame)):
                yield pending
                pending = []
        elif pending and item is None:
            yield pending
            pending = []
        if item is not None:
            pending.append(item)
            if windows is None and len(pending) >= batch:
                yield pending
                pending = []
        if item is None:
            return


def _in_lanes(batches: Iterator[list[_Pending]], recognizer, lanes: int, timings: dict | None,
              sequence: bool = False) -> Iterator[list[ItemResult]]:
    """Run ``lanes`` batches through the models at a time in a thread pool; yield their results in order.

    On two cores, two lanes with one onnxruntime thread each labelled the benchmark clip 1.12x faster than one lane
    with two threads (``python benchmarks/scale.py``: 66.8 against 59.3 frames/s, whole command): small
    single-thread convolutions keep each core busy, where one operator split over two threads waits at every layer
    for the slower half."""
    def run(pending: list[_Pending]) -> tuple[list[ItemResult], dict | None]:
        own = {} if timings is not None else None  # per batch, summed here: no two threads update one dict
        return _run_models(pending, recognizer, own, sequence), own

    running: deque[Future] = deque()
    with ThreadPoolExecutor(lanes, thread_name_prefix="fer-batch-lane") as pool:
        try:
            for pending in batches:
                running.append(pool.submit(run, pending))
                if len(running) > lanes:  # one batch waits, ready for the first lane that frees up
                    yield _collect(running.popleft(), timings)
            while running:
                yield _collect(running.popleft(), timings)
        finally:  # interrupted or closed early: drop what has not started; the pool waits for what has
            for future in running:
                future.cancel()


def _collect(future: Future, timings: dict | None) -> list[ItemResult]:
    results, own = future.result()
    if timings is not None and own:
        for stage, seconds in own.items():
            timings[stage] = timings.get(stage, 0.0) + seconds
    return results


def _decoded(unit: WorkUnit) -> Iterator[_Pending]:
    if not unit.is_video:
        for source in unit.sources:
            try:
                yield _Pending(source, image=read_image(source.path))
            except InputError as error:
                yield _Pending(source, error=str(error))
        return
    yield from _video_items(unit)


def _video_items(unit: WorkUnit) -> Iterator[_Pending]:
    from fer_batch.video import VideoReader

    source = unit.sources[0]
    try:
        reader = VideoReader(source.path, threads=1, index=unit.index)
    except InputError as error:
        yield _Pending(source, error=str(error))
        return
    first = unit.window_start()
    lead_in = unit.lead_in(first)
    before = frozenset(range(-(-first // unit.every) * unit.every, unit.start, unit.every))  # not this unit's
    with reader:
        fps = reader.info.fps
        expected = unit.stop if unit.stop is not None else max(unit.expected, reader.info.frame_count)
        last = unit.start - 1
        for frame in reader.frames(first, unit.stop, unit.every, (unit.skip | before) - lead_in):
            last = max(last, frame.index)
            if frame.image is not None:
                yield _Pending(source, frame=frame.index, time_s=frame.time_s, image=frame.image, fps=fps,
                               write=frame.index not in lead_in)
        if unit.last:
            expected = max(expected, reader.info.announced_frames)
        missing_from = last + 1
        slack = max(_EARLY_END_SLACK, expected // 100) if unit.last else 0
        if missing_from < expected - slack and missing_from not in unit.skip:
            what = ("video has no decodable frames" if missing_from == 0 else
                    f"video ended early: decoded frames up to {missing_from} of the {expected} frames "
                    f"{'its container announces' if unit.last else 'in its index'} (truncated or corrupt)")
            yield _Pending(source, frame=missing_from, time_s=missing_from / fps, error=what, fps=fps)


def _run_models(pending: list[_Pending], recognizer, timings: dict | None, sequence: bool = False
                ) -> list[ItemResult]:
    """Detect and classify the decoded items of a batch (``sequence``: one detection window of a video, see
    ``EmotionRecognizer.predict_frames``); a failing batch is redone item by item. Items analysed only for the
    frames after them (``write`` False) give no result."""
    decoded = [item for item in pending if not item.error]
    faces_of: dict[int, list] = {}
    predict = recognizer.predict_frames if sequence else recognizer.predict_batch
    try:
        for item, faces in zip(decoded, predict([item.image for item in decoded], timings)):
            faces_of[id(item)] = faces
    except Exception:  # isolate the failing item: redo the batch one by one
        for item in decoded:
            try:
                faces_of[id(item)] = recognizer.predict_batch([item.image], timings)[0]
            except Exception as error:  # one bad item never stops the batch: it becomes an error result
                item.error = f"analysis failed: {type(error).__name__}: {error}"
    results = []
    for item in pending:
        if not item.write:
            continue
        result = ItemResult(item.source.name, item.frame, item.time_s, error=item.error, fps=item.fps)
        faces = faces_of.get(id(item)) if not item.error else None
        if faces:
            result.boxes = np.array([face.box for face in faces], np.float32)
            result.scores = np.array([face.score for face in faces], np.float32)
            result.probabilities = np.stack([face.probabilities for face in faces]).astype(np.float32)
        results.append(result)
    return results


_END = object()


def _prefetched(items: Iterable[_Pending], depth: int) -> Iterator[_Pending]:
    """Run the ``items`` iterator in a background thread, ``depth`` items ahead; errors are re-raised here."""
    buffer: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(entry) -> bool:
        while not stop.is_set():
            try:
                buffer.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put(item):
                    return
        except BaseException as error:  # hand it to the consumer rather than dying silently
            put(error)
            return
        put(_END)

    thread = threading.Thread(target=produce, name="fer-batch-decode", daemon=True)
    thread.start()
    try:
        while True:
            entry = buffer.get()
            if entry is _END:
                return
            if isinstance(entry, BaseException):
                raise entry
            yield entry
    finally:
        stop.set()
        thread.join(timeout=5)
