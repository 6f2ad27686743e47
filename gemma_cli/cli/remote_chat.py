"""`gemma chat` in client mode: the same REPL, its turns sent to a running `gemma serve`.

The REPL, slash commands and rendering are the in-process ones. What they read
from an engine (context size, draft settings, model facts, load time) comes
from the server's /api/show and /api/ps here, and each turn sends the whole
conversation to /api/chat, where the server's KV prefix reuse evaluates only
the new tokens. One difference: the server cannot tokenize for us, so a
conversation that outgrows the context is reported (and the message dropped)
rather than trimmed of its oldest exchanges.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gemma_cli.cli import remote
from gemma_cli.cli.interrupt import CancelOnSigint
from gemma_cli.cli.render import ReplyRenderer
from gemma_cli.cli.repl import ChatRepl
from gemma_cli.client import Client
from gemma_cli.errors import GemmaError
from gemma_cli.pair import ModelPair


def pair_from_info(info: dict[str, Any]) -> ModelPair:
    """The server's `gemma show --json` facts as a ModelPair (paths are the server's: shown, never opened)."""
    drafter = info.get("drafter") or None
    tuned = {w: int(v["draft_tokens"]) for w, v in (info.get("tuned") or {}).items()
             if isinstance(v, dict) and isinstance(v.get("draft_tokens"), int)}
    return ModelPair(name=str(info["name"]), target=Path(info["target"]["file"]),
                     drafter=Path(drafter["file"]) if drafter else None, draft_source=str(info["draft_source"]),
                     draft_tokens=int(info["draft_tokens"]), tuned=tuned)


@dataclass(frozen=True)
class ServerTarget:
    """The model facts `/show info` and `/show template` read (from /api/show)."""

    architecture: str
    n_params: int
    size_bytes: int
    n_ctx_train: int
    template: str

    def chat_template(self) -> str:
        return self.template


class ServerModel:
    """Stands in for the Engine the REPL holds: settings it reads, `set_draft`, `cancel`."""

    def __init__(self, server: Client, pair: ModelPair, show: dict[str, Any], draft: Any) -> None:
        t = show["gemma"]["describe"]["target"]
        self.server = server
        self.target = ServerTarget(str(t["architecture"]), int(t["parameters"] or 0), int(t["size_bytes"] or 0),
                                   int(t["context_length"] or 0), str(show.get("template") or ""))
        self.draft = draft
        self.n_ctx = 0
        self.load_seconds = 0.0
        self.num_ctx: int | None = None  # sent with every turn when --ctx was given
        self.current: remote.RemoteGeneration | None = None

    @property
    def is_base_model(self) -> bool:
        """No chat template: the server frames the chat as a transcript, as in-process."""
        return not self.target.template

    def set_draft(self, config: Any) -> None:
        self.draft = config  # sent with the next turn

    def cancel(self) -> None:
        if self.current is not None:
            self.current.cancel()

    def load(self, name: str, num_ctx: int | None) -> None:
        """Load the model on the server now (as `gemma chat` does before its banner); learn its context."""
        body: dict[str, Any] = {"model": name, "stream": False}
        self.num_ctx = num_ctx
        if num_ctx is not None:
            body["options"] = {"num_ctx": num_ctx}
        reply = self.server.request("POST", "/api/generate", body)
        self.load_seconds = float(reply.get("load_duration") or 0) / 1e9
        for m in self.server.ps():
            if m.get("name") == name:
                self.n_ctx = int(m.get("context_length") or 0)

    def close(self) -> None:
        if self.current is not None:
            self.current.close()


class RemoteChatRepl(ChatRepl):
    """ChatRepl whose turns run on the server."""

    def turn(self, text: str) -> None:
        if not text.strip():
            return
        conv, engine, s = self.conv, self.engine, self.settings
        assert isinstance(engine, ServerModel)
        conv.add_user(text)
        p = s.sampling
        options: dict[str, Any] = {"temperature": p.temperature, "top_k": p.top_k, "top_p": p.top_p, "min_p": p.min_p,
                                   "num_predict": s.max_tokens, "draft": engine.draft.source,
                                   "draft_tokens": engine.draft.tokens}
        if p.seed is not None:
            options["seed"] = p.seed
        if engine.num_ctx is not None:
            options["num_ctx"] = engine.num_ctx
        try:
            generation = remote.start(engine.server, "/api/chat",
                                      {"model": self.pair.name, "messages": conv.messages, "options": options},
                                      pull_missing=False)
        except GemmaError:
            conv.pop_user()
            raise
        engine.current = generation
        renderer = ReplyRenderer(self.out, self.err, live=self.live, color=self.color, highlight=s.highlight)
        try:
            with CancelOnSigint(engine, second_interrupts=False) as sig:
                shown = renderer.stream(generation, generation.stats, prompt_tokens=0, stopped=lambda: sig.fired)
        except Exception:
            conv.pop_user()
            raise
        finally:
            generation.close()
            engine.current = None
        self._finish_turn(generation.result, shown, sig.fired, renderer)
