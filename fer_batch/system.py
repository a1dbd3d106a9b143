"""What this machine offers: usable cores (affinity and cgroup quota), a CPU description, library versions."""

from __future__ import annotations

import math
import os
import platform
from pathlib import Path

_SIMD_FLAGS = ("avx512_bf16", "amx_tile", "avx512_vnni", "avx512f", "avx_vnni", "avx2")


def available_cores() -> int:
    """Cores this process may use: its CPU affinity, capped by a cgroup CPU quota (containers, Slurm, k8s)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    quota = _cgroup_quota()
    if quota is not None:
        cores = min(cores, max(1, math.floor(quota)))
    return max(1, cores)


def _cgroup_quota() -> float | None:
    """CPUs allowed by cgroup v2 ``cpu.max`` or v1 ``cpu.cfs_quota_us``; None without a quota."""
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
        period = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
        return quota / period if quota > 0 and period > 0 else None
    except (OSError, ValueError):
        return None


def describe_hardware() -> str:
    """'AMD EPYC, 2 cores (x86_64; avx2)' from /proc/cpuinfo where there is one: the CPU model, the cores this
    process may use and the widest SIMD flags, to quote next to every speed figure."""
    name, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and name in (platform.processor(), platform.machine()):
                name = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    simd = [flag for flag in _SIMD_FLAGS if flag in flags]
    return f"{name}, {available_cores()} cores ({platform.machine()}{'; ' + ' '.join(simd) if simd else ''})"


def versions() -> dict[str, str]:
    """Versions of Python and the libraries a run's results depend on."""
    import cv2
    import numpy
    import onnxruntime

    from fer_batch import __version__

    found = {"fer_batch": __version__, "python": platform.python_version(), "onnxruntime": onnxruntime.__version__,
             "opencv": cv2.__version__, "numpy": numpy.__version__}
    try:
        import av

        found["av"] = av.__version__
    except ImportError:
        pass
    return found
