"""The n-gram source: suffix-trie proposals with calibrated per-token confidences.

Each step the drafter proposes the most frequent continuation of the longest
earlier match (`suffix.SuffixTrie`) over this request's text, or over text
earlier requests of the same engine produced (a second trie, `memory`) when
that match is longer. Every proposed token carries a confidence: the
probability that the target agrees with it given that it agreed with the ones
before. `DraftLengthController` turns those into a draft length with the
measured verification costs.

Confidences are learnt online, and from every step, drafted or not: the
drafter sees in the next history what the target actually produced, and
scores its earlier proposals against it token by token. So a drafter that
stopped drafting keeps learning (no blind probes), and the estimates do not
depend on what the controller chose. Outcomes depend only on the text, never
on timing: the same seed still gives the same proposals.
"""

from __future__ import annotations

import math
from typing import Sequence

from gemma_cli.engine.drafters import NoDrafter
from gemma_cli.engine.suffix import CHILDREN, CONT, COUNT, Follower, SuffixTrie, continuation

DEPTH = 16  # longest context the trie tracks (longer matches are copied, not counted)
MEMORY_TOKENS = 32768  # text kept from earlier requests; halved (oldest dropped) when full
REALISED_DECAY = 0.95  # per step: how this text's proposals came true against their expected runs, recently
REALISED_PRIOR = 5.0  # tokens, on both sides: a ratio of 1 until a few proposed tokens are scored
MIN_RUN = 0.01  # a proposal ends where the chance that the target agrees up to there falls below this
PRIOR_WEIGHT = 2.0  # pseudo-observations behind each bucket's prior

_CTX_EDGES = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32)


def _bucket_of(d: int) -> int:
    for b, edge in enumerate(_CTX_EDGES):
        if d <= edge:
            return b
    return len(_CTX_EDGES)


_BUCKETS = tuple(_bucket_of(d) for d in range(_CTX_EDGES[-1] + 1))


def _ctx_bucket(d: int) -> int:
    return _BUCKETS[d] if d <= _CTX_EDGES[-1] else len(_CTX_EDGES)


def _agreement(n: int, c: int) -> int:
    """0: one earlier occurrence; 1: two, unanimous; 2: three or more, unanimous; 3: a majority; 4: contested."""
    if n <= 1:
        return 0
    if c == n:
        return 1 if n == 2 else 2
    return 3 if 2 * c > n else 4


Key = tuple  # (source, context bucket, agreement, streak bucket, greedy, short-context agreement)


def streak_bucket(run: int) -> int:
    """0, 1, 2-3, 4-7, 8+ tokens the drafter has just predicted in a row."""
    return 0 if run <= 0 else 1 if run == 1 else 2 if run <= 3 else 3 if run <= 7 else 4


def short_agreement(n: int, c: int) -> int:
    """How the last two tokens alone vote for the token: 0 mostly for, 1 split, 2 mostly against, 3 unseen."""
    if n < 2:
        return 3
    if 4 * c >= 3 * n:
        return 0
    return 1 if 5 * c >= 2 * n else 2


def feature_key(source: int, d: int, n: int, c: int, streak: int, greedy: int, short: int = 3) -> Key:
    """The calibration bucket of one proposed token.

    source: 0 this request, 1 an earlier one; d: context length matched;
    n, c: the context's continuations and how many agree with the token;
    streak: `streak_bucket` of the tokens up to the last emitted one that an
    earlier proposal predicted in a row (copying, or not); greedy: the target
    decodes greedily (sampling accepts far fewer drafts); short: `short_agreement`
    (a long match seen once says little when what follows its last two tokens varies).
    """
    return (source, _ctx_bucket(d), _agreement(n, c), streak, greedy, short)


N_FEATURES = 1 + len(_CTX_EDGES) + 4 + 4 + 3 + 3


def features(key: Key) -> list[float]:
    """The key as the logistic prior's inputs: bias, one-hot buckets, flags."""
    source, ctx, agree, streak, greedy, short = key
    x = [1.0] + [0.0] * (N_FEATURES - 1)
    if ctx:
        x[ctx] = 1.0
    base = 1 + len(_CTX_EDGES) - 1
    if agree:
        x[base + agree] = 1.0
    base += 4
    if streak:
        x[base + streak] = 1.0
    base += 4
    x[base + 1] = float(greedy)
    x[base + 2] = float(source)
    x[base + 3] = float(streak > 0 and greedy)
    base += 3
    if short:
        x[base + short] = 1.0
    return x


