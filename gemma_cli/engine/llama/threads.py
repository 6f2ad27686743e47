"""How many CPU threads llama.cpp gets by default, and how its idle threads wait.

llama.cpp splits every operation of a decode step across its threads and
waits at a barrier after each (hundreds per token). libgomp's default makes
a waiting thread spin first; on a CPU that other programs keep busy the
spinning threads take the CPU time the missing one needs, and decoding
collapses: 2 threads next to one busy process made 0.5-2.2 tok/s where
1 thread made 67-84. Idle threads therefore sleep (`OMP_WAIT_POLICY=passive`,
set before llama.cpp loads unless the user set a policy). With that, all
physical cores stay the best default even on a crowded CPU: at load 12-13
on 2 cores, 2 passive threads made 35-38 tok/s, 1 thread 10 (README,
*Troubleshooting*, has the full A/B). Lowering the count by the load average
was measured worse, so the count follows cores, affinity and cgroup quota only.
`--threads N` and `OMP_WAIT_POLICY`/`GOMP_SPINCOUNT` in the environment override.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

#: How idle OpenMP threads wait: "passive" sleeps at once (libgomp's default spins ~300000 iterations first).
WAIT_POLICY = "passive"


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
    """Settings for OpenMP's idle threads that the user has not made: sleep rather than spin.

    A shorter spin (GOMP_SPINCOUNT=10000) did not help on a loaded 2-core
    machine (1.7-2.4 tok/s, like the default); passive waiting did (19-38).
    Must be in the environment before llama.cpp's library (and libgomp) loads.
    """
    if "OMP_WAIT_POLICY" in environ or "GOMP_SPINCOUNT" in environ:
        return {}
    return {"OMP_WAIT_POLICY": WAIT_POLICY}
