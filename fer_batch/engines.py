"""Engines run :func:`fer_batch.work.analyse` on work units: in this process, or in worker processes.

Every engine has one method, ``run(units) -> events``: it takes :class:`WorkUnit` s lazily, in plan order, and
yields ``(unit_id, results, finished)`` as results come in (any order between units, in order within one). The
runner merges events in plan order, so engines never touch tracking or the CSV. The Ray engine
(:mod:`fer_batch.ray_engine`) follows the same contract.
"""

from __future__ import annotations

import multiprocessing
import signal
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from multiprocessing.connection import wait

from fer_batch.work import ItemResult, WorkUnit, analyse

Event = tuple[int, list[ItemResult], bool]


class EngineError(Exception):
    """The engine cannot run at all (e.g. every worker fails to load the models)."""


class InProcessEngine:
    """Analyse units one after another in this process, decoding in a background thread and running ``lanes``
    model batches at once in threads (see :func:`fer_batch.work.analyse`)."""

    def __init__(self, recognizer, batch: int = 4, prefetch: int = 16, lanes: int = 1):
        self.recognizer, self.batch, self.prefetch, self.lanes = recognizer, batch, prefetch, lanes

    def run(self, units: Iterable[WorkUnit]) -> Iterator[Event]:
        for unit in units:
            for results in analyse(unit, self.recognizer, self.batch, self.prefetch, lanes=self.lanes):
                yield unit.id, results, False
            yield unit.id, [], True

    def close(self) -> None:
        pass


