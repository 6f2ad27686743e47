"""The `gemma chat` read-eval-print loop: input, slash commands, one turn at a time.

No engine logic lives here: a turn is "add the user message, fit the
conversation into the context, stream a generation, keep the reply".

Input comes from prompt_toolkit on a terminal (persistent history, `\"\"\"`
blocks, bracketed paste, Alt-Enter for a newline) and from plain lines
otherwise, so `printf 'hi\\n/bye\\n' | gemma chat` works too.

Ctrl-C while a reply streams stops it after the current decode step. The
partial reply is KEPT as the assistant's message: the conversation then holds
exactly what the user saw, the user/assistant alternation the chat templates
require stays intact, and the KV cache already holds those tokens. `/clear`
starts over.
"""

from __future__ import annotations

import shlex
import signal
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, TextIO

from gemma_cli.chat import Conversation
from gemma_cli.cli import engine_options as opt
from gemma_cli.cli.output import verbose_summary_lines
from gemma_cli.text_safety import clean_display
from gemma_cli.cli.render import ReplyRenderer
from gemma_cli.engine.sampling import SamplingParams
from gemma_cli.engine.types import GenerationResult
from gemma_cli.errors import GemmaError, UsageError
from gemma_cli.pair import ModelPair

PROMPT = ">>> "
CONTINUATION = "... "
BLOCK = '"""'

HELP = [
    ("/set PARAM VALUE", "temperature, top_k, top_p, min_p, seed, max_tokens, draft, draft_tokens, system, verbose, highlight"),
    ("/show WHAT", "info, parameters, system, template, stats"),
    ("/clear", "forget the conversation (the system prompt stays)"),
    ("/save FILE", "save the conversation as JSON"),
    ("/load FILE", "continue a saved conversation"),
    ("/bye, /exit", "leave (or Ctrl-D)"),
    ('"""', "start and end a multi-line message (Alt-Enter also adds a line)"),
    ("Ctrl-C", "stop the reply being generated (the partial reply is kept)"),
]
SET_KEYS = ("temperature", "top_k", "top_p", "min_p", "seed", "max_tokens", "draft", "draft_tokens", "system", "verbose", "highlight")
SHOW_KEYS = ("info", "parameters", "system", "template", "stats")
ON = {"on", "true", "yes", "1"}
OFF = {"off", "false", "no", "0"}


@dataclass(frozen=True)
class ChatSettings:
    """Everything `/set` can change besides the draft source."""

    sampling: SamplingParams
    max_tokens: int = 1024
    draft: str = "auto"
    draft_tokens: int | None = None
    verbose: bool = False
    highlight: bool = False


# -- input -------------------------------------------------------------------
def block_open(text: str) -> bool:
    """Is `text` an unfinished \"\"\" block (Enter should add a line, not send)?"""
    s = text.strip()
    if not s.startswith(BLOCK):
        return False
    return len(s) < 2 * len(BLOCK) or not s.endswith(BLOCK)


def unwrap_block(text: str) -> str:
    """The message inside a \"\"\" block; other text unchanged."""
    s = text.strip()
    if s.startswith(BLOCK) and s.endswith(BLOCK) and len(s) >= 2 * len(BLOCK):
        return s[len(BLOCK) : -len(BLOCK)].strip("\n")
    return text


