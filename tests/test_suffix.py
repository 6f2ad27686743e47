"""The suffix trie against brute force, and the suffix drafter's losslessness through the real engine."""

from __future__ import annotations

import random
from collections import Counter
from types import SimpleNamespace

import pytest

from gemma_cli.engine.draft_length import DraftLengthController
from gemma_cli.engine.generate import DraftConfig, Engine, EngineConfig
from gemma_cli.engine.loss_budget import LossBudget
from gemma_cli.engine.sampling import SamplingParams
from gemma_cli.engine.suffix import BEST, CHILDREN, CONT, COUNT, LAST, Follower, SuffixTrie, continuation
from gemma_cli.engine.suffix_drafter import SuffixDrafter
from lossless import (
    check_greedy_lossless,
    check_sampled_coupling,
    chi_square_pvalue,
    exact_continuations,
    sample_outcomes,
)

GREEDY = SamplingParams(temperature=0.0)


# -- the structure -----------------------------------------------------------------------


def _brute_match(tokens: list[int], depth: int) -> tuple[int, int, Counter]:
    """Longest suffix (< depth) ending earlier too: (length, occurrences, continuations)."""
    last = len(tokens) - 1
    for d in range(min(depth - 1, len(tokens)), 0, -1):
        suffix = tokens[-d:]
        ends = [e for e in range(d - 1, last) if tokens[e - d + 1 : e + 1] == suffix]
        if ends:
            return d, len(ends) + 1, Counter(tokens[e + 1] for e in ends)
    return 0, 0, Counter()


def _random_text(rng: random.Random) -> list[int]:
    vocab = rng.choice([2, 3, 5, 30])
    text = [rng.randrange(vocab) for _ in range(rng.randint(1, 160))]
    if len(text) > 20 and rng.random() < 0.5:  # a long copy, as in code edits
        a = rng.randrange(len(text) - 10)
        text += text[a : a + rng.randint(5, 60)]
    return text


def test_trie_matches_brute_force_on_random_strings():
    rng = random.Random(12)
    checked = 0
    for _ in range(400):
        depth = rng.choice([2, 3, 4, 8, 16])
        text = _random_text(rng)
        trie = SuffixTrie(depth)
        cuts = sorted({rng.randint(1, len(text)) for _ in range(4)} | {len(text)})
        for cut in cuts:  # extended in pieces, as the decode loop does
            trie.extend(text[len(trie.tokens) : cut])
            d, node = trie.longest_match()
            bd, count, conts = _brute_match(text[:cut], depth)
            assert d == bd, (text[:cut], depth)
            if d == 0:
                assert node is None
                continue
            children = {trie.tokens[c[LAST]]: c[COUNT] for c in node[CHILDREN].values()}
            assert node[COUNT] == count
            assert children == dict(conts)
            assert node[CONT] == sum(conts.values())
            best = node[BEST]
            assert best[COUNT] == max(conts.values())
            # ties go to the continuation seen most recently
            tied = [c for c in node[CHILDREN].values() if c[COUNT] == best[COUNT]]
            assert best[LAST] == max(c[LAST] for c in tied)
            checked += 1
    assert checked > 300


def test_continuation_copies_the_text_after_the_match_and_runs_into_the_draft():
    trie = SuffixTrie(4)
    text = [1, 2, 3, 4, 5, 6, 7, 8, 9, 1, 2, 3]
    trie.extend(text)
    d, node = trie.longest_match()
    assert d == 3
    toks, feats = continuation(trie, node, d, 8)
    assert toks == [4, 5, 6, 7, 8, 9, 1, 2]  # past the depth it copies the token array
    assert feats[0] == (3, 1, 1) and [f[0] for f in feats] == list(range(3, 11))
    periodic = SuffixTrie(8)
    periodic.extend([7, 1, 2, 1, 2, 1])
    d, node = periodic.longest_match()
    toks, _ = continuation(periodic, node, d, 6)
    assert toks == [2, 1, 2, 1, 2, 1]  # the period goes on into the draft


