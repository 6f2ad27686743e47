"""Concurrent clients through `gemma serve`: serialized (GEMMA_NUM_PARALLEL=1) vs parallel slots (shared batches).

    .venv/bin/python benchmarks/serve_concurrency.py                          # 270M, 1/2/4/8 clients, plain + ngram
    .venv/bin/python benchmarks/serve_concurrency.py --clients 1 4 --tokens 96 --threads 1 --rounds 2 --json out.json
    .venv/bin/python benchmarks/serve_concurrency.py --pair /tmp/mid --drafts none mtp   # synthetic Gemma 4 pair, MTP slots

Two `gemma serve` processes run side by side (a temporary store holding the
model): serialized (GEMMA_NUM_PARALLEL=1) and batched. For each round, draft
source and client count c, c streaming /api/generate requests with different
prompts are sent at once (greedy, `num_predict` = --tokens), first to the
serialized server, then to the batched one, so both see the same load; the
table shows medians over rounds, and the ratios are medians of per-round ratios.
Reported per cell: aggregate tokens/s (all generated tokens / wall time from
the common start to the last end), tokens per CPU second of the server
process (the work itself, less sensitive to other load), mean time to first
token and mean total latency per request, and how many batched outputs equal
their serialized text; an output that differs is checked at the token level
with the near-tie rule (the top-2 logit gap where it leaves the solo output,
re-evaluated in this process; `tests/lossless.py`'s NEAR_TIE is 0.1).
Serialized runs every request on the engine, one after another; with parallel
slots a request alone runs on the engine, the ones arriving while it runs
share batches, and it moves into their batch (docs/batching.md). The numbers
are only as quiet as the machine: the load average is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # lossless.py: the near-tie rule the tests use
sys.path.insert(0, str(Path(__file__).resolve().parent))  # batch.py

from batch import PROMPTS, gemma3_path  # noqa: E402  (the same prompts and model as the in-process benchmark)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Server:
    def __init__(self, models: Path, threads: int, **env: str) -> None:
        full = dict(os.environ, PYTHONPATH=str(ROOT), GEMMA_MODELS=str(models), GEMMA_HOST="127.0.0.1:0", NO_COLOR="1", **env)
        self.proc = subprocess.Popen([sys.executable, "-m", "gemma_cli", "serve", "--threads", str(threads)], env=full, cwd=ROOT,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        assert self.proc.stderr is not None
        match = re.search(r"listening on (http://\S+)", self.proc.stderr.readline())
        if not match:
            self.close()
            raise SystemExit("gemma serve did not start")
        self.url = match.group(1)
        threading.Thread(target=lambda: [None for _ in self.proc.stderr], daemon=True).start()  # type: ignore[union-attr]

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


def one_request(url: str, prompt: str, tokens: int, draft: str, t0: float, out: dict) -> None:
    body = {"model": "bench", "prompt": prompt, "options": {"temperature": 0, "num_predict": tokens, "draft": draft}}
    text, first = "", 0.0
    with httpx.Client(timeout=600) as c, c.stream("POST", url + "/api/generate", json=body) as r:
        for line in r.iter_lines():
            obj = json.loads(line)
            if obj.get("response"):
                first = first or time.perf_counter()
                text += obj["response"]
            if obj.get("done"):
                out["n"] = obj.get("eval_count", 0)
    out.update(text=text, ttft=(first or time.perf_counter()) - t0, total=time.perf_counter() - t0)


def run_cell(server: Server, clients: int, tokens: int, draft: str) -> dict:
    outs = [dict() for _ in range(clients)]
    c0 = cpu_seconds(server.proc.pid)
    t0 = time.perf_counter()
    threads = [threading.Thread(target=one_request, args=(server.url, PROMPTS[i % len(PROMPTS)], tokens, draft, t0, outs[i]))
               for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall, cpu = time.perf_counter() - t0, cpu_seconds(server.proc.pid) - c0
    n = sum(o["n"] for o in outs)
    return {"tok_s": n / wall, "tok_cpu_s": n / max(cpu, 1e-9), "ttft": statistics.mean(o["ttft"] for o in outs),
            "total": statistics.mean(o["total"] for o in outs), "texts": [o["text"] for o in outs]}


def _leaves(engine, tokens: list[int], ref_tokens: list[int], text: str) -> str:
    """Where `text` leaves the reference tokens' text, and the top-2 logit gap there."""
    from lossless import NEAR_TIE, next_logits

    off, i = 0, 0
    while i < len(ref_tokens) and off < len(text):
        piece = engine.target.piece(ref_tokens[i]).decode("utf-8", "replace")
        if text[off:off + len(piece)] != piece:
            break
        off += len(piece)
        i += 1
    if off >= len(text) or i == len(ref_tokens):
        return "equal to the reference"
    logits = next_logits(engine, list(tokens) + ref_tokens[:i])
    rest = text[off:].encode()
    cands = [t for t in range(engine.target.n_vocab) if (p := engine.target.piece(t)) and rest.startswith(p)]
    if not cands:
        return f"token {i}: no candidate token"
    gap = float(logits.max()) - max(float(logits[t]) for t in cands)
    return f"token {i}: gap {gap:.3f} ({'near-tie' if gap < NEAR_TIE else 'REAL DIVERGENCE' if gap > 0.5 else 'small gap'})"


