"""The chat REPL's slash commands: /help, /set, /show, /clear, /save, /load, /bye.

Each works on the running `ChatRepl` (its settings, conversation and engine)
and reports through its `say` (stdout) and `hint` (stderr). Bad arguments
raise `UsageError`; the REPL prints the line and keeps going.
"""

from __future__ import annotations

import shlex
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from gemma_cli import limits
from gemma_cli.chat import Conversation
from gemma_cli.cli import engine_options as opt
from gemma_cli.cli.output import verbose_summary_lines
from gemma_cli.errors import UsageError
from gemma_cli.text_safety import clean_display

if TYPE_CHECKING:
    from gemma_cli.cli.repl import ChatRepl

HELP = [
    ("/set PARAM VALUE", "temperature, top_k, top_p, min_p, seed, max_tokens, draft, draft_tokens, system, verbose, highlight"),
    ("/show WHAT", "info, parameters, system, template, stats"),
    ("/clear", "forget the conversation (the system prompt stays)"),
    ("/save FILE", "save the conversation as JSON (a new file; /save! FILE replaces one)"),
    ("/load FILE", "continue a saved conversation"),
    ("/bye, /exit", "leave (or Ctrl-D)"),
    ('"""', "start and end a multi-line message (Alt-Enter also adds a line)"),
    ("Ctrl-C", "stop the reply being generated (the partial reply is kept)"),
]
SET_KEYS = ("temperature", "top_k", "top_p", "min_p", "seed", "max_tokens", "draft", "draft_tokens", "system", "verbose", "highlight")
SHOW_KEYS = ("info", "parameters", "system", "template", "stats")
ON = {"on", "true", "yes", "1"}
OFF = {"off", "false", "no", "0"}


def run_command(repl: ChatRepl, line: str) -> bool:
    """Run one slash command; False means leave the REPL."""
    name, _, rest = line.partition(" ")
    name = name.lower()
    rest = rest.strip()
    if name in ("/bye", "/exit", "/quit"):
        return False
    if name in ("/help", "/?"):
        width = max(len(c) for c, _ in HELP) + 2
        for cmd, what in HELP:
            repl.say(f"  {cmd:<{width}}{what}")
    elif name == "/set":
        _set(repl, rest)
    elif name == "/show":
        _show(repl, rest)
    elif name == "/clear":
        repl.conv.clear()
        reset = getattr(repl.engine, "reset", None)  # a local engine: forget its KV cache too (client mode has none)
        if callable(reset):
            # A fresh start: with the old prompt cached, the same question evaluated as one token instead of in the
            # prompt's own pass, which rounds differently, and at a near-tie greedy chat answered otherwise.
            reset()
        repl.say("Cleared the conversation." + (" The system prompt stays." if repl.conv.system else ""))
    elif name in ("/save", "/save!"):
        saved = repl.conv.save(_path_arg(rest, name), model=repl.pair.name, overwrite=name == "/save!")
        repl.say(f"Saved {len(repl.conv.turns)} message(s){' and the system prompt' if repl.conv.system else ''} to {saved}.")
    elif name == "/load":
        loaded = Conversation.load(_path_arg(rest, "/load"))
        repl.conv.system, repl.conv.turns = loaded.system, loaded.turns
        extra = " with a system prompt" if loaded.system else ""
        repl.say(f"Loaded {len(loaded.turns)} message(s){extra}; the next reply continues that conversation.")
        if loaded.turns:
            repl.say(f"Last reply: {_preview(loaded.turns[-1]['content'])}")
    else:
        repl.hint(f"Unknown command {name!r}. Type /help for the list of commands.")
    return True


def _path_arg(rest: str, cmd: str) -> Path:
    if not rest:
        raise UsageError(f"usage: {cmd} FILE")
    try:
        parts = shlex.split(rest)
    except ValueError:
        parts = [rest]
    if len(parts) != 1:
        raise UsageError(f"usage: {cmd} FILE (quote a name that has spaces)")
    return Path(parts[0]).expanduser()