def test_continuation_prefers_the_most_frequent_then_the_most_recent():
    trie = SuffixTrie(8)
    trie.extend([5, 1, 9, 5, 1, 9, 5, 1, 7, 5, 1])  # after "5 1": 9 twice, 7 once
    d, node = trie.longest_match()
    toks, feats = continuation(trie, node, d, 1)
    assert toks == [9] and feats[0][1:] == (3, 2)
    trie.extend([7, 5, 1])  # now 9 twice, 7 twice: the latest wins
    d, node = trie.longest_match()
    assert continuation(trie, node, d, 1)[0] == [7]


def test_follower_finds_the_longest_match_in_another_text():
    rng = random.Random(5)
    for _ in range(200):
        memory_text = _random_text(rng)
        trie = SuffixTrie(64)
        trie.extend(memory_text)
        trie.end_document()
        query = _random_text(rng)
        if rng.random() < 0.5:
            a = rng.randrange(len(memory_text))
            query += memory_text[a : a + rng.randint(1, 40)]
        follower = Follower(trie)
        follower.feed(query[: len(query) // 2])
        follower.feed(query[len(query) // 2 :])
        best = 0
        for d in range(1, len(query) + 1):
            suffix = query[-d:]
            if any(memory_text[s : s + d] == suffix for s in range(len(memory_text) - d + 1)):
                best = d
        assert follower.length == best
        if best:
            pos = follower.pos
            assert trie.tokens[pos - best + 1 : pos + 1] == query[-best:]


def test_drafter_remembers_earlier_requests():
    drafter = SuffixDrafter()
    story = list(range(100, 160))
    drafter.begin([1, 2, 3] + story)  # request 1: its text goes to memory when request 2 starts elsewhere
    drafter.begin([9, 9] + story[:10])
    toks, _ = drafter.propose([9, 9] + story[:10], 8, None)
    assert toks == story[10:18]
    assert len(drafter.confidences) == 8


GREEDY_SAMPLER = SimpleNamespace(greedy=True)


def test_confidences_rise_while_proposals_come_true():
    rng = random.Random(1)
    text = [rng.randrange(1000) for _ in range(40)]
    history = text + text[:3]  # the text starts to repeat
    drafter = SuffixDrafter()
    drafter.begin(history)
    drafter.propose(history, 8, GREEDY_SAMPLER)
    first_key = drafter._pending[-1][2][0]
    before = drafter.calibrator.p(first_key)
    for i in range(3, 30):  # the target goes on copying, one token per step (nothing drafted)
        history.append(text[i])
        drafter.propose(history, 8, GREEDY_SAMPLER)
    assert drafter.calibrator.p(first_key) > before
    assert drafter.confidences[0] > 0.9 and len(drafter.confidences) == 8


def test_confidences_fall_when_what_followed_a_match_never_comes_again():
    rng = random.Random(2)
    history = [7, rng.randrange(1000, 2000)]
    drafter = SuffixDrafter()
    drafter.begin(history)
    seen = []
    for _ in range(80):  # "7 x1 7 x2 7 x3 ...": after 7 the drafter proposes an old x, never right
        history.append(7)
        toks, _ = drafter.propose(history, 4, GREEDY_SAMPLER)
        if toks:
            seen.append((drafter._pending[-1][2][0], drafter.confidences[0]))
        history.append(rng.randrange(1000, 2000))
        drafter.propose(history, 4, GREEDY_SAMPLER)
    contested = [p for k, p in seen if k[2] == 4]  # agreement bucket 4: the continuations disagree
    assert len(contested) > 10 and len({k for k, _ in seen if k[2] == 4}) == 1
    assert contested[0] > 0.2 and contested[-1] < 0.05
    assert len(seen) < 60  # under 1% for the first token: it stops proposing at all


def test_controller_drafts_only_where_confidence_pays():
    # plain-step units, shaped like a CPU's: 8 and 16 rows cost less than 5 or 9
    curve = [1.0, 2.0, 2.5, 2.9, 4.1, 4.0, 3.8, 3.5, 4.8, 4.7, 4.5, 4.4, 4.35, 4.3, 4.3, 4.3]
    c = DraftLengthController(15)
    c._t_verify.update({b: cost for b, cost in enumerate(curve, start=1)})
    c.budget = LossBudget(start=float("inf"))  # the rate alone decides here: the budget is tested below
    assert c.next_k((0.5,) * 15) == 0
    assert c.next_k((0.99,) * 15) == 15
    assert c.next_k((0.99,) * 7 + (0.05,) * 8) == 7


def test_controller_stops_paying_for_drafts_that_fall_short_and_tries_again_later():
    curve = [1.0, 2.0, 2.5, 2.9, 4.1, 4.0, 3.8, 3.5]
    c = DraftLengthController(7)
    c._t_verify.update({b: cost for b, cost in enumerate(curve, start=1)})
    c.budget = LossBudget(start=float("inf"))
    sure = (0.9,) * 7
    assert c.next_k(sure) == 7
    misses = 0
    while c.next_k(sure) > 0:  # every draft this confident misses at its first token
        c.record(7, 0, 8, 3.5, 0.0, sure)
        misses += 1
        assert misses < 10, "the controller kept paying for drafts that never came true"
    idle = 0
    while c.next_k(sure) == 0:  # plain steps: the shortfall is forgotten
        c.record(0, 0, 1, 1.0, 0.0, None)
        idle += 1
        assert idle < 200, "the controller never drafted again"
    assert idle >= 5
    hits = DraftLengthController(7)
    hits._t_verify.update(c._t_verify)
    hits.budget = LossBudget(start=float("inf"))
    for _ in range(20):  # drafts that come true keep it drafting at full length
        assert hits.next_k(sure) == 7
        hits.record(7, 7, 8, 3.5, 0.0, sure)


CPU_CURVE = [1.0, 1.9, 2.4, 2.9, 3.6, 3.8, 3.9, 4.0, 4.6, 4.7, 4.8, 4.9, 5.0, 5.2, 5.4, 5.6, 5.7]  # 2-core CPU shape


def _run_with_outcomes(c: DraftLengthController, steps: int, accept, per_draft: float = 0.0) -> tuple[int, float, int]:
    """Drive `c` for `steps` steps with confident proposals; `accept(k)` says how many of k drafts came true.

    `per_draft`: what drafting one token costs, in one-token passes.
    Returns (tokens emitted, one-token passes spent, tokens drafted)."""
    sure = (0.95,) * c.k_max
    tokens, cost, drafted = 0, 0.0, 0
    for _ in range(steps):
        k = c.next_k(sure)
        a = accept(k) if k else 0
        c.record(k, a, k + 1, CPU_CURVE[k], k * per_draft, sure if k else None)
        tokens, cost, drafted = tokens + a + 1, cost + CPU_CURVE[k] + k * per_draft, drafted + k
    return tokens, cost, drafted


def test_loss_budget_bounds_what_drafts_that_never_come_true_can_cost():
    c = DraftLengthController(16)
    c._t_verify.update({b: cost for b, cost in enumerate(CPU_CURVE, start=1)})
    tokens, cost, drafted = _run_with_outcomes(c, 400, lambda k: 0)  # confident drafts, every one wrong
    assert drafted > 0  # it did gamble,
    assert cost <= tokens * 1.01 + 2.0 + 1e-6  # never beyond the bound: 2 passes, and 1% per token
    assert c.budget.bank >= -1e-9


def test_loss_budget_counts_what_drafting_itself_costs():
    """A drafter that is slow to propose (a tenth of a pass per token, known from earlier steps) is priced
    into the bound too. (Before its first draft a drafter's time is unknown: it is priced at its prior.)"""
    c = DraftLengthController(16)
    c._t_verify.update({b: cost for b, cost in enumerate(CPU_CURVE, start=1)})
    c._costs.draft_per_token = 0.1
    lowest = c.budget.bank
    drafted = 0
    for _ in range(400):  # step by step: the bank is never overdrawn, not even for a step
        drafted += _run_with_outcomes(c, 1, lambda k: 0, per_draft=0.1)[2]
        lowest = min(lowest, c.budget.bank)
    assert drafted > 0  # it did gamble and lose,
    assert lowest >= -1e-9  # without an overdraft (pricing drafts by their rows alone reached -0.19)


def test_loss_budget_lets_drafts_that_pay_grow_to_full_length():
    c = DraftLengthController(16)
    c._t_verify.update({b: cost for b, cost in enumerate(CPU_CURVE, start=1)})
    sure = (0.95,) * 16
    first = c.next_k(sure)
    assert 0 < first < 16  # the first draft is one the bank can afford to lose
    assert CPU_CURVE[first] - 1 <= LossBudget.START
    tokens, cost, drafted = _run_with_outcomes(c, 30, lambda k: k)  # every draft comes true
    assert c.next_k(sure) == 16
    assert tokens / cost > 2.5  # and the generation runs at the speed of long drafts


# -- through the engine ------------------------------------------------------------------

TINY_PROMPTS = ["abcabcabcab", "hello hello hello hel", "the cat sat on the mat. the cat sat", "x=1; y=2; x=1; y="]


def _engine(path, source, n_ctx=512, **draft):
    return Engine(path, DraftConfig(source=source, **draft), EngineConfig(n_ctx=n_ctx, n_threads=2))


def _flat_costs(engine: Engine, k: int) -> None:
    """Passes priced alike: the adaptive controller then drafts whenever it expects a gain, whatever the machine."""
    engine.costs.seed({b: 1e-3 * (1 + 0.1 * (b - 1)) for b in range(1, k + 2)})


def test_greedy_lossless_tiny_adaptive_and_across_requests(tiny_model):
    plain = _engine(tiny_model, "none")
    spec = _engine(tiny_model, "ngram", tokens=8)
    verdicts, proposed = [], 0
    for _round in range(2):  # the second round drafts from the first round's text too
        for text in TINY_PROMPTS:
            prompt = plain.tokenize(text)
            ref = plain.generate(prompt, max_tokens=48, sampling=GREEDY)
            ref.text()
            spec.reset()
            _flat_costs(spec, 8)
            got = spec.generate(prompt, max_tokens=48, sampling=GREEDY)
            got.text()
            verdicts.append(check_greedy_lossless(plain, prompt, ref.result, got.result))
            proposed += got.result.stats.draft_proposed
    assert isinstance(spec.drafter, SuffixDrafter)
    assert proposed > 0
    near = [v for v in verdicts if v != "equal"]
    assert len(near) <= len(verdicts) // 4, near


def test_a_repeated_request_drafts_from_the_engines_memory(tiny_model):
    """The second identical request finds the first one's output in the drafter's memory of earlier requests."""
    spec = _engine(tiny_model, "ngram", tokens=8)
    prompt = spec.tokenize("x=1; y=2; x=1; y=")
    runs = []
    for _ in range(2):
        spec.reset()
        _flat_costs(spec, 8)  # the engine keeps measured costs across requests: the tiny model's microsecond timings
        g = spec.generate(prompt, max_tokens=48, sampling=GREEDY)  # are noise, and the memory, not timing, is tested
        g.text()
        runs.append(g.result)
    first, second = runs
    assert second.tokens == first.tokens
    assert second.stats.target_passes < first.stats.target_passes / 2
    # mostly right (the controller's lengths still follow the timings it measures during the run: 42/54 seen
    # once in CI, 0.78, when the last draft could still run past max_tokens)
    assert second.stats.draft_accepted >= 0.7 * second.stats.draft_proposed > 0


@pytest.mark.parametrize("max_tokens", [7, 48])
def test_no_draft_runs_past_max_tokens(tiny_model, max_tokens):
    """Rows past the last wanted token would be paid for and thrown away: every verified token is used.

    The second run of a request drafts long, mostly right proposals from the first one's text, so
    without the cap its last step would verify drafts past the end.
    """
    spec = _engine(tiny_model, "ngram", tokens=16)
    prompt = spec.tokenize("x=1; y=2; x=1; y=")
    for _ in range(2):
        spec.reset()
        _flat_costs(spec, 16)
        g = spec.generate(prompt, max_tokens=max_tokens, sampling=GREEDY)
        g.text()
    s = g.result.stats
    assert g.result.stop_reason.value == "length" and len(g.result.tokens) == max_tokens
    assert s.draft_accepted > 0
    assert s.target_passes + s.draft_accepted == max_tokens  # one token per pass, plus its accepted drafts


def test_sampled_same_seed_same_text_adaptive(tiny_model):
    plain = _engine(tiny_model, "none")
    spec = _engine(tiny_model, "ngram", tokens=8)
    accepted = rejected = 0
    for seed in range(5):
        for text in TINY_PROMPTS:
            p = SamplingParams(temperature=0.5, top_k=40, top_p=0.95, seed=seed)
            prompt = plain.tokenize(text)
            ref = plain.generate(prompt, max_tokens=40, sampling=p)
            ref.text()
            _flat_costs(spec, 8)
            got = spec.generate(prompt, max_tokens=40, sampling=p)
            got.text()
            assert check_sampled_coupling(plain, prompt, p, ref.result, got.result) == "equal"
            accepted += got.result.stats.draft_accepted
            rejected += got.result.stats.draft_proposed - got.result.stats.draft_accepted
    assert accepted > 10 and rejected > 5


PROMPT = [1, 4, 5, 6, 4, 5, 6, 4, 5]  # <s> a b c a b c a b: the trie proposes "c a b ..."


def test_sampled_distribution_is_the_targets(small_vocab_model):
    t1 = SamplingParams(temperature=1.0)
    plain = _engine(small_vocab_model, "none", n_ctx=64)
    exact = exact_continuations(plain, PROMPT, 2, t1)
    spec = Engine(small_vocab_model, DraftConfig(source="ngram", tokens=2), EngineConfig(n_ctx=64, n_threads=1))
    spec.costs.seed({1: 1e-3, 2: 1e-3, 3: 1e-3})  # drafting always looks free: every step drafts
    counts = sample_outcomes(spec, PROMPT, 2, t1, 3000)
    stat, p, dof = chi_square_pvalue(counts, exact)
    assert p > 1e-3, (stat, dof)


@pytest.mark.slow
def test_greedy_lossless_gemma3_default_ngram(gemma3_path):
    plain = _engine(gemma3_path, "none", n_ctx=2048)
    spec = _engine(gemma3_path, "ngram", n_ctx=2048, tokens=16)
    code = (
        "Rename the parameter `conn` to `db` in this code. Reply with the full code.\n\n"
        "def add(conn, a, b):\n    cur = conn.cursor()\n    cur.execute('INSERT INTO t VALUES (?, ?)', (a, b))\n"
        "    conn.commit()\n    return cur.lastrowid\n\n\ndef get(conn, key):\n    cur = conn.cursor()\n"
        "    cur.execute('SELECT * FROM t WHERE a = ?', (key,))\n    return cur.fetchone()\n"
    )
    verdicts, proposed = [], 0
    for text in [code, "The quick brown fox jumps over the lazy dog. The quick brown fox", code]:
        prompt = plain.prompt_tokens(text)
        ref = plain.generate(prompt, max_tokens=96, sampling=GREEDY)
        ref.text()
        got = spec.generate(prompt, max_tokens=96, sampling=GREEDY)
        got.text()
        verdicts.append(check_greedy_lossless(plain, prompt, ref.result, got.result))
        proposed += got.result.stats.draft_proposed
    print("gemma3 270M suffix drafter:", verdicts, "proposed", proposed)
    assert proposed > 0
