"""Values the engine hands to its callers: streamed pieces, live statistics, results."""

from __future__ import annotations

import enum
import time
from dataclasses import asdict, dataclass, field


class StopReason(str, enum.Enum):
    EOS = "eos"  # an end-of-generation token
    STOP = "stop"  # a user stop string
    LENGTH = "length"  # max_tokens reached
    CONTEXT = "context"  # the context window is full
    CANCELLED = "cancelled"  # the caller asked to stop


@dataclass(frozen=True)
class Piece:
    """A chunk of streamed text and where its tokens came from."""

    text: str
    n_tokens: int
    n_drafted: int  # how many of those tokens were accepted drafts
    draft_chars: int = 0  # length of the text prefix that came from accepted draft tokens


MIN_PLAIN_STEPS = 3  # a speedup estimate needs this many plain steps of its own generation as the baseline
MIN_DRAFT_STEPS = 8  # ... and this many steps that drafted


@dataclass
class LiveStats:
    """Statistics updated in place while generating (the REPL reads them live).

    Invariants: draft_accepted <= draft_proposed;
    generated_tokens == emitted_from_draft + emitted_from_target.
    """

    draft_source: str = "none"
    draft_max: int = 0
    prompt_tokens: int = 0  # prompt length (whole conversation)
    prompt_evaluated: int = 0  # tokens actually evaluated (the rest came from the KV cache)
    prompt_eval_s: float = 0.0
    ttft_s: float = 0.0
    generated_tokens: int = 0
    emitted_from_draft: int = 0
    emitted_from_target: int = 0
    draft_proposed: int = 0
    draft_accepted: int = 0
    target_passes: int = 0
    draft_seconds: float = 0.0  # step clock: drafting
    step_seconds: float = 0.0  # step clock: drafting + target passes during generation
    single_pass_seconds: float = 0.0  # step clock: the draft controller's estimate of one plain decode step
    plain_steps: int = 0  # steps of this generation that decoded one token without drafting (prompt excluded)
    plain_step_seconds: float = 0.0  # step clock: what those steps cost
    draft_steps: int = 0  # steps of this generation that verified a draft
    n_ctx: int = 0
    n_past: int = 0
    started: float = field(default_factory=time.perf_counter)
    finished: float | None = None

    @property
    def wall_s(self) -> float:
        end = self.finished if self.finished is not None else time.perf_counter()
        return end - self.started

    @property
    def decode_s(self) -> float:
        """Time after the first token (the window over which tokens/s is measured)."""
        return max(self.wall_s - self.ttft_s, 1e-9)

    @property
    def tokens_per_s(self) -> float:
        """Generation rate after the first token (like Ollama's eval rate)."""
        if self.generated_tokens <= 1:
            return 0.0
        return (self.generated_tokens - 1) / self.decode_s

    @property
    def prompt_tokens_per_s(self) -> float:
        return self.prompt_evaluated / self.prompt_eval_s if self.prompt_eval_s > 0 else 0.0

    @property
    def acceptance_rate(self) -> float:
        return self.draft_accepted / self.draft_proposed if self.draft_proposed else 0.0

    @property
    def tokens_per_pass(self) -> float:
        """Mean tokens emitted per target forward pass (1.0 = plain decoding)."""
        return self.generated_tokens / self.target_passes if self.target_passes else 0.0

    @property
    def speedup_estimate(self) -> float | None:
        """What plain decoding would have cost for the emitted tokens over what the steps cost, or None.

        Only from this generation's own clock: at least MIN_PLAIN_STEPS plain
        steps (the baseline) and MIN_DRAFT_STEPS drafting steps. A baseline
        from another generation, or extrapolated, measured a different machine
        load (a shared CPU) and gave figures like 7.6x at 8 tok/s.
        """
        if self.plain_steps < MIN_PLAIN_STEPS or self.draft_steps < MIN_DRAFT_STEPS or not self.step_seconds:
            return None
        plain_step = self.plain_step_seconds / self.plain_steps
        return max(self.generated_tokens - 1, 0) * plain_step / self.step_seconds

    def as_dict(self) -> dict[str, object]:
        d = asdict(self)
        d.pop("started")
        d.pop("finished")
        d.update(
            wall_s=self.wall_s,
            tokens_per_s=self.tokens_per_s,
            prompt_tokens_per_s=self.prompt_tokens_per_s,
            acceptance_rate=self.acceptance_rate,
            tokens_per_pass=self.tokens_per_pass,
            speedup_estimate=self.speedup_estimate,
        )
        return d


@dataclass(frozen=True)
class GenerationResult:
    text: str
    tokens: list[int]
    stop_reason: StopReason
    stats: LiveStats
