"""Model-store views and actions for the API: tags, show, ps, delete, pull.

Thin adapters from the store/registry services to Ollama's JSON shapes; the
blocking work (disk, network) runs in threads so the event loop stays free.
"""

from __future__ import annotations

import asyncio
import json
import time
from datetime import datetime, timezone
from typing import Any, AsyncIterator

from gemma_cli.errors import ModelNotFoundError
from gemma_cli.server.errors import APIError


def _details(architecture: str, quantization: str, parameters: str = "") -> dict[str, Any]:
    return {"parent_model": "", "format": "gguf", "family": architecture, "families": [architecture],
            "parameter_size": parameters, "quantization_level": quantization}


_PARAMETER_SIZES: dict[str, str] = {}  # blob digest -> "268.1M": blobs are content-addressed, so never stale


def _parameter_size(digest: str) -> str:
    """The target's parameter count as `gemma show` prints it ("268.1M"), read once per blob from its GGUF
    header (tensor shapes only); "" when unreadable. Ollama clients (Open WebUI, `ollama ps`) show it."""
    if digest not in _PARAMETER_SIZES:
        from gemma_cli.errors import GemmaError
        from gemma_cli.gguf_meta import read_gguf
        from gemma_cli.registry.inspect import parameter_size_text
        from gemma_cli.store.layout import Layout

        try:
            size = parameter_size_text(read_gguf(Layout.default().blob(digest), strings=False).n_params)
        except (GemmaError, OSError, ValueError):
            size = ""
        _PARAMETER_SIZES[digest] = size
    return _PARAMETER_SIZES[digest]


def _iso(value: str) -> str:
    try:
        return datetime.fromisoformat(value).isoformat()
    except (TypeError, ValueError):
        return datetime.now(timezone.utc).isoformat()


def _tags_sync() -> list[dict[str, Any]]:
    from gemma_cli.store.store import list_models

    out = []
    for _, m in list_models():
        if isinstance(m, Exception):
            continue  # an unreadable manifest: `gemma list` reports it; the API lists what works
        digest = m.target.digest.split(":", 1)[-1]
        out.append({
            "name": m.name, "model": m.name, "modified_at": _iso(m.created), "size": m.size, "digest": digest,
            "details": _details(m.target.architecture, m.quantization, _parameter_size(m.target.digest)),
            "draft_source": m.draft_source, "drafter": m.drafter.filename if m.drafter else None,
        })
    return out


def _entries_sync() -> list[dict[str, Any]]:
    from gemma_cli.registry.inspect import list_entries

    return list_entries()


async def entries() -> list[dict[str, Any]]:
    """`gemma list --json` records, unreadable manifests included (GET /api/tags?gemma=1)."""
    return await asyncio.to_thread(_entries_sync)


async def tags() -> list[dict[str, Any]]:
    return await asyncio.to_thread(_tags_sync)


