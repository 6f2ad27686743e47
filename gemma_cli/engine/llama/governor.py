"""How many threads a context decodes with, chosen by timing its own one-token passes.

llama.cpp (an OpenMP build) meets at a barrier after every operation of a
pass, hundreds of times per token. Spinning there is what makes a quiet
machine fast, and what makes a busy one slow: a thread spinning for a
partner that another process took off its core burns the time the partner
needs. Measured on a 2-core EPYC (Gemma 3 270M Q4_K_M, 96 tokens):

| idle threads | quiet, 2 threads | next to one busy process: 2 threads / 1 thread |
|---|---|---|
| sleep (`OMP_WAIT_POLICY=passive`) | 43-45 tok/s | 43-46 / 55 |
| spin (libgomp's default) | 75-78 | 28-31 / 52-54 |

So idle threads spin (threads.py), and a `ThreadGovernor` moves the context
down to fewer threads when its passes get slower than they were, and back
up when that pays again: 77 tok/s quiet and ~54 next to a busy process,
where sleeping threads gave 44 and 45. Only one-token passes are timed (the
bulk of decoding, and comparable with each other); thread counts are
halvings of the starting count, tried one step away from the current one.

Numerics do not depend on the thread count (each output element is computed
by one thread with the same code), so the text never does either. Cost on a quiet machine: one 3-pass look at
fewer threads after 128 one-token passes, then 256, 512 and every 1024 more;
below the top, a look up at most every 256.
"""

from __future__ import annotations

from typing import Callable

ALPHA = 0.3  # weight of the newest pass in a count's running mean: a few passes notice a change
SLOWER = 1.4  # the current count's mean over its best by this much: something competes, try fewer threads
TRIAL = 4  # passes tried at another count (the first one only wakes its threads: not counted)
BETTER = 0.9  # another count must be 10% faster to move there
FIRST_CHECK = 128  # one-token passes before the first look at another level; doubled each time staying was right
LAST_CHECK = 1024  # at the top: a look down costs a few slow passes on a quiet machine, so rarely
LAST_CHECK_UP = 256  # below the top: back to every thread within seconds of the competition ending


class ThreadGovernor:
    """`observe(n_tokens, seconds)` after every decode; calls `apply(threads)` when it changes its mind."""

    def __init__(self, n_threads: int, apply: Callable[[int], None]) -> None:
        levels = [max(1, int(n_threads))]
        while levels[-1] > 1:
            levels.append(levels[-1] // 2)
        self.levels = levels  # e.g. [8, 4, 2, 1]
        self.level = 0
        self._apply = apply
        self._mean: list[float | None] = [None] * len(levels)
        self._best: list[float | None] = [None] * len(levels)
        self._seen = [0] * len(levels)
        self._trial: tuple[int, int, list[float]] | None = None  # (level, passes so far, timings), while trying
        self._since = 0  # one-token passes since the last trial
        self._check_every = FIRST_CHECK
        self.switches = 0

    @property
    def threads(self) -> int:
        return self.levels[self.level]

    def observe(self, n_tokens: int, seconds: float) -> None:
        if n_tokens != 1 or len(self.levels) == 1 or seconds <= 0:
            return
        if self._trial is not None:
            self._trial_pass(seconds)
            return
        self._record(self.level, seconds)
        self._since += 1
        mean, best = self._mean[self.level], self._best[self.level]
        slowed = (self._seen[self.level] >= TRIAL and mean is not None and best is not None and mean > SLOWER * best
                  and self.level + 1 < len(self.levels))
        if slowed and self._since >= TRIAL:
            self._start_trial(self.level + 1)
        elif self._since >= self._check_every:  # now and then look one level up (or, at the top, down):
            # a process that started next to a busy one never saw its quiet speed, so `slowed` cannot fire
            self._start_trial(self.level - 1 if self.level > 0 else self.level + 1)

    # -- internals ---------------------------------------------------------------
    def _record(self, level: int, seconds: float) -> None:
        prev = self._mean[level]
        mean = seconds if prev is None else (1 - ALPHA) * prev + ALPHA * seconds
        self._mean[level] = mean
        self._seen[level] += 1
        if self._seen[level] >= TRIAL and (self._best[level] is None or mean < self._best[level]):
            self._best[level] = mean

    def _start_trial(self, level: int) -> None:
        self._trial = (level, 0, [])
        self._apply(self.levels[level])

    def _trial_pass(self, seconds: float) -> None:
        level, n, times = self._trial  # type: ignore[misc]
        n += 1
        if n > 1:  # the first pass at a new count wakes its threads
            times.append(seconds)
        if n < TRIAL:
            self._trial = (level, n, times)
            return
        self._trial = None
        self._since = 0
        tried = sum(times) / len(times)
        here = self._mean[self.level] or tried
        if tried < BETTER * here:
            self._mean[level] = tried
            self._seen[level] = max(self._seen[level], TRIAL)
            self._best[level] = tried if self._best[level] is None else min(self._best[level], tried)
            self.level = level
            self._check_every = FIRST_CHECK
            self.switches += 1
            return  # already applied
        self._check_every = min(self._check_every * 2, LAST_CHECK if self.level == 0 else LAST_CHECK_UP)
        self._best[self.level] = self._mean[self.level]  # stayed: today's speed is the new reference
        self._apply(self.levels[self.level])
