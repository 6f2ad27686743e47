"""`gemma bench`: does speculative decoding pay on this machine, for these prompts?

Parse, call the harness (or the tuner), render: a table per workload on
stdout, or every figure as one JSON object with --json. Progress goes to stderr.
"""

from __future__ import annotations

import json
import sys
from typing import Annotated, List, Optional

import typer

from gemma_cli import limits
from gemma_cli.cli import engine_options as opt
from gemma_cli.cli.output import stderr_console, use_color
from gemma_cli.errors import UsageError


def parse_lengths(spec: str | None) -> list[int] | None:
    """`--draft-tokens 2,4,6` -> [2, 4, 6]; None when not given."""
    if spec is None:
        return None
    out: list[int] = []
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            k = int(part)
        except ValueError:
            raise UsageError(f"--draft-tokens takes comma-separated integers, e.g. 2,4,6; got {spec!r}") from None
        limits.check_draft_tokens(k, "--draft-tokens values")
        if k not in out:
            out.append(k)
    if not out:
        raise UsageError("--draft-tokens is empty; give lengths such as 2,4,6")
    return out


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.0f} MiB"


def _ratio(d: dict) -> str:
    return f"{d['speedup']:.2f}x ({d['speedup_min']:.2f}–{d['speedup_max']:.2f})"


def render_tables(data: dict) -> None:
    """One rich table per workload (colour only on a terminal, never with NO_COLOR)."""
    from rich.console import Console
    from rich.table import Table

    from gemma_cli.bench import harness

    # A pipe or file gets the full table rather than 80 columns of wrapped cells.
    tty = sys.stdout.isatty()
    console = Console(no_color=not use_color(sys.stdout), highlight=False, width=None if tty else 160)
    m = data["machine"]
    sp = data["sampling"]
    rpc = data.get("rpc")
    mode = "greedy" if sp["temperature"] <= 0 else f"sampled (temperature {sp['temperature']:g}, top-k {sp['top_k']}, top-p {sp['top_p']:g}; seed r in round r)"
    console.print(f"{data['model']} · {m['cpu']} · {m['threads'] or 'all'} threads · {mode}, {data['max_tokens']} tokens, {data['runs']} alternating rounds")
    if rpc:
        workers = ", ".join(f"{w['address']} (round trip {w['round_trip_ms']:.2f} ms)" for w in rpc["workers"])
        console.print(f"split across RPC workers {workers}; a round trip = one graph compute on one worker (each target pass sends one to every worker)")
    for w in data["workloads"]:
        plain = w["plain"]
        table = Table(title=f"{w['workload']} ({w['prompt_tokens']} prompt tokens)", title_justify="left")
        cols = ["draft", "plain tok/s", "spec tok/s", "speedup (min–max)", "acceptance", "mean accepted", "TTFT plain/spec", "peak memory"]
        if rpc:
            cols[6:6] = ["tokens/pass", "round trips/token plain/spec"]
        for col in cols:
            table.add_column(col, justify="left" if col == "draft" else "right")
        for v in w["speculative"]:
            cells = [
                v["label"],
                f"{plain['tokens_per_s']:.1f}",
                f"{v['tokens_per_s']:.1f}",
                _ratio(v),
                f"{v['acceptance_rate']:.0%}",
                f"{v['mean_accepted_length']:.2f}",
                f"{plain['ttft_s'] * 1000:.0f}/{v['ttft_s'] * 1000:.0f} ms",
                _mib(w["peak_rss_bytes"]),
            ]
            if rpc:
                cells[6:6] = [f"{v['tokens_per_pass']:.2f}", f"{plain['round_trips_per_token']:.2f}/{v['round_trips_per_token']:.2f}"]
            table.add_row(*cells)
        console.print(table)
        notes = []
        if not all(v["timing_reliable"] for v in [plain, *w["speculative"]]):
            notes.append("runs were shorter than 2 s: raise --max-tokens for trustworthy timings")
        if any(v["stop_reasons"] != ["length"] for v in [plain, *w["speculative"]]):
            notes.append("some runs ended early at an end-of-generation token (rates use the tokens generated)")
        for note in notes:
            console.print(f"  note: {note}")
    warning = harness.busy_warning(m)
    if warning:
        console.print(f"note: {warning}")
    for t in data.get("tuned", []):
        verdict = "faster than plain" if t["beats_plain"] else "no faster than plain; adaptive drafting will pause"
        kept = "" if t.get("recorded", True) else "; NOT recorded: runs too short to time"
        console.print(f"tuned {t['kind']}: {t['draft_source']} k<={t['draft_tokens']} ({t['speedup']:.2f}x, {verdict}{kept})")


