"""The engine callers use: load a target (and a draft source), stream generations.

`Engine.generate` returns a `Generation`: iterate it for `Piece`s, read
`.stats` at any time (updated in place), and `.result` once it is exhausted.
The target's KV cache is kept between calls: a new prompt that extends the
previous sequence (the next chat turn) evaluates only its new tokens.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator, Mapping, Sequence

from gemma_cli.engine.adaptive import DraftController, PassCosts
from gemma_cli.engine.drafters import Drafter, ModelDrafter, NgramDrafter, NoDrafter, check_vocab_compatible
from gemma_cli.engine.llama import Context, Model
from gemma_cli.engine.sampling import SamplingParams
from gemma_cli.engine.speculative import TokenSampler, decode_steps
from gemma_cli.engine.template import render_chat
from gemma_cli.engine.textstream import TextStream
from gemma_cli.engine.types import GenerationResult, LiveStats, Piece, StopReason
from gemma_cli.errors import ContextFullError, EngineError, UsageError

DRAFT_SOURCES = ("none", "ngram", "model", "mtp")
MAX_DRAFT_TOKENS = 32


@dataclass(frozen=True)
class DraftConfig:
    """Which draft source to use and how far to draft."""

    source: str = "ngram"
    tokens: int = 4  # maximum draft length k
    model_path: Path | None = None  # for "model" and "mtp"
    ngram_max: int = 6
    ngram_min: int = 1
    adaptive: bool = True

    def validate(self) -> "DraftConfig":
        if self.source not in DRAFT_SOURCES:
            raise UsageError(f"unknown draft source {self.source!r}; choose one of {', '.join(DRAFT_SOURCES)}")
        if not isinstance(self.tokens, int) or not 1 <= self.tokens <= MAX_DRAFT_TOKENS:
            raise UsageError(f"draft length must be between 1 and {MAX_DRAFT_TOKENS}, got {self.tokens}")
        if self.source in ("model", "mtp") and self.model_path is None:
            raise UsageError(f"draft source {self.source!r} needs a drafter model file")
        return self


@dataclass(frozen=True)
class EngineConfig:
    n_ctx: int = 4096
    n_batch: int = 512
    n_gpu_layers: int = 0
    n_threads: int | None = None
    cpu_repack: bool | None = None  # None: automatic (see llama.choose_cpu_repack)


def check_before_load(target: Path, draft: DraftConfig) -> None:
    """Header checks for files llama.cpp would abort the process on (Gemma 4 layouts, MTP pairs).

    Reading the header also refuses a missing, non-GGUF or truncated file with a clear error.
    """
    from gemma_cli.gguf_meta import read_architecture

    if draft.source == "mtp":
        from gemma_cli.compat import check_mtp_pair

        check_mtp_pair(target, draft.model_path)
    elif read_architecture(target) == "gemma4":
        from gemma_cli.compat import check_gemma4_target

        check_gemma4_target(target)


class Engine:
    """Owns the target model and context, the drafter, and the KV cache between calls."""

    def __init__(self, target_path: str | Path, draft: DraftConfig = DraftConfig(), config: EngineConfig = EngineConfig()) -> None:
        draft.validate()
        if config.n_ctx <= 0:
            raise UsageError(f"context size must be positive, got {config.n_ctx}")
        t0 = time.perf_counter()
        self.config = config
        check_before_load(Path(target_path), draft)
        self.target = Model(target_path, n_gpu_layers=config.n_gpu_layers, cpu_repack=config.cpu_repack)
        self.ctx = Context(self.target, n_ctx=config.n_ctx, n_batch=config.n_batch, n_threads=config.n_threads)
        self._cached: list[int] = []  # tokens whose KV is in self.ctx (sequence 0)
        self._cancel = threading.Event()
        self.costs = PassCosts()  # measured pass costs that sampled generations keep (see adaptive.py)
        self.draft = draft
        self.drafter: Drafter = NoDrafter()
        self._drafter_model: Model | None = None
        self.set_draft(draft)
        self.load_seconds = time.perf_counter() - t0

    # -- configuration ---------------------------------------------------
    def set_draft(self, draft: DraftConfig) -> None:
        """Switch draft source or length (the REPL's /set draft...)."""
        draft.validate()
        if draft.tokens + 1 > self.ctx.n_batch:
            raise UsageError(f"draft length {draft.tokens} needs n_batch >= {draft.tokens + 1}")
        same_model = (
            self.draft.source == draft.source and self.draft.model_path == draft.model_path and self._drafter_model is not None
        )
        if not same_model:
            self.drafter.close()
            self.drafter = NoDrafter()
            if self._drafter_model is not None:
                self._drafter_model.close()
                self._drafter_model = None
            self.drafter = self._make_drafter(draft)
            self.costs.forget_drafter()
        self.draft = draft

    def _make_drafter(self, draft: DraftConfig) -> Drafter:
        if draft.source == "none":
            return NoDrafter()
        if draft.source == "ngram":
            return NgramDrafter(draft.ngram_max, draft.ngram_min)
        if draft.source == "mtp":  # the target itself was checked when it loaded
            from gemma_cli.compat import check_mtp_pair

            check_mtp_pair(self.target.path, draft.model_path)
        model = Model(draft.model_path, n_gpu_layers=self.config.n_gpu_layers, cpu_repack=self.config.cpu_repack)
        try:
            if draft.source == "model":
                check_vocab_compatible(self.target, model)
                drafter: Drafter = ModelDrafter(model, n_ctx=self.ctx.n_ctx, n_threads=self.config.n_threads)
            else:
                from gemma_cli.engine.mtp import MTPDrafter

                drafter = MTPDrafter(self.target, model, self.ctx)
        except Exception:
            model.close()
            raise
        self._drafter_model = model
        drafter.attach(self.ctx)
        return drafter

    @property
    def n_ctx(self) -> int:
        return self.ctx.n_ctx

    @property
    def cached_tokens(self) -> int:
        return len(self._cached)

    def cancel(self) -> None:
        """Ask the running generation to stop after the current step (thread/signal safe)."""
        self._cancel.set()

    def reset(self) -> None:
        """Forget the KV cache (a new conversation)."""
        self.ctx.clear()
        self._cached = []

    # -- generation ------------------------------------------------------
    def chat_tokens(self, messages: Sequence[Mapping[str, str]], *, add_generation_prompt: bool = True) -> list[int]:
        """Render `messages` with the model's chat template (sandboxed) and tokenize."""
        model = self.target
        bos = model.token_text(model.bos) if model.bos >= 0 else ""
        eos = model.token_text(model.eos) if model.eos >= 0 else ""
        text = render_chat(model.chat_template(), messages, bos_token=bos, eos_token=eos, add_generation_prompt=add_generation_prompt)
        return self.tokenize(text, add_special=not (bos and text.startswith(bos)))

    def prompt_tokens(self, text: str, *, system: str | None = None, raw: bool = False) -> list[int]:
        """A one-shot prompt: through the chat template, or as is for `raw` and for
        base models whose GGUF has no template (they continue text, they do not chat)."""
        if raw or self.target.chat_template() is None:
            return self.tokenize(f"{system}\n\n{text}" if system else text)
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": text}]
        return self.chat_tokens(messages)

    def tokenize(self, text: str, *, add_special: bool = True) -> list[int]:
        return self.target.tokenize(text, add_special=add_special, parse_special=True)

    def generate(
        self,
        prompt: str | Sequence[int],
        *,
        max_tokens: int = 512,
        sampling: SamplingParams = SamplingParams(),
        stop: Sequence[str] = (),
    ) -> "Generation":
        sampling.validate()
        if max_tokens <= 0:
            raise UsageError(f"max_tokens must be positive, got {max_tokens}")
        tokens = self.tokenize(prompt) if isinstance(prompt, str) else list(prompt)
        if not tokens:
            raise UsageError("the prompt is empty")
        if len(tokens) >= self.ctx.n_ctx:
            raise ContextFullError(
                f"the prompt has {len(tokens)} tokens but the context holds {self.ctx.n_ctx}; raise --ctx or shorten the input"
            )
        return Generation(self, tokens, max_tokens, sampling, stop)

    def _reuse_prefix(self, tokens: list[int]) -> int:
        """Trim the KV cache to the longest prefix shared with `tokens`; return its length.

        At least one token stays pending so the first pass yields logits.
        """
        cached = self._cached
        limit = min(len(cached), len(tokens) - 1)
        i = 0
        while i < limit and cached[i] == tokens[i]:
            i += 1
        self.ctx.trim(i)  # also drops anything an interrupted step left behind
        del cached[i:]
        return i

    def close(self) -> None:
        self.drafter.close()
        if self._drafter_model is not None:
            self._drafter_model.close()
        self.ctx.close()
        self.target.close()

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Generation:
    """An in-progress generation: iterate for pieces; `stats` is live; `result` at the end."""

    def __init__(self, engine: Engine, tokens: list[int], max_tokens: int, sampling: SamplingParams, stop: Sequence[str]) -> None:
        self.engine = engine
        self.prompt_tokens = tokens
        self.max_tokens = max_tokens
        self.sampling = sampling
        self.stop = list(stop)
        d = engine.draft
        self.stats = LiveStats(draft_source=d.source, draft_max=0 if d.source == "none" else d.tokens, n_ctx=engine.n_ctx)
        self.result: GenerationResult | None = None
        self._iter = self._run()

    def __iter__(self) -> Iterator[Piece]:
        return self._iter

    def __next__(self) -> Piece:
        return next(self._iter)

    def cancel(self) -> None:
        self.engine.cancel()

    def text(self) -> str:
        """Run to the end and return the whole text."""
        for _ in self._iter:
            pass
        assert self.result is not None
        return self.result.text

    def _run(self) -> Iterator[Piece]:
        eng, stats = self.engine, self.stats
        eng._cancel.clear()
        tokens = self.prompt_tokens
        reused = eng._reuse_prefix(tokens)
        history = list(tokens)
        pending = tokens[reused:]
        stats.prompt_tokens = len(tokens)
        stats.prompt_evaluated = len(pending)
        k_max = 0 if eng.draft.source == "none" else eng.draft.tokens
        controller = DraftController(
            k_max,
            adaptive=eng.draft.adaptive,
            # Timing may steer k only where k cannot change the output (see adaptive.py).
            measure_time=self.sampling.greedy or not eng.drafter.samples_proposals,
            draft_cost=eng.drafter.relative_cost,
            costs=None if self.sampling.greedy else eng.costs,
            optimistic=self.sampling.greedy,
        )
        sampler = TokenSampler(self.sampling)
        stream = TextStream(self.stop)
        out_tokens: list[int] = []
        texts: list[str] = []
        reason = StopReason.LENGTH
        model = eng.target
        steps = decode_steps(eng.ctx, history, pending, eng.drafter, controller, sampler, stats)
        try:
            while True:
                if eng._cancel.is_set():
                    reason = StopReason.CANCELLED
                    break
                try:
                    step = next(steps)
                except StopIteration:
                    reason = StopReason.CONTEXT
                    break
                except ContextFullError:
                    reason = StopReason.CONTEXT
                    break
                if stats.target_passes == 1:
                    stats.prompt_eval_s = stats.ttft_s = time.perf_counter() - stats.started
                stats.n_past = eng.ctx.n_past
                done = False
                piece_text: list[str] = []
                n_tok = n_draft = draft_chars = 0
                for j, tok in enumerate(step.tokens):
                    if model.is_eog(tok):
                        reason, done = StopReason.EOS, True
                        break
                    out_tokens.append(tok)
                    n_tok += 1
                    if j < step.n_drafted:
                        n_draft += 1
                    piece_text.append(stream.feed(model.piece(tok)))
                    if j < step.n_drafted:
                        draft_chars += len(piece_text[-1])
                    if stream.stopped:
                        reason, done = StopReason.STOP, True
                        break
                    if len(out_tokens) >= self.max_tokens:
                        reason, done = StopReason.LENGTH, True
                        break
                stats.generated_tokens += n_tok
                stats.emitted_from_draft += n_draft
                stats.emitted_from_target += n_tok - n_draft
                text = "".join(piece_text)
                if text or n_tok:
                    texts.append(text)
                    yield Piece(text, n_tok, n_draft, draft_chars)
                if done:
                    break
                if eng.ctx.n_past + 1 >= eng.ctx.n_ctx:
                    reason = StopReason.CONTEXT
                    break
        finally:
            steps.close()
            eng._cached = history[: eng.ctx.n_past]
            tail = stream.flush()
            stats.finished = time.perf_counter()
            if stats.target_passes and stats.ttft_s == 0.0:
                stats.ttft_s = stats.prompt_eval_s
        if tail:
            texts.append(tail)
            yield Piece(tail, 0, 0)
        self.result = GenerationResult("".join(texts), out_tokens, reason, stats)
