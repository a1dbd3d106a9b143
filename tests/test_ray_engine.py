"""The Ray engine (fer_batch/ray_engine.py): the same CSV as the local engine on a local Ray and on a two-node
cluster on the loopback address, a worker killed mid-run, a unit that kills its worker every time, a node that
cannot read a file, --resume.

Each Ray here uses token authentication with a token made by the test (RAY_AUTH_TOKEN), so nothing is written to
~/.ray; the cluster the test starts is stopped by killing only the processes it started.
"""

from __future__ import annotations

import csv
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import REPO, moving_face_frames, read_csv, run_cli, write_video

ray = pytest.importorskip("ray", reason="the Ray engine needs the ray extra: pip install 'fer-batch[ray]'")
pytest.importorskip("ray.data", reason="the Ray engine needs Ray Data: pip install 'fer-batch[ray]'")

from fer_batch.onnx import ModelError  # noqa: E402
from fer_batch.runner import LabelConfig, label_files  # noqa: E402
from fer_batch.sources import Source  # noqa: E402
from fer_batch.work import WorkUnit  # noqa: E402

pytestmark = pytest.mark.slow

NUMBERS = ("x", "y", "w", "h", "face_score", "confidence", "angry", "disgust", "fear", "happy", "sad", "surprise",
           "neutral")
OBJECT_STORE = "200000000"  # bytes: only units and results travel


def assert_same_rows(expected: list[dict], got: list[dict]) -> None:
    """Same rows in the same order; numbers within 1e-4 (boxes are integers and must be equal)."""
    assert len(got) == len(expected)
    for want, row in zip(expected, got):
        assert list(row) == list(want)
        for column, value in want.items():
            if column in NUMBERS and value and row[column]:
                assert abs(float(row[column]) - float(value)) <= 1e-4, (column, want, row)
            else:
                assert row[column] == value, (column, want, row)


KILLING_FRAME = 50  # the frame of a "kills-worker" video whose decoding kills its worker


def _crash_hook():
    """A worker_process_setup_hook (pickled by value: it is made in a function) that kills the worker process, as a
    decoder segfault would, on reading an image whose name contains 'kills-worker' or on decoding frame
    KILLING_FRAME of such a video, and hangs for an hour, as a stuck decoder would, on reading an image whose name
    contains 'stalls-worker'."""
    def hook():
        import time

        import fer_batch.video as video
        import fer_batch.work as work

        read_image, frames = work.read_image, video.VideoReader.frames

        def reading(path):
            if "kills-worker" in os.path.basename(str(path)):
                os.kill(os.getpid(), signal.SIGKILL)
            if "stalls-worker" in os.path.basename(str(path)):
                time.sleep(3600)
            return read_image(path)

        def decoding(self, *args, **kwargs):
            for frame in frames(self, *args, **kwargs):
                if "kills-worker" in self.path.name and frame.index == KILLING_FRAME and frame.image is not None:
                    os.kill(os.getpid(), signal.SIGKILL)
                yield frame

        work.read_image, video.VideoReader.frames = reading, decoding

    return hook


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray of 2 CPUs in this process: no dashboard, no usage stats, a small object store, a test token."""
    saved = {name: os.environ.get(name) for name in ("RAY_AUTH_TOKEN", "RAY_USAGE_STATS_ENABLED")}
    os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(16)  # Ray's default token auth, without writing ~/.ray
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    if ray.is_initialized():
        ray.shutdown()
    ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=int(OBJECT_STORE),
             log_to_driver=False, runtime_env={"worker_process_setup_hook": _crash_hook(),
                                               "env_vars": {"PYTHONPATH": str(REPO)}})
    yield ray
    ray.shutdown()
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture(scope="module")
def media(tmp_path_factory, astronaut) -> dict[str, Path]:
    """Images (faces, no face, a corrupt file) and two videos: mp4v and H.264 with B-frames."""
    folder = tmp_path_factory.mktemp("ray_media")
    photos = folder / "photos"
    photos.mkdir()
    for index, scale in enumerate((0.5, 0.8, 1.0, 1.3)):
        image = cv2.resize(astronaut, None, fx=scale, fy=scale)
        cv2.imwrite(str(photos / f"astronaut_{index}.jpg"), image if index % 2 == 0 else image[:, ::-1])
    cv2.imwrite(str(photos / "two.png"), np.hstack([astronaut, astronaut[:, ::-1]]))
    cv2.imwrite(str(photos / "empty.png"), np.full((240, 320, 3), 90, np.uint8))
    (photos / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    videos = folder / "videos"
    videos.mkdir()
    write_video(videos / "moving.mp4", moving_face_frames(astronaut, count=80))
    import conftest

    if hasattr(conftest, "write_av_video"):  # H.264 with B-frames: exact frame numbers across units
        conftest.write_av_video(videos / "bframes.mp4", list(moving_face_frames(astronaut, count=90)), audio=None)
    return {"photos": photos, "videos": videos, "video": videos / "moving.mp4"}


@pytest.fixture(scope="module")
def reference(media, tmp_path_factory) -> dict[str, list[dict]]:
    """The local engine's rows (--workers 1) for the photos, the videos, and both."""
    folder = tmp_path_factory.mktemp("ray_reference")
    rows = {}
    for name, inputs in (("photos", [media["photos"]]), ("videos", [media["videos"]]),
                         ("video", [media["video"]])):
        label_files([str(p) for p in inputs], folder / f"{name}.csv", LabelConfig(workers=1, progress=False))
        rows[name] = read_csv(folder / f"{name}.csv")
    return rows


