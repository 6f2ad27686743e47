"""Engine behaviour on real llama.cpp inference: statistics, stops, cancellation, KV reuse, bad input."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from dataclasses import replace

import pytest

from gemma_cli.engine.generate import DraftConfig, Engine, EngineConfig
from gemma_cli.engine.sampling import SamplingParams
from gemma_cli.engine.types import StopReason
from gemma_cli.errors import ContextFullError, GemmaError, IncompatibleModelsError, ModelFileError, UsageError

GREEDY = SamplingParams(temperature=0.0)


@pytest.fixture()
def ngram_engine(tiny_model):
    eng = Engine(tiny_model, DraftConfig(source="ngram", tokens=4), EngineConfig(n_ctx=512, n_threads=2))
    yield eng
    eng.close()


def test_statistics_are_consistent(ngram_engine):
    g = ngram_engine.generate("abcabcabcabc", max_tokens=64, sampling=GREEDY)
    pieces = list(g)
    s = g.result.stats
    assert s is g.stats
    assert s.draft_accepted <= s.draft_proposed
    assert s.generated_tokens == len(g.result.tokens) == sum(p.n_tokens for p in pieces)
    assert s.generated_tokens == s.emitted_from_draft + s.emitted_from_target
    assert s.emitted_from_draft == sum(p.n_drafted for p in pieces) <= s.draft_accepted
    assert s.target_passes >= s.emitted_from_target
    assert s.tokens_per_pass == pytest.approx(s.generated_tokens / s.target_passes)
    assert s.tokens_per_s == pytest.approx((s.generated_tokens - 1) / max(s.wall_s - s.ttft_s, 1e-9))
    assert 0.0 <= s.acceptance_rate <= 1.0
    assert s.prompt_tokens == len(ngram_engine.tokenize("abcabcabcabc"))
    assert "".join(p.text for p in pieces) == g.result.text


def test_live_stats_update_during_generation(ngram_engine):
    g = ngram_engine.generate("hello hello hello", max_tokens=40, sampling=GREEDY)
    seen = []
    for _ in g:
        seen.append(g.stats.generated_tokens)
    assert seen == sorted(seen) and seen[0] >= 1 and seen[-1] == g.result.stats.generated_tokens


def test_stop_string_inside_an_accepted_draft(tiny_model):
    plain = Engine(tiny_model, DraftConfig(source="none"), EngineConfig(n_ctx=512))
    ref = plain.generate("abcabcabcabc", max_tokens=64, sampling=GREEDY).text()
    # Fixed draft length: which steps draft must not depend on this machine's timing.
    ngram_engine = Engine(tiny_model, DraftConfig(source="ngram", tokens=4, adaptive=False), EngineConfig(n_ctx=512, n_threads=2))
    g = ngram_engine.generate("abcabcabcabc", max_tokens=64, sampling=GREEDY)
    offset, drafted_at = 0, None
    for piece in g:
        if piece.n_drafted >= 2 and len(piece.text) >= 3 and drafted_at is None:
            drafted_at = offset + 1  # a stop string that starts inside this drafted piece
        offset += len(piece.text)
    assert g.result.text == ref
    assert drafted_at is not None, "fixture should produce drafted pieces"
    stop = ref[drafted_at : drafted_at + 2]
    cut = ref.find(stop)
    g2 = ngram_engine.generate("abcabcabcabc", max_tokens=64, sampling=GREEDY, stop=[stop])
    assert g2.text() == ref[:cut]
    assert g2.result.stop_reason is StopReason.STOP


def test_max_tokens_is_exact_even_with_drafts(tiny_model, ngram_engine):
    plain = Engine(tiny_model, DraftConfig(source="none"), EngineConfig(n_ctx=512))
    ref = plain.generate("abcabcabcabc", max_tokens=13, sampling=GREEDY)
    ref.text()
    assert ref.result.stop_reason is StopReason.LENGTH  # the fixture does not end within 13 tokens
    for n in (1, 2, 5, 13):
        g = ngram_engine.generate("abcabcabcabc", max_tokens=n, sampling=GREEDY)
        g.text()
        assert g.result.stop_reason is StopReason.LENGTH
        assert g.result.tokens == ref.result.tokens[:n]  # exactly n, even when a draft ran past n


def test_same_seed_same_output(ngram_engine):
    sp = SamplingParams(temperature=0.9, top_k=20, top_p=0.9, seed=42)
    a = ngram_engine.generate("hello world", max_tokens=30, sampling=sp).text()
    b = ngram_engine.generate("hello world", max_tokens=30, sampling=sp).text()
    assert a == b
    # and the settings are used: other seeds give other text, and sampling is not greedy
    others = {ngram_engine.generate("hello world", max_tokens=30, sampling=replace(sp, seed=s)).text() for s in (1, 2, 3)}
    assert others - {a}
    assert ngram_engine.generate("hello world", max_tokens=30, sampling=GREEDY).text() not in others | {a}


def test_which_generations_keep_pass_costs_in_the_engine(ngram_engine, tiny_model, tiny_drafter):
    """The n-gram controller keeps the engine's costs for every generation (its unmeasured-size prior is
    cautious, so a known curve only helps); with a model drafter, greedy generations measure afresh."""
    ngram_engine.costs.seed({1: 1.0})  # a value no real pass takes: kept costs are moved from here, fresh ones not
    ngram_engine.generate("abcabcabcabc", max_tokens=24, sampling=GREEDY).text()
    assert 0 < ngram_engine.costs.verify[1] < 1.0
    ngram_engine.set_draft(DraftConfig(source="ngram", tokens=8))  # same drafter: costs stay true
    assert 1 in ngram_engine.costs.verify
    eng = Engine(tiny_model, DraftConfig(source="model", tokens=4, model_path=tiny_drafter), EngineConfig(n_ctx=512, n_threads=2))
    try:
        eng.generate("abcabcabcabc", max_tokens=24, sampling=GREEDY).text()
        assert eng.costs.verify == {}
    finally:
        eng.close()


def test_an_engine_starts_from_the_pass_costs_it_is_given(tiny_model):
    """EngineConfig(pass_costs=...) seeds what sampled generations start from (a curve kept from an earlier run)."""
    steep = {b: 0.010 * b for b in range(1, 6)}  # drafting cannot pay: a sampled generation never drafts
    eng = Engine(tiny_model, DraftConfig(source="ngram", tokens=4), EngineConfig(n_ctx=512, n_threads=2, pass_costs=steep))
    try:
        assert eng.costs.curve == steep
        sp = SamplingParams(temperature=0.9, top_k=20, seed=1)
        g = eng.generate("abcabcabcabc", max_tokens=24, sampling=sp)
        g.text()
        assert g.stats.draft_proposed == 0
        eng.costs.seed({b: 0.010 for b in range(1, 6)})  # flat: drafting pays from the first step
        g = eng.generate("abcabcabcabc", max_tokens=24, sampling=sp)
        g.text()
        assert g.stats.draft_proposed > 0 and g.stats.plain_steps < 24
    finally:
        eng.close()


def test_cancel_keeps_kv_consistent(tiny_model, ngram_engine):
    g = ngram_engine.generate("the cat sat on the mat", max_tokens=200, sampling=GREEDY)
    for i, _ in enumerate(g):
        if i == 3:
            g.cancel()
    assert g.result.stop_reason is StopReason.CANCELLED
    assert ngram_engine.ctx.pos_max() + 1 == ngram_engine.ctx.n_past
    after = ngram_engine.generate("abcabcabcabc", max_tokens=30, sampling=GREEDY).text()
    fresh = Engine(tiny_model, DraftConfig(source="none"), EngineConfig(n_ctx=512))
    assert after == fresh.generate("abcabcabcabc", max_tokens=30, sampling=GREEDY).text()


def test_kv_cache_reused_across_calls(ngram_engine):
    first = ngram_engine.tokenize("the quick brown fox jumps")
    ngram_engine.generate(first, max_tokens=8, sampling=GREEDY).text()
    second = first + ngram_engine.tokenize(" over the lazy dog", add_special=False)
    g = ngram_engine.generate(second, max_tokens=8, sampling=GREEDY)
    g.text()
    assert g.stats.prompt_evaluated == len(second) - len(first)
    assert ngram_engine.ctx.pos_max() + 1 == ngram_engine.ctx.n_past


def test_kv_holds_exactly_the_accepted_positions(tiny_model, tiny_drafter):
    eng = Engine(tiny_model, DraftConfig(source="model", tokens=6, model_path=tiny_drafter, adaptive=False), EngineConfig(n_ctx=512))
    g = eng.generate("hello there, general", max_tokens=100, sampling=SamplingParams(temperature=1.0, seed=3))
    g.text()
    s = g.stats
    assert s.draft_proposed > s.draft_accepted, "need rejections for this test"
    assert eng.ctx.pos_max() + 1 == eng.ctx.n_past == eng.cached_tokens


def test_drafter_prefill_is_not_charged_as_a_per_token_draft_cost(tiny_model, tiny_drafter):
    """A model drafter's first proposal ingests the whole prompt: a one-off, reported apart from drafting."""
    import itertools

    from gemma_cli.engine.drafters import ModelDrafter
    from gemma_cli.engine.llama import Model
    from gemma_cli.engine.sampling import TokenSampler

    # A clock that ticks one second per reading: the tiny model's prefill can be
    # shorter than this VM's wall-clock step, and the split must not depend on that.
    ticks = itertools.count()
    target = Engine(tiny_model, DraftConfig(source="none"), EngineConfig(n_ctx=512, n_threads=1))
    model = Model(tiny_drafter)
    drafter = ModelDrafter(model, n_ctx=512, n_threads=1, clock=lambda: float(next(ticks)))
    try:
        drafter.attach(target.ctx)
        history = target.tokenize("the cat sat on the mat. " * 12)
        drafter.begin(history)
        sampler = TokenSampler(GREEDY)
        draft, _ = drafter.propose(history, 3, sampler)
        n = len(history)  # the sync decoded the whole prompt in one (1-second) reading: all but one token is catch-up
        assert len(draft) == 3 and drafter.catch_up_seconds == pytest.approx((n - 1) / n)
        history = history + draft[:1] + [draft[1]]  # one draft accepted, then the target's own token
        drafter.propose(history, 3, sampler)
        assert drafter.catch_up_seconds == 0.0  # only the usual single token to ingest
    finally:
        drafter.close()
        model.close()
        target.close()