def _set(repl: ChatRepl, rest: str) -> None:
    key, _, value = rest.partition(" ")
    key = key.lower().replace("-", "_")
    value = value.strip()
    if key not in SET_KEYS:
        raise UsageError(f"usage: /set PARAM VALUE, where PARAM is one of {', '.join(SET_KEYS)}")
    s = repl.settings
    if key == "system":
        repl.conv.system = value or None
        repl.say("Set the system prompt." if value else "Cleared the system prompt.")
        return
    if key in ("verbose", "highlight"):
        flag = _flag(key, value or "on")
        repl.settings = replace(s, **{key: flag})
        repl.say(f"Set {key} {'on' if flag else 'off'}.")
        if key == "highlight" and flag and not repl.color:
            repl.hint("(colour is off here: NO_COLOR is set or this is not a terminal)")
        return
    if not value:
        raise UsageError(f"usage: /set {key} VALUE")
    if key in ("draft", "draft_tokens"):
        draft = value if key == "draft" else s.draft
        tokens = _int(key, value) if key == "draft_tokens" else s.draft_tokens
        config = opt.draft_config(repl.pair, opt.EngineChoice(draft=draft, draft_tokens=tokens), "chat")
        from gemma_cli.cli.interrupt import held_until_loaded

        with held_until_loaded():  # a drafter model loads here: Ctrl-C must not vanish into llama.cpp's log callback
            repl.engine.set_draft(config)
            repl.settings = replace(s, draft=draft, draft_tokens=tokens)
        if config.source == "none" and key == "draft_tokens":  # the length is kept for when a drafter is back on
            repl.say(f"Set draft_tokens to {tokens}; drafting is off (/set draft auto turns it on).")
        else:
            repl.say(f"Set draft to {config.source}" + ("" if config.source == "none" else f", up to {config.tokens} tokens") + ".")
        return
    if key == "max_tokens":
        repl.settings = replace(s, max_tokens=limits.check_max_tokens(_int(key, value)))
    else:
        if key == "seed":
            new: object = None if value.lower() in ("none", "random", "off") else limits.check_seed(_int(key, value), "seed")
        elif key == "top_k":
            new = _int(key, value)
        else:
            new = _float(key, value)
        sampling = replace(s.sampling, **{key: new})
        limits.check_sampling(sampling.temperature, sampling.top_k, sampling.top_p, sampling.min_p)
        repl.settings = replace(s, sampling=sampling)
        if key == "seed" and new is None:
            value = "random (a new seed each reply)"
    repl.say(f"Set {key} to {value}.")


def _show(repl: ChatRepl, what: str) -> None:
    what = what.lower()
    engine, s = repl.engine, repl.settings
    if what == "info":
        model = engine.target
        d = engine.draft
        draft = d.source if d.source == "none" else f"{d.source}, up to {d.tokens} tokens" + (f" ({d.model_path})" if d.model_path else "")
        _table(repl, [
            ("model", repl.pair.name),
            ("file", clean_display(str(repl.pair.target), limit=None)),
            ("architecture", model.architecture),
            ("parameters", _count(model.n_params)),
            ("size", f"{model.size_bytes / 1e6:.1f} MB"),
            ("context", f"{engine.n_ctx} tokens (trained {model.n_ctx_train})"),
            ("draft", draft),
        ])
    elif what in ("parameters", "params"):
        p = s.sampling
        _table(repl, [
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
        ])
    elif what == "system":
        repl.say(clean_display(repl.conv.system, None, multiline=True) if repl.conv.system else "(no system prompt)")  # may come from a /load file
    elif what == "template":
        template = engine.target.chat_template()
        repl.say(clean_display(template, 100_000, multiline=True) if template else "(the model has no chat template; using the built-in Gemma template)")
    elif what == "stats":
        if repl.last is None:
            repl.say("(no reply yet)")
            return
        rows = verbose_summary_lines(repl.last.stats, engine.load_seconds)
        rows.append(("stop reason", repl.last.stop_reason.value))
        rows.append(("context used", f"{repl.last.stats.n_past}/{repl.last.stats.n_ctx} tokens"))
        _table(repl, rows)
    else:
        raise UsageError(f"usage: /show {'|'.join(SHOW_KEYS)}")


def _table(repl: ChatRepl, rows: list[tuple[str, str]]) -> None:
    width = max(len(k) for k, _ in rows) + 2
    for key, value in rows:
        repl.say(f"  {key + ':':<{width}}{value}")


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
    """One line of a loaded file's text: a conversation file is untrusted, so no escape sequence reaches the terminal."""
    flat = " ".join(clean_display(text, None).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"