def test_local_ray_equals_local_engine_on_images_and_videos(local_ray, media, reference, tmp_path):
    for name in ("photos", "videos"):
        output = tmp_path / f"{name}.csv"
        summary = label_files([str(media[name])], output, LabelConfig(engine="ray", progress=False))
        assert summary.engine == "ray" and summary.workers == 2 and summary.threads == 1
        assert sum(summary.units_per_node.values()) >= 1
        assert_same_rows(reference[name], read_csv(output))
        info = json.loads(output.with_suffix(".run.json").read_text())
        assert info["engine"] == "ray" and info["units_per_node"] == summary.units_per_node
    errors = [row for row in read_csv(tmp_path / "photos.csv") if row["status"] == "error"]
    assert [row["source"] for row in errors] == [str(media["photos"] / "corrupt.jpg")]


def test_image_units_are_grouped_into_tasks_only_when_every_worker_keeps_several():
    from fer_batch.ray_engine import TASK_IMAGES, _tasks

    def images(unit_id: int, count: int = 8) -> WorkUnit:
        return WorkUnit(unit_id, tuple(Source(Path(f"{unit_id}-{i}.jpg"), f"{unit_id}-{i}.jpg", "image")
                                       for i in range(count)))

    def ids(tasks):
        return [[unit.id for unit in task] for task in tasks]

    few = [images(i) for i in range(7)]
    assert ids(_tasks(few, 2)) == [[i] for i in range(7)]  # 56 images: no fewer than 4 tasks per worker
    many = [images(i) for i in range(100)]
    grouped = _tasks(many, 2)
    assert [unit.id for task in grouped for unit in task] == list(range(100))  # plan order kept
    assert all(sum(len(unit.sources) for unit in task) <= TASK_IMAGES for task in grouped)
    assert len(grouped) == 25
    video = WorkUnit(3, (Source(Path("v.mp4"), "v.mp4", "video"),))
    mixed = [images(0), images(1), images(2), video, images(4)]
    assert ids(_tasks(mixed, 1)) == [[0], [1], [2], [3], [4]]
    assert ids(_tasks([images(i) for i in range(30)] + [video], 1))[-1] == [3]  # a video range goes alone