class PlainReader:
    """Lines from a pipe or file; \"\"\" blocks span lines. No prompt is printed."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def read(self) -> str | None:
        line = self.stream.readline()
        if not line:
            return None
        text = line.rstrip("\n")
        while block_open(text):
            more = self.stream.readline()
            if not more:
                break
            text += "\n" + more.rstrip("\n")
        return text


class TerminalReader:
    """prompt_toolkit prompt with a persistent history file."""

    def __init__(self, history_path: Path, warn: Callable[[str], None]) -> None:
        from prompt_toolkit import PromptSession
        from prompt_toolkit.history import FileHistory, History, InMemoryHistory
        from prompt_toolkit.key_binding import KeyBindings

        history: History
        try:
            history_path.parent.mkdir(parents=True, exist_ok=True)
            with open(history_path, "a", encoding="utf-8"):
                pass
            history = FileHistory(str(history_path))
        except OSError as exc:
            warn(f"history is not saved: cannot write {history_path} ({exc.strerror or exc})")
            history = InMemoryHistory()

        kb = KeyBindings()

        @kb.add("enter")
        def _enter(event) -> None:  # send, unless inside a """ block
            buf = event.current_buffer
            if block_open(buf.text):
                buf.insert_text("\n")
            else:
                buf.validate_and_handle()

        @kb.add("escape", "enter")
        def _newline(event) -> None:  # Alt-Enter: a new line without sending
            event.current_buffer.insert_text("\n")

        self.session = PromptSession(
            history=history,
            key_bindings=kb,
            prompt_continuation=CONTINUATION,
            placeholder="Send a message (/? for help)",
        )

    def read(self) -> str | None:
        while True:
            try:
                return self.session.prompt(PROMPT)
            except KeyboardInterrupt:  # Ctrl-C at the prompt: drop the line, keep going
                continue
            except EOFError:
                return None


class _CancelOnInterrupt:
    """While a reply streams, every Ctrl-C asks the engine to stop after the current step.

    Unlike `gemma run`, a second Ctrl-C does not raise: the REPL must stay
    alive and the engine's KV cache consistent.
    """

    def __init__(self, engine) -> None:
        self.engine = engine
        self.fired = False
        self._previous = None

    def _handler(self, signum, frame) -> None:
        self.fired = True
        self.engine.cancel()

    def __enter__(self) -> "_CancelOnInterrupt":
        self._previous = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc: object) -> None:
        signal.signal(signal.SIGINT, self._previous)


