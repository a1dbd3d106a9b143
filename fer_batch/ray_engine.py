"""The Ray engine: work units analysed by a Ray Data actor pool, on whichever cluster nodes run them.

``fer-batch label ... --engine ray [--ray-address ADDR]`` joins a running cluster (``--ray-address``, else the
``RAY_ADDRESS`` environment variable) or starts a local Ray. The runner plans the units as for local workers; here
they become a Ray Dataset, one task per block (a video range, or a few image units), and ``map_batches`` hands the
tasks to a pool of :class:`AnalyseActor` s (one per CPU, each loading the models once). An actor decodes and
analyses its units where it runs, with the same :func:`fer_batch.work.analyse` as every engine, so frames never
travel: only the pickled per-face :class:`ItemResult` s come back. The runner merges them in order, tracks,
smooths and writes, as for local workers.

Inputs must be readable at the same path on every node (a shared filesystem); a node that cannot read a file
turns it into an error row naming the node. An actor that dies (its process killed, its node lost) is restarted
and its unit retried by Ray; a unit is reported at most once, and units Ray gives up on are retried piece by piece,
pieces that still fail becoming error rows. As with local workers, an actor whose unit sends nothing for
``stall_timeout`` seconds stops its own process (then the same retries), and no pass over the units waits on Ray
for ever: Ray Data ends one that makes no progress for :func:`pass_deadline` seconds, its unfinished units going
the same way. ``import ray`` happens only here, so the default install never needs it.

Ray Data (2.60) lets a finished pass's actors go by dropping its references to them, not with ``ray.kill``. A
task that failed leaves a reference behind: the task keeps its exception, whose traceback holds the task, its
done-callback and so the actor's handle: a cycle that only Python's cycle collector frees, and that under pytest
outlived even ``gc.collect()``. The actor that died there, restarted by Ray, lives on with its CPUs; the next
pass's actors never start on a cluster whose CPUs it holds, and Ray Data waits for them (for 30 minutes, its
default no-progress limit). So the engine names every actor of a pass, kills them when the pass ends, and waits
(with a deadline) until they are gone.
"""

from __future__ import annotations

import logging
import os
import pickle
import signal
import socket
import threading
import time
import uuid
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import numpy as np

from fer_batch.config import LabelConfig, UsageError
from fer_batch.engines import EngineError, Event
from fer_batch.work import ItemResult, WorkUnit, analyse

logger = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'fer-batch[ray]'"
# Ray retries a unit this many times when its actor dies (process killed, node lost) before giving up on it.
UNIT_RETRIES = 2
# Images per Ray task (about a second of one CPU's work) when there are enough to keep every worker busy.
TASK_IMAGES = 32
TASKS_PER_WORKER = 4
# Units Ray gave up on are retried in pieces of this many analysed frames (videos) or one image each.
PIECE_FRAMES = 32
# A Ray started by fer-batch keeps only units and results in its object store: kilobytes, not frames.
LOCAL_OBJECT_STORE_BYTES = 256 * 1024 * 1024
LOCAL_ERRORS = ("cannot read file",)  # error messages that depend on the node that read the file
# Seconds an actor may take to start and load the models (part of a pass's deadline).
ACTOR_START_S = 120.0
# Seconds a finished pass's actors may take to exit before the next pass starts without waiting for them.
ACTOR_EXIT_S = 60.0
# Seconds for a small call to the engine's own actor (the stall notes).
NOTES_TIMEOUT_S = 30.0


def _import_ray():
    try:
        import ray
        import ray.data  # noqa: F401 - the engine needs Ray Data, not only Ray core
    except ImportError as error:
        raise UsageError(f"--engine ray needs Ray Data, which is not installed ({error}); install it with "
                         f"{INSTALL_HINT}") from None
    return ray


def node_address() -> tuple[str, str]:
    """(address, id) of the Ray node this runs on, the address as the cluster knows it (``ray start
    --node-ip-address``), or the machine's IP when the cluster cannot say."""
    import ray

    node_id = ray.get_runtime_context().get_node_id()
    for node in ray.nodes():
        if node.get("NodeID") == node_id and node.get("NodeManagerAddress"):
            return node["NodeManagerAddress"], node_id
    return ray.util.get_node_ip_address(), node_id


def node_label() -> str:
    """How an error row names the node it was analysed on: its address and host name."""
    return f"{node_address()[0]} ({socket.gethostname()})"


