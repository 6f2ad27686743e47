"""A clock fine enough to time one decode step.

Some sandboxes and VMs tick the wall clock in steps of milliseconds; a
sub-millisecond decode then measures as 0. Per-step costs (the adaptive draft
controller) fall back to process CPU time there, which llama.cpp's busy worker
threads keep proportional to wall time. Totals (tokens/s) keep the wall clock.

`step_clock` is the default: `EngineConfig(clock=...)` gives an engine another
(the speculative loop and a model drafter read that one), e.g. a virtual clock
that makes a test's timing, and so its draft lengths, deterministic.
"""

from __future__ import annotations

import time


def _wall_clock_is_fine(samples: int = 20000) -> bool:
    start = time.perf_counter()
    for _ in range(samples):
        now = time.perf_counter()
        if now != start:
            return now - start < 1e-4
    return False


step_clock = time.perf_counter if _wall_clock_is_fine() else time.process_time
