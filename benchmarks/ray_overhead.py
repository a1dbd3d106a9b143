"""The Ray engine's overhead against local worker processes, on one machine.

    python benchmarks/ray_overhead.py                   # generated clip and 50 photos, best of 3
    python benchmarks/ray_overhead.py --repeat 5 --photos 100

Whole-command wall time of ``fer-batch label`` (a fresh process each run, start-up included) on benchmarks/bench.py's
clip (640x360, 25 fps, 275 frames) and on a folder of its photos, three ways, interleaved run by run:

- ``workers``: ``--workers N`` (N = the cores this process may use), the local engine;
- ``ray_local``: ``--engine ray``, the command starting (and stopping) a local Ray of its own;
- ``ray_cluster``: ``--engine ray --ray-address 127.0.0.1:P`` on a one-node cluster started beforehand with
  ``ray start --head --num-cpus N --block`` (in a session of its own, stopped afterwards by killing exactly it).

Prints JSON: the CPU (lscpu's model name) and core count, every run's seconds, the best per way, and the overhead of
each Ray way against ``workers`` (best against best). Every Ray here uses token authentication with a token made for
the run (RAY_AUTH_TOKEN), so nothing is written to ~/.ray.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def cpu_model() -> str:
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    from fer_batch.system import describe_hardware

    return describe_hardware()


def timed(command: list[str], env: dict) -> float:
    started = time.perf_counter()
    result = subprocess.run(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    return seconds


def _session_processes(session: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[3]) == session and fields[0] != "Z":
                found.append(int(entry.name))
    return found


class HeadNode:
    """``ray start --head --block`` in a session of its own; stop() kills that session and nothing else."""

    def __init__(self, cpus: int, env: dict):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.address = f"127.0.0.1:{self.port}"
        self.folder = Path(tempfile.mkdtemp(prefix="fer-ray-", dir="/tmp"))  # short: socket paths are limited
        log_path = self.folder / "head.log"
        with open(log_path, "w") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--port", str(self.port),
                 "--num-cpus", str(cpus), "--include-dashboard", "false", "--disable-usage-stats",
                 "--temp-dir", str(self.folder / "ray"), "--block"],
                stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        deadline = time.monotonic() + 180
        while "Ray runtime started" not in log_path.read_text():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"ray start --head failed:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.2)

    def stop(self) -> None:
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + 5
        while _session_processes(self.process.pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        for pid in _session_processes(self.process.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.process.wait(timeout=10)
        shutil.rmtree(self.folder, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--photos", type=int, default=50)
    args = parser.parse_args()

    from benchmarks.bench import make_clip, make_folder
    from fer_batch.system import available_cores

    cores = available_cores()
    work = Path(tempfile.mkdtemp(prefix="fer-ray-bench-"))
    inputs = {"video": make_clip(work / "clip.mp4"), "folder": make_folder(work / "photos", args.photos)}
    env = {**os.environ, "RAY_AUTH_TOKEN": secrets.token_hex(16), "RAY_USAGE_STATS_ENABLED": "0",
           "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cluster_env = {**env, "RAY_AUTH_MODE": "token"}  # ray start (2.60) enables tokens only when asked
    head = HeadNode(cores, cluster_env)
    try:
        label = [sys.executable, "-m", "fer_batch", "label"]
        ways = {"workers": ([f"--workers={cores}"], env), "ray_local": (["--engine", "ray"], env),
                "ray_cluster": (["--engine", "ray", "--ray-address", head.address], cluster_env)}
        runs: dict[str, dict[str, list[float]]] = {name: {way: [] for way in ways} for name in inputs}
        for name, path in inputs.items():
            for way, (options, way_env) in ways.items():  # warm-up: page cache, first imports
                timed([*label, str(path), "-o", str(work / f"{name}-{way}.csv"), "--force", "--quiet", *options],
                      way_env)
            for _ in range(args.repeat):
                for way, (options, way_env) in ways.items():
                    runs[name][way].append(round(timed(
                        [*label, str(path), "-o", str(work / f"{name}-{way}.csv"), "--force", "--quiet", *options],
                        way_env), 2))
    finally:
        head.stop()
        shutil.rmtree(work, ignore_errors=True)
    result = {"cpu": cpu_model(), "cores": cores, "repeat": args.repeat,
              "inputs": {"video": "640x360, 25 fps, 275 frames", "folder": f"{args.photos} photos"}}
    for name, by_way in runs.items():
        best = {way: min(seconds) for way, seconds in by_way.items()}
        result[name] = {"seconds": by_way, "best": best,
                        "overhead_s": {way: round(best[way] - best["workers"], 2) for way in best if way != "workers"},
                        "ratio": {way: round(best[way] / best["workers"], 2) for way in best if way != "workers"}}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
