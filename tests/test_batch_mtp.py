"""Gemma 4 MTP drafting for several slots at once (issue 16): one assistant decode per draft step for every slot.

Real llama.cpp on the synthetic gemma4 + gemma4-assistant pair (tests/gemma4_factory.py):
the assistant context is linked to the scheduler's multi-sequence context and reads
each slot's KV stream; outputs must equal each request's solo run.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

import pytest

from gemma4_factory import TINY, write_gemma4_pair
from gemma_cli.engine.batch import BatchScheduler
from gemma_cli.engine.generate import DraftConfig, Engine, EngineConfig
from gemma_cli.engine.sampling import SamplingParams
from lossless import check_greedy_lossless, chi_square_pvalue, exact_continuations, outcome

GREEDY = SamplingParams()
PROMPTS = ["Hello world", "abcabc", "The quick brown fox", "x=1; y=2;", "zz top", "one two one two", "hello", "qq"]


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    return write_gemma4_pair(tmp_path_factory.mktemp("g4b"))


@pytest.fixture(scope="module")
def plain(pair):
    eng = Engine(pair[0], DraftConfig(source="none"), EngineConfig(n_ctx=512, n_threads=1))
    yield eng
    eng.close()


def _mtp(assistant, k: int, adaptive: bool = False) -> DraftConfig:
    return DraftConfig(source="mtp", tokens=k, model_path=assistant, adaptive=adaptive)


@pytest.mark.parametrize("exact", [True, False])
def test_mtp_slots_draft_together_and_equal_their_solo_runs(pair, plain, exact):
    target, assistant = pair
    sched = BatchScheduler(plain, 4, exact=exact)
    drafts = [_mtp(assistant, k) for k in (1, 2, 3, 4)] + [_mtp(assistant, 3, adaptive=True), DraftConfig(source="none")]
    gens = []
    for i, text in enumerate(PROMPTS[:6]):
        prompt = plain.tokenize(text)
        gens.append((prompt, 20 + 5 * i, sched.submit(prompt, max_tokens=20 + 5 * i, draft=drafts[i])))
    steps = 0
    while sched.step():
        steps += 1
    proposed = accepted = 0
    for prompt, n, g in gens:
        ref = plain.generate(prompt, max_tokens=n, sampling=GREEDY)
        ref.text()
        verdict = check_greedy_lossless(plain, prompt, ref.result, g.result)
        assert verdict == "equal" or verdict.startswith("near-tie"), verdict
        proposed += g.result.stats.draft_proposed
        accepted += g.result.stats.draft_accepted
    assert proposed > 40 and accepted > proposed // 2  # MTP drafted for the slots, and well (planted structure)
    group = next(iter(sched.drafters.mtp.values()))
    assert group.mtp is not None and group.mtp.rows == 4
    assert all(pos == -1 for pos in sched.kv_positions().values())  # every slot's cells freed
    sched.close()


def test_mtp_slots_draft_in_one_decode_per_step(pair, plain):
    """Four slots drafting 3 tokens each: 3 assistant decodes per step, not 12."""
    from gemma_cli.engine.llama import _lib

    target, assistant = pair
    sched = BatchScheduler(plain, 4, exact=False)
    gens = [sched.submit(plain.tokenize(t), max_tokens=16, draft=_mtp(assistant, 3)) for t in PROMPTS[:4]]
    for _ in range(3):  # prompts in, first verify passes give every slot its hidden row
        sched.step()
    group = next(iter(sched.drafters.mtp.values()))
    calls: list[int] = []
    step_rows = group.mtp.step_rows

    def counting(tokens, positions, seqs):
        calls.append(len(tokens))
        return step_rows(tokens, positions, seqs)

    group.mtp.step_rows = counting
    sched.step()
    assert calls == [4, 4, 4], calls
    sched.run()
    assert all(len(g.result.tokens) == 16 for g in gens)
    assert _lib is not None
    sched.close()


@pytest.mark.parametrize("exact", [True, False])
def test_each_slot_drafts_from_its_own_hidden_row_and_kv(pair, plain, exact):
    """A slot's first draft logits equal the solo MTP drafter's at the same state: the batched
    assistant decode reads that slot's hidden row, position and KV stream, not another's."""
    target, assistant = pair
    prompts = [plain.tokenize(t) for t in PROMPTS[:4]]
    solo = Engine(target, _mtp(assistant, 1), EngineConfig(n_ctx=512, n_threads=1))
    want = []
    for prompt in prompts:
        rec: list = []
        step = solo.drafter.mtp.step
        solo.drafter.mtp.step = lambda tok, pos, rec=rec, step=step: rec.append(step(tok, pos).copy()) or rec[-1]
        solo.generate(prompt, max_tokens=3, sampling=GREEDY).text()
        solo.drafter.mtp.step = step
        want.append(rec[0])
    solo.close()
    sched = BatchScheduler(plain, 4, exact=exact)
    gens = [sched.submit(p, max_tokens=3, draft=_mtp(assistant, 1)) for p in prompts]
    sched.step()  # admits all four (creating the assistant context) and evaluates their prompts
    group = next(iter(sched.drafters.mtp.values()))
    first: dict[int, object] = {}
    step_rows = group.mtp.step_rows

    def recording(tokens, positions, seqs):
        logits = step_rows(tokens, positions, seqs)
        for row, seq in enumerate(seqs):
            first.setdefault(seq, logits[row].copy())
        return logits

    group.mtp.step_rows = recording
    sched.run()
    assert len(first) == 4
    for g, ref in zip(gens, want, strict=True):
        got = first[g._slot.seq]
        assert float(abs(got - ref).max()) < 1e-3 * max(1.0, float(abs(ref).max()))
    sched.close()


def test_sampled_mtp_slots_have_the_target_distribution(tmp_path):
    """Chi-square over 3-token continuations: 4 sampled MTP slots per batch vs the target's exact distribution
    (the soft 12-token pair of test_mtp.py: drafts often rejected, so rejection sampling decides)."""
    target, assistant = write_gemma4_pair(tmp_path, replace(TINY, n_vocab=12, sharpness=3.0, noise=0.8, seed=7))
    eng = Engine(target, DraftConfig(source="none"), EngineConfig(n_ctx=64, n_threads=1))
    prompt = [1, 5, 6, 7, 8]
    exact = exact_continuations(eng, prompt, 3, SamplingParams(temperature=1.0))
    sched = BatchScheduler(eng, 4, exact=False)
    counts: Counter = Counter()
    seed = 0
    for _ in range(400):
        batch = []
        for j in range(4):
            batch.append(sched.submit(prompt, max_tokens=3, sampling=SamplingParams(1.0, seed=seed), draft=_mtp(assistant, 1 + j % 2)))
            seed += 1
        sched.run()
        for g in batch:
            counts[outcome(g.result)] += 1
    stat, p, dof = chi_square_pvalue(counts, exact)
    assert dof >= 8
    assert p > 1e-3, (stat, dof)
    sched.close()
    eng.close()


@pytest.mark.parametrize("exact", [True, False])
def test_a_seeded_sampled_mtp_slot_gets_its_text_from_the_engine_alone(pair, plain, exact):
    """Regression (a hostile-user sweep of `gemma serve`): a seeded sampled MTP request gave another text batched
    than alone, namely plain decoding's. Its random stream follows its draft lengths (rejection sampling draws
    from the assistant's distributions), and alone it runs on the engine, whose controller probes a first
    draft at step 8, while a slot chose k by a rule of its own that priced this assistant (0.2 of a target
    pass) out and probed only every 16 steps: 16 tokens batched were 16 plain tokens. A slot now uses the
    engine's controller for such a request, so it drafts the same lengths and gets the same text."""
    target, assistant = pair
    draft = _mtp(assistant, 4, adaptive=True)
    solo = Engine(target, draft, EngineConfig(n_ctx=512, n_threads=1))  # what `gemma serve` runs a lone request on
    sched = BatchScheduler(solo, 4, exact=exact)  # the engine's own assistant: linked now, so no MTP slot waits
    none = DraftConfig(source="none")
    for seed in range(3):
        sampling = SamplingParams(temperature=1.0, seed=seed)
        prompt = plain.tokenize(PROMPTS[seed])
        alone = solo.generate(prompt, max_tokens=16, sampling=sampling)
        alone.text()
        lone_plain = plain.generate(prompt, max_tokens=16, sampling=sampling)
        lone_plain.text()
        assert alone.result.stats.draft_proposed > 0 and alone.result.tokens != lone_plain.result.tokens  # drafting matters
        others = [sched.submit(plain.tokenize(t), max_tokens=24, sampling=s, draft=d)  # running when it joins
                  for t, s, d in [(PROMPTS[4], GREEDY, none), (PROMPTS[5], SamplingParams(0.8, seed=9), draft)]]
        sched.step()
        batched = sched.submit(prompt, max_tokens=16, sampling=sampling, draft=draft)
        sched.step()
        assert len(sched.active) == 3  # it joined the two running slots
        sched.run()
        assert all(g.result.stats.generated_tokens for g in others)
        assert batched.result.stats.draft_proposed == alone.result.stats.draft_proposed, seed
        assert batched.result.tokens == alone.result.tokens, seed
    sched.close()
    solo.close()


