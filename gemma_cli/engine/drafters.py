"""Draft sources behind one small interface.

A drafter proposes up to `k` tokens that probably follow `history`. The loop in
`speculative.py` verifies them with the target. Drafters never touch the
target's KV memory; one that needs the target's activations (Gemma 4 MTP)
reads them in `after_verify`.
"""

from __future__ import annotations

from typing import Callable, Protocol, Sequence

from gemma_cli.engine.clock import step_clock
from gemma_cli.engine.llama import Context, Model
from gemma_cli.engine.sampling import Dist, TokenSampler
from gemma_cli.errors import IncompatibleModelsError


class Drafter(Protocol):
    name: str
    proposes_first: bool  # proposing is free: look at the proposal, then choose k (n-gram); else choose k, then propose
    relative_cost: float  # drafting one token, in plain target steps (the controller's prior)
    last_key: object  # class of the last proposal (n-gram: matched length), read when proposes_first
    gives_confidences: bool  # last_key holds per-token confidences: the confidence-driven controller picks k
    samples_proposals: bool  # sampled generations draw proposals from the drafter's own distribution
    catch_up_seconds: float  # of the last proposal, time spent ingesting history beyond one token (prefill, after a pause)

    def attach(self, target: Context) -> None:
        """Called once the target context exists (MTP links its context here)."""

    def begin(self, history: Sequence[int]) -> None:
        """A new generation starts from `history` (prompt tokens)."""

    def propose(self, history: Sequence[int], k: int, sampler: TokenSampler) -> tuple[list[int], list[Dist] | None]:
        """Up to k tokens and, for sampled proposals, the distributions they were drawn from.

        `None` as distributions means the proposal is deterministic (one-hot).
        """

    def after_verify(self, target: Context, row: int) -> None:
        """The target decoded; `row` (index in its last batch) produced the new pending token."""

    def close(self) -> None: ...


class NoDrafter:
    """Plain decoding: the baseline every speedup is measured against."""

    name = "none"
    proposes_first = True  # proposing nothing is free
    relative_cost = 0.0  # cost of drafting one token, in plain target steps (a prior)
    last_key: object = None  # class of the last proposal (n-gram: matched length), for the controller
    gives_confidences = False  # True: last_key holds per-token confidences (suffix_drafter.py)
    samples_proposals = False  # proposals are deterministic (one-hot) even when the user samples
    catch_up_seconds = 0.0  # a one-off the controller must not read as a cost per drafted token

    def attach(self, target: Context) -> None:
        pass

    def begin(self, history: Sequence[int]) -> None:
        pass

    def propose(self, history, k, sampler):
        return [], None

    def after_verify(self, target: Context, row: int) -> None:
        pass

    def close(self) -> None:
        pass


class NgramDrafter(NoDrafter):
    """Prompt lookup: find the latest earlier occurrence of the last n tokens and copy what followed.

    An index per n-gram size maps the n-gram to the end of its latest
    occurrence, updated incrementally, so a lookup is O(1) whatever the
    history length. Longer n-grams are tried first (more specific matches).
    """

    name = "ngram"
    proposes_first = True  # a dictionary lookup: look at the match before choosing k

    def __init__(self, ngram_max: int = 3, ngram_min: int = 1) -> None:
        if not 1 <= ngram_min <= ngram_max <= 16:
            raise ValueError(f"n-gram sizes must satisfy 1 <= min <= max <= 16, got {ngram_min}..{ngram_max}")
        self.sizes = tuple(range(ngram_max, ngram_min - 1, -1))
        self._index: dict[tuple[int, ...], int] = {}
        self._indexed = 0  # history[:_indexed] registered (ends strictly before the current tail)

    def begin(self, history: Sequence[int]) -> None:
        self._index.clear()
        self._indexed = 0

    def _update(self, history: Sequence[int]) -> None:
        # Register n-grams ending at positions < len(history), so that the
        # current suffix finds an *earlier* occurrence, not itself.
        index = self._index
        for end in range(max(self._indexed, 1), len(history)):
            for n in self.sizes:
                if end >= n:
                    index[tuple(history[end - n : end])] = end
        self._indexed = max(self._indexed, len(history))

    def propose(self, history, k, sampler):
        if k <= 0 or not history:
            return [], None
        self._update(history)
        L = len(history)
        for n in self.sizes:
            if L < n:
                continue
            end = self._index.get(tuple(history[L - n :]))
            if end is not None:
                self.last_key = n
                draft = list(history[end : end + k])
                period = L - end
                while len(draft) < k:  # the match runs into the present: the text repeats with this period
                    draft.append(draft[len(draft) - period])
                return draft, None
        return [], None


