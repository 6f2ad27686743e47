"""Client mode: `run`, `chat`, `list`, `show`, `pull` and `rm` against a running `gemma serve`.

With `--host` or $GEMMA_HOST set, these commands send their work to that
server instead of loading models here, and print exactly what they print
in-process: the server sends the CLI's own records and statistics (the
`x_gemma` request flag, the `gemma` objects of /api/show and /api/pull, the
`exit_code` of its errors), and the commands render them with the same code.
A .gguf path is a file on this machine, so it always runs in-process.

`gemma serve` reads GEMMA_HOST as its bind address and never comes here.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import TYPE_CHECKING, Annotated, Any, Iterator, Optional

import typer

from gemma_cli.client import Client, ServerError, ServerModelNotFound
from gemma_cli.engine import GenerationResult, LiveStats, Piece, StopReason  # engine.types only: no llama.cpp
from gemma_cli.registry.catalog import in_catalog

if TYPE_CHECKING:
    from gemma_cli.registry.pull import PullProgress

HostOpt = Annotated[Optional[str], typer.Option(
    "--host", help="Use the `gemma serve` at host:port instead of loading models here (default: $GEMMA_HOST; unset: in-process).",
    show_default=False, rich_help_panel="Client mode")]


def client(host: str | None, model: str | None = None) -> Client | None:
    """The server to talk to, or None to work in-process (no --host, GEMMA_HOST unset, or a local .gguf)."""
    value = host if host is not None else os.environ.get("GEMMA_HOST")
    if not value or not value.strip() or (model is not None and model.endswith(".gguf")):
        return None
    return Client.from_env(value.strip())


def model_name(model: str | None) -> str:
    """What to ask the server for: the name as typed (an empty one is refused as locally), or the default model."""
    from gemma_cli.registry.catalog import DEFAULT_MODEL
    from gemma_cli.store.names import parse_name

    if model is None:
        return DEFAULT_MODEL
    if not model.strip():
        parse_name(model)  # raises: an empty name
    return model


def list_entries(server: Client) -> list[dict[str, Any]]:
    """The server's `gemma list --json` records."""
    return server.records("/api/tags?gemma=1", "gemma")


def describe(server: Client, name: str) -> dict[str, Any]:
    """The server's `gemma show --json` facts for `name`."""
    with server.reading("/api/show"):
        info = server.show(name).get("gemma", {}).get("describe")
    if not isinstance(info, dict):
        raise ServerError("the server did not send gemma's model facts; is it an older gemma serve, or another server?")
    return info


def remove(server: Client, names: list[str]) -> list[tuple[str, int]]:
    """`gemma rm` on the server's store: [(stored name, bytes freed in total)], as `registry.manage.remove`."""
    with server.reading("/api/delete"):
        summary = server.delete(names).get("gemma")
        if not isinstance(summary, dict):
            raise ServerError("the server did not send gemma's delete summary; is it another server?")
        freed = int(summary["freed"])
        return [(str(name), freed) for name in summary["deleted"]]


def pull(server: Client, name: str, progress: PullProgress) -> dict[str, Any]:
    """Pull on the server, drawing its progress lines as local bars; returns `PullResult.summary()`."""
    from gemma_cli.registry.pull import abort_progress

    label, done = None, 0
    try:
        with server.reading("/api/pull"):
            for event in server.pull(name):
                digest = event.get("digest")
                if digest and digest != label:
                    if label is not None:
                        progress.finish()
                    label, done = digest, int(event.get("completed") or 0)
                    progress.start(digest, event.get("total"), done)
                elif digest:
                    completed = int(event.get("completed") or 0)
                    if completed > done:
                        progress.advance(completed - done)
                        done = completed
                if event.get("status") == "success":
                    if label is not None:
                        progress.finish()
                        label = None
                    summary = event.get("gemma")
                    if not isinstance(summary, dict):
                        raise ServerError("the server did not send gemma's pull summary; is it another server?")
                    return summary
    except BaseException:
        if label is not None:
            abort_progress(progress, "stopped")
        raise
    raise ServerError("the server ended the pull without saying it succeeded")


def _stats(d: dict[str, Any]) -> LiveStats:
    """LiveStats from `as_dict()`, with the same wall time, so every derived figure is the same."""
    names = {f.name for f in dataclasses.fields(LiveStats)} - {"started", "finished"}
    stats = LiveStats(**{k: d[k] for k in names if k in d})
    stats.started, stats.finished = 0.0, float(d.get("wall_s", 0.0))
    return stats


