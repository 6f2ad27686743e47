"""Sliding-window KV without `swa_full` (the engine's target context): rollback of drafts stays exact, and a
trim the reused cells cannot serve empties the cache instead of decoding from missing cells.

The tiny synthetic Gemma 4 target has a 16-token window; with a 64-token batch llama.cpp keeps 256 cells for
its sliding-window layers, so 600 tokens of history reuse cells many times over.
"""

from __future__ import annotations

import numpy as np
import pytest

from gemma4_factory import write_gemma4_pair
from gemma_cli.engine import DraftConfig, Engine, EngineConfig, SamplingParams
from gemma_cli.engine.llama import Context, Model

TOKENS = [5 + (i * 7) % 60 for i in range(600)]


@pytest.fixture(scope="module")
def target(tmp_path_factory):
    path, _ = write_gemma4_pair(tmp_path_factory.mktemp("swa"))
    model = Model(path)
    yield path, model
    model.close()


def _fed(model: Model, tokens: list[int], *, swa_full: bool) -> Context:
    ctx = Context(model, n_ctx=2048, n_batch=64, n_threads=1, swa_full=swa_full)
    for at in range(0, len(tokens), 50):  # many batches, as a generation's steps would be
        ctx.decode(tokens[at : at + 50], n_outputs=1)
    return ctx


def test_rolling_back_drafts_is_exact_and_a_deep_trim_empties_the_cache(target) -> None:
    _, model = target
    assert model.n_swa == 16
    windowed, full = _fed(model, TOKENS, swa_full=False), _fed(model, TOKENS, swa_full=True)
    try:
        assert windowed.swa_window == 16 and full.swa_window == 0
        for ctx in (windowed, full):  # a rejected 8-token draft: verify, keep 3, go on
            ctx.decode([7, 8, 9, 10, 11, 12, 13, 14], n_outputs=8)
            ctx.trim(len(TOKENS) + 3)
            assert ctx.n_past == len(TOKENS) + 3
            ctx.decode([20], n_outputs=1)
        # Attention over 256 cells or over all of them sums in another order (F16 KV): ~0.005 apart even with
        # no rollback at all. Decoding from reused cells is off by ~1.9 (below), so 0.05 tells the two apart.
        np.testing.assert_allclose(windowed.logits()[0], full.logits()[0], rtol=0, atol=0.05)
        windowed.trim(100)  # the window before position 100 was reused long ago
        assert windowed.n_past == 0 and windowed.pos_max() == -1
        full.trim(100)  # every cell kept: the trim is exact
        assert full.n_past == 100
    finally:
        windowed.close()
        full.close()


def test_decoding_from_reused_cells_would_be_wrong(target) -> None:
    """What the emptying in `trim` prevents: keep position 100 although its window's cells were reused."""
    _, model = target
    windowed, full = _fed(model, TOKENS, swa_full=False), _fed(model, TOKENS, swa_full=True)
    try:
        for ctx in (windowed, full):
            ctx._seq_rm(ctx.memory, 0, 100, -1)  # a bare seq_rm, without trim's check
            ctx.n_past = 100
            ctx.decode([20, 21, 22], n_outputs=1)
        assert np.abs(windowed.logits()[0] - full.logits()[0]).max() > 0.5
    finally:
        windowed.close()
        full.close()


def test_a_prompt_sharing_an_old_prefix_decodes_as_in_a_fresh_engine(target) -> None:
    path, _ = target
    greedy = SamplingParams(temperature=0.0)
    first, second = TOKENS[:500], TOKENS[:100] + [9, 8, 7, 6]

    def run(engine: Engine, prompt: list[int]) -> list[int]:
        gen = engine.generate(prompt, max_tokens=24, sampling=greedy, stop=())
        for _ in gen:
            pass
        assert gen.result is not None
        return list(gen.result.tokens)

    config = EngineConfig(n_ctx=1024, n_batch=64, n_threads=1)
    with Engine(path, DraftConfig(source="none"), config) as warm:
        run(warm, first)  # the KV now holds 500+ tokens; the second prompt shares only the first 100
        again = run(warm, second)
        assert warm.ctx.n_past > len(second)
    with Engine(path, DraftConfig(source="none"), config) as fresh:
        assert run(fresh, second) == again