# -- the loop ----------------------------------------------------------------
class ChatRepl:
    def __init__(
        self,
        engine,
        pair: ModelPair,
        settings: ChatSettings,
        conversation: Conversation,
        *,
        reader,
        out: TextIO,
        err: TextIO,
        color: bool,
        live: bool,
    ) -> None:
        self.engine = engine
        self.pair = pair
        self.settings = settings
        self.conv = conversation
        self.reader = reader
        self.out = out
        self.err = err
        self.color = color
        self.live = live
        self.last: GenerationResult | None = None

    # output helpers
    def say(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def hint(self, text: str) -> None:
        line = text.replace("\n", " ")
        self.err.write((f"\x1b[33m{line}\x1b[0m" if self.color else line) + "\n")
        self.err.flush()

    def run(self) -> None:
        while True:
            line = self.reader.read()
            if line is None:
                break
            if not line.strip():
                continue
            try:
                if line.lstrip().startswith("/") and not line.lstrip().startswith(BLOCK):
                    if not self.command(line.strip()):
                        break
                else:
                    self.turn(unwrap_block(line))
            except GemmaError as exc:
                self.hint(str(exc))
            except KeyboardInterrupt:  # Ctrl-C just before or after a reply's own handler
                self.conv.pop_user()
                self.hint("(interrupted)")

    # one turn
    def turn(self, text: str) -> None:
        if not text.strip():
            return
        conv, engine, s = self.conv, self.engine, self.settings
        conv.add_user(text)
        try:
            fitted = conv.fit(engine, s.max_tokens)
            generation = engine.generate(fitted.tokens, max_tokens=s.max_tokens, sampling=s.sampling)
        except GemmaError:
            conv.pop_user()
            raise
        if fitted.dropped_turns:
            self.hint(
                f"(the conversation outgrew the {engine.n_ctx}-token context: dropped the oldest "
                f"{fitted.dropped_turns} exchange(s), kept the system prompt)"
            )
        renderer = ReplyRenderer(self.out, self.err, live=self.live, color=self.color, highlight=s.highlight)
        try:
            with _CancelOnInterrupt(engine) as sig:
                renderer.stream(generation, generation.stats, prompt_tokens=len(fitted.tokens))
        except GemmaError:
            conv.pop_user()
            raise
        result = generation.result
        if result is None:  # the stream ended abnormally
            conv.pop_user()
            return
        conv.add_assistant(result.text)
        self.last = result
        renderer.summary(result.stats, result.stop_reason)
        if sig.fired:
            self.hint("(stopped; the partial reply stays in the conversation, /clear starts over)")
        if s.verbose:
            self._verbose(result)

    def _verbose(self, result: GenerationResult) -> None:
        rows = verbose_summary_lines(result.stats, self.engine.load_seconds)
        width = max(len(k) for k, _ in rows) + 2
        for key, value in rows:
            self.err.write(f"{key + ':':<{width}}{value}\n")
        self.err.flush()

    # slash commands
    def command(self, line: str) -> bool:
        """Run one slash command; False means leave the REPL."""
        name, _, rest = line.partition(" ")
        name = name.lower()
        rest = rest.strip()
        if name in ("/bye", "/exit", "/quit"):
            return False
        if name in ("/help", "/?"):
            width = max(len(c) for c, _ in HELP) + 2
            for cmd, what in HELP:
                self.say(f"  {cmd:<{width}}{what}")
        elif name == "/set":
            self._set(rest)
        elif name == "/show":
            self._show(rest)
        elif name == "/clear":
            self.conv.clear()
            self.say("Cleared the conversation." + (" The system prompt stays." if self.conv.system else ""))
        elif name == "/save":
            self.say(f"Saved {len(self.conv.turns)} message(s) to {self.conv.save(self._path_arg(rest, '/save'), model=self.pair.name)}.")
        elif name == "/load":
            loaded = Conversation.load(self._path_arg(rest, "/load"))
            self.conv.system, self.conv.turns = loaded.system, loaded.turns
            extra = " with a system prompt" if loaded.system else ""
            self.say(f"Loaded {len(loaded.turns)} message(s){extra}; the next reply continues that conversation.")
            if loaded.turns:
                self.say(f"Last reply: {_preview(loaded.turns[-1]['content'])}")
        else:
            self.hint(f"Unknown command {name!r}. Type /help for the list of commands.")
        return True

    def _path_arg(self, rest: str, cmd: str) -> Path:
        if not rest:
            raise UsageError(f"usage: {cmd} FILE")
        try:
            parts = shlex.split(rest)
        except ValueError:
            parts = [rest]
        if len(parts) != 1:
            raise UsageError(f"usage: {cmd} FILE (quote a name that has spaces)")
        return Path(parts[0]).expanduser()

    def _set(self, rest: str) -> None:
        key, _, value = rest.partition(" ")
        key = key.lower().replace("-", "_")
        value = value.strip()
        if key not in SET_KEYS:
            raise UsageError(f"usage: /set PARAM VALUE, where PARAM is one of {', '.join(SET_KEYS)}")
        s = self.settings
        if key == "system":
            self.conv.system = value or None
            self.say("Set the system prompt." if value else "Cleared the system prompt.")
            return
        if key in ("verbose", "highlight"):
            flag = _flag(key, value or "on")
            self.settings = replace(s, **{key: flag})
            self.say(f"Set {key} {'on' if flag else 'off'}.")
            if key == "highlight" and flag and not self.color:
                self.hint("(colour is off here: NO_COLOR is set or this is not a terminal)")
            return
        if not value:
            raise UsageError(f"usage: /set {key} VALUE")
        if key in ("draft", "draft_tokens"):
            draft = value if key == "draft" else s.draft
            tokens = _int(key, value) if key == "draft_tokens" else s.draft_tokens
            choice = opt.EngineChoice(draft=draft, draft_tokens=tokens)
            config = opt.draft_config(self.pair, choice, "chat")
            self.engine.set_draft(config)
            self.settings = replace(s, draft=draft, draft_tokens=tokens)
            self.say(f"Set draft to {config.source}" + ("" if config.source == "none" else f", up to {config.tokens} tokens") + ".")
            return
        if key == "max_tokens":
            n = _int(key, value)
            if n <= 0:
                raise UsageError(f"max_tokens must be positive, got {n}")
            self.settings = replace(s, max_tokens=n)
        else:
            if key == "seed":
                new: object = None if value.lower() in ("none", "random", "off") else _int(key, value)
            elif key == "top_k":
                new = _int(key, value)
            else:
                new = _float(key, value)
            sampling = replace(s.sampling, **{key: new}).validate()
            self.settings = replace(s, sampling=sampling)
        self.say(f"Set {key} to {value}.")

    def _show(self, what: str) -> None:
        what = what.lower()
        engine, s = self.engine, self.settings
        if what == "info":
            model = engine.target
            d = engine.draft
            rows = [
                ("model", self.pair.name),
                ("file", str(self.pair.target)),
                ("architecture", model.architecture),
                ("parameters", _count(model.n_params)),
                ("size", f"{model.size_bytes / 1e6:.1f} MB"),
                ("context", f"{engine.n_ctx} tokens (trained {model.n_ctx_train})"),
                ("draft", d.source if d.source == "none" else f"{d.source}, up to {d.tokens} tokens" + (f" ({d.model_path})" if d.model_path else "")),
            ]
            self._table(rows)
        elif what in ("parameters", "params"):
            p = s.sampling
            self._table(
                [
                    ("temperature", str(p.temperature)),
                    ("top_k", str(p.top_k)),
                    ("top_p", str(p.top_p)),
                    ("min_p", str(p.min_p)),
                    ("seed", "random" if p.seed is None else str(p.seed)),
                    ("max_tokens", str(s.max_tokens)),
                    ("draft", f"{s.draft} -> {engine.draft.source}"),
                    ("draft_tokens", str(engine.draft.tokens)),
                    ("verbose", "on" if s.verbose else "off"),
                    ("highlight", "on" if s.highlight else "off"),
                ]
            )
        elif what == "system":
            self.say(self.conv.system or "(no system prompt)")
        elif what == "template":
            template = engine.target.chat_template()
            self.say(clean_display(template, 100_000, multiline=True) if template else "(the model has no chat template; using the built-in Gemma template)")
        elif what == "stats":
            if self.last is None:
                self.say("(no reply yet)")
                return
            rows = verbose_summary_lines(self.last.stats, engine.load_seconds)
            rows.append(("stop reason", self.last.stop_reason.value))
            rows.append(("context used", f"{self.last.stats.n_past}/{self.last.stats.n_ctx} tokens"))
            self._table(rows)
        else:
            raise UsageError(f"usage: /show {'|'.join(SHOW_KEYS)}")

    def _table(self, rows: list[tuple[str, str]]) -> None:
        width = max(len(k) for k, _ in rows) + 2
        for key, value in rows:
            self.say(f"  {key + ':':<{width}}{value}")


def _flag(key: str, value: str) -> bool:
    v = value.lower()
    if v in ON:
        return True
    if v in OFF:
        return False
    raise UsageError(f"/set {key} takes on or off, got {value!r}")


def _int(key: str, value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise UsageError(f"{key} must be a whole number, got {value!r}") from None


def _float(key: str, value: str) -> float:
    try:
        x = float(value)
    except ValueError:
        raise UsageError(f"{key} must be a number, got {value!r}") from None
    if x != x or x in (float("inf"), float("-inf")):
        raise UsageError(f"{key} must be a finite number, got {value!r}")
    return x


def _count(n: int) -> str:
    for unit, div in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= div:
            return f"{n / div:.1f}{unit}"
    return str(n)


def _preview(text: str, limit: int = 70) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def make_reader(history_path: Path, warn: Callable[[str], None]):
    """prompt_toolkit on a terminal, plain line reading from a pipe or file."""
    if sys.stdin.isatty() and sys.stdout.isatty():
        return TerminalReader(history_path, warn)
    return PlainReader(sys.stdin)

