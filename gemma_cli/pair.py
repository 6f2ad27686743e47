"""What a model name resolves to: a target GGUF and how to draft for it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

# The draft lengths every layer accepts (catalog, manifests, --draft-tokens, the engine) live in limits.
from gemma_cli.limits import MAX_DRAFT_TOKENS as MAX_DRAFT_TOKENS, MIN_DRAFT_TOKENS as MIN_DRAFT_TOKENS

NGRAM_DRAFT_TOKENS = 16  # n-gram drafts cost nothing to propose: let the adaptive controller go long


@dataclass(frozen=True)
class ModelPair:
    """A runnable target/drafter pair, as the store or a path resolves it.

    `draft_source` is the pair's own drafter kind ("mtp" for a gemma4-assistant,
    "model" for a small same-vocabulary GGUF, "ngram" when there is no drafter
    file); `draft_tokens` its recommended draft length; `tuned` maps a workload
    class ("code", "prose", "chat", "summarize", or "default") to the draft
    length `gemma bench --tune` measured best on this machine.
    """

    name: str
    target: Path
    drafter: Path | None = None
    draft_source: str = "ngram"
    draft_tokens: int = 4
    tuned: dict[str, int] = field(default_factory=dict)

    def draft_tokens_for(self, workload: str = "default") -> int:
        return self.tuned.get(workload, self.tuned.get("default", self.draft_tokens))
