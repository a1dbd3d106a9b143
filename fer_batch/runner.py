"""A whole labelling job: plan work units -> an engine analyses them -> merge in order, track, smooth, write.

The runner plans units (groups of images, frame ranges of videos; see :mod:`fer_batch.work`), an engine runs the
analysis (in this process, in worker processes, or on a Ray cluster), and one merge step puts the results back in
plan order, tracks faces and smooths along tracks per video, and writes each item's rows at once. One bad file
becomes an error row and the job goes on; rows are written item by item, so an interruption loses nothing that
was written, and --resume plans only what is missing.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from fer_batch.classify import PRECISIONS, resolve_model
from fer_batch.config import ENGINES, LabelConfig, UsageError  # the last two also for library callers
from fer_batch.labels import EMOTIONS
from fer_batch.sources import Source, discover
from fer_batch.track import Smoother, Tracker
from fer_batch.work import ItemResult, WorkUnit
from fer_batch.writer import CsvSink, Row


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
    report: Path | None = None
    engine: str = "local"
    workers: int = 1
    threads: int = 0  # onnxruntime threads per model call
    lanes: int = 1  # model batches each worker runs at once (threads sharing its sessions)
    restarts: int = 0  # workers replaced after a crash
    units_per_node: dict[str, int] = field(default_factory=dict)  # Ray: where the work ran

    @property
    def items_per_second(self) -> float:
        return self.items / self.elapsed if self.elapsed > 0 else 0.0

    def format(self) -> str:
        text = (f"{self.items} items, {self.faces} faces, {self.no_face} with no face, {self.errors} errors, "
                f"{self.elapsed:.1f} s, {self.items_per_second:.1f} items/s")
        return text + (f" ({self.skipped} already done)" if self.skipped else "")


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

    def rows(self, result: ItemResult) -> list[Row]:
        corners = np.concatenate([result.boxes[:, :2], result.boxes[:, :2] + result.boxes[:, 2:]], axis=1)
        tracks = self.tracker.update(result.frame, corners.astype(np.float64))
        rows = []
        for index, (box, score, probabilities, track) in enumerate(
                zip(result.boxes, result.scores, result.probabilities, tracks)):
            if self.smoother:
                probabilities = self.smoother.update(track, result.time_s, probabilities)
            rows.append(Row(source=result.source, frame=result.frame, time_s=result.time_s, face=index, track=track,
                            box=tuple(float(v) for v in box), face_score=float(score), probabilities=probabilities,
                            smooth_s=self.smoother.seconds if self.smoother else 0.0))
        return rows


def rows_for(result: ItemResult) -> list[Row]:
    """The CSV rows of an image, a video frame without faces (one no_face row), or an item that failed."""
    base = dict(source=result.source, frame=result.frame, time_s=result.time_s)
    if result.error:
        return [Row(**base, status="error", error=result.error)]
    if not result.faces:
        return [Row(**base, status="no_face")]
    return [Row(**base, face=i, box=tuple(float(v) for v in box), face_score=float(score), probabilities=p)
            for i, (box, score, p) in enumerate(zip(result.boxes, result.scores, result.probabilities))]


def label_files(inputs: list[str], output: str | Path, config: LabelConfig | None = None,
                recognizer=None) -> RunSummary:
    """Label every image and video frame under ``inputs`` into the CSV ``output``; returns the run's summary.

    Raises UsageError (missing inputs, nothing to label), OutputError (output exists or is unwritable) and
    ModelError (bad model) before any work starts; per-file problems become error rows instead. A ``recognizer``
    given here runs in this process (one worker).
    """
    from fer_batch.engines import EngineError
    from fer_batch.onnx import ModelError

    config = config or LabelConfig()
    started_at = datetime.now(timezone.utc)
    started = time.perf_counter()
    missing = [given for given in inputs if not Path(given).exists()]
    if missing:
        raise UsageError(f"no such file or folder: {', '.join(missing)}")
    if config.every < 1 or config.detect_every < 1:
        raise UsageError("--every and --detect-every must be 1 or more")
    try:
        resolve_model(config.model, config.precision)  # a model file or a precision, and a known one
    except ValueError as error:
        raise UsageError(str(error)) from None
    if config.engine not in ENGINES:
        raise UsageError(f"unknown engine {config.engine!r}; choose one of {', '.join(ENGINES)}")
    if config.resume:  # before any worker starts
        _check_resume_settings(output, config)
    summary = RunSummary(engine=config.engine)
    engine = _make_engine(config, recognizer, summary)  # worker processes load their models meanwhile
    try:
        sources, problems = discover(inputs)
        if not sources and not problems:
            raise UsageError(f"no images or videos found in {', '.join(inputs)}")
        # While the workers load their models: read every video's packet index (to plan its ranges) and what
        # OUT.run.json records, so nothing of that waits for the workers or delays the first unit.
        ranges = {source.name: list(_video_ranges(source, config.every, summary.workers, config.detect_every))
                  for source in sources if source.kind == "video"}
        _environment()
        wait_ready = getattr(engine, "wait_ready", None)
        if wait_ready is not None:  # worker processes or a cluster: until every worker has its models
            wait_ready()
        with CsvSink(output, resume=config.resume, force=config.force) as sink:
            mixed = sink.smooth_values - {f"{config.smooth:g}"}
            if mixed:
                raise UsageError(f"{output} holds video rows with smooth_s {', '.join(sorted(mixed))}; resume with "
                                 f"the same --smooth as the interrupted run")
            info_path = _write_run_info(output, inputs, config, summary, started_at, None)
            for problem in problems:
                summary.problems.append(f"{problem.path}: {problem.message}")
                if (problem.path, "") not in sink.done:
                    sink.write_item([Row(source=problem.path, status="error", error=problem.message)])
                    summary.errors += 1
            summary.skipped = len(sink.done)
            units = plan(sources, sink.done, config, summary.workers, ranges)
            _merge(engine.run(units), sink, summary, config, total=sum(unit.planned_items() for unit in units))
    except EngineError as error:  # workers that cannot load the models, before or during the run: exit status 2
        raise ModelError(str(error)) from None
    finally:
        engine.close()
        summary.restarts = getattr(engine, "restarts", 0)
        summary.units_per_node = dict(getattr(engine, "units_per_node", {}))
    summary.elapsed = time.perf_counter() - started
    _write_run_info(output, inputs, config, summary, started_at, datetime.now(timezone.utc), info_path)
    finish_outputs(output, inputs, config, summary)
    return summary


def finish_outputs(output: str | Path, inputs: list[str], config: LabelConfig, summary: RunSummary) -> None:
    """What comes after the CSV: OUT.summary.csv, annotated copies, the HTML report (all from the CSV)."""
    if not (config.summary or config.annotate or config.report):
        return
    from fer_batch.summary import read_rows, write_summary

    if config.summary:
        summary.summary_csv = write_summary(output)
    if config.annotate:
        from fer_batch.annotate import render

        summary.annotated = render(read_rows(output), config.annotate, inputs=inputs, codec=config.annotate_codec)
    if config.report:
        from fer_batch.report import write_report

        summary.report = write_report(output, config.report, annotated=config.annotate)


def _make_engine(config: LabelConfig, recognizer, summary: RunSummary):
    """The engine for this run: a Ray cluster, worker processes, or this process; started at once."""
    from fer_batch.system import available_cores

    cores = available_cores()
    if config.engine == "ray":
        from fer_batch.ray_engine import RayEngine

        engine = RayEngine(config)
        summary.workers, summary.threads = engine.workers, engine.threads
        return engine
    workers = 1 if recognizer is not None else (config.workers or auto_workers(cores))
    lanes = 1
    if workers == 1:
        lanes = config.lanes or (in_process_lanes(cores) if recognizer is None and not config.threads else 1)
    threads = config.threads or max(1, cores // (workers * lanes))
    summary.workers, summary.threads, summary.lanes = workers, threads, lanes
    if workers == 1:
        from fer_batch.engines import InProcessEngine
        from fer_batch.recognizer import EmotionRecognizer

        recognizer = recognizer or EmotionRecognizer(**config.recognizer_options(threads))
        return InProcessEngine(recognizer, batch=config.batch, prefetch=config.prefetch, lanes=lanes)
    from fer_batch.engines import ProcessEngine

    engine = ProcessEngine(workers, config.recognizer_options(threads), batch=config.batch,
                           stall_timeout=config.stall_timeout)
    engine.start()
    return engine


def auto_workers(cores: int) -> int:
    """``--workers auto``: one worker process per usable core - except on one or two cores, where one process
    running a lane per core measured faster with half the memory (``python benchmarks/scale.py`` on the 2-vCPU AVX2
    machine: clip 4.12 s against 4.65 s with two workers, 60 photos 1.87 s against 2.09 s, peak 312 MB against
    574 MB)."""
    return cores if cores > 2 else 1


MAX_LANES = 4


def in_process_lanes(cores: int) -> int:
    """Model batches one process runs at once, each with its own onnxruntime thread(s): one per core, up to
    MAX_LANES (each lane's Python pre/post-processing holds the GIL for ~7 % of its time, so many lanes in one
    process would queue on it; more cores are better used by worker processes). ``--threads N`` asks for one lane
    of N threads."""
    return max(1, min(cores, MAX_LANES))


# Frames per video unit when workers share a video: enough for full model batches and cheap seeks, few enough
# that every worker gets several units (the last ones finish together).
MIN_CHUNK_FRAMES = 32
MAX_CHUNK_FRAMES = 1500
UNITS_PER_WORKER = 4
# Images per unit with several workers (one process takes 8 times as many).
IMAGES_PER_UNIT = 8


def plan(sources: list[Source], done: set[tuple[str, str]], config: LabelConfig, workers: int = 1,
         ranges: dict[str, list] | None = None) -> list[WorkUnit]:
    """Work units in input order: images in groups, videos whole (one worker) or in frame ranges that start at
    keyframes where they can (several workers). Items already in the CSV (``done``) are left out. ``ranges``:
    each video's ranges from ``_video_ranges``, when already read."""
    frames_done: dict[str, set[int]] = {}
    for name, frame in done:
        if frame:
            frames_done.setdefault(name, set()).add(int(frame))
    # Small units keep every worker (or Ray actor) busy to the end; one process takes bigger ones. At least
    # IMAGES_PER_UNIT, so that a small --batch does not multiply the units.
    group = max(config.batch, IMAGES_PER_UNIT) if workers > 1 else max(config.batch, IMAGES_PER_UNIT) * 8
    units: list[WorkUnit] = []
    images: list[Source] = []

    def flush() -> None:
        while images:
            units.append(WorkUnit(len(units), tuple(images[:group])))
            del images[:group]

    for source in sources:
        if source.kind == "image":
            if (source.name, "") not in done:
                images.append(source)
                if len(images) >= group:
                    flush()
            continue
        flush()
        if (source.name, "") in done:  # the video failed to open last time: its error row is there
            continue
        skip = frozenset(frames_done.get(source.name, ()))
        video_ranges = (ranges or {}).get(source.name)
        for start, stop, expected, last, index in video_ranges or _video_ranges(source, config.every, workers,
                                                                                config.detect_every):
            unit = WorkUnit(len(units), (source,), start=start, stop=stop, every=config.every,
                            detect_every=config.detect_every if config.detector == "retinaface" else 1,
                            skip=frozenset(f for f in skip if start <= f < (stop if stop is not None else math.inf)),
                            expected=expected, last=last, index=index)
            if unit.planned_items() > 0 or not skip:
                units.append(unit)
    flush()
    return units


