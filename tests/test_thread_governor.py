"""The thread governor: fewer threads when another program competes, all of them again when it stops.

Pure logic first (timings given), then a real context switching thread counts mid-generation.
"""

from __future__ import annotations

from gemma_cli.engine import DraftConfig, Engine, EngineConfig, SamplingParams
from gemma_cli.engine.llama.governor import FIRST_CHECK, LAST_CHECK, LAST_CHECK_UP, ThreadGovernor

# seconds per one-token pass, by thread count, as measured on the 2-core EPYC (Gemma 3 270M)
QUIET = {2: 1 / 77, 1: 1 / 55}  # one thread is not slowed by a program on the other core
BUSY = {2: 1 / 30, 1: 1 / 54}  # next to one busy process


def drive(gov: ThreadGovernor, speeds: dict[int, float], passes: int) -> list[int]:
    seen = []
    for _ in range(passes):
        gov.observe(1, speeds[gov._current])
        seen.append(gov._current)
    return seen


def make(n: int = 2) -> ThreadGovernor:
    holder: dict[str, ThreadGovernor] = {}

    def apply(t: int) -> None:
        holder["g"]._current = t

    gov = ThreadGovernor(n, apply)
    gov._current = n  # the count the context decodes with (what apply set last)
    holder["g"] = gov
    return gov


def test_a_quiet_machine_keeps_every_thread_and_looks_elsewhere_rarely():
    gov = make()
    seen = drive(gov, QUIET, 4000)
    assert gov.threads == 2 and gov.switches == 0
    looks = sum(1 for a, b in zip(seen, seen[1:], strict=False) if a == 2 and b == 1)
    assert 1 <= looks <= 3 + 4000 // LAST_CHECK  # looks after 128, 384, 896, 1920, then every 1024
    assert seen.count(1) / len(seen) < 0.01  # under 1% of passes spent on the slower count


def test_a_competing_program_moves_it_to_one_thread_and_back_when_it_stops():
    gov = make()
    drive(gov, QUIET, 200)
    seen = drive(gov, BUSY, 40)
    assert gov.threads == 1 and seen.index(1) < 12  # noticed within a few passes, not at the next periodic look
    drive(gov, BUSY, 500)
    assert gov.threads == 1
    drive(gov, QUIET, LAST_CHECK_UP + 10)
    assert gov.threads == 2  # the periodic look up finds two threads faster again, within 256 passes


def test_a_process_that_starts_next_to_a_busy_one_still_finds_fewer_threads_better():
    gov = make()
    drive(gov, BUSY, FIRST_CHECK + 10)
    assert gov.threads == 1


def test_only_one_token_passes_count_and_one_thread_is_never_governed():
    gov = make()
    for _ in range(1000):
        gov.observe(8, 1.0)  # verification batches: another size, not comparable
    assert gov.switches == 0 and gov._since == 0
    single = ThreadGovernor(1, lambda t: None)
    assert single.levels == [1]
    single.observe(1, 0.5)


def test_levels_halve_from_the_starting_count():
    assert ThreadGovernor(8, lambda t: None).levels == [8, 4, 2, 1]
    assert ThreadGovernor(6, lambda t: None).levels == [6, 3, 1]


def test_changing_threads_mid_generation_does_not_change_the_text(tiny_model):
    """The governor's lever, used every few tokens: each output element is computed by one thread either way."""
    prompt = "the cat sat on the mat and then"
    greedy = SamplingParams(temperature=0.0)
    fixed = Engine(tiny_model, DraftConfig(source="ngram", tokens=4), EngineConfig(n_ctx=512, n_threads=2))
    governed = Engine(tiny_model, DraftConfig(source="ngram", tokens=4), EngineConfig(n_ctx=512))
    try:
        assert governed.ctx.governor is not None and fixed.ctx.governor is None  # --threads fixes the count
        ref = fixed.generate(prompt, max_tokens=48, sampling=greedy)
        ref.text()
        got = governed.generate(prompt, max_tokens=48, sampling=greedy)
        for i, _ in enumerate(got):
            governed.ctx.set_threads(1 if i % 3 else governed.ctx.n_threads)
        assert got.result.tokens == ref.result.tokens
        assert governed.ctx.threads_now in (1, governed.ctx.n_threads)
    finally:
        fixed.close()
        governed.close()