def bench(
    model: Annotated[Optional[str], typer.Argument(help="Model name (default gemma3:270m) or a .gguf path.", show_default=False)] = None,
    workload: Annotated[
        Optional[List[str]],
        typer.Option("--workload", "-w", help="code, prose, chat, summarize, or a text file with your prompt (repeatable; default: all four)."),
    ] = None,
    draft: opt.Draft = "auto",
    draft_tokens: Annotated[
        Optional[str],
        typer.Option("--draft-tokens", help="Maximum draft lengths to compare, e.g. 2,4,6 (default: tuned or catalog value; --tune: 2,3,4,6,8).", rich_help_panel="Speculative decoding"),
    ] = None,
    runs: Annotated[int, typer.Option("--runs", help="Alternating plain/speculative rounds per workload.")] = 3,
    max_tokens: opt.MaxTokens = 256,
    temperature: Annotated[float, typer.Option("--temperature", "-t", help="Sampling temperature; 0 = greedy (the default here: exact, comparable runs).", rich_help_panel="Sampling")] = 0.0,
    top_k: opt.TopK = opt.DEFAULT_TOP_K,
    top_p: opt.TopP = opt.DEFAULT_TOP_P,
    as_json: Annotated[bool, typer.Option("--json", help="Print every figure as one JSON object.")] = False,
    tune: Annotated[bool, typer.Option("--tune", help="Sweep draft lengths and sources; record the best per workload in the model's manifest.")] = False,
    force: Annotated[bool, typer.Option("--force", help="With --tune: record results even from runs too short to time reliably.")] = False,
    ctx: opt.Ctx = 4096,
    gpu_layers: opt.GpuLayers = 0,
    threads: opt.Threads = None,
    rpc: opt.Rpc = None,
    tensor_split: opt.TensorSplit = None,
) -> None:
    """Measure plain vs speculative decoding side by side on this machine (and tune it with --tune).

    Examples: gemma bench | gemma bench gemma3:270m -w code --draft-tokens 2,4,8 --json | gemma bench --tune | gemma bench -w chat -t 1
    """
    from gemma_cli.bench import harness, tune as tuner
    from gemma_cli.bench.workloads import resolve_workloads

    if runs < 1:
        raise UsageError(f"--runs must be at least 1, got {runs}")
    opt.check_generation(max_tokens, temperature, top_k, top_p)
    from gemma_cli.engine import SamplingParams

    sampling = SamplingParams(temperature, top_k, top_p)
    if sampling.greedy and (top_k, top_p) != (opt.DEFAULT_TOP_K, opt.DEFAULT_TOP_P):
        raise UsageError("--top-k and --top-p shape sampling, and bench runs greedy by default; add --temperature, e.g. -t 1")
    if draft == "none":  # plain against plain: its "speedup" would be noise between two identical runs
        raise UsageError("bench compares drafting with plain decoding; --draft none leaves nothing to compare "
                         "(use auto, ngram, model or mtp)")
    lengths = parse_lengths(draft_tokens)
    workloads = resolve_workloads(workload)  # bad files fail before the model loads
    pair = opt.resolve(model)
    if tune:
        tuner.check_tunable(pair)
        sources = tuner.available_sources(pair, draft)
        candidates = tuner.candidates(pair, sources, lengths or tuner.DEFAULT_SWEEP)
    else:
        base = opt.EngineChoice(draft, None, ctx, gpu_layers, threads)
        opt.draft_config(pair, base)  # validate --draft for this pair before loading anything

    def variants_for(w):
        if tune:
            return candidates
        out = []
        for k in lengths or [None]:
            cfg = opt.draft_config(pair, opt.EngineChoice(draft, k, ctx, gpu_layers, threads), w.kind)
            out.append(harness.Variant(f"{cfg.source} k<={cfg.tokens}", cfg))
        return out

    err = stderr_console()
    progress = (lambda line: err.print(line)) if sys.stderr.isatty() else None
    # Over --rpc an MTP assistant needs the target loaded for it (rpc_placement.MTP_TAIL): load with the drafter.
    engine = opt.open_engine(pair, opt.EngineChoice(draft if rpc else "none", None, ctx, gpu_layers, threads, rpc, tensor_split))
    placed = engine.placement
    try:
        choices = []
        if tune:
            choices = [
                tuner.tune_workload(engine, w, candidates, runs=runs, max_tokens=max_tokens, progress=progress, sampling=sampling)
                for w in workloads
            ]
            reports = [c.report for c in choices]
            combined = tuner.overall_default(choices)
            if combined is not None:
                choices.append(combined)
        else:
            reports = harness.bench(engine, workloads, variants_for, runs=runs, max_tokens=max_tokens, progress=progress, sampling=sampling)
    finally:
        engine.close()
    if tune:
        choices = tuner.record(pair, choices, force=force)
        for c in choices:
            if not c.reliable:
                what = "recorded anyway (--force)" if c.recorded else "not recorded"
                sys.stderr.write(
                    f"note: tuned {c.kind} ({c.draft_source} k<={c.draft_tokens}) {what}: runs were shorter than 2 s, "
                    "too short to time reliably; raise --max-tokens (or --force to record it anyway)\n"
                )
    data = {
        "model": pair.name,
        "target": str(pair.target),
        "machine": harness.machine_description(threads or _default_threads()),
        "runs": runs,
        "max_tokens": max_tokens,
        "sampling": {"temperature": temperature, "top_k": top_k, "top_p": top_p},
        "workloads": [r.as_dict() for r in reports],
    }
    if placed is not None:
        add_round_trips(data, placed)
    if tune:
        data["tuned"] = [c.as_dict() for c in choices]
    if as_json:
        sys.stdout.write(json.dumps(data) + "\n")
        sys.stdout.flush()
    else:
        render_tables(data)


def add_round_trips(data: dict, placement) -> None:
    """With --rpc: the workers, and each variant's network round trips per generated token.

    Every target pass (one `llama_decode`, counted in the stats) runs one graph
    compute on each worker in turn, each a synchronous round trip; so round
    trips per token = target passes x workers / generated tokens, the figure
    that speculation divides (see README, Several machines).
    """
    n = len(placement.workers)
    data["rpc"] = {"workers": [{"address": w.endpoint.text, "round_trip_ms": w.rtt_s * 1000} for w in placement.workers]}
    for w in data["workloads"]:
        for v in [w["plain"], *w["speculative"]]:
            v["round_trips_per_token"] = v["target_passes"] * n / v["generated_tokens"] if v["generated_tokens"] else 0.0


def _default_threads() -> int:
    from gemma_cli.engine import default_threads

    return default_threads()