@pytest.mark.parametrize("moved", [False, True])
def test_prompts_joining_a_slot_past_its_sliding_window_equal_their_solo_runs(pair, plain, moved):
    """Regression (found through `gemma serve`): a prompt sharing the chat template's first tokens with a
    running slot copied them (`llama_memory_seq_cp`); once that slot was past its sliding window (16 here),
    llama.cpp had handed some of those cells to other sequences' tokens, so the copy gave wrong logits
    (first tokens 0.2-0.75 below the top). Such slots are no longer copy sources."""
    none = DraftConfig(source="none")
    texts = PROMPTS[:4]
    refs = {}
    for text in texts:
        g = plain.generate(plain.prompt_tokens(text), max_tokens=20, sampling=GREEDY)
        g.text()
        refs[text] = g.result.tokens
    sched = BatchScheduler(plain, 4, exact=False)
    if moved:  # started on the engine, then moved in with its cells (as `gemma serve` does)
        gen = plain.generate(plain.prompt_tokens(texts[0]), max_tokens=20, sampling=GREEDY)
        next(gen)
        first = sched.adopt(gen.detach(), none)
    else:
        first = sched.submit(plain.prompt_tokens(texts[0]), max_tokens=20, draft=none)
    for _ in range(4):
        sched.step()
    assert sched.active[0].n_past > plain.target.n_swa  # the first slot is past its window
    others = {t: sched.submit(plain.prompt_tokens(t), max_tokens=20, draft=none) for t in texts[1:]}
    sched.run()
    assert first.result.tokens == refs[texts[0]]
    assert {t: g.result.tokens for t, g in others.items()} == {t: refs[t] for t in texts[1:]}
    sched.close()