class WorkClock:
    """Virtual seconds from the work the engine's contexts did since the last reading.

    A target pass of b tokens costs 1 + 0.1 (b - 1) (batching pays, as on real
    hardware) and each token the drafter ingests 0.1, so a 400-token prefill
    looks like 40 plain steps however fast or coarse this machine's clock is.
    """

    def __init__(self) -> None:
        self.now = 0.0
        self.contexts: list = []  # (context, cost of its first token, of each further token); set once loaded
        self._seen: list[int] = []

    def watch(self, target_ctx, drafter_ctx) -> None:
        self.contexts = [(target_ctx, 1.0, 0.1), (drafter_ctx, 0.1, 0.1)]
        self._seen = [c.n_past for c, _, _ in self.contexts]

    def __call__(self) -> float:
        for i, (ctx, first, more) in enumerate(self.contexts):
            new = ctx.n_past - self._seen[i]  # a trim (rejected drafts) only lowers the mark
            if new > 0:
                self.now += first + more * (new - 1)
            self._seen[i] = ctx.n_past
        return self.now


@pytest.fixture(scope="module")
def agreeing_drafter(model_dir):
    """tiny_model's weights with one layer: a drafter the target agrees with most of the time."""
    from gguf_factory import write_llama_gguf

    return write_llama_gguf(model_dir / "tiny-one-layer.gguf", seed=1, n_layer=1)