# Fitted by `benchmarks/suffix_replay.py fit` on the tuning outputs (never the validation set), one model
# per decoding mode: sampling accepts a deterministic draft far less often, and not uniformly less.
PRIOR_WEIGHTS_SAMPLED = (  # bias, context 1-10, agreement 1-4, streak 1-4, greedy, memory, streak&greedy, short 1-3
    0.781, -0.034, 0.445, 0.728, 0.922, 1.802, 2.207, 2.122, 1.944, 1.516,
    0.000, 0.090, 1.467, -0.558, -1.265, 0.128, 0.070, -0.006, 1.023, 0.000,
    0.000, 0.000, -1.015, -1.723, -1.171,
)
PRIOR_WEIGHTS_GREEDY = (  # bias, context 1-10, agreement 1-4, streak 1-4, greedy, memory, streak&greedy, short 1-3
    0.923, -0.310, 0.256, -0.157, 0.609, 1.097, 1.124, 1.164, 1.565, 0.592,
    0.000, -0.091, 1.130, -0.887, -1.444, -0.319, -0.205, 0.000, 1.275, 0.923,
    0.000, 0.752, -0.823, -1.401, -0.905,
)


def prior_logit(key: Key) -> float:
    """The logistic prior's score for a key (its sigmoid: the acceptance before any observation)."""
    weights = PRIOR_WEIGHTS_GREEDY if key[4] else PRIOR_WEIGHTS_SAMPLED
    return sum(w * x for w, x in zip(weights, features(key), strict=False))


def prior(key: Key) -> float:
    return 1.0 / (1.0 + math.exp(-prior_logit(key)))


class Calibrator:
    """Acceptance per bucket: the bucket's own outcomes, shrunk toward a prior that shifts online.

        p(b) = (hits_b + m * q_b) / (n_b + m),   q_b = sigmoid(z(b) + shift[greedy])

    z is the fitted logistic prior; `shift` is learnt from every outcome
    (one logistic-regression step each), so a text, or a sampling mode, on
    which every bucket does worse than the tuning set moves all of them within
    a few dozen tokens, while a bucket with enough outcomes of its own follows
    those. Counts are halved past a cap, so old text weighs less.
    """

    CAP = 200.0
    RATE = 0.15

    def __init__(self) -> None:
        self._stats: dict[Key, list[float]] = {}  # key -> [hits, n, z]
        self.shift = [0.0, 0.0]  # sampled, greedy

    def _rec(self, key: Key) -> list[float]:
        rec = self._stats.get(key)
        if rec is None:
            rec = self._stats[key] = [0.0, 0.0, prior_logit(key)]
        return rec

    def _q(self, key: Key, rec: list[float]) -> float:
        z = rec[2] + self.shift[key[4]]
        return 1.0 / (1.0 + math.exp(-z)) if z > -30 else 0.0

    def p(self, key: Key) -> float:
        rec = self._rec(key)
        return (rec[0] + PRIOR_WEIGHT * self._q(key, rec)) / (rec[1] + PRIOR_WEIGHT)

    def update(self, key: Key, accepted: bool) -> None:
        rec = self._rec(key)
        y = 1.0 if accepted else 0.0
        g = key[4]
        self.shift[g] = min(max(self.shift[g] + self.RATE * (y - self._q(key, rec)), -6.0), 6.0)
        rec[0] += y
        rec[1] += 1.0
        if rec[1] > self.CAP:
            rec[0] *= 0.5
            rec[1] *= 0.5


