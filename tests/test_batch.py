"""Several requests decoded together must each produce what they would alone (issue 16)."""

from __future__ import annotations

import dataclasses
import itertools
import random
import threading

import pytest

from gemma_cli.engine.batch import EXACT_ROWS, BatchScheduler, default_num_parallel
from gemma_cli.engine.batch_budget import BatchCosts, Candidate, choose_lengths
from gemma_cli.engine.generate import DraftConfig, Engine, EngineConfig
from gemma_cli.engine.sampling import SamplingParams
from gemma_cli.engine.types import StopReason
from gemma_cli.errors import IncompatibleModelsError, ModelFileError, UsageError
from lossless import check_greedy_lossless, check_sampled_coupling

PROMPTS = [
    "abcabcabcab",
    "hello hello hello hel",
    "the cat sat on the mat. the cat sat",
    "x=1; y=2; x=1; y=",
    "one two three one two three one",
    "zzzz",
    "def f(a):\n    return a\ndef g(b):\n    return",
    "lorem ipsum dolor sit amet, lorem ipsum",
]
GREEDY = SamplingParams()


@pytest.fixture(scope="module")
def plain(tiny_model):
    eng = Engine(tiny_model, DraftConfig(source="none"), EngineConfig(n_ctx=512, n_threads=2))
    yield eng
    eng.close()


def _stop_in_output(plain: Engine, text: str) -> list[str]:
    """A stop string the model's greedy answer to `text` really contains (a few tokens in)."""
    out = plain.generate(plain.tokenize(text), max_tokens=40).text()
    assert len(out) > 14, out
    return [out[10:13]]


def _spec(i: int, drafter_path, plain: Engine) -> dict:
    """Request i: its own prompt, length, sampling and draft source."""
    source = ["none", "ngram", "model", "ngram"][i % 4]
    sampled = i % 3 == 1 and source != "model"  # sampled drafter models are only distribution-equal
    sampling = SamplingParams(temperature=0.8, top_k=[0, 40][i % 2], top_p=[1.0, 0.9][i % 2], seed=100 + i) if sampled else GREEDY
    return dict(
        prompt=PROMPTS[i % len(PROMPTS)],
        max_tokens=24 + 9 * i,
        sampling=sampling,
        stop=_stop_in_output(plain, PROMPTS[i % len(PROMPTS)]) if i == 2 else [],
        draft=DraftConfig(source=source, tokens=1 + i % 6, model_path=drafter_path),
    )


def _check_solo(plain: Engine, spec: dict, got) -> str:
    prompt = plain.tokenize(spec["prompt"])
    ref = plain.generate(prompt, max_tokens=spec["max_tokens"], sampling=spec["sampling"], stop=spec["stop"])
    ref.text()
    assert got.result.stop_reason == ref.result.stop_reason or got.result.tokens != ref.result.tokens
    if spec["sampling"].greedy:
        verdict = check_greedy_lossless(plain, prompt, ref.result, got.result)
    else:
        verdict = check_sampled_coupling(plain, prompt, spec["sampling"], ref.result, got.result)
    if verdict == "equal":
        assert got.result.text == ref.result.text
    return verdict


@pytest.mark.parametrize("n_requests,n_slots", [(4, 4), (8, 8), (8, 3)])
def test_concurrent_requests_equal_their_solo_runs(plain, tiny_drafter, n_requests, n_slots):
    sched = BatchScheduler(plain, n_slots)
    specs = [_spec(i, tiny_drafter, plain) for i in range(n_requests)]
    gens = [sched.submit(plain.tokenize(s["prompt"]), **{k: v for k, v in s.items() if k != "prompt"}) for s in specs]
    widest = 0
    while sched.step():
        widest = max(widest, len(sched.active))
    assert widest == min(n_slots, n_requests)  # they really ran together
    verdicts = [_check_solo(plain, s, g) for s, g in zip(specs, gens, strict=True)]
    near = [v for v in verdicts if v != "equal"]
    assert len(near) <= len(verdicts) // 4, near
    assert any(g.result.stats.draft_accepted for g in gens)
    assert any(g.result.stop_reason is StopReason.STOP for g in gens)
    assert all(p == -1 for p in sched.kv_positions().values())
    sched.close()