def test_many_images_in_grouped_tasks_equal_local_engine(local_ray, astronaut, tmp_path):
    folder = tmp_path / "thumbs"
    folder.mkdir()
    for index in range(140):  # small: fast to analyse, many enough that image units are grouped into tasks
        side = 96 + index % 5 * 16
        image = cv2.resize(astronaut, (side, side)) if index % 3 else np.full((side, side, 3), index, np.uint8)
        cv2.imwrite(str(folder / f"thumb_{index:03d}.jpg"), image)
    label_files([str(folder)], tmp_path / "local.csv", LabelConfig(workers=1, progress=False))
    summary = label_files([str(folder)], tmp_path / "ray.csv", LabelConfig(engine="ray", progress=False))
    assert_same_rows(read_csv(tmp_path / "local.csv"), read_csv(tmp_path / "ray.csv"))
    assert sum(summary.units_per_node.values()) == 140 // 8 + 1


def test_resume_through_ray(local_ray, media, reference, tmp_path):
    """A run cut after whole items (as kill -9 leaves it) is finished by --resume into the same rows."""
    for name, done in (("photos", lambda row, first: row["source"] in first),
                       ("video", lambda row, first: int(row["frame"]) < 37)):
        expected = reference[name]
        first = {row["source"] for row in expected[:3]}
        kept = [row for row in expected if done(row, first)]
        assert 0 < len(kept) < len(expected)
        output = tmp_path / f"{name}.csv"
        with open(output, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(expected[0]))
            writer.writeheader()
            writer.writerows(kept)
        summary = label_files([str(media[name])], output, LabelConfig(engine="ray", resume=True, progress=False))
        assert summary.skipped > 0 and summary.items < len({(r["source"], r["frame"]) for r in expected})
        assert_same_rows(expected, read_csv(output))


def test_unreadable_file_names_the_node(local_ray, tmp_path):
    """A file the node cannot read (here: gone after planning) is an error row naming the node."""
    from fer_batch.ray_engine import RayEngine

    engine = RayEngine(LabelConfig(engine="ray"))
    missing = tmp_path / "gone.jpg"
    unit = WorkUnit(0, (Source(missing, "gone.jpg", "image"),))
    try:
        events = list(engine.run([unit]))
    finally:
        engine.close()
    assert [(unit_id, done) for unit_id, _, done in events] == [(0, True)]
    (result,) = events[0][1]
    assert result.source == "gone.jpg"
    assert result.error.startswith("on node ") and "cannot read file" in result.error, result.error
    assert ray.is_initialized()  # a Ray the caller started stays up


