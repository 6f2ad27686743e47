"""The engine callers use: load a target (and a draft source), stream generations.

`Engine.generate` returns a `Generation` (generation.py): iterate it for
`Piece`s, read `.stats` at any time (updated in place), and `.result` once it
is exhausted. The target's KV cache (the engine's `slot`) is kept between
calls: a new prompt that extends the previous sequence (the next chat turn)
evaluates only its new tokens.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

from gemma_cli import limits
from gemma_cli.engine.adaptive import PassCosts
from gemma_cli.engine.clock import step_clock
from gemma_cli.engine.dialogue import STOPS, render_dialogue
from gemma_cli.engine.drafters import Drafter, ModelDrafter, NoDrafter, check_vocab_compatible
from gemma_cli.engine.generation import CacheSlot, Generation
from gemma_cli.engine.llama import Context, Model
from gemma_cli.engine.sampling import SamplingParams
from gemma_cli.engine.template import render_chat
from gemma_cli.errors import ContextFullError, UsageError
from gemma_cli.load_guard import guard_load


@dataclass(frozen=True)
class DraftConfig:
    """Which draft source to use and how far to draft."""

    source: str = "ngram"
    tokens: int = 4  # maximum draft length k
    model_path: Path | None = None  # for "model" and "mtp"
    ngram_max: int = 6  # sizes of drafters.NgramDrafter; the suffix drafter behind "ngram" does not use them
    ngram_min: int = 1
    adaptive: bool = True

    def validate(self) -> "DraftConfig":
        """Raise UsageError for a source or length the engine cannot use (rules in `gemma_cli.limits`)."""
        limits.check_draft_source(self.source)
        limits.check_draft_tokens(self.tokens)
        if self.source in ("model", "mtp") and self.model_path is None:
            raise UsageError(f"draft source {self.source!r} needs a drafter model file")
        return self


@dataclass(frozen=True)
class EngineConfig:
    """How to load and run the target; the last two fields steer what the draft controller measures."""

    n_ctx: int = 4096
    n_batch: int = 512
    n_gpu_layers: int = 0
    n_threads: int | None = None
    cpu_repack: bool | None = None  # None: automatic (see llama.choose_cpu_repack)
    rpc: str | None = None  # "HOST:PORT,...": split the target across ggml RPC workers (rpc_placement.py)
    tensor_split: str | None = None  # with rpc: shares per worker, then this machine
    # The clock that times drafting and target passes for the draft controller (None: clock.step_clock).
    # Given one (a virtual clock in tests, say), the controller's decisions follow it, not the machine.
    clock: Callable[[], float] | None = None
    # Starting target pass costs, {batch_size: seconds}, instead of none measured (adaptive.py, "Seeding").
    pass_costs: Mapping[int, float] | None = None


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


def check_memory(target: Path, draft: DraftConfig, config: EngineConfig) -> None:
    """Refuse a pair whose weights + KV cache cannot fit in RAM (plus GPU memory when offloading),
    before llama.cpp allocates (memory.py). Without a GPU device `--gpu-layers` offloads nothing: all in RAM."""
    from gemma_cli.memory import check_fits, check_fits_gpu, estimate_memory

    gpu_layers, gpu_free = gpu_offload(config.n_gpu_layers)
    drafter = draft.model_path if draft.source in ("mtp", "model") else None
    estimate = estimate_memory(target, drafter, drafter_is_mtp=draft.source == "mtp", n_ctx=config.n_ctx,
                               gpu_layers=gpu_layers)
    check_fits(estimate)
    check_fits_gpu(estimate, gpu_free)


def gpu_offload(n_gpu_layers: int) -> tuple[int, int | None]:
    """(layers `--gpu-layers` really offloads, free GPU bytes): without a GPU device, (0, None), as llama.cpp
    then keeps every layer in RAM. One rule for the load check and the batch slots' check."""
    gpu_free = gpu_free_bytes() if n_gpu_layers else None
    return (n_gpu_layers if gpu_free is not None else 0), gpu_free