def openai_models(tag_list: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for t in tag_list:
        created = int(datetime.fromisoformat(t["modified_at"]).timestamp())
        out.append({"id": t["name"], "object": "model", "created": created, "owned_by": "library"})
    return out


def _show_sync(name: str) -> dict[str, Any]:
    from gemma_cli.gguf_meta import read_gguf
    from gemma_cli.registry.inspect import describe
    from gemma_cli.registry.resolve import resolve_model

    pair = resolve_model(name)
    info = describe(pair)
    t = info["target"]
    template = read_gguf(pair.target).get("tokenizer.chat_template") or ""
    arch = t["architecture"]
    model_info = {
        "general.architecture": arch,
        "general.parameter_count": t["parameters"],
        f"{arch}.context_length": t["context_length"],
        f"{arch}.embedding_length": t["embedding_length"],
    }
    return {
        "modelfile": f"# gemma-cli model {info['name']}\nFROM {t['file']}\n",
        "parameters": "",
        "template": template,
        "license": t.get("license") or "",
        "details": _details(arch, t["quantization"], t["parameters_human"]),
        "model_info": model_info,
        "capabilities": ["completion"],
        "modified_at": _iso(info.get("created", "")),
        "gemma": {"draft_source": info["draft_source"], "draft_tokens": info["draft_tokens"],
                  "drafter": info["drafter"], "tuned": info.get("tuned", {}),
                  "describe": json.loads(json.dumps(info, default=str))},  # what `gemma show --json` prints
    }


async def show(name: str) -> dict[str, Any]:
    return await asyncio.to_thread(_show_sync, name)


def _manifest_details(name: str) -> dict[str, Any]:
    from gemma_cli.registry.catalog import load_catalog
    from gemma_cli.store.store import load

    try:
        manifest = load(load_catalog().ref(name))
    except Exception:  # noqa: BLE001 - removed or unreadable meanwhile: details are optional
        manifest = None
    if manifest is None:
        return _details("", "")
    return _details(manifest.target.architecture, manifest.quantization, _parameter_size(manifest.target.digest))


def running(manager: Any) -> list[dict[str, Any]]:
    """/api/ps: the loaded (or loading) models."""
    out = []
    for m in manager.loaded():
        blob = m.pair.target.name  # store blobs are named sha256-<hex>
        digest = blob[len("sha256-"):] if blob.startswith("sha256-") else ""
        out.append({
            "name": m.name, "model": m.name, "size": m.size, "digest": digest,
            "details": _manifest_details(m.name),
            "expires_at": m.expires_at.isoformat(), "size_vram": 0,
            "context_length": m.n_ctx,
            "draft_source": m.draft_source, "in_use": m.in_use, "loaded": m.loaded,
            "num_parallel": m.parallel, "active_requests": m.active, "batched_requests": m.batched,
        })
    return out


async def delete(names: list[str]) -> dict[str, Any]:
    """Remove models as `gemma rm` does (every name checked first: a typo removes nothing);
    returns {"deleted": [stored names], "freed": bytes}, what `gemma rm` prints."""
    from gemma_cli.registry.manage import remove

    try:
        results = await asyncio.to_thread(remove, names)
    except ModelNotFoundError as exc:
        raise APIError(404, str(exc)) from None
    return {"deleted": [name for name, _ in results], "freed": results[-1][1] if results else 0}


class _Progress:
    """PullProgress that forwards (throttled) progress events to the event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue) -> None:
        self.loop, self.queue = loop, queue
        self.label, self.total, self.completed, self._sent = "", None, 0, 0.0

    def _emit(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._sent >= 0.1:
            self._sent = now
            event = {"status": f"pulling {self.label}", "digest": self.label, "total": self.total, "completed": self.completed}
            self.loop.call_soon_threadsafe(self.queue.put_nowait, ("event", event))

    def start(self, label: str, total: int | None, completed: int = 0) -> None:
        self.label, self.total, self.completed = label, total, completed
        self._emit(force=True)

    def advance(self, n: int) -> None:
        self.completed += n
        self._emit()

    def finish(self) -> None:
        self._emit(force=True)

    def abort(self, note: str) -> None:
        """The transfer stopped early: the error itself follows as the stream's last line."""
        self._emit(force=True)


async def pull_events(name: str) -> AsyncIterator[dict[str, Any]]:
    """Ollama-style progress objects for pulling `name`; unknown names fail before the first one."""
    from gemma_cli.registry.catalog import load_catalog
    from gemma_cli.registry.pull import pull

    load_catalog().lookup(name)  # ModelNotFoundError (404) before anything streams
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    progress = _Progress(loop, queue)

    def work() -> None:
        try:
            result = pull(name, progress)
            loop.call_soon_threadsafe(queue.put_nowait, ("done", result))
        except BaseException as exc:  # noqa: BLE001 - reported as a JSON line
            loop.call_soon_threadsafe(queue.put_nowait, ("error", exc))

    yield {"status": "pulling manifest"}
    task = loop.run_in_executor(None, work)
    while True:
        kind, value = await queue.get()
        if kind == "event":
            yield value
        elif kind == "error":
            await task
            raise value
        else:
            await task
            yield {"status": "verifying sha256 digest"}
            yield {"status": "writing manifest"}
            yield {"status": "success", "gemma": value.summary()}  # what `gemma pull` reports (client mode)
            return


async def pull_all(name: str) -> None:
    async for _ in pull_events(name):
        pass
