"""Generate the man page and shell completions from the application's command tree.

    python -m gemma_cli.cli.docgen            # write man/gemma.1 and completions/*
    python -m gemma_cli.cli.docgen --check    # exit 1, naming the files that drifted

Everything comes from `typer.main.get_command(app)` at generation time, so a
new command or option appears in all four files when this is re-run, and the
drift test fails until it is. Output is deterministic: commands sorted, no
dates, nothing from the machine (paths, core counts) except the package version.

Model names complete from the local store through the hidden
`gemma __complete-models` command (`--catalog` adds what `pull` can fetch).
"""

from __future__ import annotations

import argparse
import enum
import inspect
import re
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Any, Callable

from gemma_cli import __version__, config

PROG = "gemma"
#: Argument/option names whose values are model names (completed from the store).
MODEL_PARAMS = frozenset({"model", "models", "name", "names"})
#: Commands whose model argument may be anything in the catalog, not only the store.
CATALOG_COMMANDS = frozenset({"pull"})
HELP_OPTS = ("-h", "--help")
HELP_TEXT = "Show help for the command and exit."

#: Variables read on our behalf by libraries, or by gemma-cli but not yet listed in config.ENVIRONMENT.
EXTRA_ENVIRONMENT = {
    "GEMMA_DEBUG": "1: show Python tracebacks and llama.cpp's own log on stderr",
    "GEMMA_CATALOG": "path of a JSON model catalog that replaces the built-in one",
    "HF_HOME": "Hugging Face cache and token directory (huggingface_hub)",
    "HF_HUB_DISABLE_TELEMETRY": "1: no telemetry requests (huggingface_hub)",
    "HTTPS_PROXY": "proxy for downloads and the doctor's Hub check",
}

EXAMPLES: list[tuple[str, str, list[str]]] = [
    ("doctor", "Check the installation (llama.cpp build, CPU, store, network):", ["gemma doctor"]),
    ("run", "Ask the default model (gemma3:270m, works offline) one question:", ['gemma run "Why is the sky blue?"']),
    ("run", "Summarise a file through a pipe; only the answer reaches stdout:", ['cat notes.txt | gemma run gemma3:270m "Summarize:" > summary.txt']),
    ("run", "Hand JSON to another program, with timings and draft statistics on stderr:", ['gemma run --format jsonl --verbose "Write a haiku" | jq -r .text']),
    ("pull", "Download a model with its drafter (re-run to resume):", ["gemma pull gemma4:e2b"]),
    ("chat", "Chat interactively:", ['gemma chat gemma4:e2b --system "Be brief."']),
    ("list", "List the models in the store:", ["gemma list"]),
    ("bench", "Measure speculative against plain decoding:", ["gemma bench gemma3:270m"]),
    ("doctor", "Will a model and its drafter fit in memory with an 8k context?", ["gemma doctor gemma4:e2b --ctx 8192"]),
]


# -- a neutral model of the command tree ---------------------------------------
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
        first = _paragraphs(self.help)[0] if self.help else ""
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


def _paragraphs(text: str) -> list[str]:
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


