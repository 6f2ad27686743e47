"""Generate the man page and shell completions from the application's command tree.

    python tools/gen_docs.py            # write man/gemma.1 and completions/*
    python tools/gen_docs.py --check    # exit 1, naming the files that drifted

A developer tool, not part of the installed package: the CLI never imports it.
A new command or option appears in all four files when this is re-run, and
tests/test_docgen.py fails until it is. Output is deterministic: commands
sorted, no dates, nothing from the machine (paths, core counts) except the
package version.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable

from docgen.man import render_man
from docgen.shells import render_bash, render_fish, render_zsh
from docgen.tree import GENERATOR, Cmd, command_tree

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
    """The source checkout this tool lives in."""
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
    parser = argparse.ArgumentParser(prog=GENERATOR, description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 listing files that differ")
    parser.add_argument("--root", type=Path, default=default_root(), help="checkout to write into (default: %(default)s)")
    args = parser.parse_args(argv)
    files = generate()
    if args.check:
        stale = drifted(args.root, files)
        for rel in stale:
            print(f"drifted: {rel}", file=sys.stderr)
        if stale:
            print(f"run `{GENERATOR}` and commit the result", file=sys.stderr)
        return 1 if stale else 0
    for rel, text in files.items():
        path = args.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
            print(f"wrote {rel}", file=sys.stderr)
    return 0