def gpu_free_bytes() -> int | None:
    """Free bytes summed over the GPU devices llama.cpp sees; None without one (`--gpu-layers` then offloads nothing)."""
    from gemma_cli.engine.llama import backend_devices

    gpus = [d for d in backend_devices() if d["type"] in ("gpu", "igpu")]
    return sum(int(d["free_bytes"]) for d in gpus) if gpus else None  # type: ignore[call-overload]


class Engine:
    """Owns the target model and context, the drafter, and the KV cache between calls."""

    def __init__(self, target_path: str | Path, draft: DraftConfig = DraftConfig(), config: EngineConfig = EngineConfig()) -> None:
        draft.validate()
        limits.check_n_ctx(config.n_ctx)
        t0 = time.perf_counter()
        self.config = config
        check_before_load(Path(target_path), draft)
        if not config.rpc:  # split across RPC workers: the weights and KV live mostly elsewhere
            guard_load(Path(target_path))  # a hostile header is refused as such, not as a memory estimate (cached)
            check_memory(Path(target_path), draft, config)
        self.placement = None  # an rpc_placement.Placement when the target is split across RPC workers
        placed: dict = {"n_gpu_layers": config.n_gpu_layers}
        if config.rpc:
            from gemma_cli.engine.rpc_placement import MTP_TAIL, Placement

            tail = MTP_TAIL if draft.source == "mtp" else 0  # the assistant reads those layers' KV: keep them here
            self.placement = Placement.plan(config.rpc, Path(target_path), config.tensor_split, local_tail=tail)
            placed = self.placement.model_kwargs()
        with self.placement.loading() if self.placement else contextlib.nullcontext():
            self.target = Model(target_path, cpu_repack=config.cpu_repack, **placed)
            govern = config.n_threads is None and not config.n_gpu_layers and not config.rpc
            self.ctx = Context(self.target, n_ctx=config.n_ctx, n_batch=config.n_batch, n_threads=config.n_threads,
                               govern=govern)
        self.slot = CacheSlot(self.ctx)  # the KV cache kept between generations, and the cancel flag
        self.clock: Callable[[], float] = config.clock if config.clock is not None else step_clock
        # measured pass costs that sampled generations keep (see adaptive.py); `seed` restarts them from a curve
        self.costs: PassCosts = PassCosts.from_curve(config.pass_costs) if config.pass_costs is not None else PassCosts()
        self.costs_seeded = False  # whether `costs` started from this machine's saved curve (pass_cost_cache)
        self._close_hooks: list[Callable[[], None]] = []
        self.draft = draft
        self.drafter: Drafter = NoDrafter()
        self._drafter_model: Model | None = None
        self.set_draft(draft, memory_checked=True)  # check_memory priced the pair before the target loaded
        self.load_seconds = time.perf_counter() - t0

    # -- configuration ---------------------------------------------------
    def set_draft(self, draft: DraftConfig, *, memory_checked: bool = False) -> None:
        """Switch draft source or length (the REPL's /set draft, a server request's draft). A drafter model
        joining the running target is first checked for the RAM it adds, unless `memory_checked` says the
        pair was priced already (the constructor, before the target loaded)."""
        draft.validate()
        if draft.tokens + 1 > self.ctx.n_batch:
            raise UsageError(
                f"draft length {draft.tokens} needs a batch of {draft.tokens + 1} tokens but this context's batch holds "
                f"{self.ctx.n_batch}; use a draft length up to {self.ctx.n_batch - 1}"
            )
        same_model = (
            self.draft.source == draft.source and self.draft.model_path == draft.model_path and self._drafter_model is not None
        )
        if not same_model and not memory_checked and draft.source in ("mtp", "model") and draft.model_path is not None:
            from gemma_cli.memory import check_drafter_fits

            check_drafter_fits(self.target.path, draft.model_path, drafter_is_mtp=draft.source == "mtp",
                               n_ctx=self.ctx.n_ctx)  # before the current drafter goes: a refusal changes nothing
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
            from gemma_cli.engine.suffix_drafter import SuffixDrafter

            return SuffixDrafter()
        if draft.source == "mtp" and self.placement is not None and not self.placement.local_tail:
            from gemma_cli.engine.rpc_placement import MTP_UNSUPPORTED

            raise UsageError(MTP_UNSUPPORTED)
        if draft.source == "mtp":  # the target itself was checked when it loaded
            from gemma_cli.compat import check_mtp_pair

            check_mtp_pair(self.target.path, draft.model_path)
        model = Model(draft.model_path, n_gpu_layers=self.config.n_gpu_layers, cpu_repack=self.config.cpu_repack)
        try:
            if draft.source == "model":
                check_vocab_compatible(self.target, model)
                drafter: Drafter = ModelDrafter(model, n_ctx=self.ctx.n_ctx, n_threads=self.config.n_threads, clock=self.clock)
            else:
                from gemma_cli.engine.mtp import MTPDrafter

                drafter = MTPDrafter(self.target, model, self.ctx)
        except Exception:
            model.close()
            raise
        self._drafter_model = model
        drafter.attach(self.ctx)
        if draft.source == "mtp":
            # Linking the assistant's context to ours spoils the KV cells already here (measured on the
            # synthetic pairs: a reused prompt prefix then gave other first tokens): start from an empty cache.
            self.slot.clear()
        return drafter

    @property
    def n_ctx(self) -> int:
        return self.ctx.n_ctx

    @property
    def cached_tokens(self) -> int:
        return len(self.slot.tokens)

    @property
    def _cached(self) -> list[int]:  # read by tests that check the KV bookkeeping
        return self.slot.tokens

    def cancel(self) -> None:
        """Ask the running generation to stop after the current step (thread/signal safe)."""
        self.slot.cancel()

    def reset(self) -> None:
        """Forget the KV cache (a new conversation)."""
        self.slot.clear()

    # -- generation ------------------------------------------------------
    def chat_tokens(self, messages: Sequence[Mapping[str, str]], *, add_generation_prompt: bool = True) -> list[int]:
        """Render `messages` with the model's chat template (sandboxed) and tokenize."""
        self.check_fits("".join(str(m.get("content") or "") for m in messages))  # before rendering a huge text
        model = self.target
        if self.is_base_model:  # no chat template: a transcript the base model continues (dialogue.py)
            return self.tokenize(render_dialogue(messages, add_generation_prompt=add_generation_prompt))
        bos = model.token_text(model.bos) if model.bos >= 0 else ""
        eos = model.token_text(model.eos) if model.eos >= 0 else ""
        text = render_chat(model.chat_template(), messages, bos_token=bos, eos_token=eos, add_generation_prompt=add_generation_prompt)
        return self.tokenize(text, add_special=not (bos and text.startswith(bos)))

    @property
    def is_base_model(self) -> bool:
        """A GGUF without a chat template: a base model, which continues text rather than chats."""
        return self.target.chat_template() is None

    @property
    def chat_stops(self) -> tuple[str, ...]:
        """Stop strings a chat reply needs: a base model's transcript goes on to the next user line."""
        return STOPS if self.is_base_model else ()

    def prompt_tokens(self, text: str, *, system: str | None = None, raw: bool = False) -> list[int]:
        """A one-shot prompt: through the chat template, or as is for `raw` and for
        base models whose GGUF has no template (they continue text, they do not chat)."""
        if raw or self.is_base_model:
            return self.tokenize(f"{system}\n\n{text}" if system else text)
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": text}]
        return self.chat_tokens(messages)

    def tokenize(self, text: str, *, add_special: bool = True) -> list[int]:
        """Prompt text to tokens; a text that cannot fit the context is refused before it is tokenized whole."""
        self.check_fits(text)
        return self.target.tokenize(text, add_special=add_special, parse_special=True)

    def check_fits(self, text: str) -> None:
        """ContextFullError when `text` certainly does not fit the context, at a cost bounded by the context.

        llama.cpp's tokenizer needs ~150 bytes of memory per input byte, so a
        30 MB stdin used to take 2.2 GB and half a minute only to be refused.
        A text longer than n_ctx x the vocabulary's longest token cannot fit
        (no tokenizing at all); a long one is counted in chunks, stopping as
        soon as the count is past the context. What passes is tokenized whole
        by the caller and checked exactly by `generate`.
        """
        room = self.ctx.n_ctx - 1  # a prompt must leave one position for the reply
        if len(text) <= room * limits.CHEAP_BYTES_PER_TOKEN // 4:  # 4 = the most UTF-8 bytes per character
            return
        n_bytes = len(text.encode("utf-8", "replace"))
        if n_bytes <= room * limits.CHEAP_BYTES_PER_TOKEN:
            return
        at_least = -(-n_bytes // self.target.max_token_bytes())
        if at_least <= room and n_bytes > limits.COUNT_CHUNK_BYTES:
            slack = 2 * (n_bytes // limits.COUNT_CHUNK_BYTES + 1)  # chunk edges may split a token or two
            counted = self.target.count_tokens(text, stop_after=room + slack, chunk_bytes=limits.COUNT_CHUNK_BYTES)
            at_least = max(at_least, counted - slack)
        if at_least > room:
            raise ContextFullError(
                f"the prompt is at least {at_least} tokens ({limits.format_bytes(n_bytes)}) but the context holds "
                f"{self.ctx.n_ctx}; raise --ctx or shorten the input"
            )

    def generate(
        self,
        prompt: str | Sequence[int],
        *,
        max_tokens: int = 512,
        sampling: SamplingParams = SamplingParams(),
        stop: Sequence[str] = (),
    ) -> "Generation":
        sampling.validate()
        limits.check_max_tokens(max_tokens)
        tokens = self.tokenize(prompt) if isinstance(prompt, str) else list(prompt)
        if not tokens:
            raise UsageError("the prompt is empty")
        if len(tokens) >= self.ctx.n_ctx:
            raise ContextFullError(
                f"the prompt has {len(tokens)} tokens but the context holds {self.ctx.n_ctx}; raise --ctx or shorten the input"
            )
        return Generation(self, tokens, max_tokens, sampling, stop)

    def probe_pass_costs(self, saved: Mapping[int, float] | None = None) -> bool:
        """Measure the target's pass costs by size now (about a second, once per machine: pass_probe.py).

        With `saved` (this machine's saved curve, already seeded), only the sizes it lacks are measured and
        merged in (`pass_probe.fill_curve`); nothing runs when it lacks none. Only before the first
        generation, and only for the draft sources whose length follows the measured curve (n-gram; none,
        which may switch to it): a drafter model or MTP head shares the target's positions. Returns whether
        the curve changed.
        """
        from gemma_cli.engine.pass_probe import fill_curve, probe_pass_costs

        if self.draft.source not in ("ngram", "none") or self.ctx.n_past or self.slot.tokens:
            return False
        max_batch = max(self.draft.tokens, 16) + 1
        curve = probe_pass_costs(self.ctx, max_batch, clock=self.clock, known=saved or ())  # leaves ctx empty
        if len(curve) < 2:  # nothing measured, nothing missing, or only one-token passes timed
            return False
        if saved:
            curve = fill_curve(saved, curve)
        self.costs.seed(curve)
        return True

    def on_close(self, hook: Callable[[], None]) -> None:
        """Run `hook` when the engine closes, before anything is freed (the pass-cost cache saves there)."""
        self._close_hooks.append(hook)

    def close(self) -> None:
        hooks, self._close_hooks = self._close_hooks, []
        for hook in hooks:
            with contextlib.suppress(Exception):  # a cache that cannot be written must not break closing
                hook()
        self.drafter.close()
        if self._drafter_model is not None:
            self._drafter_model.close()
        self.ctx.close()
        self.target.close()

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