def _video_ranges(source: Source, every: int, workers: int, detect_every: int = 1
                  ) -> Iterator[tuple[int, int | None, int, bool, object]]:
    """(start, stop, expected frames, last, index window or None) for the units of one video. Ranges start at
    keyframes, or else at the first frame of a detection window (a multiple of ``every * detect_every``), so
    that every range starts a window (``WorkUnit.starts_window``)."""
    from fer_batch.sources import InputError
    from fer_batch.video import VideoReader

    try:
        with VideoReader(source.path) as reader:
            count, keyframes, index = reader.info.frame_count, reader.keyframes(), reader.index
    except InputError:
        yield 0, None, 0, True, None  # the unit reports the error
        return
    if workers <= 1 or index is None or count <= MIN_CHUNK_FRAMES:
        yield 0, None, count, True, index  # the index read here spares the analysis a second demuxing pass
        return
    size = min(MAX_CHUNK_FRAMES, max(MIN_CHUNK_FRAMES * every, math.ceil(count / (workers * UNITS_PER_WORKER))))
    starts = [0]
    while starts[-1] + size < count:
        target = starts[-1] + size
        # Start at a keyframe near the target (no frames decoded twice) unless that makes ranges too uneven.
        near = [k for k in keyframes if target - size // 2 <= k <= target + size // 2 and k > starts[-1]]
        span = every * detect_every
        aligned = target // span * span if target // span * span > starts[-1] else -(-target // span) * span
        starts.append(min(near, key=lambda k: abs(k - target)) if near else aligned)
    for position, start in enumerate(starts):
        last = position == len(starts) - 1
        stop = count if last else starts[position + 1]
        yield start, None if last else stop, count, last, index.window(start, stop)


def _merge(events: Iterable[tuple[int, list[ItemResult], bool]], sink: CsvSink, summary: RunSummary,
           config: LabelConfig, total: int) -> None:
    """Write results in plan order as they arrive (units finish out of order); track and smooth per video."""
    from tqdm import tqdm

    progress = tqdm(total=total or None, unit="item", disable=not config.progress, file=sys.stderr,
                    dynamic_ncols=True, smoothing=0.1)
    waiting: dict[int, list[ItemResult]] = {}
    finished: set[int] = set()
    state: list[VideoState | None] = [None]
    next_unit = 0
    try:
        for unit_id, results, done in events:
            progress.update(len(results))
            if unit_id == next_unit:
                _write(results, sink, summary, config, state)
            else:
                waiting.setdefault(unit_id, []).extend(results)
            if done:
                finished.add(unit_id)
            while next_unit in finished:  # write everything that is now in order
                finished.discard(next_unit)
                next_unit += 1
                _write(waiting.pop(next_unit, []), sink, summary, config, state)
    finally:
        progress.close()


def _write(results: list[ItemResult], sink: CsvSink, summary: RunSummary, config: LabelConfig,
           state: list[VideoState | None]) -> None:
    for result in results:
        if result.frame is not None and result.faces and not result.error:
            video = state[0]
            if video is None or video.source != result.source:
                video = state[0] = VideoState(result.source, result.fps or 25.0, config,
                                              sink.video_rows.pop(result.source, []))
            rows = video.rows(result)
        else:
            rows = rows_for(result)
        summary.errors += bool(result.error)
        summary.faces += result.faces
        summary.no_face += not result.error and not result.faces
        sink.write_item(rows)
        summary.items += 1


@functools.lru_cache(maxsize=1)
def _environment() -> dict:
    """Versions and the CPU: what OUT.run.json records of the machine (read once)."""
    from fer_batch.system import describe_hardware, versions

    return {"versions": versions(), "machine": describe_hardware()}


# The settings that decide what a row says, and their options: a resumed run must use the interrupted run's, or
# one CSV would hold rows of two different analyses. Engines, workers, lanes, threads and batches only change speed.
ROW_SETTINGS = {"detector": "--detector", "detector_precision": "--detector-precision", "align": "--align",
                "every": "--every", "detect_every": "--detect-every", "min_face": "--min-face",
                "face_threshold": "--face-threshold", "detect_size": "--detect-size", "smooth": "--smooth",
                "track_gap": "track_gap (LabelConfig)"}


# What runs recorded in OUT.run.json before a setting existed used: 0.4 and earlier ran RetinaFace in float.
SETTINGS_BEFORE_RECORDED = {"detector_precision": "float"}


def _model_record(config: LabelConfig) -> dict:
    """OUT.run.json's "model": the file this run's workers load (each resolves the bundled one in its own
    installation, alike), its precision and its SHA-256 (what --resume compares)."""
    path = resolve_model(config.model, config.precision)
    record = {"path": str(path), "precision": "as given" if config.model else config.precision or PRECISIONS[0]}
    if path.is_file():
        record["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    return record


def _check_resume_settings(output, config: LabelConfig) -> None:
    """--resume: UsageError when a setting that decides the rows (ROW_SETTINGS, the model file) differs from the
    interrupted run's, as OUT.run.json recorded them. A CSV without run.json (written by a library caller or an
    older version) is resumed as it is."""
    from fer_batch.summary import run_info_path

    path = run_info_path(output)
    if not path.is_file():
        return
    try:
        previous = json.loads(path.read_text(encoding="utf-8"))
        settings, model = previous["settings"], previous.get("model", {})
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise UsageError(f"{path}: cannot read the interrupted run's settings ({error}); delete it to resume "
                         f"without checking them") from None
    now = asdict(config)
    settings = {**SETTINGS_BEFORE_RECORDED, **settings}
    changed = [f"{option} {_shown(settings[key])} (now {_shown(now[key])})" for key, option in ROW_SETTINGS.items()
               if key in settings and settings[key] != now[key]]
    current = _model_record(config)
    if model.get("sha256") and current.get("sha256") and model["sha256"] != current["sha256"]:
        changed.append(f"the model {model.get('path')} (now {current['path']}, a different file)")
    if changed:
        raise UsageError(f"{output} was written with {'; '.join(changed)}; resume with the interrupted run's "
                         f"settings, or use --force to start over")


def _shown(value) -> str:
    return "on" if value is True else "off" if value is False else f"{value:g}" if isinstance(value, float) \
        else str(value)


def _write_run_info(output, inputs: list[str], config: LabelConfig, summary: RunSummary, started_at: datetime,
                    finished_at: datetime | None, path: Path | None = None) -> Path:
    """OUT.run.json: the run's inputs, settings, versions, model and machine (for the report and for later)."""
    from fer_batch.summary import run_info_path

    path = path or run_info_path(output)
    environment = _environment()
    model = _model_record(config)
    info = {
        "fer_batch": environment["versions"]["fer_batch"], "inputs": list(inputs),
        "settings": {k: v for k, v in asdict(config).items() if k not in ("progress",)},
        "versions": environment["versions"], "model": model,
        "machine": environment["machine"], "started": started_at.isoformat(timespec="seconds"),
        "finished": finished_at.isoformat(timespec="seconds") if finished_at else None,
        "elapsed_s": round(summary.elapsed, 3), "items": summary.items, "faces": summary.faces,
        "no_face": summary.no_face, "errors": summary.errors, "skipped": summary.skipped,
        "problems": summary.problems[:1000], "annotate": config.annotate, "engine": summary.engine,
        "workers": summary.workers, "threads": summary.threads, "lanes": summary.lanes, "restarts": summary.restarts,
        "units_per_node": summary.units_per_node,
    }
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    temporary.replace(path)
    return path