class AnalyseActor:
    """A Ray Data callable class: loads the models once, then analyses the units of one task per call (a row
    holds a pickled list of WorkUnits); returns a row per unit: its id, its pickled ItemResults, the node.

    With ``stall_timeout`` > 0, a watchdog thread stops the actor's process when its unit has sent nothing for
    that many seconds (a hung decoder cannot be interrupted otherwise), after noting the unit in ``notes`` (a
    :class:`StallNotes` actor) so that its error row can say so."""

    def __init__(self, options: dict, batch: int, stall_timeout: float = 0.0, notes=None):
        from fer_batch.recognizer import EmotionRecognizer

        self.recognizer = EmotionRecognizer(**options)
        self.batch = batch
        address, node_id = node_address()
        self.node = f"{address} ({socket.gethostname()})"  # for error rows
        self.where = f"{address} ({node_id[:8]})"  # for units_per_node: unique even for nodes on one machine
        self.stall_timeout = stall_timeout
        self.notes = notes
        self._unit: WorkUnit | None = None  # the unit being analysed, for the watchdog
        self._progress_at = 0.0  # time.monotonic() of its last batch (or its start)
        if stall_timeout > 0:  # the clock starts after the models are loaded, as for local workers
            threading.Thread(target=self._watch, name="fer-batch stall watchdog", daemon=True).start()

    def __call__(self, rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ids, payloads = [], []
        for data in rows["units"]:
            for unit in pickle.loads(data):
                ids.append(unit.id)
                payloads.append(pickle.dumps(self.analyse(unit), protocol=pickle.HIGHEST_PROTOCOL))
        return {"id": np.array(ids, np.int64), "results": np.array(payloads, dtype=object),
                "node": np.array([self.where] * len(ids))}

    def analyse(self, unit: WorkUnit) -> list[ItemResult]:
        results: list[ItemResult] = []
        self._progress_at = time.monotonic()  # before _unit: the watchdog never sees a new unit with an old clock
        self._unit = unit
        try:
            for batch in analyse(unit, self.recognizer, self.batch):
                results.extend(batch)
                self._progress_at = time.monotonic()
        except Exception as error:  # noqa: BLE001 - the unit's next item becomes an error row, as with local workers
            frames = [result.frame for result in results if result.frame is not None]
            results.append(unit.failed_item(len(results), max(frames, default=unit.start - 1),
                                            f"analysis failed: {type(error).__name__}: {error}"))
        finally:
            self._unit = None
        for result in results:
            if result.error.startswith(LOCAL_ERRORS):
                result.error = f"on node {self.node}: {result.error}"
        return results

    def _watch(self) -> None:
        import ray

        while True:
            time.sleep(min(1.0, self.stall_timeout / 4))
            unit = self._unit
            if unit is None or time.monotonic() - self._progress_at < self.stall_timeout:
                continue
            if self.notes is not None:
                try:
                    ray.get(self.notes.stalled.remote(unit.id), timeout=NOTES_TIMEOUT_S)
                except ray.exceptions.RayError:  # the error row then says "died" instead of "sent nothing"
                    pass
            os.kill(os.getpid(), signal.SIGKILL)  # as a crash: Ray restarts the actor and retries the unit


class StallNotes:
    """A Ray actor (no CPU) where AnalyseActors note the units their watchdog stopped: unit id -> tries."""

    def __init__(self):
        self.units: dict[int, int] = {}

    def stalled(self, unit_id: int) -> None:
        self.units[unit_id] = self.units.get(unit_id, 0) + 1

    def stalled_units(self) -> dict[int, int]:
        return dict(self.units)


def pass_deadline(stall_timeout: float) -> float:
    """Seconds a Ray Data pass may go without a unit starting or finishing before Ray Data ends it (its
    unfinished units are then retried in pieces, or become error rows): long enough for a stalled unit's every
    try to be stopped by the watchdog, and an actor to start for each; -1 (never) when ``stall_timeout`` is 0."""
    if stall_timeout <= 0:
        return -1.0
    return (UNIT_RETRIES + 1) * (stall_timeout + ACTOR_START_S)


def _load_models(options: dict) -> tuple[str, str]:
    """Run as a Ray task: load the models as an actor would; returns (node, problem or "")."""
    from fer_batch.recognizer import EmotionRecognizer

    try:
        EmotionRecognizer(**options)
    except Exception as error:  # noqa: BLE001 - reported by wait_ready
        return node_label(), f"{type(error).__name__}: {error}"
    return node_label(), ""


def _absolute(unit: WorkUnit) -> WorkUnit:
    """The unit with absolute paths: Ray workers do not share the driver's working directory."""
    return replace(unit, sources=tuple(replace(source, path=Path(os.path.abspath(source.path)))
                                       for source in unit.sources))


class RayEngine:
    """Run units on a Ray cluster through a Ray Data actor pool (see the module docstring).

    ``workers`` is the pool size: ``config.workers`` if given, else one actor per ``threads`` CPUs of every alive
    node; ``threads`` (onnxruntime threads per actor, and CPUs each actor reserves) is ``config.threads`` or 1.
    ``units_per_node`` counts units analysed per node; ``restarts`` counts actor restarts Ray reported.
    """

    def __init__(self, config: LabelConfig):
        self.config = config
        self.ray = _import_ray()
        self.address = config.ray_address or os.environ.get("RAY_ADDRESS") or None
        self._owned = self._connect()  # True: we started or joined Ray here and shut it down (or leave) in close()
        self._job_id = self.ray.get_runtime_context().get_job_id()
        self.threads = max(1, config.threads or 1)
        capacity = self._capacity(self.threads)
        self.workers = config.workers if config.workers > 0 else capacity
        self.units_per_node: dict[str, int] = {}
        self.restarts = 0
        self._restarts_before = self._job_restarts()  # a session the caller keeps may hold earlier runs' actors
        options = self.config.recognizer_options(self.threads)
        if options.get("model"):
            options["model"] = os.path.abspath(options["model"])
        self.options = options
        self._notes = None  # the StallNotes actor, started with the first pass when there is a stall_timeout
        self.cut_off = ""  # why the last pass ended before all its units did ("": it did not)
        # Load the models once on the cluster while the runner discovers the inputs: a bad model, or a node
        # without fer-batch, is reported before any work starts.
        self._probe = self.ray.remote(num_cpus=0, max_retries=0)(_load_models).remote(options)

    def _connect(self) -> bool:
        ray = self.ray
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        if ray.is_initialized():  # the caller connected (a notebook, a test): use and keep its session
            return False
        quiet = dict(logging_level=logging.WARNING, log_to_driver=False, configure_logging=True)
        if self.address:
            try:
                ray.init(address=self.address, **quiet)
            except Exception as error:  # noqa: BLE001 - every connection problem becomes one clear line
                raise UsageError(_connection_problem(self.address, error)) from None
            return True
        from fer_batch.system import available_cores

        # address="local": a new Ray of our own, never a cluster someone else started on this machine. Ray's
        # default token authentication stays on; its notice about that is for cluster operators, not for us.
        notice = logging.getLogger("ray._private.authentication.authentication_token_setup")
        level = notice.level
        notice.setLevel(logging.ERROR)
        try:
            ray.init(address="local", num_cpus=available_cores(), include_dashboard=False,
                     object_store_memory=LOCAL_OBJECT_STORE_BYTES, **quiet)
        finally:
            notice.setLevel(level)
        return True

    def _capacity(self, threads: int) -> int:
        """Actors of ``threads`` CPUs each that the cluster's alive nodes can hold (at least 1). No CPU is kept
        back for Ray Data: this pipeline (items -> one actor stage -> the driver) runs no Ray Data tasks, and Ray
        Data's own actors reserve 0 CPUs; a pool filling every CPU ran on a 2-CPU local Ray and on two 1-CPU
        nodes without stalling."""
        total = 0
        for node in self.ray.nodes():
            if node.get("Alive"):
                total += int(node.get("Resources", {}).get("CPU", 0) // threads)
        return max(1, total)

    def wait_ready(self) -> None:
        """Raise EngineError if the models cannot be loaded on the cluster (or fer-batch cannot be imported)."""
        ray = self.ray
        probe, self._probe = self._probe, None
        if probe is None:
            return
        try:
            node, problem = ray.get(probe, timeout=600)
        except ray.exceptions.GetTimeoutError:
            raise EngineError("the Ray cluster did not run a task in 10 minutes; is it busy or out of nodes?"
                              ) from None
        except ray.exceptions.RayError as error:
            raise EngineError(f"a Ray worker could not load fer-batch (install the same fer-batch, with "
                              f"{INSTALL_HINT}, on every node): {_first_line(error)}") from None
        if problem:
            raise EngineError(f"cannot load the models on Ray node {node}: {problem}")

    def run(self, units: Iterable[WorkUnit]) -> Iterator[Event]:
        units = [_absolute(unit) for unit in units]
        if not units:
            return
        self.wait_ready()
        if self.config.stall_timeout > 0 and self._notes is None:
            self._notes = self.ray.remote(num_cpus=0, max_restarts=0)(StallNotes).remote()
        missing = {unit.id: unit for unit in units}
        for unit_id, results in self._execute(units, retries=UNIT_RETRIES):
            if missing.pop(unit_id, None) is not None:  # a unit Ray delivered twice is reported once
                yield unit_id, results, True
        if missing:
            yield from self._retry_in_pieces(list(missing.values()))

    def _retry_in_pieces(self, units: list[WorkUnit]) -> Iterator[Event]:
        """Units Ray gave up on (their actor died or stalled on every try, or the pass was cut off): again in small
        pieces, a piece that still fails becoming an error row that says why, so one bad item costs only its piece."""
        pieces: dict[int, tuple[int, int, WorkUnit]] = {}  # piece id -> (unit id, position, piece)
        next_id = max(unit.id for unit in units) + 1
        for unit in units:
            for position, piece in enumerate(_pieces(unit)):
                pieces[next_id] = (unit.id, position, replace(piece, id=next_id))
                next_id += 1
        returned: dict[int, list[ItemResult]] = {}
        for piece_id, results in self._execute([piece for _, _, piece in pieces.values()], retries=1, group=False):
            returned.setdefault(piece_id, results)
        stalled = self._stalled_units() if len(returned) < len(pieces) else {}
        by_unit: dict[int, list[tuple[int, list[ItemResult]]]] = {}
        for piece_id, (unit_id, position, piece) in pieces.items():
            results = returned.get(piece_id)
            if results is None:
                results = [_lost(piece, self._why_lost(piece_id, stalled))]
            by_unit.setdefault(unit_id, []).append((position, results))
        for unit in units:
            for _, results in sorted(by_unit.get(unit.id, []), key=lambda entry: entry[0]):
                yield unit.id, results, False
            yield unit.id, [], True

    def _why_lost(self, piece_id: int, stalled: dict[int, int]) -> str:
        """Why a piece came back from no try: "{what}" in it stands for the image or the frames."""
        if piece_id in stalled:
            return (f"the Ray worker analysing {{what}} sent nothing for {self.config.stall_timeout:g} s on every "
                    f"try (stopped; see the Ray logs)")
        if self.cut_off:
            return f"{{what}} waited in vain: {self.cut_off}"
        return "the Ray worker analysing {what} died on every try (see the Ray logs)"

    def _stalled_units(self) -> dict[int, int]:
        """Units (and pieces) whose actor's watchdog stopped it: id -> times."""
        if self._notes is None:
            return {}
        try:
            return self.ray.get(self._notes.stalled_units.remote(), timeout=NOTES_TIMEOUT_S)
        except self.ray.exceptions.RayError as error:
            logger.warning("fer-batch: the Ray engine's StallNotes actor did not say which units stalled within "
                           "%g s (%s); their error rows say 'died'", NOTES_TIMEOUT_S, _first_line(error))
            return {}

    def _execute(self, units: list[WorkUnit], retries: int, group: bool = True
                 ) -> Iterator[tuple[int, list[ItemResult]]]:
        """One Ray Data pass over ``units`` (image units grouped into tasks with ``group``, else a task each):
        (unit id, results) as units finish; units of tasks Ray gave up on are left out, and so are those of a pass
        that made no progress for its deadline (``cut_off`` then says so)."""
        ray = self.ray
        from ray.data import exceptions

        # Ray Data's error for a pass that made no progress for execution_no_progress_timeout_s (2.60).
        no_progress = getattr(exceptions, "ExecutionTimeoutError", _NeverRaised)
        tasks = _tasks(units, self.workers) if group else [[unit] for unit in units]
        items = [{"units": pickle.dumps(task, protocol=pickle.HIGHEST_PROTOCOL)} for task in tasks]
        workers = min(self.workers, len(items))
        deadline = pass_deadline(self.config.stall_timeout)
        self.cut_off = ""
        ended = False  # the pass ran to its end (or its deadline), rather than its consumer stopping early
        names: list[str] = []  # of the pass's actors, for killing them when it ends

        def named() -> dict:  # Ray Data calls this for each actor it starts
            names.append(f"fer-batch-analyse-{uuid.uuid4().hex}")
            return {"name": names[-1]}

        with _quiet_data_context(ray, deadline), warnings.catch_warnings():
            # Ray Data's named parameters have no retry limit, and its default (retry forever) would loop on an
            # input that kills its worker every time; the generic remote args, and ray_remote_args_fn (which names
            # the actors, to kill them), work until Ray 2.64 (the pin).
            warnings.filterwarnings("ignore", message=".*ray_remote_args.* is deprecated")
            warnings.filterwarnings("ignore", category=DeprecationWarning, module="ray.data.context")  # its own
            dataset = ray.data.from_items(items, override_num_blocks=len(items))  # one task per block and call
            dataset = dataset.map_batches(
                AnalyseActor, batch_size=1, batch_format="numpy",
                fn_constructor_kwargs={"options": self.options, "batch": self.config.batch,
                                       "stall_timeout": self.config.stall_timeout, "notes": self._notes},
                # One unit in flight per actor: when an actor dies, only the unit it was analysing is retried
                # (units queued behind it would spend their retries on another unit's crash).
                compute=ray.data.ActorPoolStrategy(min_size=1, max_size=workers, initial_size=workers,
                                                   max_tasks_in_flight_per_actor=1),
                num_cpus=self.threads, max_restarts=-1, max_task_retries=retries, ray_remote_args_fn=named)
            try:
                for row in dataset.iter_rows():
                    node = str(row["node"])
                    self.units_per_node[node] = self.units_per_node.get(node, 0) + 1
                    yield int(row["id"]), pickle.loads(row["results"])
                ended = True
            except no_progress:
                ended = True
                self.cut_off = (f"the Ray cluster started and finished no unit for {deadline:g} s (are its CPUs "
                                f"taken by other work, or a node lost?)")
                logger.warning("fer-batch: %s; the units not analysed are retried in pieces or become error rows",
                               self.cut_off)
            except ray.exceptions.RayError as error:
                if "AnalyseActor" in str(error) and "__init__" in str(error):
                    # wait_ready's check passed on one node but actors cannot load the models: a ModelError, which
                    # the CLI reports in one line (the runner converts EngineError only from wait_ready).
                    from fer_batch.onnx import ModelError

                    raise ModelError(f"Ray workers cannot load the models: {_first_line(error)}") from None
                raise
            finally:
                self._count_restarts()
                self._end_actors(names, wait=ended)

    def _end_actors(self, names: list[str], wait: bool) -> None:
        """Kill the pass's actors and, with ``wait``, wait (ACTOR_EXIT_S at most) until they are gone, so that the
        next pass (or run, in a session the caller keeps) finds their CPUs free; see the module docstring."""
        for name in names:
            try:
                actor = self.ray.get_actor(name)
            except ValueError:  # gone already
                continue
            self.ray.kill(actor)
        if not wait:
            return
        deadline = time.monotonic() + ACTOR_EXIT_S
        left = self._live_actors()
        while left and time.monotonic() < deadline:
            time.sleep(0.1)
            left = self._live_actors()
        if left:
            logger.warning("fer-batch: %d AnalyseActor(s) of a finished Ray Data pass were not gone %g s after "
                           "being killed; the next pass may wait for their CPUs (until its deadline)", left,
                           ACTOR_EXIT_S)

    def _live_actors(self) -> int:
        """This job's AnalyseActors not yet dead, as the cluster's actor table records them (a developer API:
        best effort, 0 when it cannot say)."""
        try:
            return sum(1 for entry in self._actor_table() if entry.get("State") != "DEAD")
        except Exception:  # noqa: BLE001 - then the next pass's deadline is the only guard
            return 0

    def _actor_table(self) -> list[dict]:
        from ray._private.state import actors

        table = actors(job_id=self.ray.JobID.from_hex(self._job_id))
        return [entry for entry in table.values() if "AnalyseActor" in str(entry.get("ActorClassName", ""))]

    def _count_restarts(self) -> None:
        self.restarts = max(self.restarts, self._job_restarts() - self._restarts_before)

    def _job_restarts(self) -> int:
        """Restarts of this job's AnalyseActors so far, as the cluster's actor table records them (a developer
        API: best effort, 0 when it cannot say; the rows never depend on it)."""
        try:
            return sum(int(entry.get("NumRestarts", 0)) for entry in self._actor_table())
        except Exception:  # noqa: BLE001 - informative only
            return 0

    def close(self) -> None:
        """Disconnect from the cluster (a Ray this engine started stops with it)."""
        notes, self._notes = self._notes, None
        if notes is not None and self.ray.is_initialized():
            self.ray.kill(notes)
        if self._owned and self.ray.is_initialized():
            self.ray.shutdown()
        self._owned = False


def _tasks(units: list[WorkUnit], workers: int) -> list[list[WorkUnit]]:
    """Units grouped into Ray tasks: a video range alone; consecutive image units together, up to TASK_IMAGES
    images, while every worker still gets several tasks. A Ray Data task costs the driver ~10 ms (measured on 2
    cores): with units of 8 images, a large cluster would wait on the driver rather than on the models."""
    images = sum(len(unit.sources) for unit in units if not unit.is_video)
    per_task = max(1, min(TASK_IMAGES, images // (TASKS_PER_WORKER * workers)))
    tasks: list[list[WorkUnit]] = []
    group: list[WorkUnit] = []
    for unit in units:
        if unit.is_video:
            tasks.extend([group] if group else [])
            tasks.append([unit])
            group = []
            continue
        if group and sum(len(u.sources) for u in group) + len(unit.sources) > per_task:
            tasks.append(group)
            group = []
        group.append(unit)
    tasks.extend([group] if group else [])
    return tasks


def _pieces(unit: WorkUnit) -> list[WorkUnit]:
    if not unit.is_video:
        return [replace(unit, sources=(source,)) for source in unit.sources]
    stop = unit.stop if unit.stop is not None else unit.expected
    step = PIECE_FRAMES * unit.every
    if stop <= unit.start + step:
        return [unit]
    pieces = []
    for start in range(unit.start, stop, step):
        end = start + step
        final = end >= stop
        piece_stop = unit.stop if final else end
        pieces.append(replace(unit, start=start, stop=piece_stop, last=unit.last and final,
                              skip=frozenset(f for f in unit.skip
                                             if start <= f and (piece_stop is None or f < piece_stop))))
    return pieces


def _lost(piece: WorkUnit, why: str) -> ItemResult:
    """The error row of a piece that no try analysed; ``why`` names the image or frames where it says "{what}"."""
    if not piece.is_video:
        return ItemResult(piece.sources[0].name, error=f"not analysed: {why.format(what='this image')}")
    first = piece.next_frame(piece.start)
    frames = f"frames {first} to {piece.stop - 1}" if piece.stop is not None else f"frames from {first}"
    return ItemResult(piece.sources[0].name, frame=first, error=f"not analysed: {why.format(what=frames)}")


class _NeverRaised(Exception):
    """Stands for an error this Ray version does not have."""


@contextmanager
def _quiet_data_context(ray, deadline: float):
    """Ray Data settings for one pass, restored afterwards: no progress bars of its own (the runner has one), an
    actor that dies on every retry loses its unit instead of the run (the engine retries it in pieces), and the
    pass ends when it has made no progress for ``deadline`` seconds (-1: never)."""
    context = ray.data.DataContext.get_current()
    settings = {"enable_progress_bars": False, "print_on_execution_start": False, "max_errored_blocks": -1,
                "max_consecutive_actor_init_deaths": 3, "execution_no_progress_timeout_s": deadline}
    settings = {name: value for name, value in settings.items() if hasattr(context, name)}
    saved = {name: getattr(context, name) for name in settings}
    for name, value in settings.items():
        setattr(context, name, value)
    data_logger = logging.getLogger("ray.data")
    level = data_logger.level
    data_logger.setLevel(logging.ERROR)
    try:
        yield context
    finally:
        for name, value in saved.items():
            setattr(context, name, value)
        data_logger.setLevel(level)


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


def _connection_problem(address: str, error: BaseException) -> str:
    """One line on why joining the cluster failed; a cluster with token authentication (Ray's default for new
    clusters since 2.59-2.61) rejects a driver without its token, which Ray reports only as a failed connection."""
    token_help = ("set RAY_AUTH_MODE=token and the cluster's token here (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or "
                  "~/.ray/auth_token; `ray get-auth-token` prints it on the head node)")
    text = f"{type(error).__name__}: {error}".lower()
    if "authenticat" in text or "auth token" in text:
        return f"the Ray cluster at {address} rejected this connection's token: {token_help} ({_first_line(error)})"
    hint = ""
    if os.environ.get("RAY_AUTH_MODE", "").lower() != "token":
        hint = f"; if the cluster uses token authentication, {token_help}"
    return f"cannot connect to the Ray cluster at {address}: {_first_line(error)}{hint}"
