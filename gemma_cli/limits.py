"""Every user-facing limit, written once, with the checks that enforce it.

The CLI (and the coming server) call these at their boundary, so a bad value
becomes one `UsageError` line with exit status 2. The engine calls the same
checks on what it is handed (library callers skip the CLI), so the rule and
its message exist in one place only. `name` lets each caller word the value
as its user knows it (`--max-tokens`, `/set max_tokens`, ...).

This module depends on `errors` alone: any layer may import it.
"""

from __future__ import annotations

from gemma_cli.errors import UsageError

MIN_DRAFT_TOKENS = 1
MAX_DRAFT_TOKENS = 32  # one verification batch holds k + 1 rows, and past 32 no drafter's acceptance pays
DRAFT_SOURCES = ("none", "ngram", "model", "mtp")


def draft_tokens_ok(k: object) -> bool:
    """Is `k` a usable maximum draft length (an int in MIN_DRAFT_TOKENS..MAX_DRAFT_TOKENS)?"""
    return isinstance(k, int) and not isinstance(k, bool) and MIN_DRAFT_TOKENS <= k <= MAX_DRAFT_TOKENS


def check_draft_tokens(k: object, name: str = "draft length") -> int:
    """The maximum draft length, or a UsageError naming the allowed range."""
    if not draft_tokens_ok(k):
        raise UsageError(f"{name} must be between {MIN_DRAFT_TOKENS} and {MAX_DRAFT_TOKENS}, got {k}")
    return k  # type: ignore[return-value]


def check_draft_source(source: str) -> str:
    """One of DRAFT_SOURCES (the engine's names; the CLI's `auto` is resolved before)."""
    if source not in DRAFT_SOURCES:
        raise UsageError(f"unknown draft source {source!r}; choose one of {', '.join(DRAFT_SOURCES)}")
    return source


def check_positive(value: int | float, name: str) -> int | float:
    """`value` > 0, or a UsageError '<name> must be positive, got <value>'."""
    if not value > 0:
        raise UsageError(f"{name} must be positive, got {value}")
    return value


def check_max_tokens(n: int, name: str = "max_tokens") -> int:
    """A generation's token budget: at least one token."""
    return int(check_positive(n, name))


MAX_CTX = 1 << 24  # 16M tokens: 64 times the longest Gemma context; llama.cpp's uint32 n_ctx wrapped at 2^32


def check_n_ctx(n: int, name: str = "context size") -> int:
    """A context window: at least one token (llama.cpp pads it up to its own granularity), at most MAX_CTX."""
    n = int(check_positive(n, name))
    if n > MAX_CTX:
        raise UsageError(f"{name} must be at most {MAX_CTX:,} tokens, got {n:,}")
    return n


# Prompts: a text is refused before it is tokenized whole when it certainly does not fit (Engine.check_fits).
CHEAP_BYTES_PER_TOKEN = 8  # up to n_ctx x this many bytes, tokenizing the whole text is cheap enough to just do it
COUNT_CHUNK_BYTES = 1 << 20  # longer texts are counted a chunk at a time, stopping once past the context


# Piped input is read up to this many bytes, then refused: `gemma run < /dev/zero` must not fill the memory before
# the context check can see it. No Gemma context holds more: 256k tokens x the longest vocabulary piece (48 bytes for
# Gemma 3) is 12 MB, so 64 MiB never refuses a prompt that would fit.
MAX_STDIN_BYTES = 64 << 20


def format_bytes(n: int) -> str:
    """A byte count for a message: '512 bytes', '48.0 KB', '30.0 MB'."""
    if n < 1024:
        return f"{n} bytes"
    if n < 1024 * 1024:
        return f"{n / 1024:.1f} KB"
    return f"{n / (1024 * 1024):.1f} MB"


MAX_THREADS = 512  # ggml's GGML_MAX_N_THREADS: past it llama.cpp's thread pool throws and the process aborts


def check_threads(n: int | None, name: str = "--threads") -> int | None:
    """CPU threads: None means all available cores; at most MAX_THREADS (llama.cpp aborts past its own limit)."""
    if n is None:
        return None
    if not 1 <= n <= MAX_THREADS:
        raise UsageError(f"{name} must be between 1 and {MAX_THREADS}, got {n}")
    return int(n)


GREEDY_TEMPERATURE = 1e-4  # below this, sampling is greedy: logits / T would overflow, and no float32 logit gap is that fine


def is_greedy(temperature: float) -> bool:
    """Does this temperature mean argmax (0, and anything too small to divide by)?"""
    return temperature < GREEDY_TEMPERATURE


def check_sampling(temperature: float, top_k: int, top_p: float, min_p: float) -> None:
    """The sampling values `SamplingParams` holds (temperature below GREEDY_TEMPERATURE = greedy; top_k 0, top_p 1, min_p 0 = off)."""
    if not (0.0 <= temperature < float("inf")):
        raise UsageError(f"temperature must be a finite number >= 0, got {temperature}")
    if top_k < 0:
        raise UsageError(f"top_k must be >= 0 (0 = off), got {top_k}")
    if not (0.0 <= top_p <= 1.0):  # 0 keeps only the most likely token, as OpenAI's API and llama.cpp take it
        raise UsageError(f"top_p must be in [0, 1], got {top_p}")
    if not (0.0 <= min_p < 1.0):
        raise UsageError(f"min_p must be in [0, 1), got {min_p}")


RANDOM_SEED = -1  # as in llama.cpp: a fresh random seed


def check_seed(seed: int | None, name: str = "--seed") -> int | None:
    """A sampling seed: a whole number >= 0, or None / -1 for a random one (returned as None)."""
    if seed is None or seed == RANDOM_SEED:
        return None
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise UsageError(f"{name} must be a whole number >= 0, or -1 for a random seed, got {seed}")
    return seed
