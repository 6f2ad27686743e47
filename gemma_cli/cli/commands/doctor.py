"""`gemma doctor` (and the hidden `gemma __complete-models` the shell completions call).

Parse, call `gemma_cli.doctor.run_doctor`, render: one line per check on
stdout (or JSON), hints under the problems, exit 1 when a check failed.
"""

from __future__ import annotations

import json
import re
import sys
from typing import Annotated, Optional

import typer

from gemma_cli.cli import engine_options as opt
from gemma_cli.cli.output import use_color
from gemma_cli.text_safety import clean_display

_LABELS = {"ok": ("ok", "32"), "warn": ("warn", "33"), "fail": ("FAIL", "31"), "info": ("info", "36")}


def render(report) -> str:
    """Plain aligned text; colour only on a terminal without NO_COLOR."""
    color = use_color(sys.stdout)
    width = max(len(c.name) for c in report.checks) + 2
    lines = [f"gemma-cli {report.version}"]
    for check in report.checks:
        label, code = _LABELS.get(check.status, (check.status, "0"))
        tag = f"{label:<4}"
        if color:
            tag = f"\x1b[{code}m{tag}\x1b[0m"
        # summaries quote paths, names and settings the user or a file chose: never an escape sequence
        lines.append(f"{tag}  {check.name:<{width}}{clean_display(check.summary, limit=None)}")
        if check.hint and check.status != "ok":
            lines.append(f"{'':4}  {'':<{width}}-> {clean_display(check.hint, limit=None)}")
    return "\n".join(lines) + "\n"


def doctor(
    model: Annotated[Optional[str], typer.Argument(help="Also check that this model (name or .gguf path) and its drafter fit in memory.", show_default=False)] = None,
    ctx: opt.Ctx = 4096,
    json_out: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds to wait for the Hugging Face endpoint.")] = 3.0,
) -> None:
    """Check llama.cpp, GPU, CPU features, the model store, disk, the Hub and memory; say what to fix.

    Exits 1 when something is broken; an unreachable Hub is only a warning while a model is available offline.
    """
    from gemma_cli.doctor import require_ok, run_doctor
    from gemma_cli.errors import UsageError

    if ctx <= 0:
        raise UsageError(f"--ctx must be positive, got {ctx}")
    if not 0 < timeout <= 600:  # nan and inf too: a socket timeout must be a real number of seconds
        raise UsageError(f"--timeout must be a number of seconds above 0 and at most 600, got {timeout}")
    report = run_doctor(model, n_ctx=ctx, hub_timeout=timeout)
    if json_out:
        sys.stdout.write(json.dumps(report.to_json(), indent=2, sort_keys=True) + "\n")
    else:
        sys.stdout.write(render(report))
    sys.stdout.flush()
    require_ok(report)


_COMPLETABLE = re.compile(r"[a-z0-9][a-z0-9._:-]{0,128}")


def complete_models(
    catalog: Annotated[bool, typer.Option("--catalog", help="Also list models the catalog can pull.")] = False,
) -> None:
    """Model names for shell completion, one per line; never fails."""
    from gemma_cli.doctor import catalog_model_names, store_model_names

    names = set(store_model_names())
    if catalog:
        names |= set(catalog_model_names())
    names = {n for n in names if _COMPLETABLE.fullmatch(n)}  # shells expand what they are given: names only
    if names:
        sys.stdout.write("\n".join(sorted(names)) + "\n")
