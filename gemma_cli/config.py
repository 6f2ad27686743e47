"""Where gemma-cli keeps things, read lazily from the environment.

Functions rather than module constants so tests (and users) can change
`GEMMA_MODELS` and friends at any time, as Ollama's envconfig does.
"""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

APP_NAME = "gemma-cli"

#: Environment variables gemma-cli reads itself (huggingface_hub reads HF_*).
ENVIRONMENT = {
    "GEMMA_MODELS": "model store directory (manifests and blobs)",
    "GEMMA_HISTORY": "chat history file",
    "GEMMA_CATALOG": "a model catalog JSON file replacing the built-in one (mirrors, tests)",
    "GEMMA_DEBUG": "1: show llama.cpp logs and Python tracebacks",
    "GEMMA_CPU_REPACK": "1: let llama.cpp repack CPU weights (default off: the AMX path of native builds can segfault)",
    "GEMMA_CACHE": "cache directory (probe-load results for model files, measured pass costs; default: the user cache dir)",
    "GEMMA_PROBE": "0: skip the one-time child-process probe load of a new model file (header checks still run)",
    "GEMMA_MEMORY_AVAILABLE": "free RAM the memory checks assume instead of measuring it, e.g. 6G or 512M (containers)",
    "GEMMA_STALL_TIMEOUT": "seconds without a byte before a download counts as stalled and is retried (default 30)",
    "GEMMA_HOST": "address of `gemma serve` (host:port; default 127.0.0.1:11436), and the server `ps`/`stop` talk to",
    "GEMMA_KEEP_ALIVE": "how long `gemma serve` keeps an idle model loaded (default 5m; 0 unloads at once, negative never)",
    "GEMMA_MAX_LOADED_MODELS": "models `gemma serve` keeps loaded at once (default 1; least recently used unloads first)",
    "GEMMA_MAX_QUEUE": "requests that may wait for a busy model before `gemma serve` answers 503 (default 64)",
    "GEMMA_ORIGINS": "extra browser origins allowed to call `gemma serve` (comma-separated, * wildcards; loopback always is)",
    "GEMMA_MAX_BODY": "request body limit of `gemma serve` in bytes (default 8 MiB)",
    "NO_COLOR": "disable colour on the terminal",
    "HF_ENDPOINT": "Hugging Face endpoint (huggingface_hub)",
    "HF_TOKEN": "Hugging Face token for gated repositories (huggingface_hub)",
    "HF_HUB_OFFLINE": "1: never touch the network (huggingface_hub)",
}


def models_dir() -> Path:
    """The model store root: `$GEMMA_MODELS` or the platform's user data dir."""
    override = os.environ.get("GEMMA_MODELS")
    if override:
        return Path(override).expanduser()
    return Path(platformdirs.user_data_dir(APP_NAME)) / "models"


def history_file() -> Path:
    """Chat REPL history (prompt_toolkit FileHistory)."""
    override = os.environ.get("GEMMA_HISTORY")
    if override:
        return Path(override).expanduser()
    return Path(platformdirs.user_state_dir(APP_NAME)) / "chat_history"


def cache_dir() -> Path:
    """`$GEMMA_CACHE` or the user cache dir: what this user's machine learnt (probe loads, pass costs)."""
    override = os.environ.get("GEMMA_CACHE")
    if override:
        return Path(override).expanduser()
    return Path(platformdirs.user_cache_dir(APP_NAME))


_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off"}


def env_flag(name: str) -> bool | None:
    """An on/off environment variable: True/False when set, None when unset or empty.

    Anything else is a usage error rather than a silent default: `GEMMA_CPU_REPACK=maybe`
    should not leave the user believing it took effect.
    """
    value = os.environ.get(name, "").strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    if value:
        from gemma_cli.errors import UsageError
        from gemma_cli.text_safety import clean_display

        raise UsageError(f"{name} must be 1 or 0 (or true/false, yes/no, on/off), got {clean_display(os.environ[name], 40)!r}")
    return None


def cpu_repack_override() -> bool | None:
    """`GEMMA_CPU_REPACK`: True/False when set, None when unset."""
    return env_flag("GEMMA_CPU_REPACK")


DEFAULT_STALL_TIMEOUT = 30.0


def stall_timeout() -> float:
    """`GEMMA_STALL_TIMEOUT`: seconds without data before a transfer counts as stalled (as Ollama's ~30 s)."""
    try:
        value = float(os.environ.get("GEMMA_STALL_TIMEOUT", ""))
    except ValueError:
        return DEFAULT_STALL_TIMEOUT
    return value if 0 < value < 3600 else DEFAULT_STALL_TIMEOUT
