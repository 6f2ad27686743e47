"""How many CPU threads llama.cpp gets by default, and how its idle threads wait.

llama.cpp (an OpenMP build) waits at a barrier after every operation of a
decode step, hundreds per token. Waiting threads spin, then sleep: on an idle
2-core EPYC spinning made 75-84 tok/s (Gemma 3 270M, 2 threads) where
sleeping at once (`OMP_WAIT_POLICY=passive`, an earlier default) made 43-45.
How long they spin matters *between* decodes too: the engine's Python work
between two passes (sampling, emitting, the drafter's bookkeeping: 0.3-1 ms)
must not outlast the spin, or the worker thread sleeps and every next pass
pays for waking it (in a VM, its vCPU halts). So the spin is libgomp's own
default, `GOMP_SPINCOUNT=300000` (what llama.cpp's own tools run with), set
before llama.cpp loads unless the user set a policy. Until session 15 it was
10000, about 0.5 ms on a Xeon whose `pause` is slow: on the 2-core Xeon, 8
tuning prompts, alternating processes, 300000 against 10000 ran plain
decoding 1.026x (geomean) and the default n-gram drafting 1.08x, with its
speedup over plain 1.62x -> 1.67x (median), as drafting steps leave longer
gaps. Spinning threads hurt when another program keeps a core busy (2
threads 28-31 tok/s, 1 thread 52-54), so the engine's context times its
passes and drops to fewer threads when that pays (governor.py): next to a
busy loop both spin counts ended on 1 thread at the same speed. The count
starts at the physical cores among the CPUs we may use (affinity, cgroup
quota). `--threads N` fixes the count (no governor);
`OMP_WAIT_POLICY`/`GOMP_SPINCOUNT` in the environment override the waiting.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

#: How long idle OpenMP threads spin before sleeping: libgomp's default, longer than the engine's gap between passes.
SPIN_COUNT = "300000"


def choose_threads(allowed: int, physical: int | None = None, quota: int | None = None) -> int:
    """The default thread count: the physical cores among the CPUs we may use, at least 1.

    `allowed`: CPUs in this process's affinity mask; `physical`: distinct cores
    among them (None: unknown, use `allowed`); `quota`: whole CPUs a cgroup
    quota grants (None: no quota). Pure, so the choice is testable on any fake machine.
    """
    cpus = max(1, int(allowed))
    if quota is not None:
        cpus = min(cpus, max(1, quota))
    return max(1, min(cpus, physical or cpus))


def allowed_cpus() -> list[int]:
    """CPU ids this process may run on."""
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return list(range(os.cpu_count() or 1))


def cgroup_cpu_limit(path: Path = Path("/sys/fs/cgroup/cpu.max")) -> int | None:
    """Whole CPUs a cgroup v2 quota allows ("200000 100000" -> 2), None without a quota."""
    try:
        quota, period = path.read_text().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    try:
        return max(1, math.ceil(int(quota) / int(period)))
    except (ValueError, ZeroDivisionError):
        return None


def physical_cores(cpus: list[int]) -> int | None:
    """Distinct cores among `cpus` (SMT siblings count once), None where the topology is not readable."""
    cores = set()
    for cpu in cpus:
        try:
            cores.add(Path(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list").read_text().strip())
        except OSError:
            return None
    return len(cores) or None


def default_threads() -> int:
    """`choose_threads` for this machine."""
    cpus = allowed_cpus()
    return choose_threads(len(cpus), physical_cores(cpus), cgroup_cpu_limit())


def threads_env(environ: dict[str, str] | os._Environ[str]) -> dict[str, str]:
    """Settings for OpenMP's idle threads that the user has not made: spin across the gap between passes, then sleep.

    Must be in the environment before llama.cpp's library (and libgomp) loads.
    """
    if "OMP_WAIT_POLICY" in environ or "GOMP_SPINCOUNT" in environ:
        return {}
    return {"GOMP_SPINCOUNT": SPIN_COUNT}