def test_requests_read_from_threads_and_joining_midway(plain, tiny_drafter):
    """Each client thread iterates its own request; the last two join while the first two decode."""
    sched = BatchScheduler(plain, 4)
    specs = [_spec(i, tiny_drafter, plain) for i in range(4)]
    gens = [sched.submit(plain.tokenize(s["prompt"]), **{k: v for k, v in s.items() if k != "prompt"}) for s in specs[:2]]
    for _ in range(5):
        sched.step()
    assert all(g.stats.generated_tokens > 0 for g in gens)
    gens += [sched.submit(plain.tokenize(s["prompt"]), **{k: v for k, v in s.items() if k != "prompt"}) for s in specs[2:]]
    texts: dict[int, str] = {}
    threads = [threading.Thread(target=lambda i=i, g=g: texts.__setitem__(i, "".join(p.text for p in g))) for i, g in enumerate(gens)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(texts) == [0, 1, 2, 3]
    for i, (s, g) in enumerate(zip(specs, gens, strict=True)):
        assert texts[i] == g.result.text
        _check_solo(plain, s, g)
    sched.close()


def test_no_slot_drafts_past_its_max_tokens(tiny_model):
    """As in the engine (test_suffix): a slot's last step verifies no rows past its last wanted token.

    The scheduler times its decodes with the engine's clock; a virtual one that ticks once per reading makes
    every decode cost the same, so whether the 7-token slot drafts does not hang on this machine's timing
    (with the wall clock it drafted nothing in about 1 run in 10 on this 2-core machine)."""
    ticks = itertools.count()
    plain = Engine(tiny_model, DraftConfig(source="none"), EngineConfig(n_ctx=512, n_threads=2, clock=lambda: float(next(ticks))))
    sched = BatchScheduler(plain, 3)
    try:
        prompt = plain.tokenize("x=1; y=2; x=1; y=")
        draft = DraftConfig(source="ngram", tokens=16)
        sched.submit(prompt, max_tokens=48, sampling=GREEDY, draft=draft).text()  # the drafter's memory of it
        gens = [sched.submit(prompt, max_tokens=n, sampling=GREEDY, draft=draft) for n in (7, 23, 40)]
        for n, g in zip((7, 23, 40), gens, strict=True):
            g.text()
            s = g.result.stats
            assert len(g.result.tokens) == n and s.draft_accepted > 0
            assert s.target_passes + s.draft_accepted == n
    finally:
        sched.close()
        plain.close()


def test_cancelling_one_slot_leaves_the_others_untouched(plain, tiny_drafter):
    sched = BatchScheduler(plain, 4)
    specs = [_spec(i, tiny_drafter, plain) for i in range(4)]
    gens = [sched.submit(plain.tokenize(s["prompt"]), **{k: v for k, v in s.items() if k != "prompt"}) for s in specs]
    for _ in range(6):
        sched.step()
    victim = gens[3]
    seq = sched.active[3].seq
    victim.cancel()
    sched.step()
    assert victim.result is not None and victim.result.stop_reason is StopReason.CANCELLED
    assert sched.ctx.seq_pos_max(seq) == -1  # its cells are free at once
    assert 0 < victim.result.stats.generated_tokens < specs[3]["max_tokens"]
    sched.run()
    for s, g in list(zip(specs, gens, strict=True))[:3]:
        _check_solo(plain, s, g)
    sched.close()


def test_context_limit_and_stop_string_end_one_slot_alone(plain):
    sched = BatchScheduler(plain, 3)
    long_prompt = plain.tokenize("abcdefghij" * 60)[: plain.n_ctx - 12]
    short = plain.tokenize(PROMPTS[1])
    stopper = plain.tokenize("the cat sat on the mat. the cat sat")
    full = sched.submit(long_prompt, max_tokens=200, draft=DraftConfig(source="ngram", tokens=6))
    other = sched.submit(short, max_tokens=60, draft=DraftConfig(source="ngram", tokens=3))
    stop = _stop_in_output(plain, "the cat sat on the mat. the cat sat")
    stopped = sched.submit(stopper, max_tokens=60, stop=stop, draft=DraftConfig(source="none"))
    sched.run()
    assert full.result.stop_reason is StopReason.CONTEXT
    # the KV holds at most n_ctx; the last token is emitted without needing a cell (as in the engine)
    assert full.stats.prompt_tokens + full.stats.generated_tokens <= plain.n_ctx + 1
    assert sched.ctx.seq_pos_max(0) == -1
    assert stopped.result.stop_reason is StopReason.STOP and stop[0] not in stopped.result.text
    for prompt, g, n, stops in ((long_prompt, full, 200, []), (short, other, 60, []), (stopper, stopped, 60, stop)):
        ref = plain.generate(prompt, max_tokens=n, stop=stops)
        ref.text()
        assert ref.result.stop_reason == g.result.stop_reason
        if g is full:  # where the context runs out depends on how many drafts the last step accepted
            m = min(len(ref.result.tokens), len(g.result.tokens))
            assert m >= 10
            ref.result = dataclasses.replace(ref.result, tokens=ref.result.tokens[:m])
            g = dataclasses.replace(g.result, tokens=g.result.tokens[:m])
            check_greedy_lossless(plain, prompt, ref.result, g)
            continue
        check_greedy_lossless(plain, prompt, ref.result, g.result)
    assert other.result.stop_reason in (StopReason.LENGTH, StopReason.EOS)
    sched.close()


def test_kv_accounting_over_many_joins_leaves_and_rejections(plain):
    """Every active sequence holds exactly its n_past positions; a freed one holds none."""
    rng = random.Random(7)
    sched = BatchScheduler(plain, 3)
    gens = []
    for i in range(20):
        prompt = plain.tokenize(rng.choice(PROMPTS) + rng.choice(["", " a", " b b"]))
        draft = DraftConfig(source="ngram", tokens=8, adaptive=False)  # long fixed drafts: many rejections
        gens.append(sched.submit(prompt, max_tokens=rng.randint(1, 40), draft=draft,
                                 sampling=SamplingParams(temperature=0.7, seed=i) if i % 2 else GREEDY))
    steps = 0
    while sched.step():
        steps += 1
        held = {s.seq: s.n_past for s in sched.active}
        for seq, top in sched.kv_positions().items():
            assert top == held.get(seq, 0) - 1, (seq, top, held)
        if steps == 10:
            gens[-1].cancel()  # still waiting: it must never take a slot
    assert gens[-1].result.stop_reason is StopReason.CANCELLED and gens[-1].stats.target_passes == 0
    proposed = sum(g.stats.draft_proposed for g in gens)
    accepted = sum(g.stats.draft_accepted for g in gens)
    assert proposed > accepted > 0  # there were rejections to roll back
    assert all(v == -1 for v in sched.kv_positions().values())
    sched.close()


def test_shared_prefix_reuses_a_running_slots_cells(plain):
    sched = BatchScheduler(plain, 2)
    doc = "the cat sat on the mat. " * 8
    a = plain.tokenize(doc + "the dog")
    b = plain.tokenize(doc + "a bird")
    first = sched.submit(a, max_tokens=30)
    for _ in range(3):
        sched.step()
    second = sched.submit(b, max_tokens=30)
    sched.run()
    shared = len(plain.tokenize(doc)) - 2
    assert second.stats.prompt_evaluated < len(b) - shared  # most of the prompt came from the first slot's cells
    for prompt, g in ((a, first), (b, second)):
        ref = plain.generate(prompt, max_tokens=30)
        ref.text()
        check_greedy_lossless(plain, prompt, ref.result, g.result)
    sched.close()


def test_budget_gives_rows_to_the_slots_likely_to_use_them():
    costs = BatchCosts()
    for rows, t in {1: 1.0, 2: 1.1, 4: 1.3, 8: 2.0, 12: 3.5, 16: 6.0}.items():
        costs.observe(rows, t)
    copying, guessing = Candidate(0.95, 8), Candidate(0.2, 8)
    ks = choose_lengths([copying, guessing], costs)
    assert ks[0] >= 4 and ks[1] <= 1 and ks[0] > ks[1]
    flat = BatchCosts()
    for rows in range(1, 40):
        flat.observe(rows, 1.0 + 0.01 * rows)
    assert choose_lengths([guessing] * 4, flat) != [0] * 4  # cheap rows: even poor drafts pay
    steep = BatchCosts()
    for rows in range(1, 40):
        steep.observe(rows, float(rows))
    assert choose_lengths([Candidate(0.6, 8)] * 4, steep) == [0] * 4  # each row costs a whole step: none pays


def test_batch_costs_price_every_size_at_the_machines_pace():
    """A slower machine seen on single-row decodes makes wide batches dearer too (adaptive.observe_pass)."""
    costs = BatchCosts.from_curve({1: 0.010, 8: 0.040})
    for _ in range(40):
        costs.observe(1, 0.012)
    assert costs.time(8) == pytest.approx(0.048, rel=0.01) and costs.time(1) == pytest.approx(0.012, rel=0.01)


def test_refusals_are_one_line_errors(plain, monkeypatch, tmp_path):
    sched = BatchScheduler(plain, 2)
    with pytest.raises(ModelFileError, match="not found"):  # at submit, not in the batch's next step
        sched.submit([1, 2, 3], draft=DraftConfig(source="mtp", model_path=tmp_path / "x.gguf"))
    with pytest.raises(IncompatibleModelsError, match="not a Gemma 4 MTP assistant"):
        sched.submit([1, 2, 3], draft=DraftConfig(source="mtp", model_path=plain.target.path))
    assert not sched.waiting
    with pytest.raises(UsageError, match="empty"):
        sched.submit([])
    sched.close()
    monkeypatch.setenv("GEMMA_NUM_PARALLEL", "lots")
    with pytest.raises(UsageError, match="GEMMA_NUM_PARALLEL"):
        default_num_parallel()
    monkeypatch.setenv("GEMMA_NUM_PARALLEL", "6")
    assert default_num_parallel() == 6
    monkeypatch.delenv("GEMMA_NUM_PARALLEL")
    assert default_num_parallel() == 4 and default_num_parallel(gpu=True) == 8


def test_clients_on_threads_cancel_only_their_own(plain):
    """The server hook: each job gets a BatchClient, generates and cancels through it like an Engine."""
    sched = BatchScheduler(plain, 3)
    texts = ["abcabcabcab", "hello hello hello hel", "x=1; y=2; x=1; y="]
    results: dict[int, object] = {}

    def job(i: int) -> None:
        client = sched.client()
        # Job 1 asks for far more than the others: their threads stop driving the batch once
        # their own 50 tokens are out, so job 1 cannot finish before its own thread cancels it.
        gen = client.generate(client.prompt_tokens(texts[i], raw=True), max_tokens=300 if i == 1 else 50)
        for n, _ in enumerate(gen):
            if i == 1 and n == 3:
                client.cancel()
        results[i] = gen.result

    threads = [threading.Thread(target=job, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results[1].stop_reason is StopReason.CANCELLED
    assert len(results[1].tokens) < 300
    for i in (0, 2):
        prompt = plain.prompt_tokens(texts[i], raw=True)
        ref = plain.generate(prompt, max_tokens=50)
        ref.text()
        check_greedy_lossless(plain, prompt, ref.result, results[i])
    assert all(v == -1 for v in sched.kv_positions().values())
    sched.close()


@pytest.mark.slow
def test_gemma3_four_concurrent_requests_equal_solo(gemma3_path):
    plain = Engine(gemma3_path, DraftConfig(source="none"), EngineConfig(n_ctx=1024, n_threads=2))
    sched = BatchScheduler(plain, 4)
    texts = [
        "def add(a, b):\n    return a + b\n\ndef sub(a, b):\n    return a - b\n\ndef mul(a, b):\n",
        "The quick brown fox jumps over the lazy dog. The quick brown fox",
        "List the days of the week:",
        "Once upon a time",
    ]
    prompts = [plain.prompt_tokens(t, raw=True) for t in texts]
    drafts = [DraftConfig(source="ngram", tokens=4), DraftConfig(source="ngram", tokens=8), DraftConfig(source="none"),
              DraftConfig(source="ngram", tokens=2)]
    gens = [sched.submit(p, max_tokens=40, draft=d) for p, d in zip(prompts, drafts, strict=True)]
    sched.run()
    verdicts = []
    for p, g in zip(prompts, gens, strict=True):
        ref = plain.generate(p, max_tokens=40)
        ref.text()
        verdicts.append(check_greedy_lossless(plain, p, ref.result, g.result))
    # Each verdict passed the near-tie rule (a real difference raises). Batched rows go through llama.cpp's
    # multi-row kernels, which round differently from one-row decodes, so 270M near-ties do occur here.
    print(verdicts)
    assert sum(g.stats.draft_accepted for g in gens) > 0
    sched.close()
    plain.close()


def test_long_prompt_is_prefilled_in_chunks_while_others_decode(plain):
    sched = BatchScheduler(plain, 2, prefill_chunk=32)
    short = sched.submit(plain.tokenize(PROMPTS[0]), max_tokens=120)
    sched.step()
    long_prompt = plain.tokenize("the cat sat on the mat and looked around. " * 8)
    assert len(long_prompt) > 300
    late = sched.submit(long_prompt, max_tokens=20, draft=DraftConfig(source="ngram", tokens=4))
    before = short.stats.generated_tokens
    steps = 0
    while late.stats.target_passes == 0:
        sched.step()
        steps += 1
    assert steps >= len(long_prompt) // 32  # the prompt went in 32-token pieces ...
    assert short.stats.generated_tokens - before >= steps - 1  # ... and the running slot decoded at every step
    sched.run()
    for prompt, g, n in ((long_prompt, late, 20), (plain.tokenize(PROMPTS[0]), short, 120)):
        ref = plain.generate(prompt, max_tokens=n)
        ref.text()
        check_greedy_lossless(plain, prompt, ref.result, g.result)
    sched.close()


def test_sampled_outputs_in_batches_have_the_target_distribution(small_vocab_model, small_vocab_drafter):
    """Chi-square: 8 concurrent sampled requests per batch (drafter model and n-gram mixed) vs the exact distribution."""
    from collections import Counter

    from lossless import chi_square_pvalue, exact_continuations, outcome

    eng = Engine(small_vocab_model, DraftConfig(source="none"), EngineConfig(n_ctx=64, n_threads=1))
    prompt = [1, 4, 5, 6, 4, 5, 6, 4, 5]
    t1 = SamplingParams(temperature=1.0)
    exact = exact_continuations(eng, prompt, 2, t1)
    sched = BatchScheduler(eng, 8)
    counts = {"model": Counter(), "ngram": Counter()}
    seed = 0
    for _ in range(250):
        batch = []
        for j in range(8):
            source = "model" if j % 2 else "ngram"
            draft = DraftConfig(source=source, tokens=2, model_path=small_vocab_drafter, adaptive=False)
            batch.append((source, sched.submit(prompt, max_tokens=2, sampling=SamplingParams(1.0, seed=seed), draft=draft)))
            seed += 1
        sched.run()
        for source, g in batch:
            counts[source][outcome(g.result)] += 1
    for source, c in counts.items():
        stat, p, dof = chi_square_pvalue(c, exact)
        assert p > 1e-3, (source, stat, dof)
    sched.close()
    eng.close()


def test_split_groups_follows_the_measured_curve():
    from gemma_cli.engine.batch_budget import split_groups

    bumpy = BatchCosts()  # measured on a 2-core AVX2 CPU, Gemma 3 270M: 2 rows cost 2.8 single rows
    for rows, t in {1: 1.0, 2: 2.8, 3: 3.2, 4: 3.5, 8: 5.4}.items():
        bumpy.observe(rows, t)
    assert sorted(map(sorted, split_groups([1, 1], bumpy))) == [[0], [1]]
    assert split_groups([1, 1, 1, 1], bumpy) == [[0, 1, 2, 3]]
    smooth = BatchCosts()
    for rows in range(1, 20):
        smooth.observe(rows, 1.0 + 0.3 * rows)
    assert split_groups([1, 3, 2], smooth) == [[0, 1, 2]]
    assert split_groups([], smooth) == []


def test_fast_mode_shares_one_pool_and_stays_within_near_ties(plain, tiny_drafter):
    sched = BatchScheduler(plain, 4, exact=False)
    assert sched.ctx.kv_unified and sched.exact_rows == EXACT_ROWS  # the row cap holds in both modes (docs/batching.md)
    specs = [_spec(i, tiny_drafter, plain) for i in range(4)]
    gens = [sched.submit(plain.tokenize(s["prompt"]), **{k: v for k, v in s.items() if k != "prompt"}) for s in specs]
    sched.run()
    for s, g in zip(specs, gens, strict=True):
        _check_solo(plain, s, g)
    assert all(p == -1 for p in sched.kv_positions().values())
    sched.close()


def test_rows_past_the_shared_decode_cap_are_priced_as_the_decodes_they_cost():
    """The measured 2-core curve (x one-row decode): with EXACT_ROWS = 7, four copying slots fill one
    7-row decode; priced as one big decode they would take 16 rows, i.e. four separate 4-row decodes."""
    from gemma_cli.engine.batch_budget import grouped_time

    costs = BatchCosts.from_curve({1: 1.0, 2: 1.9, 4: 2.8, 7: 3.7, 8: 4.1, 16: 7.0})
    copying = [Candidate(0.8, 3)] * 4
    uncapped = choose_lengths(copying, costs)
    capped = choose_lengths(copying, costs, cap=EXACT_ROWS)
    assert sum(k + 1 for k in uncapped) > EXACT_ROWS
    assert sum(k + 1 for k in capped) <= EXACT_ROWS and max(capped) > 0

    def rate(ks):  # expected tokens per unit of time, decoded as the scheduler really groups them
        return sum((1 - 0.8 ** (k + 1)) / 0.2 for k in ks) / grouped_time([k + 1 for k in ks], costs, EXACT_ROWS)

    assert rate(capped) > rate(uncapped) and rate(capped) > rate([0] * 4)


def test_the_budget_reads_an_ngram_drafters_per_token_confidences():
    """Slots whose drafter gives per-token confidences (the n-gram drafter) are judged by them: the same
    prior acceptance, but the sure proposal gets the rows and the doubtful one none."""
    costs = BatchCosts.from_curve({1: 1.0, 2: 1.3, 4: 1.9, 7: 2.8})
    sure = Candidate(2 / 3, 4, 0.0, (0.97, 0.97, 0.96, 0.95))
    doubtful = Candidate(2 / 3, 4, 0.0, (0.15, 0.5, 0.5, 0.5))
    assert choose_lengths([sure, doubtful], costs, cap=EXACT_ROWS) == [4, 0]
    assert choose_lengths([Candidate(2 / 3, 4), Candidate(2 / 3, 4)], costs, cap=EXACT_ROWS)[1] > 0  # without: alike


def test_batched_ngram_slots_keep_no_per_proposal_records(plain):
    """The n-gram drafter's key is its tuple of confidences, new at every step: the slot must not file
    acceptance records under it (they grew by one entry per step and were never read again)."""
    sched = BatchScheduler(plain, 2, exact=False)
    gens = [sched.submit(plain.tokenize(t), max_tokens=60, draft=DraftConfig(source="ngram", tokens=6)) for t in PROMPTS[:2]]
    slots = [g._slot for g in gens]
    sched.run()
    assert sum(g.result.stats.draft_proposed for g in gens) > 0
    assert all(not s.acceptance._by_key for s in slots)
    sched.close()


@pytest.mark.slow
def test_gemma3_repacked_weights_keep_concurrent_requests_exact(gemma3_path):
    """GEMMA_CPU_REPACK=1: shared decodes stay within EXACT_ROWS_REPACKED rows, so four concurrent plain requests are
    token-for-token their solo runs (4 one-row slots in one decode would round differently)."""
    from gemma_cli.engine.llama._lib import build_has_amx

    if build_has_amx():
        pytest.skip("repacked weights take the AMX path that crashes on some CPUs")
    eng = Engine(gemma3_path, DraftConfig(source="none"), EngineConfig(n_ctx=512, n_threads=2, cpu_repack=True))
    sched = BatchScheduler(eng, 4)
    texts = ["The quick brown fox", "List the days of the week:", "Once upon a time", "def mul(a, b):\n"]
    prompts = [eng.prompt_tokens(t, raw=True) for t in texts]
    gens = [sched.submit(p, max_tokens=24) for p in prompts]
    sched.run()
    for p, g in zip(prompts, gens, strict=True):
        ref = eng.generate(p, max_tokens=24)
        ref.text()
        assert g.result.tokens == ref.result.tokens
    sched.close()
    eng.close()
