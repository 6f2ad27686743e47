"""A chat conversation: messages, fitting them into the context, save/load.

The conversation is the source of truth and is re-rendered with the model's
chat template every turn; the engine's KV cache reuses the common prefix, so
only the new turn is evaluated. When prompt + reply room would overflow the
context, the oldest user/assistant exchanges are dropped (never the system
prompt) and the caller is told how many.

Saved files are plain JSON and may come from anywhere, so `load` checks size,
types, roles and turn order and reports problems as one-line errors.
"""

from __future__ import annotations

import json
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, Sequence

from gemma_cli.errors import ContextFullError, GemmaError

FORMAT = "gemma-cli.chat"
VERSION = 1
ROLES = ("system", "user", "assistant")
MAX_FILE_BYTES = 32 * 1024 * 1024  # a conversation file larger than this is not one of ours
MAX_MESSAGES = 100_000


def _valid_text(text: str) -> str:
    """JSON may hold lone surrogates (\\ud800) that no tokenizer can encode: make them U+FFFD."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")


class ChatFileError(GemmaError):
    """A conversation file cannot be read or is not a valid gemma-cli conversation."""


class _Engine(Protocol):
    """What a Conversation needs from the engine (gemma_cli.engine.generate.Engine)."""

    @property
    def n_ctx(self) -> int: ...

    def chat_tokens(self, messages: Sequence[dict[str, str]], *, add_generation_prompt: bool = True) -> list[int]: ...


@dataclass(frozen=True)
class Fitted:
    """A rendered prompt and how many old exchanges had to go to make it fit."""

    tokens: list[int]
    dropped_turns: int


@dataclass
class Conversation:
    """System prompt plus alternating user/assistant messages (user first)."""

    system: str | None = None
    turns: list[dict[str, str]] = field(default_factory=list)

    # -- editing ---------------------------------------------------------
    def add_user(self, text: str) -> None:
        if self.turns and self.turns[-1]["role"] == "user":
            raise ValueError("a user message must be followed by a reply before the next one")
        self.turns.append({"role": "user", "content": text})

    def add_assistant(self, text: str) -> None:
        if not self.turns or self.turns[-1]["role"] != "user":
            raise ValueError("an assistant reply needs a user message before it")
        self.turns.append({"role": "assistant", "content": text})

    def pop_user(self) -> str | None:
        """Undo a user message that got no reply (e.g. the prompt did not fit)."""
        if self.turns and self.turns[-1]["role"] == "user":
            return self.turns.pop()["content"]
        return None

    def clear(self) -> None:
        """Forget the exchanges, keep the system prompt."""
        self.turns.clear()

    @property
    def messages(self) -> list[dict[str, str]]:
        """Everything the template sees: the system prompt first (if any), then the turns."""
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + [dict(m) for m in self.turns]

    @property
    def n_exchanges(self) -> int:
        return sum(1 for m in self.turns if m["role"] == "user")

    # -- fitting into the context -----------------------------------------
    def fit(self, engine: _Engine, reply_room: int) -> Fitted:
        """Render for the next reply, dropping oldest exchanges while it would overflow.

        `reply_room` is how many tokens to keep free for the answer (capped at
        half the context, so a huge --max-tokens does not wipe the history).
        The newest user message is never dropped: if it alone does not fit,
        ContextFullError says so and the conversation is left unchanged.
        """
        n_ctx = engine.n_ctx
        room = max(1, min(reply_room, n_ctx // 2))
        head = [{"role": "system", "content": self.system}] if self.system else []
        turns = list(self.turns)

        def render() -> list[int] | None:
            try:
                return engine.chat_tokens(head + turns)
            except ContextFullError:  # certainly too long (refused before tokenizing): drop more, unless only the new message is left
                if len(turns) > 1:
                    return None
                raise

        tokens = render()
        while (tokens is None or len(tokens) + room > n_ctx) and len(turns) > 1:
            del turns[:2]  # one user message and its reply
            tokens = render()
        assert tokens is not None
        if len(tokens) >= n_ctx:
            raise ContextFullError(
                f"this message needs {len(tokens)} tokens but the context holds {n_ctx}; "
                "shorten it, shorten the system prompt, or restart with a larger --ctx"
            )
        dropped = (len(self.turns) - len(turns)) // 2
        self.turns[:] = turns
        return Fitted(tokens, dropped)

    # -- persistence -----------------------------------------------------
    def to_json(self, *, model: str | None = None) -> dict[str, Any]:
        doc: dict[str, Any] = {"format": FORMAT, "version": VERSION, "messages": self.messages}
        if model:
            doc["model"] = model
        return doc

    def save(self, path: str | Path, *, model: str | None = None, overwrite: bool = False) -> Path:
        """Write the conversation atomically (an interrupted save keeps the old file).

        An existing file is replaced only with `overwrite` (`/save!`), keeping its
        permissions; a missing directory is an error, never created.
        """
        from gemma_cli.store.atomic import save_user_file

        path = Path(path).expanduser()
        data = (json.dumps(self.to_json(model=model), ensure_ascii=False, indent=2) + "\n").encode("utf-8", "replace")
        try:
            save_user_file(path, data, overwrite=overwrite)
        except FileExistsError:
            raise ChatFileError(f"{path} already exists; use /save! {path} to replace it") from None
        except IsADirectoryError:
            raise ChatFileError(f"cannot save the conversation to {path}: it is a directory") from None
        except FileNotFoundError:
            raise ChatFileError(f"cannot save the conversation to {path}: directory {path.parent} does not exist") from None
        except OSError as exc:
            raise ChatFileError(f"cannot save the conversation to {path}: {exc.strerror or exc}") from None
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Conversation":
        """Read a file written by `save`, refusing anything malformed with a one-line reason."""
        path = Path(path).expanduser()
        try:
            if not path.is_dir() and not stat.S_ISREG(path.stat().st_mode):  # a FIFO would block the chat for ever
                raise ChatFileError(f"{path} is not a regular file; not a conversation file")
            with open(path, "rb") as fh:
                raw = fh.read(MAX_FILE_BYTES + 1)
        except FileNotFoundError:
            raise ChatFileError(f"no such conversation file: {path}") from None
        except IsADirectoryError:
            raise ChatFileError(f"{path} is a directory, not a conversation file") from None
        except OSError as exc:
            raise ChatFileError(f"cannot read {path}: {exc.strerror or exc}") from None
        if len(raw) > MAX_FILE_BYTES:
            raise ChatFileError(f"{path} is larger than {MAX_FILE_BYTES // (1024 * 1024)} MiB; not a conversation file")
        try:
            doc = json.loads(raw.decode("utf-8-sig"))  # a byte-order mark, as Windows editors save, is fine
        except UnicodeDecodeError:
            raise ChatFileError(f"{path} is not UTF-8 text; not a conversation file") from None
        except (ValueError, RecursionError) as exc:  # ValueError: JSONDecodeError, or a 5,000-digit number
            where = f" (line {exc.lineno})" if isinstance(exc, json.JSONDecodeError) else ""
            raise ChatFileError(f"{path} is not valid JSON{where}") from None
        return cls.from_json(doc, source=str(path))

    @classmethod
    def from_json(cls, doc: Any, *, source: str = "conversation") -> "Conversation":
        def bad(why: str) -> ChatFileError:
            return ChatFileError(f"{source} is not a gemma-cli conversation: {why}")

        if not isinstance(doc, dict):
            raise bad("expected a JSON object at the top level")
        if doc.get("format", FORMAT) != FORMAT:
            raise bad(f"format is {str(doc.get('format'))[:40]!r}, expected {FORMAT!r}")
        version = doc.get("version", VERSION)
        if version != VERSION or isinstance(version, bool):
            raise bad(f"unsupported version {str(version)[:20]}; this gemma-cli reads version {VERSION}")
        messages = doc.get("messages")
        if not isinstance(messages, list):
            raise bad("'messages' must be a list")
        if len(messages) > MAX_MESSAGES:
            raise bad(f"more than {MAX_MESSAGES} messages")
        conv = cls()
        for i, m in enumerate(messages):
            if not isinstance(m, dict):
                raise bad(f"message {i + 1} is not an object")
            role, content = m.get("role"), m.get("content")
            if role not in ROLES:
                raise bad(f"message {i + 1} has role {str(role)[:20]!r}; expected one of {', '.join(ROLES)}")
            if not isinstance(content, str):
                raise bad(f"message {i + 1} has no text 'content'")
            content = _valid_text(content)
            if role == "system":
                if i != 0:
                    raise bad(f"message {i + 1}: a system prompt may only come first")
                conv.system = content or None
                continue
            expected = "user" if not conv.turns or conv.turns[-1]["role"] == "assistant" else "assistant"
            if role != expected:
                raise bad(f"message {i + 1} is from {role!r} but roles must alternate user/assistant, starting with user")
            conv.turns.append({"role": role, "content": content})
        if conv.turns and conv.turns[-1]["role"] == "user":
            raise bad("the last message is a user message without a reply")
        return conv
