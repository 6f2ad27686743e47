"""llama.cpp's n-gram drafting rules, ported to Python to replay them on a text gemma generated.

Why: a greedy loop that batches differently rounds differently, so at a
near-tie llama.cpp's loop and gemma's go on to different texts (even
llama.cpp's speculative and plain loops do: benchmarks/vs_native.py's "same
text" column). A measured rate then mixes the drafter with the luck of the
text: a text that falls into a verbatim loop is fast for any drafter.
Replaying every drafter on one text, priced by one measured cost curve,
compares the drafting rules alone.

Ported from the pinned sdist's vendor/llama.cpp (common/ngram-map.cpp,
common/ngram-mod.cpp, common/speculative.cpp), as each proposes with the
history it is given; simplified where noted:
- `ngram-simple` (n, m): the latest earlier occurrence of the last n tokens;
  draft the m tokens after it (fewer if the text ends sooner; none if fewer than n).
- `ngram-map-k` (n, m), key only: as simple, but each key n-gram remembers how
  many of its last draft were accepted and drafts at most that many next time.
  (llama.cpp finds the occurrence through a hash map of first-seen positions;
  here: the latest occurrence with m tokens after it.)
- `ngram-mod` (match 24, draft 48-64): chains next-token lookups keyed by the
  last 24 tokens, drafting only when at least 48 chain; 5 drafts in a row with
  under a quarter accepted empty the table. (llama.cpp hashes the keys into
  4M slots, so collisions may add wrong drafts; here keys are exact.)
"""

from __future__ import annotations

from typing import Sequence


class SimpleNgram:
    def __init__(self, n: int, m: int) -> None:
        self.n, self.m = n, m

    def propose(self, history: Sequence[int]) -> list[int]:
        n, m = self.n, self.m
        cur = len(history) - 1  # llama.cpp's cur_len: the tokens before the last one sampled
        if cur <= n + m + 1:
            return []
        pattern = list(history[cur + 1 - n :])
        for j in range(cur - n - 1, 0, -1):
            if list(history[j : j + n]) == pattern:
                copy = min(m, cur - (j + n))
                return list(history[j + n : j + n + copy]) if copy >= n else []
        return []

    def accept(self, n_accepted: int) -> None:
        pass


class MapK:
    def __init__(self, n: int, m: int) -> None:
        self.n, self.m = n, m
        self.accepted: dict[tuple[int, ...], int] = {}
        self._last: tuple[int, ...] | None = None

    def propose(self, history: Sequence[int]) -> list[int]:
        n, m = self.n, self.m
        cur = len(history) - 1  # llama.cpp's cur_len: the tokens before the last one sampled
        self._last = None
        if cur < 2 * n + m:
            return []
        key = tuple(history[cur + 1 - n :])
        for j in range(cur - n - m - 1, 0, -1):
            if tuple(history[j : j + n]) == key:
                self._last = key
                length = min(m, self.accepted.setdefault(key, m))
                return list(history[j + n : j + n + length])
        return []

    def accept(self, n_accepted: int) -> None:
        if self._last is not None:
            self.accepted[self._last] = n_accepted


class NgramMod:
    def __init__(self, n_match: int = 24, n_min: int = 48, n_max: int = 64) -> None:
        self.n, self.n_min, self.n_max = n_match, n_min, n_max
        self.table: dict[tuple[int, ...], int] = {}
        self.indexed = 0  # positions of the history already added
        self.low = 0
        self._drafted = 0

    def propose(self, history: Sequence[int]) -> list[int]:
        n, cur = self.n, len(history) - 1  # llama.cpp's cur_len: the tokens before the last one sampled
        self._drafted = 0
        if cur < n:
            return []
        if self.indexed + 32 < cur or self.indexed == 0:  # the prompt at first, then new n-grams in chunks of 32
            for i in range(self.indexed, cur - n):
                self.table[tuple(history[i : i + n])] = history[i + n]
            self.indexed = cur - n
        chain = list(history[cur + 1 - n :])
        for i in range(self.n_max):
            tok = self.table.get(tuple(chain[i : i + n]))
            if tok is None:
                if i < self.n_min:
                    return []
                break
            chain.append(tok)
        draft = chain[n:]
        self._drafted = len(draft)
        return draft

    def accept(self, n_accepted: int) -> None:
        if self._drafted:
            if n_accepted / self._drafted < 0.25:
                self.low += 1
                if self.low >= 5:
                    self.table.clear()
                    self.indexed = 0
                    self.low = 0
            else:
                self.low = 0


def make(label: str):
    """A policy from a benchmarks/native/tools.py label: mod, map-k-N/M, simple-N/M; None if not ported."""
    if label == "mod":
        return NgramMod()
    for prefix, cls in (("map-k-", MapK), ("simple-", SimpleNgram)):
        if label.startswith(prefix):
            n, m = label[len(prefix) :].split("/")
            return cls(int(n), int(m))
    return None


def steps(prompt: Sequence[int], out: Sequence[int], policy) -> list[tuple[int, int]]:
    """(drafted, accepted) per target pass of `policy` generating `out` after `prompt`.

    As llama-speculative-simple: each step drafts from the whole history (the prompt's last token
    is the first pass's own), verifies draft + 1 rows in one pass and keeps the agreeing prefix
    and one more token. Drafts stop at the end of `out`: what came after is unknown (and
    llama.cpp's own run stopped where its text ends).
    """
    history = list(prompt)  # as llama.cpp's loop: the first pass is the prompt's last token and a draft
    n, done = 0, []
    while n < len(out):
        draft = policy.propose(history)[: len(out) - n - 1]
        acc = 0
        while acc < len(draft) and draft[acc] == out[n + acc]:  # the text's last token stays the pass's own
            acc += 1
        policy.accept(acc)
        done.append((len(draft), acc))
        history.extend(out[n : n + acc + 1])
        n += acc + 1
    return done


def replay(prompt: Sequence[int], out: Sequence[int], policy, curve: dict[int, float]) -> tuple[float, int, int]:
    """(cost in one-token passes, drafted, accepted) of `policy` generating `out` after `prompt` (see `steps`)."""
    done = steps(prompt, out, policy)
    return sum(curve[d + 1] for d, _ in done), sum(d for d, _ in done), sum(a for _, a in done)


def share_for(done: list[tuple[int, int]], curve: dict[int, float], wanted: int) -> float:
    """The share of a run's pass costs that its first `wanted` tokens took, had its drafts stopped there.

    llama-speculative-simple does not stop drafting at -n: its last draft runs on, and every token
    it accepts counts in the rate it prints. Its passes, replayed on its own text, say how much of
    the time the wanted tokens took: the passes before, and a last one cut to what was still wanted.
    """
    total = sum(curve[d + 1] for d, _ in done)
    made, cost = 0, 0.0
    for d, a in done:
        if made >= wanted:
            break
        cut = min(d, wanted - made - 1)
        cost += curve[cut + 1]
        made += min(a, cut) + 1
    return cost / total if total else 1.0