def _worker_main(connection, recognizer_options: dict) -> None:
    """A worker process: load the models once, then analyse the units it is sent until it gets None."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and stops its workers
    try:
        from fer_batch.recognizer import EmotionRecognizer

        recognizer = EmotionRecognizer(**recognizer_options)
    except Exception as error:  # noqa: BLE001 - reported to the parent, which stops the run with it
        connection.send(("fatal", f"{type(error).__name__}: {error}"))
        return
    connection.send(("ready",))
    while True:
        try:
            message = connection.recv()
        except (EOFError, OSError):  # the parent is gone
            return
        if message is None:
            return
        unit, batch = message
        try:
            for results in analyse(unit, recognizer, batch):
                connection.send(("results", unit.id, results))
            connection.send(("done", unit.id))
        except Exception as error:  # noqa: BLE001 - turned into an error row by the parent
            connection.send(("failed", unit.id, f"{type(error).__name__}: {error}"))


@dataclass
class _Assignment:
    unit: WorkUnit
    batch: int
    returned: int = 0  # items sent back so far
    last_frame: int = -1  # videos: the last frame sent back
    crashes: int = 0

    def failed(self, message: str) -> ItemResult:
        """The error result for the first item this assignment had not returned."""
        return self.unit.failed_item(self.returned, self.last_frame, message)


@dataclass
class _Worker:
    process: multiprocessing.Process
    connection: object
    ready: bool = False
    queue: deque = field(default_factory=deque)  # _Assignment s sent to it, the first one in progress
    progress_at: float = 0.0  # when its unit in progress last sent something (or started)
    stalled: bool = False  # stopped by the watchdog


class ProcessEngine:
    """``workers`` processes, each with its own onnxruntime sessions, fed units through pipes.

    Each worker holds up to two units (one running, one waiting) so it never idles on the parent. A worker that
    dies (a segfault in a decoder, the OOM killer) is replaced; what it was doing is retried once from the first
    item it had not returned (images one at a time, to find the culprit), and an item that kills a worker twice
    becomes an error result naming the signal. A worker whose unit sends nothing for ``stall_timeout`` seconds (a
    decoder stuck in a loop on a broken file) is stopped and treated the same way, so a week-long batch never
    hangs on one file. At most ``window`` units run ahead of the oldest unfinished one, so the runner's
    reordering buffer stays small.
    """

    def __init__(self, workers: int, recognizer_options: dict, batch: int = 4, window: int | None = None,
                 start_method: str = "spawn", stall_timeout: float = 0.0):
        self.count, self.options, self.batch = workers, recognizer_options, batch
        self.stall_timeout = stall_timeout  # seconds; 0: never
        self.window = window or 4 * workers
        self.context = multiprocessing.get_context(start_method)
        self.workers: list[_Worker] = []
        self.restarts = 0
        self._next_id = 0  # the id after the last unit taken from the plan

    def start(self) -> None:
        """Start the workers (model loading runs while the caller plans the work)."""
        while len(self.workers) < self.count:
            self.workers.append(self._spawn())

    def _spawn(self) -> _Worker:
        parent_end, child_end = self.context.Pipe(duplex=True)
        process = self.context.Process(target=_worker_main, args=(child_end, self.options), daemon=True,
                                       name="fer-batch-worker")
        process.start()
        child_end.close()
        return _Worker(process, parent_end)

    def wait_ready(self) -> None:
        """Block until every worker has loaded its models; EngineError with the reason if one cannot."""
        self.start()
        for worker in self.workers:
            while not worker.ready:
                self._receive_startup(worker)

    def _receive_startup(self, worker: _Worker) -> None:
        try:
            message = worker.connection.recv()
        except (EOFError, OSError):
            worker.process.join(1)
            raise EngineError(f"a worker process died while loading the models ({_exit_reason(worker.process)})"
                              ) from None
        if message[0] == "fatal":
            raise EngineError(message[1])
        worker.ready = message[0] == "ready"

    def run(self, units: Iterable[WorkUnit]) -> Iterator[Event]:
        self.start()
        pending = iter(units)
        retries: deque[_Assignment] = deque()
        unfinished: list[int] = []  # ids of dispatched units not finished yet, in plan order
        exhausted = False
        while True:
            for worker in self.workers:  # feed each worker up to two units, retries first
                while len(worker.queue) < 2:
                    if retries:
                        assignment = retries.popleft()
                    elif exhausted or (unfinished and unfinished[0] + self.window <= self._next_id):
                        break
                    else:
                        unit = next(pending, None)
                        if unit is None:
                            exhausted = True
                            break
                        self._next_id = unit.id + 1
                        unfinished.append(unit.id)
                        assignment = _Assignment(unit, self.batch)
                    if not worker.queue:
                        worker.progress_at = time.monotonic()
                    worker.queue.append(assignment)
                    worker.connection.send((assignment.unit, assignment.batch))
            if not any(worker.queue for worker in self.workers) and not retries:
                if exhausted:
                    return
                continue
            waitables = {}
            for worker in self.workers:
                waitables[worker.connection] = worker
                waitables[worker.process.sentinel] = worker
            for ready in wait(list(waitables), timeout=self._until_stall()):
                worker = waitables[ready]
                if ready is worker.connection:
                    yield from self._message(worker, unfinished)
                elif worker.process.exitcode is not None and worker in self.workers:
                    yield from self._crashed(worker, retries, unfinished)
            self._stop_stalled()

    def _until_stall(self) -> float | None:
        """Seconds until the first busy worker would count as stalled (None: no watchdog)."""
        busy = [worker.progress_at for worker in self.workers if worker.ready and worker.queue and not worker.stalled]
        if not self.stall_timeout or not busy:
            return None
        return max(0.0, min(busy) + self.stall_timeout - time.monotonic())

    def _stop_stalled(self) -> None:
        """Kill workers whose unit has sent nothing for stall_timeout seconds; their sentinels then report them."""
        if not self.stall_timeout:
            return
        now = time.monotonic()
        for worker in self.workers:
            # The clock runs from the model loading's end: a fresh worker is not stalled while it loads.
            if worker.ready and worker.queue and not worker.stalled and now - worker.progress_at >= self.stall_timeout:
                worker.stalled = True
                worker.process.kill()

    def _message(self, worker: _Worker, unfinished: list[int]) -> Iterator[Event]:
        try:
            message = worker.connection.recv()
        except (EOFError, OSError):
            return  # the worker died; its sentinel reports it
        kind = message[0]
        worker.progress_at = time.monotonic()
        if kind == "ready":
            worker.ready = True
        elif kind == "fatal":
            raise EngineError(message[1])
        elif kind == "results":
            assignment = worker.queue[0]
            results = message[2]
            assignment.returned += len(results)
            frames = [r.frame for r in results if r.frame is not None]
            if frames:
                assignment.last_frame = max(assignment.last_frame, max(frames))
            yield message[1], results, False
        else:  # done or failed: the unit in progress is finished
            assignment = worker.queue.popleft()
            results = []
            if kind == "failed":
                results = [assignment.failed(f"analysis failed: {message[2]}")]
            unfinished.remove(assignment.unit.id)
            yield assignment.unit.id, results, True

    def _crashed(self, worker: _Worker, retries: deque, unfinished: list[int]) -> Iterator[Event]:
        if worker.stalled:
            what = f"stalled (no result for {self.stall_timeout:g} s; stopped)"
        else:
            what = f"crashed ({_exit_reason(worker.process)})"
        worker.connection.close()
        if not worker.ready:  # it never loaded the models: a fresh one would die the same way
            raise EngineError(f"a worker process died while loading the models ({_exit_reason(worker.process)})")
        self.workers[self.workers.index(worker)] = self._spawn()
        self.restarts += 1
        if not worker.queue:
            return
        current, *waiting = worker.queue
        retries.extendleft(reversed(waiting))  # units it had not started go to another worker unchanged
        remainder = _remainder(current)
        if remainder is None:  # nothing was left to do: the crash came after its last item
            unfinished.remove(current.unit.id)
            yield current.unit.id, [], True
            return
        if current.crashes == 0 or current.returned > 0:
            remainder.crashes = current.crashes + 1 if current.returned == 0 else 1
            retries.appendleft(remainder)
            return
        # The same first item killed (or stalled) a worker twice: it becomes an error row; the rest is retried.
        message = f"worker process {what} while analysing this item"
        failed = current.failed(message)
        rest = _remainder(current, skip_first=True)
        if rest is None:
            unfinished.remove(current.unit.id)
            yield current.unit.id, [failed], True
        else:
            yield current.unit.id, [failed], False
            retries.appendleft(rest)

    def close(self) -> None:
        """Stop every worker: politely when idle, at once when interrupted (within a second either way)."""
        for worker in self.workers:
            try:
                if worker.process.is_alive() and not worker.queue:
                    worker.connection.send(None)
            except (OSError, ValueError):
                pass
        for worker in self.workers:
            worker.process.join(0.5 if not worker.queue else 0)
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join(1)
            worker.connection.close()
        self.workers = []


def _remainder(assignment: _Assignment, skip_first: bool = False) -> _Assignment | None:
    """What is left of an assignment after the items it returned (and, with ``skip_first``, one more)."""
    unit = assignment.unit
    if unit.is_video:
        start = max(unit.start, assignment.last_frame + 1)
        if skip_first:
            start = unit.next_frame(start) + 1
        stop = unit.stop if unit.stop is not None else None
        if stop is not None and unit.next_frame(start) >= stop:
            return None
        return _Assignment(replace(unit, start=start), assignment.batch, crashes=assignment.crashes)
    done = assignment.returned + (1 if skip_first else 0)
    if done >= len(unit.sources):
        return None
    # Images go one at a time after a crash, so the next crash names its image.
    return _Assignment(replace(unit, sources=unit.sources[done:]), 1, crashes=assignment.crashes)


def _exit_reason(process: multiprocessing.Process) -> str:
    code = process.exitcode
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"
