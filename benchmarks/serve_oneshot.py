"""One-shot prompts in a shell-style loop: a process per prompt, in-process vs against a warm `gemma serve`.

    .venv/bin/python benchmarks/serve_oneshot.py                     # 20 prompts, 270M, 32 tokens
    .venv/bin/python benchmarks/serve_oneshot.py --prompts 5 --json out.json
    .venv/bin/python benchmarks/serve_oneshot.py --via client        # B = a bare Python client per prompt

A: `gemma run MODEL PROMPT` per prompt: every process loads the model.
B: the same prompts against one `gemma serve` started (and warmed) first, one
new process per prompt: `--via run` (default) runs `gemma run` with GEMMA_HOST
set (the CLI's client mode), `--via client` a tiny Python client
(gemma_cli.client), which shows what is left of the CLI's own start-up.
Each prompt is one process, exactly as `for p in ...; do gemma run ...; done`
in a shell, timed from spawn to exit. Both sides are greedy with the same
options, so their texts must be equal; the script checks that.
Reported: end-to-end wall time of each loop, per prompt (median and each),
and the load average before and after (the numbers are only as quiet as the machine).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
PROMPTS = [
    "Why is the sky blue?", "Name three primary colours.", "What is a prime number?", "Explain recursion briefly.",
    "Write a haiku about rain.", "What does HTTP stand for?", "Give a synonym for happy.", "What is 12 times 12?",
    "Describe a cat in one sentence.", "What is the capital of France?", "Define photosynthesis.",
    "List two uses of copper.", "What is an API?", "Summarize the water cycle.", "Why do leaves change colour?",
    "What is a black hole?", "Translate 'thank you' to Spanish.", "What is machine learning?",
    "How many days are in a leap year?", "What is the speed of light?",
]
CLIENT = (
    "import sys; from gemma_cli.client import Client; "
    "parts = Client.from_env().generate({'model': sys.argv[1], 'prompt': sys.argv[2], "
    "'options': {'temperature': 0, 'num_predict': int(sys.argv[3])}}); "
    "sys.stdout.write(''.join(p['response'] for p in parts))"
)


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, str]:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd[:4])}...: {proc.stderr.strip()}")
    return time.perf_counter() - t0, proc.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="gemma3:270m")
    ap.add_argument("--prompts", type=int, default=20)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--via", choices=("client", "run"), default="run")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    prompts = PROMPTS[: args.prompts]
    env = dict(os.environ, PYTHONPATH=str(ROOT), NO_COLOR="1")
    env.pop("GEMMA_HOST", None)
    run = [PY, "-m", "gemma_cli", "run", args.model]
    opts = ["--temperature", "0", "-n", str(args.tokens)]

    load_before = os.getloadavg()
    a = [timed(run + [p] + opts, env) for p in prompts]

    server = subprocess.Popen([PY, "-m", "gemma_cli", "serve"], env=dict(env, GEMMA_HOST="127.0.0.1:0"), cwd=ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert server.stderr is not None
        match = re.search(r"listening on http://(\S+)", server.stderr.readline())
        if not match:
            raise SystemExit("gemma serve did not start")
        served = dict(env, GEMMA_HOST=match.group(1))
        client = [PY, "-c", CLIENT, args.model]
        timed(client + ["warm up", "1"], served)  # load the model once, before the clock
        if args.via == "client":
            b = [timed(client + [p, str(args.tokens)], served) for p in prompts]
        else:
            b = [timed(run + [p] + opts, served) for p in prompts]
    finally:
        server.terminate()
        server.wait(30)

    mismatches = [p for p, (_, x), (_, y) in zip(prompts, a, b, strict=True) if x.strip() != y.strip()]
    report = {
        "model": args.model, "prompts": len(prompts), "tokens": args.tokens, "via": args.via,
        "in_process_total_s": round(sum(t for t, _ in a), 3), "served_total_s": round(sum(t for t, _ in b), 3),
        "in_process_median_s": round(statistics.median(t for t, _ in a), 3),
        "served_median_s": round(statistics.median(t for t, _ in b), 3),
        "same_text": not mismatches,
        "in_process_each_s": [round(t, 2) for t, _ in a], "served_each_s": [round(t, 2) for t, _ in b],
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()], "cpus": os.cpu_count(),
    }
    report["speedup"] = round(report["in_process_total_s"] / report["served_total_s"], 2)
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    if mismatches:
        raise SystemExit(f"texts differ for {len(mismatches)} prompt(s), e.g. {mismatches[0]!r}")


if __name__ == "__main__":
    main()