def test_a_long_prompt_does_not_lock_a_model_drafter_out(tiny_model, agreeing_drafter):
    """The drafter's prompt prefill is a one-off: charged per drafted token, it would make drafting look
    hundreds of times dearer than it is, and the controller would never draft again after its first try."""
    clock = WorkClock()
    eng = Engine(tiny_model, DraftConfig(source="model", tokens=4, model_path=agreeing_drafter),
                 EngineConfig(n_ctx=512, n_threads=2, clock=clock))
    try:
        clock.watch(eng.ctx, eng.drafter.ctx)
        prompt = eng.tokenize("abcdefghij" * 40)  # greedy: no EOS within 64 tokens
        assert len(prompt) >= 400
        g = eng.generate(prompt, max_tokens=64, sampling=GREEDY)
        g.text()
        s = g.stats
        assert s.generated_tokens == 64
        assert s.plain_step_seconds == pytest.approx(s.plain_steps)  # timed by the clock given: one unit a plain step
        assert s.draft_accepted > s.draft_proposed / 2, "fixture: the drafter should mostly agree"
        assert s.draft_steps >= 8, f"drafting stopped after {s.draft_steps} step(s): the prefill was charged as drafting"
    finally:
        eng.close()


def test_context_full_stops_generation(tiny_model):
    eng = Engine(tiny_model, DraftConfig(source="ngram", tokens=8, adaptive=False), EngineConfig(n_ctx=32))
    prompt = eng.tokenize("the cat sat on the mat")  # greedy: no EOS before the context fills
    g = eng.generate(prompt, max_tokens=500, sampling=GREEDY)
    g.text()
    assert g.result.stop_reason is StopReason.CONTEXT
    # every position of the context is used (llama.cpp pads n_ctx up, here to 256); the last
    # emitted token needs no KV slot. Plain decoding stops at n_ctx tokens; a draft accepted
    # into the last slots can end one token later (n_ctx + 1), never with different text.
    assert eng.n_ctx <= len(prompt) + len(g.result.tokens) <= eng.n_ctx + 1
    assert eng.ctx.pos_max() + 1 == eng.ctx.n_past <= eng.n_ctx
    plain = Engine(tiny_model, DraftConfig(source="none"), EngineConfig(n_ctx=32))
    ref = plain.generate(prompt, max_tokens=500, sampling=GREEDY)
    ref.text()
    assert ref.result.stop_reason is StopReason.CONTEXT and len(prompt) + len(ref.result.tokens) == eng.n_ctx
    assert g.result.tokens[: len(ref.result.tokens)] == ref.result.tokens


