"""benchmarks/second_candidate.py: the tree-verification estimate counts a rescue only where the
matched context's second continuation is what the text did next, and prices the extra row from the curve."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import second_candidate  # noqa: E402
from suffix_counts import full_curve  # noqa: E402
from suffix_replay import make  # noqa: E402

CURVE = full_curve({1: 1.0, 2: 1.9, 3: 2.2, 4: 2.4, 8: 3.6, 16: 5.5, 17: 6.9})


def test_rescue_needs_the_second_continuation_to_come_true() -> None:
    drafter, _ = make("new", 16, CURVE)
    # "1 2 3" was followed by 4 once and by 5 twice: 5 is the draft, 4 the second candidate.
    drafter.begin([1, 2, 3, 4, 9, 1, 2, 3, 5, 8, 1, 2, 3, 5, 7, 1, 2, 3])
    out = [4, 9, 1, 2, 6]
    assert second_candidate.rescue_run(drafter, out, 0, draft0=5) == 4  # 4, then "9 1 2" as after its occurrence
    assert second_candidate.rescue_run(drafter, [6, 9], 0, draft0=5) == 0  # the text went elsewhere
    assert second_candidate.rescue_run(drafter, out, 0, draft0=4) == 0  # the alternative to 4 is 5, not what came


def test_replay_prices_one_extra_row_per_drafted_step() -> None:
    text = [10, 11, 12, 13, 14, 15, 16, 17] * 12
    got = second_candidate.replay(text[:40], text[40:], CURVE)
    assert got["drafted"] > 0 and got["cost"] > 0
    assert got["extra_cost"] >= got["drafted"] * min(CURVE[b + 1] - CURVE[b] for b in range(1, 17)) > 0
    assert got["rescued"] <= got["first_missed"] <= got["drafted"]
