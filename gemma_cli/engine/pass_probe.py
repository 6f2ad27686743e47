"""Time the target's passes by size once, right after loading, when this machine's curve is not known yet.

The draft-length controller prices a draft by the measured cost of a pass
of k+1 tokens. Learning that curve during a generation costs the user:
sizes not measured yet are priced by a cautious prior, so a fresh process
under-drafts on text that copies, or pays for a long draft that fails
(replayed on the tuning set, EPYC curve: sampled worst case 0.90x plain from a
cold start, 0.97x with the curve known; greedy geometric mean 1.96x vs 2.12x).
So the first load of a model on a machine (`pass_cost_cache.attach`) spends
about a second decoding dummy batches of the sizes a draft can take, most
useful first, and the curve is cached for every later process; a later load
measures the sizes the saved curve still lacks (`fill_curve`), in the same
budget, until none is missing.
"""

from __future__ import annotations

import time
from typing import Callable, Collection, Mapping

from gemma_cli.engine.llama import Context

# Sizes in the order they are worth measuring: short drafts first, then the long ones text that copies uses.
PRIORITY = (1, 2, 3, 4, 5, 6, 8, 9, 7, 12, 13, 16, 17, 10, 11, 14, 15, 24, 25, 32, 33)
BUDGET_S = 1.0  # one-off, per machine, model and thread count
ROUNDS = 2  # the fastest of up to two timings per size: load only ever adds time


def probe_pass_costs(ctx: Context, max_batch: int, *, budget_s: float = BUDGET_S,
                     clock: Callable[[], float] = time.perf_counter, known: Collection[int] = ()) -> dict[int, float]:
    """{batch_size: seconds} for pass sizes up to `max_batch`, within `budget_s`; the context is left empty.

    Sizes between two measured ones are filled by linear interpolation, so the
    controller sees a whole curve up to the largest size measured. With `known`
    (the sizes a saved curve has), only the sizes it lacks are measured, and
    one-token passes to put them at the saved curve's pace; nothing is
    interpolated, and nothing at all runs when none is missing (`fill_curve`).
    """
    if ctx.n_past:
        raise ValueError("probe_pass_costs needs an empty context (call it right after loading)")
    n_vocab = ctx.model.n_vocab
    sizes = [b for b in PRIORITY if b <= min(max_batch, ctx.n_batch, ctx.n_ctx - 1) and (b == 1 or b not in known)]
    if known and sizes == [1]:
        return {}
    tokens = [(1000 + i) % n_vocab for i in range(max(sizes, default=1))]
    best: dict[int, float] = {}
    try:
        ctx.decode(tokens[:1], n_outputs=1)  # warm-up: the first pass pages the weights in
        ctx.trim(0)
        spent_from = clock()
        for _ in range(ROUNDS):
            for b in sizes:
                t0 = clock()
                ctx.decode(tokens[:b], n_outputs=b)
                ctx.logits()
                dt = clock() - t0
                ctx.trim(0)
                best[b] = min(best.get(b, dt), dt)
                if clock() - spent_from > budget_s:
                    return best if known else _filled(best)
    finally:
        ctx.clear()
    return best if known else _filled(best)


def fill_curve(saved: Mapping[int, float], measured: Mapping[int, float]) -> dict[int, float]:
    """`saved` plus the sizes `measured` adds, scaled by the two one-token passes to the saved curve's pace.

    Why: the first probe's second of budget reaches about 12 rows on a 2-core CPU (Gemma 3 270M, ~37 ms a
    pass), and the controller, pricing larger sizes by a cautious prior, never tried 14-16 rows, though 16
    cost 6.05 one-token passes there against 17's 7.38 (`benchmarks/pass_curve.py`). Each later load
    measures what is still missing, within the same budget, until the curve is whole. Tuning set, 3 rounds,
    the curve with 14-16 measured against without: median 1.026x, geomean 1.057x, fewer passes on 8 of 11.
    """
    merged = dict(saved)
    scale = saved[1] / measured[1] if 1 in saved and 1 in measured and measured[1] > 0 else 1.0
    for b, seconds in measured.items():
        if b not in merged:
            merged[b] = seconds * scale
    return dict(sorted(merged.items()))


def _filled(points: dict[int, float]) -> dict[int, float]:
    """Linear interpolation between measured sizes (nothing past the largest)."""
    xs = sorted(b for b, s in points.items() if s > 0)
    out = {b: max(points[b], 1e-9) for b in xs}
    for lo, hi in zip(xs, xs[1:], strict=False):
        for b in range(lo + 1, hi):
            out[b] = points[lo] + (points[hi] - points[lo]) * (b - lo) / (hi - lo)
    return dict(sorted(out.items()))
