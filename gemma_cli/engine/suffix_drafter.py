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

from typing import Sequence

from gemma_cli.engine.drafters import NoDrafter
from gemma_cli.engine.suffix import Follower, SuffixTrie, continuation

DEPTH = 16  # longest context the trie tracks (longer matches are copied, not counted)
MEMORY_TOKENS = 32768  # text kept from earlier requests; halved (oldest dropped) when full
PRIOR_WEIGHT = 3.0  # pseudo-observations behind each bucket's prior

# Prior acceptance by context length, for a continuation seen once (n = c = 1) in this request.
_CTX_EDGES = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32)


def _ctx_bucket(d: int) -> int:
    for b, edge in enumerate(_CTX_EDGES):
        if d <= edge:
            return b
    return len(_CTX_EDGES)


def _agreement(n: int, c: int) -> int:
    """0: a single earlier occurrence; 1: unanimous over several; 2: a clear majority; 3: contested."""
    if n <= 1:
        return 0
    if c == n:
        return 1
    return 2 if 2 * c > n else 3


def feature_key(source: int, d: int, n: int, c: int, hot: int) -> tuple[int, int, int, int]:
    """The calibration bucket of one proposed token."""
    return (source, _ctx_bucket(d), _agreement(n, c), hot)


def prior(key: tuple[int, int, int, int]) -> float:
    """Acceptance before any observation: rises with context length and agreement."""
    source, ctx, agree, hot = key
    base = (0.10, 0.15, 0.25, 0.35, 0.45, 0.55, 0.62, 0.68, 0.72, 0.75, 0.78)[ctx]
    base += (0.0, 0.08, 0.0, -0.12)[agree]
    base += 0.10 if hot else -0.05
    if source:
        base -= 0.05
    return min(max(base, 0.02), 0.95)


class Calibrator:
    """Per-bucket acceptance: a Beta prior updated by observed outcomes (counts halved past a cap)."""

    CAP = 400.0

    def __init__(self) -> None:
        self._stats: dict[tuple, list[float]] = {}

    def _rec(self, key: tuple) -> list[float]:
        rec = self._stats.get(key)
        if rec is None:
            p = prior(key)
            rec = self._stats[key] = [p * PRIOR_WEIGHT, (1.0 - p) * PRIOR_WEIGHT]
        return rec

    def p(self, key: tuple) -> float:
        a, b = self._rec(key)
        return a / (a + b)

    def update(self, key: tuple, accepted: bool) -> None:
        rec = self._rec(key)
        rec[0 if accepted else 1] += 1.0
        if rec[0] + rec[1] > self.CAP:
            rec[0] *= 0.5
            rec[1] *= 0.5


class SuffixDrafter(NoDrafter):
    """Prompt lookup done with counts and confidences (see the module doc)."""

    name = "ngram"
    relative_cost = 0.0
    gives_confidences = True

    def __init__(self, depth: int = DEPTH, memory_tokens: int = MEMORY_TOKENS) -> None:
        self.depth = depth
        self.memory_tokens = memory_tokens
        self.local = SuffixTrie(depth)
        self.memory = SuffixTrie(depth)
        self._memory_docs: list[list[int]] = []
        self._follow = Follower(self.memory)
        self.calibrator = Calibrator()
        self._pending: list[tuple[int, list[int], list[tuple]]] = []  # (start, tokens, keys) awaiting outcomes
        self._hot = 0  # was the last emitted token the one proposed for it?
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
        self._hot = 0
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
        self._hot = 0
        still: list[tuple[int, list[int], list[tuple]]] = []
        log = self.log
        update = self.calibrator.update
        for pos, toks, keys in self._pending:
            j = max(start - pos, 0)  # tokens before `start` were scored already
            done = False
            while j < len(toks) and pos + j < end:
                ok = history[pos + j] == toks[j]
                update(keys[j], ok)
                if log is not None:
                    log.append((keys[j], ok))
                if pos + j == end - 1:
                    self._hot = int(ok)
                j += 1
                if not ok:
                    done = True
                    break
            if not done and j < len(toks):
                still.append((pos, toks, keys))
        self._pending = still

    # -- proposals -------------------------------------------------------------
    def propose(self, history, k, sampler):
        self.confidences = []
        if k <= 0 or not history:
            return [], None
        self._sync(history)
        hot = self._hot
        best_toks: list[int] = []
        best_keys: list[tuple] = []
        best_ps: list[float] = []
        best_gain = 0.0
        p_of = self.calibrator.p
        d, node = self.local.longest_match()
        candidates = []
        if node is not None:
            candidates.append((0, continuation(self.local, node, d, k)))
        if self._follow.length > d:
            candidates.append((1, self._follow.proposal(k)))
        for source, (toks, feats) in candidates:
            keys = [feature_key(source, fd, fn, fc, hot) for fd, fn, fc in feats]
            ps = [p_of(key) for key in keys]
            gain, run = 0.0, 1.0
            for p in ps:
                run *= p
                gain += run
            if gain > best_gain:
                best_gain, best_toks, best_keys, best_ps = gain, toks, keys, ps
        if best_toks:
            self._pending.append((len(history), best_toks, best_keys))
        self.confidences = best_ps
        self.last_key = tuple(best_ps)
        return best_toks, None