def test_an_mtp_request_waits_until_its_assistant_can_be_linked(pair, plain):
    """A scheduler started without an assistant links one only while no slot holds cells (linking spoils
    the cells already there): an MTP request arriving mid-batch waits for the running slot to finish,
    and both outputs equal their solo runs."""
    target, assistant = pair
    sched = BatchScheduler(plain, 4, exact=False)
    texts = PROMPTS[:2]
    refs = []
    for text in texts:
        g = plain.generate(plain.tokenize(text), max_tokens=24, sampling=GREEDY)
        g.text()
        refs.append(g.result.tokens)
    running = sched.submit(plain.tokenize(texts[0]), max_tokens=24, draft=DraftConfig(source="none"))
    sched.step()
    late = sched.submit(plain.tokenize(texts[1]), max_tokens=24, draft=_mtp(assistant, 3))
    sched.step()
    assert not sched.drafters.mtp and len(sched.active) == 1 and sched.waiting  # deferred, not linked under a running slot
    sched.run()
    assert running.result.tokens == refs[0] and late.result.tokens == refs[1]
    assert sched.drafters.mtp and late.result.stats.draft_proposed > 0
    sched.close()


def test_serve_batches_concurrent_mtp_requests(pair, tmp_path):
    """Through `gemma serve` and the official openai client: four concurrent MTP requests share
    batches (the metric counts them), draft with the assistant, and each gets its solo text."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    import openai

    from gemma_cli.registry.create import create
    from gemma_cli.store.layout import Layout
    from serve_helpers import ServerProcess, batched_total

    target, assistant = pair
    models = tmp_path / "models"
    create("g4", str(target), str(assistant), layout=Layout(models))
    prompts = ["Hello world", "abcabc", "The quick brown fox", "zz top"]

    with ServerProcess(models, "--threads", "1", GEMMA_NUM_PARALLEL="4") as srv:
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0, timeout=60)
        start = threading.Barrier(4)

        def ask(prompt: str, together: bool) -> tuple[str, dict]:
            if together:
                start.wait()
            r = client.completions.create(model="g4", prompt=prompt, max_tokens=60, temperature=0)
            return r.choices[0].text, (r.model_extra or {})["x_gemma"]

        solo = [ask(p, False) for p in prompts]
        before = batched_total(srv.url, "g4:latest")
        with ThreadPoolExecutor(4) as pool:
            together = list(pool.map(lambda p: ask(p, True), prompts))
        assert batched_total(srv.url, "g4:latest") - before >= 3
    assert [t for t, _ in together] == [t for t, _ in solo]
    stats = [x for _, x in together]
    assert all(x["draft_source"] == "mtp" for x in stats)
    # the tiny target's pass costs about what an assistant row does, so the budget drafts little; each still drafts
    assert all(x["draft_proposed"] > 0 for x in stats) and sum(x["draft_accepted"] for x in stats) > 0, stats


def test_serve_gives_a_seeded_sampled_mtp_request_its_solo_text_when_batched(pair, tmp_path):
    """The hostile-user sweep's report, through `gemma serve` (fast mode) and the official openai client: a
    seeded sampled MTP request that joins a running request (so it takes a batch slot, not the engine) gets
    the text it gets alone (on the engine), not plain decoding's (see the in-process test above)."""
    import threading

    import openai

    from gemma_cli.registry.create import create
    from gemma_cli.store.layout import Layout
    from serve_helpers import ServerProcess, batched_total, hold_stream

    target, assistant = pair
    models = tmp_path / "models"
    create("g4", str(target), str(assistant), layout=Layout(models))
    prompts = ["Hello world", "abcabc", "The quick brown fox"]

    with ServerProcess(models, "--threads", "1", GEMMA_NUM_PARALLEL="4") as srv:
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0, timeout=60)

        def ask(i: int, draft: str) -> tuple[str, int]:
            r = client.completions.create(model="g4", prompt=prompts[i], max_tokens=16, temperature=1.0, seed=i,
                                          extra_body={"draft": draft})
            return r.choices[0].text, (r.model_extra or {})["x_gemma"]["draft_proposed"]

        solo = [ask(i, "mtp") for i in range(len(prompts))]  # alone: on the engine
        plain = [ask(i, "none")[0] for i in range(len(prompts))]
        assert [t for t, _ in solo] != plain and all(n > 0 for _, n in solo)  # drafting changes these seeded texts
        stop, seen = threading.Event(), threading.Event()

        def holder() -> None:  # a long request running on the model while the others arrive
            # (an MTP one: the scheduler then links the engine's assistant when it is created, so no MTP slot waits
            # for the holder to end; with a plain holder the first MTP request may wait until no slot holds cells)
            hold_stream(srv.url, {"model": "g4", "prompt": "zz top",
                                  "options": {"temperature": 0, "draft": "mtp", "num_predict": 4000}}, seen, stop)

        before = batched_total(srv.url, "g4:latest")
        thread = threading.Thread(target=holder, daemon=True)
        thread.start()
        assert seen.wait(30)
        try:
            together = [ask(i, "mtp") for i in range(len(prompts))]
            assert batched_total(srv.url, "g4:latest") - before >= len(prompts)  # each took a batch slot next to the holder
        finally:
            stop.set()
            thread.join(10)
    assert together == solo