def test_utf8_is_never_split(ngram_engine):
    """Byte-level pieces are held until the character is complete."""
    from gemma_cli.engine.textstream import TextStream

    s = TextStream()
    euro = "€".encode()
    assert s.feed(euro[:1]) == "" and s.feed(euro[1:2]) == "" and s.feed(euro[2:]) == "€"


# -- bad input: a clear exception, no crash, no hang -----------------------------------


def test_missing_file(tmp_path):
    with pytest.raises(ModelFileError, match="not found"):
        Engine(tmp_path / "nope.gguf")


def test_not_a_gguf(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"PK\x03\x04 this is a zip, not a model" * 10)
    with pytest.raises(ModelFileError, match="not a GGUF"):
        Engine(bad)


def test_truncated_gguf(tmp_path, tiny_model):
    data = tiny_model.read_bytes()
    for cut in (10, 200, len(data) // 2, len(data) - 7):
        trunc = tmp_path / f"trunc{cut}.gguf"
        trunc.write_bytes(data[:cut])
        with pytest.raises(ModelFileError) as exc:
            Engine(trunc)
        assert str(trunc) in str(exc.value)


def test_vocabulary_mismatch_names_both_files(tiny_model, small_vocab_model):
    with pytest.raises(IncompatibleModelsError) as exc:
        Engine(tiny_model, DraftConfig(source="model", tokens=4, model_path=small_vocab_model))
    assert tiny_model.name in str(exc.value) and small_vocab_model.name in str(exc.value)


def test_prompt_longer_than_context(tiny_model):
    eng = Engine(tiny_model, DraftConfig(source="none"), EngineConfig(n_ctx=16))
    with pytest.raises(ContextFullError, match=f"context holds {eng.n_ctx}"):
        eng.generate("a" * (eng.n_ctx + 10))


@pytest.mark.parametrize("n_ctx", [0, -5])
def test_bad_context_size(tiny_model, n_ctx):
    with pytest.raises(UsageError, match="context size"):
        Engine(tiny_model, config=EngineConfig(n_ctx=n_ctx))


@pytest.mark.parametrize("k", [0, -1, 33, 10_000])
def test_bad_draft_length(tiny_model, k):
    with pytest.raises(UsageError, match="draft length"):
        Engine(tiny_model, DraftConfig(source="ngram", tokens=k))


@pytest.mark.parametrize(
    "params",
    [SamplingParams(temperature=-1), SamplingParams(top_p=-0.1), SamplingParams(top_k=-2), SamplingParams(min_p=1.5)],
)
def test_bad_sampling_params(ngram_engine, params):
    with pytest.raises(UsageError):
        ngram_engine.generate("abc", sampling=params)


def test_top_p_zero_keeps_only_the_most_likely_token(ngram_engine):
    """top_p 0 (OpenAI's API accepts it) samples from the single most likely token: greedy's text, any seed."""
    greedy = ngram_engine.generate("abc", max_tokens=24).text()
    for seed in (1, 2):
        sampled = ngram_engine.generate("abc", max_tokens=24, sampling=SamplingParams(temperature=1.5, top_p=0.0, seed=seed))
        assert sampled.text() == greedy
    assert ngram_engine.generate("abc", max_tokens=24, sampling=SamplingParams(temperature=1.5, top_p=1.0, seed=1)).text() != greedy


def test_engine_errors_reach_the_user_as_one_line_and_exit_1(tiny_model, tmp_path):
    """Whatever the engine raises on bad input ends as one 'Error:' line and exit 1 from the CLI."""
    from hub_server import assert_one_line_error, gemma_env, run_gemma

    env = gemma_env(tmp_path / "models")
    assert_one_line_error(run_gemma(env, "run", str(tiny_model), "a" * 600, "--ctx", "256", "--threads", "1"), "context holds")
    truncated = tmp_path / "cut.gguf"
    truncated.write_bytes(tiny_model.read_bytes()[:300])
    assert_one_line_error(run_gemma(env, "run", str(truncated), "hi", "--threads", "1"), str(truncated))
    assert issubclass(ContextFullError, GemmaError) and issubclass(IncompatibleModelsError, GemmaError)


@pytest.mark.slow
def test_default_settings_decode_without_crashing(gemma3_path):
    """The AMX crash: our defaults must decode on this machine (run in a child so a segfault shows as -11)."""
    code = textwrap.dedent(
        f"""
        from gemma_cli.engine.generate import Engine, DraftConfig
        from gemma_cli.engine.sampling import SamplingParams
        eng = Engine({str(gemma3_path)!r}, DraftConfig(source="ngram"))
        assert eng.target.cpu_repack is False
        text = eng.generate("The capital of France is", max_tokens=16, sampling=SamplingParams(temperature=0)).text()
        print("OK", len(text))
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env={**__import__("os").environ, "GEMMA_CPU_REPACK": ""})
    assert proc.returncode == 0, f"exit {proc.returncode}: {proc.stderr[-2000:]}"
    assert proc.stdout.startswith("OK")


def _rows_vs_one_token_passes(eng: Engine, rows: int, history: int | None = None) -> float:
    """Largest logit difference between one pass of `rows` tokens and the same tokens one per pass,
    after `history` tokens already in the KV cache (default: a short snippet's)."""
    import numpy as np

    from measure_logit_error import _rows_batched, _rows_one_by_one

    seq = eng.tokenize("def add(a, b):\n    return a + b\n\ndef sub(a, b):\n    return a - b\n")
    if history is not None:  # repeat the snippet (without its BOS) until the history is that long
        body = seq[1:]
        while len(seq) < history + rows + 1:
            seq += body
        seq = seq[: history + rows + 1]
    start = len(seq) - 1 - rows  # seq[start:-1]: the `rows` tokens of the pass
    return float(np.abs(_rows_batched(eng, seq, start, rows) - _rows_one_by_one(eng, seq, start)).max())


@pytest.mark.slow
def test_exact_rows_hold_only_while_the_kv_cache_is_short(gemma3_path):
    """Where the exactness premise ends (README, *How the engine works*, Numerics): llama.cpp's CPU flash attention computes a
    one-token pass over 512 or more KV cells (n_kv is padded to 256, so past 256 tokens) split across the
    threads and merges the partial sums (ops.cpp, use_split_kv_path), which rounds differently from a pass of
    several rows. So from 257 tokens of history on, a 2-row verification pass no longer computes what a
    one-token pass does: greedy speculative output can then part from plain decoding at near-ties, and
    batched serving is not bit-exact either. If this starts to fail, llama.cpp changed the path: re-measure."""
    eng = Engine(gemma3_path, DraftConfig(source="none"), EngineConfig(n_ctx=1024, n_threads=2))
    assert _rows_vs_one_token_passes(eng, 2, history=240) == 0.0  # KV 240-242 cells: below the split path
    assert _rows_vs_one_token_passes(eng, 2, history=300) > 0.01  # KV past 256: the one-token pass is split
    eng.close()


@pytest.mark.slow
def test_default_weights_verify_up_to_seven_rows_exactly(gemma3_path):
    """Why CPU weight repacking stays opt-in: the batch scheduler's exact mode (EXACT_ROWS = 7) and same-seed sampled
    equality need passes of up to 7 rows to compute exactly what one-token passes compute. Without repacking they do;
    repacked weights take rows four at a time and round differently from 4 rows on, so a repacked scheduler shares
    decodes of at most EXACT_ROWS_REPACKED = 3 rows."""
    from gemma_cli.engine.batch import EXACT_ROWS, EXACT_ROWS_REPACKED, BatchScheduler
    from gemma_cli.engine.llama._lib import build_has_amx

    # repacked weights would take the AMX path that crashes (README, Troubleshooting)
    for repack in (False,) if build_has_amx() else (False, True):
        eng = Engine(gemma3_path, DraftConfig(source="none"), EngineConfig(n_ctx=256, n_threads=2, cpu_repack=repack))
        cap = EXACT_ROWS_REPACKED if repack else EXACT_ROWS
        assert _rows_vs_one_token_passes(eng, cap) == 0.0
        if repack:
            assert _rows_vs_one_token_passes(eng, cap + 1) > 0.01
        sched = BatchScheduler(eng, 2)
        assert sched.exact_rows == cap
        sched.close()
        eng.close()