# -- man page -------------------------------------------------------------------
def _roff(text: str) -> str:
    """Escape running text for roff: backslashes, hyphens, non-ASCII, leading dots."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    text = "".join(c if ord(c) < 128 else f"\\[u{ord(c):04X}]" for c in text)
    return "\n".join("\\&" + ln if ln.startswith((".", "'")) else ln for ln in text.split("\n"))


def _bold(text: str) -> str:
    return f"\\fB{_roff(text)}\\fR"


def _ital(text: str) -> str:
    return f"\\fI{_roff(text)}\\fR"


def _option_tag(p: Param) -> str:
    tag = ", ".join(_bold(o) for o in p.opts)
    return f"{tag} {_ital(p.metavar)}" if p.metavar else tag


def _param_help(p: Param) -> str:
    extra = []
    if p.default is not None:
        extra.append(f"default: {p.default}")
    if p.required and p.is_option:
        extra.append("required")
    if p.multiple and p.is_option and "repeat" not in p.help:
        extra.append("repeatable")
    text = p.help + (f" ({'; '.join(extra)})" if extra else "")
    return _roff(text.strip() or "(no description)")


def _man_command(cmd: Cmd) -> list[str]:
    out = [".SS", _roff(cmd.usage())]
    paras = _paragraphs(cmd.help) or ["(no description)"]
    out.append(_roff(paras[0]))
    for para in paras[1:]:
        out += [".PP", _roff(para)]
    for a in cmd.arguments:
        out += [".TP", _ital(a.metavar or a.name.upper()) + ("..." if a.multiple else ""), _param_help(a)]
    panel = None
    for p in cmd.options:
        if p.panel != panel:
            panel = p.panel
            out += [".PP", _ital(f"{panel} options:")]
        out += [".TP", _option_tag(p), _param_help(p)]
    return out


def render_man(tree: Cmd) -> str:
    commands = [c for c in tree.walk() if c.path]
    existing = {c.path[0] for c in commands}
    env = dict(EXTRA_ENVIRONMENT)
    env.update(config.ENVIRONMENT)
    lines = [
        f'.\\" Generated by `python -m gemma_cli.cli.docgen` from gemma-cli {__version__}; do not edit.',
        f'.TH GEMMA 1 "" "gemma\\-cli {_roff(__version__)}" "User Commands"',
        ".nh",
        ".ad l",
        ".SH NAME",
        f"gemma \\- {_roff(_paragraphs(tree.help)[0] if tree.help else 'run Gemma models locally')}",
        ".SH SYNOPSIS",
        " ".join([_bold(PROG), f"[{_bold('-h')}]", f"[{_bold('-V')}]", _ital("command"), f"[{_ital('options')}]", f"[{_ital('arguments')}]"]),
        ".SH DESCRIPTION",
        _roff(
            "gemma runs Gemma models in GGUF format on this machine with llama.cpp. It speeds up generation with "
            "lossless speculative decoding: a small drafter (a Gemma 4 MTP head, a smaller model with the same "
            "vocabulary, or n-grams from the context) proposes several tokens, the main model checks them all in "
            "one batch, and only tokens the main model would itself have produced are kept, so the output follows "
            "exactly the main model's distribution."
        ),
        ".PP",
        _roff(
            "Results go to standard output and everything else (progress, statistics, errors) to standard error, "
            "so commands compose with pipes. Colour is used only on a terminal and never when NO_COLOR is set."
        ),
        ".SH OPTIONS",
    ]
    for p in tree.options:
        lines += [".TP", _option_tag(p), _param_help(p)]
    lines += [".TP", ", ".join(_bold(o) for o in HELP_OPTS), _roff(HELP_TEXT + " Every command accepts it.")]
    lines.append(".SH COMMANDS")
    for cmd in commands:
        lines += _man_command(cmd)
    lines.append(".SH ENVIRONMENT")
    for name in sorted(env):
        lines += [".TP", _bold(name), _roff(env[name])]
    lines += [
        ".SH FILES",
        ".TP",
        _ital("~/.local/share/gemma-cli/models/"),
        _roff("The model store (Linux; ~/Library/Application Support/gemma-cli/models on macOS), or $GEMMA_MODELS. "
              "manifests/FAMILY/TAG.json names each model's files; blobs/sha256-HEX holds the GGUF files, "
              "shared between models; blobs/*.partial are interrupted downloads that the next pull resumes."),
        ".TP",
        _ital("~/.local/state/gemma-cli/chat_history"),
        _roff("Input history of gemma chat (Linux; under ~/Library on macOS), or $GEMMA_HISTORY."),
        ".SH EXIT STATUS",
        ".TP", "0", _roff("Success (also when a reader closes the pipe early, as with | head)."),
        ".TP", "1", _roff("Runtime error, reported as one line on standard error; gemma doctor: a check failed."),
        ".TP", "2", _roff("Usage error: unknown command or option, or an invalid value."),
        ".TP", "130", _roff("Interrupted with Ctrl-C."),
        ".SH EXAMPLES",
    ]
    for needs, text, commands_ in EXAMPLES:
        if needs not in existing:
            continue
        lines += [".PP", _roff(text), ".PP", ".RS", ".nf"] + [_roff(c) for c in commands_] + [".fi", ".RE"]
    lines += [
        ".SH SEE ALSO",
        _roff("gemma doctor for troubleshooting; the README of gemma-cli; "
              "llama.cpp at https://github.com/ggml-org/llama.cpp; the huggingface_hub documentation "
              "(environment variables) at https://huggingface.co/docs/huggingface_hub"),
    ]
    return "\n".join(lines) + "\n"


# -- bash -----------------------------------------------------------------------
def _sh_case_key(cmd: Cmd) -> str:
    return '""' if not cmd.path else '"' + " ".join(cmd.path) + '"'


def _value_options(cmd: Cmd) -> list[str]:
    return [o for p in cmd.options if p.metavar for o in p.opts]


def _all_options(cmd: Cmd) -> list[str]:
    return [o for p in cmd.options for o in p.opts] + list(HELP_OPTS)


def _arg_kinds(cmd: Cmd) -> tuple[list[str], str]:
    """Completion kind per positional index, and the kind for any index beyond."""
    kinds: list[str] = []
    rest = "none"
    for a in cmd.arguments:
        kind = "choice:" + " ".join(a.choices) if a.complete == "choice" else a.complete
        if a.multiple:
            rest = kind
            break
        kinds.append(kind)
    return kinds, rest


def render_bash(tree: Cmd) -> str:
    cmds = tree.walk()
    subs, opts, valopts, values, args = [], [], [], [], []
    for c in cmds:
        key = _sh_case_key(c)
        if c.subcommands:
            subs.append(f"        {key}) echo \"{' '.join(s.path[-1] for s in c.subcommands)}\" ;;")
        opts.append(f"        {key}) echo \"{' '.join(_all_options(c))}\" ;;")
        if _value_options(c):
            valopts.append(f"        {key}) echo \"{' '.join(_value_options(c))}\" ;;")
        for p in c.options:
            if p.metavar and p.complete != "none":
                kind = "choice:" + " ".join(p.choices) if p.complete == "choice" else p.complete
                pats = "|".join(f'"{" ".join(c.path + (o,))}"' for o in p.opts)
                values.append(f"        {pats}) echo \"{kind}\" ;;")
        if not c.subcommands and c.path:
            kinds, rest = _arg_kinds(c)
            branches = " ".join(f"{i}) echo \"{k}\" ;;" for i, k in enumerate(kinds))
            args.append(f"        {key}) case \"$2\" in {branches} *) echo \"{rest}\" ;; esac ;;")
    return _BASH_TEMPLATE.format(
        version=__version__,
        subcommands="\n".join(subs),
        options="\n".join(opts),
        value_options="\n".join(valopts) or '        "-") ;;',
        option_values="\n".join(values) or '        "-") ;;',
        arguments="\n".join(args) or '        "-") ;;',
    )


_BASH_TEMPLATE = r"""# bash completion for gemma                                  -*- shell-script -*-
# Generated by `python -m gemma_cli.cli.docgen` from gemma-cli {version}; do not edit.
# Install: copy to ~/.local/share/bash-completion/completions/gemma, or source it from ~/.bashrc.
# Model names come from the local store via the hidden `gemma __complete-models`.