class SuffixDrafter(NoDrafter):
    """Prompt lookup done with counts and confidences (see the module doc)."""

    name = "ngram"
    relative_cost = 0.0  # proposing is free: the loop looks at the proposal, then decides k
    proposes_first = True  # a trie walk: look at the proposal, then choose k
    gives_confidences = True  # last_key is the proposal's confidences: DraftLengthController picks k

    def __init__(self, depth: int = DEPTH, memory_tokens: int = MEMORY_TOKENS) -> None:
        self.depth = depth
        self.memory_tokens = memory_tokens
        self.local = SuffixTrie(depth)
        self.memory = SuffixTrie(depth)
        self._memory_docs: list[list[int]] = []
        self._follow = Follower(self.memory)
        self.calibrator = Calibrator()
        self._pending: list[tuple[int, list[int], list[Key], list[float]]] = []  # (start, tokens, keys, running products)
        self._streak = 0  # streak_bucket of the tokens an earlier proposal predicted up to now
        self._realised = self._predicted = REALISED_PRIOR  # decayed sums: proposed tokens that came true, expected
        self.confidences: list[float] = []
        self.log: list[tuple[tuple, bool]] | None = None  # (key, accepted) per scored token, when set

    # -- text ------------------------------------------------------------------
    def begin(self, history: Sequence[int]) -> None:
        local = self.local.tokens
        n = len(local)
        if n and (len(history) < n or list(history[:n]) != local):
            self._remember(local)
            self.local.clear()
        self._pending = []
        self._streak = 0
        self._follow.reset()
        self.local.extend(history[len(self.local.tokens) :])
        if self.memory.tokens:
            self._follow.feed(history[-self.depth :])

    def _remember(self, text: list[int]) -> None:
        """Keep a finished request's text for later ones (dropping the oldest past the budget)."""
        if len(text) < 2:
            return
        self._memory_docs.append(list(text))
        if len(self.memory.tokens) + len(text) > self.memory_tokens:
            keep: list[list[int]] = []
            total = 0
            for doc in reversed(self._memory_docs):
                if total + len(doc) > self.memory_tokens // 2 and keep:
                    break
                keep.append(doc[-self.memory_tokens // 2 :])
                total += len(keep[-1])
            self._memory_docs = keep[::-1]
            self.memory.clear()
            for doc in self._memory_docs:
                self.memory.extend(doc)
                self.memory.end_document()
        else:
            self.memory.extend(text)
            self.memory.end_document()

    def _sync(self, history: Sequence[int]) -> None:
        start = len(self.local.tokens)
        new = history[start:]
        if not new:
            return
        self._score(history, start)
        self.local.extend(new)
        if self.memory.tokens:
            self._follow.feed(new)

    def _score(self, history: Sequence[int], start: int) -> None:
        """Score pending proposals against the tokens the target produced since `start`."""
        end = len(history)
        streak = 0
        still: list[tuple[int, list[int], list[Key], list[float]]] = []
        log = self.log
        update = self.calibrator.update
        realised = predicted = 0.0
        for pos, toks, keys, runs in self._pending:
            j = max(start - pos, 0)  # tokens before `start` were scored already
            done = False
            while j < len(toks) and pos + j < end:
                ok = history[pos + j] == toks[j]
                update(keys[j], ok)
                if log is not None:
                    log.append((keys[j], ok))
                if not ok:
                    predicted += sum(runs[j:])  # the expected run that did not come true
                    done = True
                    break
                realised += 1.0  # came true as it goes, so a long copy lifts the ratio at once
                predicted += runs[j]
                j += 1
            if not done and pos + j == end:
                streak = max(streak, end - pos)
            if not done and j < len(toks):
                still.append((pos, toks, keys, runs))
        if realised or predicted:
            self._realised = REALISED_DECAY * self._realised + realised
            self._predicted = REALISED_DECAY * self._predicted + predicted
        self._pending = still
        self._streak = streak_bucket(streak)

    # -- proposals -------------------------------------------------------------
    def propose(self, history, k, sampler):
        self.confidences = []
        if k <= 0 or not history:
            return [], None
        self._sync(history)
        streak = self._streak
        greedy = 1 if sampler is None or sampler.greedy else 0
        best_toks: list[int] = []
        best_keys: list[tuple] = []
        best_ps: list[float] = []
        best_runs: list[float] = []
        best_gain = 0.0
        p_of = self.calibrator.p
        d, node = self.local.longest_match()
        candidates = []
        if node is not None:
            candidates.append((0, continuation(self.local, node, d, k)))
        if self._follow.length > d:
            candidates.append((1, self._follow.proposal(k)))
        root = self.local.root[CHILDREN]
        n_hist = len(history)
        memo: dict[Key, float] = {}
        for source, (toks, feats) in candidates:
            keys: list[Key] = []
            ps: list[float] = []
            runs: list[float] = []  # running products: the chance the target agrees up to each token
            gain, run = 0.0, 1.0
            a, b = (history[-2], history[-1]) if n_hist >= 2 else (-2, -2)
            for j, (fd, fn, fc) in enumerate(feats):
                x = toks[j]
                short = 3
                ctx2 = root.get(a)
                if ctx2 is not None and ctx2[CHILDREN] is not None:
                    ctx2 = ctx2[CHILDREN].get(b)
                    if ctx2 is not None and ctx2[CHILDREN] is not None:
                        child = ctx2[CHILDREN].get(x)
                        short = short_agreement(ctx2[CONT], child[COUNT] if child is not None else 0)
                a, b = b, x
                key = feature_key(source, fd, fn, fc, streak, greedy, short)
                p = memo.get(key)
                if p is None:
                    p = memo[key] = p_of(key)
                run *= p
                if run < MIN_RUN:  # worth under 1% of a token: never drafted, not worth scoring
                    break
                keys.append(key)
                ps.append(p)
                runs.append(run)
                gain += run
            if gain > best_gain:
                best_gain, best_toks, best_keys, best_ps, best_runs = gain, toks[: len(ps)], keys, ps, runs
        if best_toks:
            self._pending.append((len(history), best_toks, best_keys, best_runs))
            # Scale the whole expected run by how this text's runs compared with predictions so far
            # (scaling the first token's confidence scales every running product alike).
            ratio = self._realised / self._predicted
            if ratio < 1.0:
                best_ps = [best_ps[0] * ratio] + best_ps[1:]
        self.confidences = best_ps
        self.last_key = tuple(best_ps)
        return best_toks, None