def divergence(engine, prompt: str, solo: str, got: str) -> str:
    """Where the serialized (`solo`) and batched (`got`) texts leave an in-process greedy reference, with the
    top-2 logit gap at each divergence: near-ties (either side) or a real divergence."""
    tokens = engine.prompt_tokens(prompt)
    ref = engine.generate(tokens, max_tokens=max(len(solo), len(got), 1) * 2)
    ref.text()
    return f"serialized {_leaves(engine, tokens, ref.result.tokens, solo)}; batched {_leaves(engine, tokens, ref.result.tokens, got)}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--drafts", nargs="+", default=["none", "ngram"])
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--parallel", type=int, default=4, help="GEMMA_NUM_PARALLEL of the batched server")
    ap.add_argument("--exact", action="store_true", help="GEMMA_BATCH_EXACT=1 (bit-identical logits, slower)")
    ap.add_argument("--pair", type=Path, help="a directory with target.gguf + assistant.gguf (a synthetic Gemma 4 pair: "
                    "python -m tests.gemma4_factory DIR --mid) instead of the 270M; then --drafts mtp measures MTP slots")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    target = args.pair / "target.gguf" if args.pair else gemma3_path()
    from gemma_cli.engine import DraftConfig, Engine, EngineConfig
    from gemma_cli.registry.create import create
    from gemma_cli.store.layout import Layout

    load_before = os.getloadavg()
    runs: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        models = Path(tmp) / "models"
        create("bench", str(target), str(args.pair / "assistant.gguf") if args.pair else None, layout=Layout(models))
        modes = {"serialized": {"GEMMA_NUM_PARALLEL": "1"},
                 "batched": {"GEMMA_NUM_PARALLEL": str(args.parallel), "GEMMA_BATCH_EXACT": "1" if args.exact else "0"}}
        servers: dict[str, Server] = {}
        try:
            for mode, env in modes.items():
                servers[mode] = Server(models, args.threads, **env)
                run_cell(servers[mode], 1, 4, "none")  # load the model before the clock
            for r in range(args.rounds):
                for draft in args.drafts:
                    for c in args.clients:
                        for mode, server in servers.items():
                            cell = run_cell(server, c, args.tokens, draft)
                            runs.setdefault(f"{mode}/{draft}/{c}", []).append(cell)
                            print(r, mode, draft, c, {k: round(v, 3) for k, v in cell.items() if k != "texts"}, file=sys.stderr)
        finally:
            for server in servers.values():
                server.close()
    load_after = os.getloadavg()
    engine = Engine(target, DraftConfig(source="none"), EngineConfig(n_ctx=4096, n_threads=args.threads))
    med = statistics.median
    rows = []
    print("| draft | clients | serialized tok/s | batched tok/s | wall ratio | per CPU s ratio | TTFT s (ser/bat) "
          "| latency s (ser/bat) | equal |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for draft in args.drafts:
        for c in args.clients:
            ss, bs = runs[f"serialized/{draft}/{c}"], runs[f"batched/{draft}/{c}"]
            equal, notes = 0, []
            for s, b in zip(ss, bs, strict=True):
                for i, (x, y) in enumerate(zip(s["texts"], b["texts"], strict=True)):
                    if x == y:
                        equal += 1
                    else:
                        notes.append(f"client {i}: " + divergence(engine, PROMPTS[i % len(PROMPTS)], x, y))
            row = {"draft": draft, "clients": c, "serialized_tok_s": round(med(s["tok_s"] for s in ss), 1),
                   "batched_tok_s": round(med(b["tok_s"] for b in bs), 1),
                   "wall_ratio": round(med(b["tok_s"] / s["tok_s"] for s, b in zip(ss, bs, strict=True)), 2),
                   "cpu_ratio": round(med(b["tok_cpu_s"] / s["tok_cpu_s"] for s, b in zip(ss, bs, strict=True)), 2),
                   "wall_ratios": [round(b["tok_s"] / s["tok_s"], 2) for s, b in zip(ss, bs, strict=True)],
                   "ttft_s": [round(med(s["ttft"] for s in ss), 2), round(med(b["ttft"] for b in bs), 2)],
                   "latency_s": [round(med(s["total"] for s in ss), 2), round(med(b["total"] for b in bs), 2)],
                   "equal": f"{equal}/{c * len(ss)}", "differences": notes}
            rows.append(row)
            print(f"| {draft} | {c} | {row['serialized_tok_s']} | {row['batched_tok_s']} | {row['wall_ratio']} | {row['cpu_ratio']} "
                  f"| {row['ttft_s'][0]} / {row['ttft_s'][1]} | {row['latency_s'][0]} / {row['latency_s'][1]} | {row['equal']} |")
    engine.close()
    for row in rows:
        for note in row["differences"]:
            print(f"{row['draft']} c={row['clients']} {note}")
    report = {"model": str(target), "tokens": args.tokens, "threads": args.threads, "parallel": args.parallel, "exact": args.exact, "rounds": args.rounds,
              "rows": rows, "load_average_before": [round(x, 2) for x in load_before],
              "load_average_after": [round(x, 2) for x in load_after], "cpus": os.cpu_count()}
    print(f"load average before {report['load_average_before']}, after {report['load_average_after']}, {os.cpu_count()} CPUs")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