def check_vocab_compatible(target: Model, draft: Model) -> None:
    """llama.cpp's common_speculative_are_compatible on the loaded models, with a clear error.

    The size and token-text rule is `compat.token_list_problem`, the one the
    header checks of `create`, `pull` and `show` use.
    """
    from gemma_cli.compat import token_list_problem

    why = None
    if target.vocab_type != draft.vocab_type:
        why = "different tokenizer types"
    elif target.add_bos != draft.add_bos or target.bos != draft.bos or target.eos != draft.eos:
        why = "different BOS/EOS tokens"
    else:
        why = token_list_problem(target.n_vocab, draft.n_vocab, target.token_text, draft.token_text)
    if why:
        raise IncompatibleModelsError(f"drafter {draft.path.name} cannot draft for {target.path.name}: {why}")


class ModelDrafter(NoDrafter):
    """A small same-vocabulary GGUF with its own context and KV rollback.

    Its KV cache mirrors a prefix of the history; `_sync` finds where the
    history diverged from what it cached (rejected drafts), trims there and
    decodes what is missing, so the drafter needs no hook into the loop.
    `clock` times its catch-up (the engine passes its own, see `EngineConfig.clock`).
    """

    name = "model"
    proposes_first = False  # each proposed token costs a drafter decode: choose k first
    samples_proposals = True

    def __init__(
        self, model: Model, *, n_ctx: int, n_threads: int | None = None, clock: Callable[[], float] = step_clock
    ) -> None:
        self.model = model
        self._clock = clock
        self.ctx = Context(model, n_ctx=n_ctx, n_batch=512, n_threads=n_threads)
        self.relative_cost = 0.0  # a prior for the controller; `attach` knows the target's size
        self._cached: list[int] = []  # tokens whose KV is in self.ctx
        self._confirmed = 0  # _cached[:_confirmed] known equal to history

    def attach(self, target: Context) -> None:
        # Decoding is memory-bound: a drafter step costs about its weight size relative to the target's.
        self.relative_cost = self.model.size_bytes / max(target.model.size_bytes, 1)

    def begin(self, history: Sequence[int]) -> None:
        self._confirmed = 0

    def _sync(self, history: Sequence[int]) -> None:
        cached = self._cached
        i = self._confirmed
        limit = min(len(cached), len(history) - 1)  # keep the last token pending
        while i < limit and cached[i] == history[i]:
            i += 1
        if i < len(cached):
            self.ctx.trim(i)
            del cached[i:]
        missing = list(history[i:])
        clock = self._clock
        t0 = clock()
        self.ctx.decode(missing, n_outputs=1)
        if len(missing) > 1:  # beyond the usual one token: the prompt, or what a pause skipped
            self.catch_up_seconds = (clock() - t0) * (len(missing) - 1) / len(missing)
        cached.extend(missing)
        self._confirmed = len(cached) - 1

    def propose(self, history, k, sampler):
        if k <= 0 or not history:
            return [], None
        k = min(k, self.ctx.n_ctx - len(history) - 1)
        if k <= 0:
            return [], None
        self.catch_up_seconds = 0.0
        self._sync(history)
        tokens: list[int] = []
        dists: list[Dist] = []
        for i in range(k):
            tok, dist = sampler.sample(self.ctx.logits()[0])
            tokens.append(tok)
            if dist is not None:
                dists.append(dist)
            if i + 1 < k:
                self.ctx.decode([tok], n_outputs=1)
                self._cached.append(tok)
        return tokens, (dists if dists else None)

    def close(self) -> None:
        self.ctx.close()
