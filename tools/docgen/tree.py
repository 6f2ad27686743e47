"""A neutral model of the application's command tree, read from Typer/click.

Everything comes from `typer.main.get_command(app)` at generation time, so the
renderers (`man`, `shells`) never look at Typer themselves.
"""

from __future__ import annotations

import enum
import inspect
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Any

PROG = "gemma"
#: How the generated files say they were made (and how to remake them).
GENERATOR = "python tools/gen_docs.py"
#: Argument/option names whose values are model names (completed from the store).
MODEL_PARAMS = frozenset({"model", "models", "name", "names"})
#: Commands whose model argument may be anything in the catalog, not only the store.
CATALOG_COMMANDS = frozenset({"pull"})
HELP_OPTS = ("-h", "--help")
HELP_TEXT = "Show help for the command and exit."


@dataclass(frozen=True)
class Param:
    name: str
    is_option: bool
    opts: tuple[str, ...]  # for options: every spelling, short ones first
    metavar: str | None  # None for flags
    help: str
    default: str | None
    required: bool
    multiple: bool  # repeatable option, or an argument taking several values
    choices: tuple[str, ...]
    complete: str  # "model", "catalog", "file", "choice" or "none"
    panel: str | None


@dataclass(frozen=True)
class Cmd:
    path: tuple[str, ...]
    help: str
    params: tuple[Param, ...]
    subcommands: tuple["Cmd", ...] = field(default_factory=tuple)

    @property
    def name(self) -> str:
        return " ".join((PROG,) + self.path)

    @property
    def short(self) -> str:
        first = paragraphs(self.help)[0] if self.help else ""
        return re.split(r"(?<=[.;])\s", first, maxsplit=1)[0].rstrip(".;")

    @property
    def options(self) -> list[Param]:
        """Options grouped by help panel (unpanelled first), declaration order inside."""
        plain = [p for p in self.params if p.is_option and p.panel is None]
        panels: dict[str, list[Param]] = {}
        for p in self.params:
            if p.is_option and p.panel is not None:
                panels.setdefault(p.panel, []).append(p)
        return plain + [p for group in panels.values() for p in group]

    @property
    def arguments(self) -> list[Param]:
        return [p for p in self.params if not p.is_option]

    def usage(self) -> str:
        pieces = [self.name, "[OPTIONS]"]
        for a in self.arguments:
            piece = a.metavar or a.name.upper()
            piece += "..." if a.multiple else ""
            pieces.append(piece if a.required else f"[{piece}]")
        if self.subcommands:
            pieces.append("COMMAND [ARGS]...")
        return " ".join(pieces)

    def walk(self) -> list["Cmd"]:
        out = [self]
        for sub in self.subcommands:
            out += sub.walk()
        return out


def paragraphs(text: str) -> list[str]:
    text = inspect.cleandoc(text or "")
    return [" ".join(chunk.split()) for chunk in re.split(r"\n\s*\n", text) if chunk.strip()]


_LABELS = {str: "TEXT", int: "INTEGER", float: "FLOAT", bool: "BOOLEAN"}


def _label_for(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin in (list, tuple, set, typing.Union) or str(origin) == "types.UnionType":
        args = [a for a in typing.get_args(annotation) if a is not type(None) and a is not Ellipsis]
        return _label_for(args[0]) if args else "TEXT"
    if isinstance(annotation, type):
        if issubclass(annotation, PurePath):
            return "PATH"
        for base, label in _LABELS.items():
            if issubclass(annotation, base):
                return label
        return annotation.__name__.upper()
    return "TEXT"


def _type_info(p: Any) -> tuple[str, tuple[str, ...], bool]:
    """(value label, choices, is a path) for Typer's own parameters and for plain click ones."""
    desc = getattr(p, "type_descriptor", None)
    if desc is not None:
        choices: tuple[str, ...] = ()
        if getattr(desc, "is_choice", False) and desc.choices:
            choices = tuple(str(c.value if isinstance(c, enum.Enum) else c) for c in desc.choices)
        is_path = bool(getattr(desc, "is_path", False) or getattr(desc, "is_file", False))
        return ("PATH" if is_path else _label_for(desc.annotation)), choices, is_path
    ptype = getattr(p, "type", None)
    choices = tuple(str(c) for c in getattr(ptype, "choices", ()) or ())
    name = str(getattr(ptype, "name", "text"))
    is_path = name in ("path", "file", "filename")
    return ("PATH" if is_path else name.upper()), choices, is_path


def _default(p: Any, is_flag: bool) -> str | None:
    """A default worth printing, never one that depends on the machine."""
    show = getattr(p, "show_default", None)
    if isinstance(show, str):
        return show
    if show is False:
        return None
    value = p.default
    if callable(value) or value is None or value in ((), []):
        return None
    if isinstance(value, enum.Enum):
        value = value.value
    if is_flag:
        return "on" if value is True else None
    if isinstance(value, PurePath) or (isinstance(value, str) and (value.startswith(("/", "~")) or value == str(Path.home()))):
        return None
    return str(value)


def _param(p: Any, command: str) -> Param | None:
    if getattr(p, "hidden", False) or not p.opts:
        return None
    is_option = p.opts[0].startswith("-")
    is_flag = bool(getattr(p, "is_flag", False) or getattr(p, "count", False))
    label, choices, is_path = _type_info(p)
    help_text = " ".join((getattr(p, "help", None) or "").split())
    name = p.name or ""
    if choices:
        complete = "choice"
    elif name in MODEL_PARAMS or ".gguf" in help_text:
        complete = "catalog" if command in CATALOG_COMMANDS else "model"
    elif is_path:
        complete = "file"
    else:
        complete = "none"
    if is_option:
        opts = tuple(sorted(list(p.opts) + list(getattr(p, "secondary_opts", [])), key=lambda o: (o.startswith("--"), o)))
        metavar = None if is_flag else (p.metavar or ("|".join(choices) if choices else label))
    else:
        opts = ()
        metavar = p.metavar or name.upper()
    multiple = bool(getattr(p, "multiple", False) or (not is_option and p.nargs != 1))
    return Param(
        name=name, is_option=is_option, opts=opts, metavar=metavar, help=help_text,
        default=_default(p, is_flag), required=bool(p.required), multiple=multiple,
        choices=choices, complete="none" if is_flag else complete,
        panel=getattr(p, "rich_help_panel", None),
    )


def _cmd(command: Any, path: tuple[str, ...]) -> Cmd:
    params = tuple(q for q in (_param(p, path[-1] if path else "") for p in command.params) if q is not None)
    subs: list[Cmd] = []
    children = getattr(command, "commands", None) or {}
    for name in sorted(children):
        child = children[name]
        if not getattr(child, "hidden", False):
            subs.append(_cmd(child, path + (name,)))
    return Cmd(path, inspect.cleandoc(command.help or ""), params, tuple(subs))


def command_tree() -> Cmd:
    """The application as it is registered right now (every command module imported)."""
    import typer

    from gemma_cli.cli.app import app

    return _cmd(typer.main.get_command(app), ())
