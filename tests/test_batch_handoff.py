"""A generation the engine started moves into a batch between two steps and goes on as if it had stayed (issue 16).

`gemma serve` runs a lone request on the engine and moves it into the model's
BatchScheduler once others arrive (server/lanes.py), so that all of them share
one decode. Here directly: `Generation.detach` then `BatchScheduler.adopt`, on
the tiny model, in the server's default fast mode (one unified KV pool; an exact-mode scheduler keeps
one stream per slot, and llama.cpp loads a sequence's cells only into a context with as many streams as
the one they came from, so the server does not move requests into an exact-mode batch).
"""

from __future__ import annotations

import pytest

from gemma_cli.engine.batch import BatchScheduler
from gemma_cli.engine.generate import DraftConfig, Engine, EngineConfig
from gemma_cli.engine.sampling import SamplingParams

PROMPT = "the cat sat on the mat. the cat sat"
OTHERS = ["abcabcabcab", "x=1; y=2; x=1; y="]


@pytest.fixture(scope="module")
def engine(tiny_model):
    eng = Engine(tiny_model, DraftConfig(source="ngram", tokens=3), EngineConfig(n_ctx=512, n_threads=2))
    yield eng
    eng.close()


def _solo(engine: Engine, sampling: SamplingParams, stop: list[str], max_tokens: int):
    engine.reset()
    ref = engine.generate(engine.tokenize(PROMPT), max_tokens=max_tokens, sampling=sampling, stop=stop)
    ref.text()
    return ref.result


@pytest.mark.parametrize("sampling", [SamplingParams(), SamplingParams(temperature=0.9, top_k=40, seed=5)], ids=["greedy", "seeded"])
@pytest.mark.parametrize("after", [0, 1, 6])
def test_a_moved_generation_equals_its_solo_run(engine, sampling, after):
    stop = [_solo(engine, SamplingParams(), [], 90).text[50:52]]  # held back across the move when it is partly matched
    ref = _solo(engine, sampling, stop, 90)
    engine.reset()
    gen = engine.generate(engine.tokenize(PROMPT), max_tokens=90, sampling=sampling, stop=stop)
    text = "".join(next(gen).text for _ in range(after))
    sched = BatchScheduler(engine, 3, exact=False)  # one unified pool: the only mode that takes another context's cells
    try:
        others = [sched.submit(engine.tokenize(p), max_tokens=40) for p in OTHERS]  # already decoding in the batch
        sched.step()
        handoff = gen.detach()
        assert handoff is not None and (handoff.history == []) == (after == 0)
        if after:
            assert engine.cached_tokens == len(handoff.history) - 1  # the engine keeps its cache of what ran
        moved = sched.adopt(handoff, DraftConfig(source="ngram", tokens=3))
        for piece in moved:
            text += piece.text
            active = {s.seq: s.n_past for s in sched.active}
            for seq, pos in sched.kv_positions().items():  # the copied cells are exactly the slot's history so far
                assert pos == active.get(seq, 0) - 1
        for g in others:
            g.text()
        result = moved.result
        assert result is not None
        assert result.tokens == ref.tokens and text == result.text == ref.text
        assert result.stop_reason == ref.stop_reason
        assert result.stats.generated_tokens == len(ref.tokens)
    finally:
        sched.close()


def test_a_finished_or_cancelled_generation_does_not_move(engine):
    engine.reset()
    gen = engine.generate(engine.tokenize(PROMPT), max_tokens=2)
    gen.text()
    assert gen.detach() is None
    gen = engine.generate(engine.tokenize(PROMPT), max_tokens=40)
    next(gen)
    gen.cancel()
    assert gen.detach() is None