def test_model_that_cannot_load_is_a_model_error(local_ray, media, tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not an onnx model")
    with pytest.raises(ModelError, match="cannot load the models on Ray node"):
        label_files([str(media["photos"])], tmp_path / "out.csv", LabelConfig(engine="ray", model=str(bad),
                                                                             progress=False))
    assert not (tmp_path / "out.csv").exists()


def _busy_actor_processes() -> list[int]:
    """PIDs of this process's descendants that are Ray Data actors running AnalyseActor on a unit now (Ray titles
    a worker process after the task it runs)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                parent = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry))
    found, todo = [], [os.getpid()]
    while todo:
        for child in children.get(todo.pop(), []):
            todo.append(child)
            try:
                title = Path(f"/proc/{child}/cmdline").read_bytes()
            except OSError:
                continue
            if b"AnalyseActor" in title and b".submit" in title:
                found.append(child)
    return found


def test_worker_killed_mid_run_loses_and_duplicates_nothing(local_ray, astronaut, tmp_path):
    video = write_video(tmp_path / "long.mp4", moving_face_frames(astronaut, count=240))
    label_files([str(video)], tmp_path / "local.csv", LabelConfig(workers=1, progress=False))
    output = tmp_path / "killed.csv"
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["summary"] = label_files([str(video)], output, LabelConfig(engine="ray", progress=False))
        except BaseException as error:  # noqa: BLE001 - reported by the assertion below
            outcome["error"] = error

    thread = threading.Thread(target=run)
    thread.start()
    killed = None
    while thread.is_alive() and killed is None:  # once the first unit's rows are in, kill an actor at work
        time.sleep(0.05)
        if output.exists() and output.read_text().count("\n") > 1:
            busy = _busy_actor_processes()
            if busy:
                os.kill(busy[0], signal.SIGKILL)
                killed = busy[0]
    thread.join(timeout=600)
    assert "error" not in outcome, outcome.get("error")
    assert killed is not None, "the run ended before an actor could be killed"
    assert_same_rows(read_csv(tmp_path / "local.csv"), read_csv(output))
    assert outcome["summary"].restarts >= 1  # Ray restarted the actor and retried its unit


def test_items_that_kill_their_worker_every_time_become_error_rows(local_ray, media, reference, tmp_path,
                                                                  astronaut):
    """Ray retries a unit whose worker dies, gives up after its retries, and the engine retries the unit in pieces
    (images one by one, videos 32 frames at a time): only the culprit image and the culprit frame's piece are lost,
    each as an error row, and every other row is the local engine's."""
    folder = tmp_path / "inputs"
    folder.mkdir()
    for path in sorted(media["photos"].iterdir()):
        (folder / path.name).write_bytes(path.read_bytes())
    cv2.imwrite(str(folder / "b-kills-worker.jpg"), astronaut)
    (folder / "v-kills-worker.mp4").write_bytes(media["video"].read_bytes())
    output = tmp_path / "crash.csv"
    summary = label_files([str(folder)], output, LabelConfig(engine="ray", progress=False))
    rows = read_csv(output)

    image = [row for row in rows if row["source"].endswith("b-kills-worker.jpg")]
    assert len(image) == 1 and image[0]["status"] == "error" and "died" in image[0]["error"], image
    expected_photos = [{**row, "source": row["source"].replace(str(media["photos"]), str(folder))}
                       for row in reference["photos"]]
    assert_same_rows(expected_photos, [row for row in rows if row["source"] in {r["source"] for r in
                                                                                 expected_photos}])
    video = [row for row in rows if row["source"].endswith("v-kills-worker.mp4")]
    errors = [row for row in video if row["status"] == "error"]
    assert len(errors) == 1 and "died" in errors[0]["error"], errors
    first = int(errors[0]["frame"])
    lost = range(first, first + 32)  # the piece that holds the killing frame
    assert KILLING_FRAME in lost
    expected_video = [{**row, "source": video[0]["source"]} for row in reference["video"]
                      if int(row["frame"]) not in lost]
    assert_same_rows(expected_video, [row for row in video if row["status"] != "error"])
    assert summary.errors == 3  # the two culprits and corrupt.jpg
    assert summary.restarts >= 5


def test_an_item_that_hangs_its_worker_is_stopped_after_the_stall_timeout(local_ray, media, reference, tmp_path,
                                                                         astronaut):
    """As with local workers' --stall-timeout: the actor whose unit sends nothing for that long stops itself, Ray
    retries the unit, the engine retries it in pieces, and the image that hangs every time becomes an error row
    saying so; the rest is the local engine's, and no actor of the run is left holding a CPU."""
    folder = tmp_path / "inputs"
    folder.mkdir()
    for name in ("astronaut_0.jpg", "empty.png"):
        (folder / name).write_bytes((media["photos"] / name).read_bytes())
    cv2.imwrite(str(folder / "b-stalls-worker.jpg"), astronaut)
    output = tmp_path / "stall.csv"
    started = time.monotonic()
    summary = label_files([str(folder)], output, LabelConfig(engine="ray", stall_timeout=4, progress=False))
    elapsed = time.monotonic() - started
    rows = read_csv(output)
    stalled = [row for row in rows if row["source"].endswith("b-stalls-worker.jpg")]
    assert len(stalled) == 1 and stalled[0]["status"] == "error", stalled
    assert "sent nothing for 4 s on every try" in stalled[0]["error"], stalled
    expected = [{**row, "source": row["source"].replace(str(media["photos"]), str(folder))}
                for row in reference["photos"] if Path(row["source"]).name in ("astronaut_0.jpg", "empty.png")]
    assert_same_rows(expected, [row for row in rows if row["source"] != stalled[0]["source"]])
    assert summary.errors == 1 and summary.restarts >= 3
    assert elapsed < 240, elapsed  # 3 + 2 tries of 4 s, and the actors' restarts
    from ray._private.state import actors

    alive = [entry for entry in actors().values()
             if "AnalyseActor" in entry.get("ActorClassName", "") and entry.get("State") != "DEAD"]
    assert not alive, alive


def test_the_actors_of_a_pass_are_gone_when_it_ends(local_ray, tmp_path, astronaut):
    """Ray Data 2.60 lets a pass's actors go only when nothing refers to them, and a failed task's logged exception
    (kept here by pytest's log capture) refers to its actor: the engine kills them itself, so a next pass (the
    pieces) or run in the same session finds every CPU free."""
    from ray._private.state import actors

    from fer_batch.ray_engine import RayEngine

    cv2.imwrite(str(tmp_path / "a.jpg"), astronaut)
    cv2.imwrite(str(tmp_path / "b-kills-worker.jpg"), astronaut)
    units = [WorkUnit(0, (Source(tmp_path / "a.jpg", "a.jpg", "image"),)),
             WorkUnit(1, (Source(tmp_path / "b-kills-worker.jpg", "b-kills-worker.jpg", "image"),))]
    engine = RayEngine(LabelConfig(engine="ray", progress=False))
    try:
        engine.wait_ready()
        returned = [unit_id for unit_id, _ in engine._execute(units, retries=0, group=False)]
    finally:
        engine.close()
    assert returned == [0]
    alive = [entry for entry in actors().values()
             if "AnalyseActor" in entry.get("ActorClassName", "") and entry.get("State") != "DEAD"]
    assert not alive, alive


# --- a two-node cluster on the loopback address -----------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _session_processes(sessions: set[int]) -> list[int]:
    """PIDs of every process in the given sessions (what `ray start --block` in a new session started)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[3]) in sessions and fields[0] != "Z":
                found.append(int(entry))
    return found


class LoopbackCluster:
    """`ray start --head` and `ray start --address` as two nodes of 1 CPU on 127.0.0.1, each `--block`ing in a
    session of its own, so stopping them kills exactly the processes they started (`ray stop` would stop every
    Ray on the machine). Token authentication with a token made here, on every node and for the driver."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.port = _free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16),
                    "RAY_USAGE_STATS_ENABLED": "0",
                    "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        self.processes: list[subprocess.Popen] = []

    def start(self) -> None:
        common = ["--num-cpus", "1", "--object-store-memory", OBJECT_STORE, "--disable-usage-stats", "--block"]
        self._start("head", ["--head", "--port", str(self.port), "--include-dashboard", "false",
                             "--temp-dir", str(self.folder / "head")] + common)
        self._start("worker", ["--address", self.address, "--temp-dir", str(self.folder / "worker")] + common)

    def _start(self, name: str, arguments: list[str], timeout: float = 180) -> None:
        log_path = self.folder / f"{name}.log"
        with open(log_path, "w") as log:
            process = subprocess.Popen([sys.executable, "-m", "ray.scripts.scripts", "start", *arguments],
                                       stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True)
        self.processes.append(process)
        deadline = time.monotonic() + timeout
        while "Ray runtime started" not in log_path.read_text():
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"ray start ({name}) failed:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.2)

    def stop(self) -> list[int]:
        """SIGTERM each node's session, then SIGKILL what is left of it; returns what survived (nothing)."""
        sessions = {process.pid for process in self.processes}
        for process in reversed(self.processes):
            try:
                os.killpg(process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 5
        while _session_processes(sessions) and time.monotonic() < deadline:
            time.sleep(0.2)
        for pid in _session_processes(sessions):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for process in self.processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        time.sleep(0.5)
        return _session_processes(sessions)


@pytest.fixture
def loopback_cluster():
    folder = Path(tempfile.mkdtemp(prefix="fer-ray-", dir="/tmp"))  # short: Ray's socket paths have a length limit
    cluster = LoopbackCluster(folder)
    try:
        cluster.start()
        yield cluster
    finally:
        survivors = cluster.stop()
        assert not survivors, f"processes of the test's Ray cluster still running: {survivors}"
        import shutil

        shutil.rmtree(folder, ignore_errors=True)


def test_two_node_cluster_on_loopback(loopback_cluster, media, reference, tmp_path):
    output = tmp_path / "cluster.csv"
    result = subprocess.run(
        [sys.executable, "-m", "fer_batch", "label", str(media["videos"]), "-o", str(output), "--engine", "ray",
         "--ray-address", loopback_cluster.address, "--quiet"],
        capture_output=True, text=True, timeout=600, env=loopback_cluster.env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout == ""
    assert_same_rows(reference["videos"], read_csv(output))
    info = json.loads(output.with_suffix(".run.json").read_text())
    assert info["engine"] == "ray" and info["workers"] == 2
    # Both nodes analysed units. (Ray advertises a node started on 127.0.0.1 under the machine's IP, so the two
    # keys share an address and differ by node id.)
    assert len(info["units_per_node"]) == 2, info["units_per_node"]

    # RAY_ADDRESS stands in for --ray-address.
    output = tmp_path / "photos.csv"
    result = subprocess.run(
        [sys.executable, "-m", "fer_batch", "label", str(media["photos"]), "-o", str(output), "--engine", "ray",
         "--quiet"], capture_output=True, text=True, timeout=600,
        env={**loopback_cluster.env, "RAY_ADDRESS": loopback_cluster.address})
    assert result.returncode == 0, result.stderr[-3000:]
    assert_same_rows(reference["photos"], read_csv(output))
    assert json.loads(output.with_suffix(".run.json").read_text())["workers"] == 2


def test_cluster_that_wants_a_token_names_the_fix(loopback_cluster, media, tmp_path):
    env = {name: value for name, value in loopback_cluster.env.items() if not name.startswith("RAY_AUTH_")}
    env["HOME"] = str(tmp_path)  # no ~/.ray/auth_token to fall back on
    result = subprocess.run(
        [sys.executable, "-m", "fer_batch", "label", str(media["photos"]), "-o", str(tmp_path / "out.csv"),
         "--engine", "ray", "--ray-address", loopback_cluster.address, "--quiet"],
        capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 2, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("fer-batch: error:") and "RAY_AUTH_MODE=token" in last, result.stderr[-3000:]


def test_missing_ray_is_a_usage_error_naming_the_extra(tmp_path):
    """Without Ray importable, --engine ray exits 2 with one line naming the extra to install."""
    blocker = tmp_path / "no_ray"
    (blocker / "ray").mkdir(parents=True)
    (blocker / "ray" / "__init__.py").write_text("raise ImportError('No module named ray (blocked by the test)')\n")
    image = tmp_path / "a.png"
    cv2.imwrite(str(image), np.full((64, 64, 3), 90, np.uint8))
    env = {**os.environ, "PYTHONPATH": str(blocker) + os.pathsep + str(REPO)}
    result = subprocess.run([sys.executable, "-m", "fer_batch", "label", str(image), "-o", str(tmp_path / "o.csv"),
                             "--engine", "ray", "--quiet"], capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        line for line in result.stderr.strip().splitlines() if line.startswith("fer-batch: error:")]
    assert "pip install 'fer-batch[ray]'" in result.stderr


def test_help_does_not_import_ray():
    code = ("import sys; from fer_batch.cli import build_parser; build_parser(); "
            "import fer_batch.runner; print('ray' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.stdout.strip() == "False", result.stderr
    assert run_cli("--help").returncode == 0
