"""`gemma ps` and `gemma stop`: ask a running `gemma serve` what it has loaded, unload a model."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated, Optional

import typer

HostOpt = Annotated[Optional[str], typer.Option("--host", help="Server address host:port (default $GEMMA_HOST or 127.0.0.1:11436).", show_default=False)]


def _until(iso: str) -> str:
    try:
        then = datetime.fromisoformat(iso.replace("Z", "+00:00"))
    except ValueError:
        return iso
    if then.year >= 2300:
        return "Forever"
    s = (then - datetime.now(timezone.utc)).total_seconds()
    if s < 1:
        return "now"
    for unit, span in (("hour", 3600), ("minute", 60), ("second", 1)):
        if s >= span:
            n = int(s // span)
            return f"{n} {unit}{'s' if n > 1 else ''} from now"
    return "now"


def ps_cmd(
    host: HostOpt = None,
    json_out: Annotated[bool, typer.Option("--json", help="Machine-readable JSON on stdout.")] = False,
) -> None:
    """List the models a running `gemma serve` has loaded (NAME, SIZE, CONTEXT, DRAFT, UNTIL)."""
    import json

    from gemma_cli.cli.output import size_text, table
    from gemma_cli.client import Client

    client = Client.from_env(host, timeout=10)
    models = client.ps()
    if json_out:
        typer.echo(json.dumps(models, indent=2))
        return
    rows = [["NAME", "SIZE", "CONTEXT", "DRAFT", "UNTIL"]]
    with client.reading("/api/ps"):
        for m in models:
            state = "in use" if m.get("in_use") else _until(str(m.get("expires_at", "")))
            if not m.get("loaded", True):
                state = "loading"
            rows.append([m.get("name"), size_text(int(m.get("size") or 0)), m.get("context_length") or "?",
                         m.get("draft_source") or "-", state])
    typer.echo(table(rows, cell_limit=80))


def stop_cmd(
    model: Annotated[str, typer.Argument(help="A model the server has loaded (see `gemma ps`).")],
    host: HostOpt = None,
) -> None:
    """Unload MODEL from a running `gemma serve` (after its current requests finish)."""
    from gemma_cli.client import Client
    from gemma_cli.errors import ModelNotFoundError
    from gemma_cli.registry.catalog import load_catalog

    catalog = load_catalog()
    ref = catalog.ref(model)  # the CLI's name validation, one line on a bad name
    client = Client.from_env(host, timeout=30)
    loaded = {m.get("name") for m in client.ps()}
    # the server loads an alias or family:latest as its catalog entry's own name (registry.resolve.stored_ref)
    name = next((n for n in (str(ref), str(catalog.canonical(ref))) if n in loaded), None)
    if name is None:
        raise ModelNotFoundError(f"model {ref} is not loaded on the server (`gemma ps` lists what is)")
    client.stop(name)