class RemoteGeneration:
    """A generation on the server, consumed like the engine's: iterate pieces, then `result`.

    `stats` is updated as pieces arrive (for chat's status line) and replaced by
    the server's exact statistics at the end. `cancel()` (Ctrl-C) closes the
    connection at the next piece; the server cancels within a decode step.
    """

    def __init__(self, server: Client, path: str, body: dict[str, Any]) -> None:
        self.stats = LiveStats()
        self.result: GenerationResult | None = None
        self.load_s = 0.0
        self.model = str(body.get("model"))
        self._cancelled = False
        self._text: list[str] = []
        self._reading = server.reading(path)
        self._events = server.stream(path, {**body, "stream": True, "x_gemma": True})
        self._first = next(self._events, None)  # errors (unknown model, bad prompt) raise here, before output

    def cancel(self) -> None:
        self._cancelled = True

    def close(self) -> None:
        self._events.close()

    def __iter__(self) -> Iterator[Piece]:
        events = self._events
        obj = self._first
        self._first = None
        try:
            while obj is not None:
                if obj.get("done"):
                    with self._reading:
                        self._finish(obj)
                    return
                if self._cancelled:
                    break
                with self._reading:
                    piece = self._piece(obj)
                yield piece
                obj = next(events, None)
            if not self._cancelled:
                raise ServerError("the server closed the stream before the generation ended")
            self.stats.finished = time.perf_counter()
            self.result = GenerationResult("".join(self._text), [], StopReason.CANCELLED, self.stats)
        finally:
            events.close()

    def _piece(self, obj: dict[str, Any]) -> Piece:
        text = obj["response"] if "response" in obj else (obj.get("message") or {}).get("content", "")
        x = obj.get("x_gemma") or {}
        piece = Piece(text, int(x.get("tokens", 0)), int(x.get("drafted", 0)), int(x.get("draft_chars", 0)))
        s = self.stats
        if s.generated_tokens == 0 and piece.n_tokens:
            s.ttft_s = time.perf_counter() - s.started
        s.generated_tokens += piece.n_tokens
        s.emitted_from_draft += piece.n_drafted
        self._text.append(text)
        return piece

    def _finish(self, obj: dict[str, Any]) -> None:
        self.model = str(obj.get("model") or self.model)
        x = obj.get("x_gemma")
        if not isinstance(x, dict) or not isinstance(x.get("stats"), dict):
            raise ServerError("the server did not send gemma's statistics; is it another server?")
        self.stats = _stats(x["stats"])
        self.load_s = float(x.get("load_s") or 0.0)
        self.result = GenerationResult("".join(self._text), [], StopReason(x.get("stop_reason", "eos")), self.stats)


def start(server: Client, path: str, body: dict[str, Any], *, pull_missing: bool = True) -> RemoteGeneration:
    """Start a generation; a catalog model the server has not pulled is pulled first, as in-process."""
    try:
        return RemoteGeneration(server, path, body)
    except ServerModelNotFound:
        if not pull_missing or not in_catalog(str(body["model"])):
            raise
    _pull_for_run(server, str(body["model"]))
    return RemoteGeneration(server, path, body)


def ensure_pulled(server: Client, name: str) -> dict[str, Any]:
    """/api/show for `name`, pulling a catalog model the server does not have yet (as `gemma chat` does)."""
    try:
        return server.show(name)
    except ServerModelNotFound:
        if not in_catalog(name):
            raise
    _pull_for_run(server, name)
    return server.show(name)


def _pull_for_run(server: Client, name: str) -> None:
    import sys

    from gemma_cli.cli.progress import progress_for

    sys.stderr.write(f"{name} is not pulled yet; pulling it now (Ctrl-C stops, the same command resumes)\n")
    sys.stderr.flush()
    with progress_for(False) as progress:
        pull(server, name, progress)


def options(*, temperature: float, top_k: int, top_p: float, min_p: float, seed: int | None, max_tokens: int,
            stop: list[str] | None, draft: str, draft_tokens: int | None, ctx: int, default_ctx: int = 4096) -> dict[str, Any]:
    """The command's options as Ollama `options` (num_ctx only when --ctx was changed, so a
    server started with another context size does not reload for every client).

    Checked here as in-process (same messages, exit 2) before anything is sent."""
    from gemma_cli import limits
    from gemma_cli.errors import UsageError
    from gemma_cli.session import DRAFT_CHOICES

    if draft not in DRAFT_CHOICES:
        raise UsageError(f"--draft must be one of {', '.join(DRAFT_CHOICES)}, got {draft!r}")
    if draft_tokens is not None:
        limits.check_draft_tokens(draft_tokens)
    limits.check_n_ctx(ctx, "--ctx")
    out: dict[str, Any] = {"temperature": temperature, "top_k": top_k, "top_p": top_p, "min_p": min_p,
                           "num_predict": max_tokens, "draft": draft}
    if seed is not None:
        out["seed"] = seed
    if stop:
        out["stop"] = list(stop)
    if draft_tokens is not None:
        out["draft_tokens"] = draft_tokens
    if ctx != default_ctx:
        out["num_ctx"] = ctx
    return out