_gemma_subcommands() {{
    case "$1" in
{subcommands}
    esac
}}

_gemma_options() {{
    case "$1" in
{options}
    esac
}}

_gemma_value_options() {{
    case "$1" in
{value_options}
    esac
}}

_gemma_option_values() {{
    case "${{1:+$1 }}$2" in
{option_values}
    esac
}}

_gemma_arguments() {{
    case "$1" in
{arguments}
    esac
}}

_gemma_reply() {{
    local line
    while IFS= read -r line; do
        [[ -n $line ]] && COMPREPLY+=("$line")
    done
}}

_gemma() {{
    local line="${{COMP_LINE:0:COMP_POINT}}"
    local -a words
    read -r -a words <<< "$line"
    [[ -z $line || $line == *[[:space:]] ]] && words+=("")
    local n=${{#words[@]}}
    local cur="${{words[n-1]}}" prev=""
    (( n > 1 )) && prev="${{words[n-2]}}"
    local path="" npos=0 skip=0 w i kind
    for (( i = 1; i < n - 1; i++ )); do
        w="${{words[i]}}"
        if (( skip )); then skip=0; continue; fi
        case "$w" in
            -*=*) ;;
            -*) [[ " $(_gemma_value_options "$path") " == *" $w "* ]] && skip=1 ;;
            *)
                if (( npos == 0 )) && [[ " $(_gemma_subcommands "$path") " == *" $w "* ]]; then
                    path="${{path:+$path }}$w"
                else
                    npos=$(( npos + 1 ))
                fi ;;
        esac
    done
    COMPREPLY=()
    if (( skip )); then
        kind="$(_gemma_option_values "$path" "$prev")"
    elif [[ $cur == -* ]]; then
        _gemma_reply < <(compgen -W "$(_gemma_options "$path")" -- "$cur")
        return 0
    elif [[ -n "$(_gemma_subcommands "$path")" ]]; then
        _gemma_reply < <(compgen -W "$(_gemma_subcommands "$path")" -- "$cur")
        return 0
    else
        kind="$(_gemma_arguments "$path" "$npos")"
    fi
    case "$kind" in
        choice:*)
            _gemma_reply < <(compgen -W "${{kind#choice:}}" -- "$cur") ;;
        model|catalog)
            if [[ $cur == */* || $cur == .* || $cur == \~* ]]; then
                compopt -o filenames 2>/dev/null
                _gemma_reply < <(compgen -f -X '!*.gguf' -- "$cur"; compgen -d -- "$cur")
            else
                local flag=""
                [[ $kind == catalog ]] && flag="--catalog"
                _gemma_reply < <(compgen -W "$(command gemma __complete-models $flag 2>/dev/null)" -- "$cur")
                if [[ $cur == *:* && $COMP_WORDBREAKS == *:* ]]; then
                    local prefix="${{cur%"${{cur##*:}}"}}"
                    for i in "${{!COMPREPLY[@]}}"; do COMPREPLY[i]="${{COMPREPLY[i]#"$prefix"}}"; done
                fi
            fi ;;
        file)
            compopt -o filenames 2>/dev/null
            _gemma_reply < <(compgen -f -- "$cur") ;;
    esac
    return 0
}}

complete -F _gemma gemma
"""


# -- zsh ------------------------------------------------------------------------
def _zq(text: str) -> str:
    """Single-quote for zsh."""
    return "'" + text.replace("'", "'\\''") + "'"


def _zdesc(text: str) -> str:
    first = re.split(r"(?<=[.;])\s", text, maxsplit=1)[0] if text else ""
    return first.replace("[", "(").replace("]", ")").replace(":", " -").replace("\\", "/").rstrip(".") or " "


def _zaction(kind: str, choices: tuple[str, ...]) -> str:
    return {
        "model": "_gemma_models",
        "catalog": "_gemma_models --catalog",
        "file": "_files",
        "choice": "(" + " ".join(choices) + ")",
    }.get(kind, " ")


def _zfunc(cmd: Cmd) -> str:
    return "_gemma" + "".join("_" + re.sub(r"[^A-Za-z0-9]", "_", p) for p in cmd.path)


def _zspecs(cmd: Cmd) -> list[str]:
    specs = []
    for p in cmd.options:
        excl = "" if p.multiple else "(" + " ".join(p.opts) + ")"
        star = "*" if p.multiple else ""
        tail = f":{p.metavar.replace(':', ' ')}:{_zaction(p.complete, p.choices)}" if p.metavar else ""
        for o in p.opts:
            specs.append(_zq(f"{excl}{star}{o}[{_zdesc(p.help)}]{tail}"))
    for o in HELP_OPTS:
        specs.append(_zq(f"(- *){o}[{_zdesc(HELP_TEXT)}]"))
    return specs


def render_zsh(tree: Cmd) -> str:
    out = [
        "#compdef gemma",
        f"# zsh completion for gemma. Generated by `python -m gemma_cli.cli.docgen` from gemma-cli {__version__}; do not edit.",
        "# Install: copy to a directory on $fpath as _gemma (e.g. ~/.zfunc with fpath+=(~/.zfunc) before compinit),",
        "# or source it after compinit. Model names come from the local store via `gemma __complete-models`.",
        "",
        "_gemma_models() {",
        "  local -a names",
        '  names=(${(f)"$(command gemma __complete-models "$@" 2>/dev/null)"})',
        "  local ret=1",
        "  _wanted models expl model compadd -a names && ret=0",
        "  _files -g '*.gguf' && ret=0",
        "  return ret",
        "}",
    ]
    for cmd in tree.walk():
        fn = _zfunc(cmd)
        out += ["", f"{fn}() {{"]
        specs = _zspecs(cmd)
        if cmd.subcommands:
            out += [
                '  local curcontext="$curcontext" state state_descr line ret=1',
                "  typeset -A opt_args",
                "  _arguments -C \\",
                *[f"    {s} \\" for s in specs],
                "    '1: :->command' \\",
                "    '*:: :->argument' && ret=0",
                "  case $state in",
                "    command)",
                "      local -a commands",
                "      commands=(",
                *[f"        {_zq(s.path[-1] + ':' + _zdesc(s.short))}" for s in cmd.subcommands],
                "      )",
                f"      _describe -t commands {_zq(cmd.name + ' command')} commands && ret=0 ;;",
                "    argument)",
                '      curcontext="${curcontext%:*:*}:' + cmd.name.replace(" ", "-") + '-$words[1]:"',
                "      case $words[1] in",
                *[f"        {_zq(s.path[-1])}) {_zfunc(s)} && ret=0 ;;" for s in cmd.subcommands],
                "      esac ;;",
                "  esac",
                "  return ret",
                "}",
            ]
            continue
        positional = []
        for i, a in enumerate(cmd.arguments, 1):
            action = _zaction(a.complete, a.choices)
            label = (a.metavar or a.name).lower()
            if a.multiple:
                positional.append(_zq(f"*:{label}:{action}"))
                break
            positional.append(_zq(f"{i}:{label}:{action}" if a.required else f"{i}::{label}:{action}"))
        lines = specs + positional
        out += ["  _arguments -s -S \\"] + [f"    {s} \\" for s in lines[:-1]] + [f"    {lines[-1]}", "}"]
    out += [
        "",
        "if [[ $zsh_eval_context[-1] == loadautofunc ]]; then",
        '  _gemma "$@"',
        "else",
        "  compdef _gemma gemma",
        "fi",
    ]
    return "\n".join(out) + "\n"


# -- fish -----------------------------------------------------------------------
def _fq(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _fdesc(text: str) -> str:
    first = re.split(r"(?<=[.;])\s", text, maxsplit=1)[0] if text else ""
    return first.rstrip(".;") or " "


def _fish_condition(cmd: Cmd, tree: Cmd) -> str:
    if not cmd.path:
        return "__fish_use_subcommand"
    parts = [f"__fish_seen_subcommand_from {p}" for p in cmd.path]
    if cmd.subcommands:
        parts.append("not __fish_seen_subcommand_from " + " ".join(s.path[-1] for s in cmd.subcommands))
    return "; and ".join(parts)


def render_fish(tree: Cmd) -> str:
    out = [
        f"# fish completion for gemma. Generated by `python -m gemma_cli.cli.docgen` from gemma-cli {__version__}; do not edit.",
        "# Install: copy to ~/.config/fish/completions/gemma.fish",
        "# Model names come from the local store via the hidden `gemma __complete-models`.",
        "",
        "function __gemma_models",
        "    command gemma __complete-models $argv 2>/dev/null",
        "end",
        "",
        "# .gguf files and directories, once the word looks like a path",
        "function __gemma_gguf",
        "    set -l tok (commandline -ct)",
        "    string match -qr -- '^[./~]|/' $tok; or return",
        "    for p in (__fish_complete_path $tok)",
        "        string match -qr -- '(/|\\.gguf)\\t' $p; and echo $p",
        "    end",
        "end",
        "",
        "complete -c gemma -f",
    ]
    for cmd in tree.walk():
        cond = _fq(_fish_condition(cmd, tree))
        out += ["", f"# {cmd.name}"]
        for p in cmd.options + [Param("help", True, HELP_OPTS, None, HELP_TEXT, None, False, False, (), "none", None)]:
            flags = []
            for o in p.opts:
                flags += ["-l", o[2:]] if o.startswith("--") else (["-s", o[1:]] if len(o) == 2 else ["-o", o[1:]])
            if p.metavar:
                if p.complete == "choice":
                    flags += ["-x", "-a", _fq(" ".join(p.choices))]
                elif p.complete == "file":
                    flags += ["-r", "-F"]
                elif p.complete in ("model", "catalog"):
                    extra = " --catalog" if p.complete == "catalog" else ""
                    flags += ["-x", "-a", _fq(f"(__gemma_models{extra}) (__gemma_gguf)")]
                else:
                    flags += ["-x"]
            out.append(f"complete -c gemma -n {cond} {' '.join(flags)} -d {_fq(_fdesc(p.help))}")
        for s in cmd.subcommands:
            out.append(f"complete -c gemma -n {cond} -a {s.path[-1]} -d {_fq(_fdesc(s.short))}")
        kinds = {a.complete for a in cmd.arguments} - {"none"}
        for kind in sorted(kinds):
            if kind in ("model", "catalog"):
                extra = " --catalog" if kind == "catalog" else ""
                out.append(f"complete -c gemma -n {cond} -a {_fq(f'(__gemma_models{extra})')} -d model")
                out.append(f"complete -c gemma -n {cond} -a {_fq('(__gemma_gguf)')}")
            elif kind == "file":
                out.append(f"complete -c gemma -n {cond} -F")
            elif kind == "choice":
                choices = sorted({c for a in cmd.arguments for c in a.choices})
                out.append(f"complete -c gemma -n {cond} -a {_fq(' '.join(choices))}")
    return "\n".join(out) + "\n"


# -- entry point ----------------------------------------------------------------
OUTPUTS: dict[str, Callable[[Cmd], str]] = {
    "man/gemma.1": render_man,
    "completions/gemma.bash": render_bash,
    "completions/_gemma": render_zsh,
    "completions/gemma.fish": render_fish,
}


def generate(tree: Cmd | None = None) -> dict[str, str]:
    """Relative path -> the text that file must contain."""
    tree = tree or command_tree()
    return {path: render(tree) for path, render in OUTPUTS.items()}


def default_root() -> Path:
    """The source checkout this package was imported from (editable install)."""
    return Path(__file__).resolve().parents[2]


def drifted(root: Path, files: dict[str, str] | None = None) -> list[str]:
    files = files or generate()
    out = []
    for rel, text in files.items():
        path = root / rel
        try:
            current = path.read_text(encoding="utf-8")
        except OSError:
            current = None
        if current != text:
            out.append(rel)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gemma_cli.cli.docgen", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 listing files that differ")
    parser.add_argument("--root", type=Path, default=default_root(), help="checkout to write into (default: %(default)s)")
    args = parser.parse_args(argv)
    files = generate()
    if args.check:
        stale = drifted(args.root, files)
        for rel in stale:
            print(f"drifted: {rel}", file=sys.stderr)
        if stale:
            print("run `python -m gemma_cli.cli.docgen` and commit the result", file=sys.stderr)
        return 1 if stale else 0
    for rel, text in files.items():
        path = args.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
            print(f"wrote {rel}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
