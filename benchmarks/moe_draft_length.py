"""Which MTP draft length pays on a 26B-A4B-shaped MoE pair? (issue 17, item 3)

    .venv/bin/python benchmarks/moe_draft_length.py                       # fixed k sweep + the real `gemma bench`
    .venv/bin/python benchmarks/moe_draft_length.py --lengths 1,2,3,4 --runs 5 --json out.json

On a mixture-of-experts target every extra token in a verify pass may route to
other experts, so a pass of k+1 tokens reads more expert weights than a plain
step, unlike a dense model, where it reads the same weights once. The pair is
`tests/gemma4_factory.MID_MOE` (router, 32 experts / 4 used, the dense FFN as
shared expert; ~0.5 GB F32), tuned like benchmarks/mtp_vs_plain.py to ~70%
greedy acceptance and cached under <tmp>/gemma-bench/mtp-moe-mid.

Two measurements, each in alternating rounds in one process (plain and every
variant back to back per round, order flipped every round; the machine may be
shared, so the load average is printed with the figures):

1. `fixed`: plain vs MTP with a fixed draft length k (adaptive controller off):
   what each k costs and gains on this shape.
2. `cli`: the real CLI, `gemma create` of the pair into a private GEMMA_MODELS
   and `gemma bench NAME --draft-tokens ... --json` (adaptive controller on,
   as users run it): the product's speedup for each maximum draft length.

The catalog's draft length for `gemma4:26b*` is the best `cli` length.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from mtp_vs_plain import WORKLOAD, build_pair  # noqa: E402

from gemma4_factory import MID_MOE  # noqa: E402

PAIR_DIR = "mtp-moe-mid"
MODEL_NAME = "moe-mid:bench"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def fixed_sweep(target: Path, assistant: Path, lengths: list[int], runs: int, tokens: int, threads: int) -> dict:
    """Plain vs MTP at each fixed k, alternating rounds on one loaded target."""
    from gemma_cli.bench.harness import Variant, compare
    from gemma_cli.engine import DraftConfig, Engine, EngineConfig

    variants = [Variant(f"mtp k={k}", DraftConfig(source="mtp", tokens=k, model_path=assistant, adaptive=False)) for k in lengths]
    engine = Engine(target, DraftConfig(source="none"), EngineConfig(n_ctx=2048, n_threads=threads))
    try:
        report = compare(engine, WORKLOAD, variants, runs=runs, max_tokens=tokens, progress=log)
    finally:
        engine.close()
    return report.as_dict()


def cli_bench(target: Path, assistant: Path, lengths: list[int], runs: int, tokens: int, threads: int) -> dict:
    """`gemma create` + `gemma bench --json` through the real CLI, in a private model store."""
    with tempfile.TemporaryDirectory(prefix="gemma-moe-bench-") as home:
        env = dict(os.environ, GEMMA_MODELS=str(Path(home) / "models"), GEMMA_CACHE=str(Path(home) / "cache"),
                   PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        gemma = [sys.executable, "-m", "gemma_cli"]
        made = subprocess.run(gemma + ["create", MODEL_NAME, "--target", str(target), "--draft", str(assistant), "-q"],
                              env=env, capture_output=True, text=True)
        if made.returncode:
            raise SystemExit(f"gemma create failed: {made.stderr.strip()}")
        prompt = Path(home) / "prompt.txt"
        prompt.write_text(WORKLOAD.prompt, encoding="utf-8")
        cmd = gemma + ["bench", MODEL_NAME, "-w", str(prompt), "--draft-tokens", ",".join(map(str, lengths)),
                       "--runs", str(runs), "-n", str(tokens), "--threads", str(threads), "--ctx", "2048", "--json"]
        log("$ gemma " + " ".join(cmd[3:]))
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if done.returncode:
            raise SystemExit(f"gemma bench failed: {done.stderr.strip()}")
        return json.loads(done.stdout)


def _rows(workload: dict) -> list[str]:
    plain = workload["plain"]
    out = [f"  plain          {plain['tokens_per_s']:6.1f} tok/s"]
    for v in workload["speculative"]:
        out.append(f"  {v['label']:14s} {v['tokens_per_s']:6.1f} tok/s  {v['speedup']:.2f}x ({v['speedup_min']:.2f}-{v['speedup_max']:.2f})"
                   f"  acceptance {v['acceptance_rate']:.0%}  tokens/pass {v['tokens_per_pass']:.2f}"
                   f"  same output {v['same_output_as_plain']}  reliable {v['timing_reliable']}")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="MTP draft length on a 26B-A4B-shaped MoE synthetic pair")
    ap.add_argument("--lengths", default="1,2,3,4,6", help="draft lengths to compare")
    ap.add_argument("--runs", type=int, default=5, help="alternating rounds")
    ap.add_argument("--tokens", type=int, default=256, help="tokens per run")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", choices=("fixed", "cli"), help="run one of the two measurements")
    ap.add_argument("--json", type=Path, help="write both reports here")
    args = ap.parse_args(argv)
    lengths = [int(k) for k in args.lengths.split(",") if k.strip()]

    target, assistant, meta = build_pair(args.threads, log, spec=MID_MOE, name=PAIR_DIR)
    print(f"pair: target {target.stat().st_size / 1e6:.0f} MB ({MID_MOE.n_embd} x {MID_MOE.n_layer}, {MID_MOE.n_expert} experts / "
          f"{MID_MOE.n_expert_used} used, vocab {MID_MOE.n_vocab}), assistant {assistant.stat().st_size / 1e6:.0f} MB; "
          f"noise {meta['noise']:.3f} (calibration acceptance {meta['calibration_acceptance']:.0%})")
    out: dict = {"pair": {"target": str(target), "assistant": str(assistant), **meta}, "load_before": os.getloadavg()}
    if args.only != "cli":
        out["fixed"] = fixed_sweep(target, assistant, lengths, args.runs, args.tokens, args.threads)
        out["load_after_fixed"] = os.getloadavg()
        print(f"fixed draft length (adaptive off), {args.runs} rounds, {args.tokens} tokens, {args.threads} threads; "
              f"load average {out['load_before'][0]:.2f} -> {out['load_after_fixed'][0]:.2f}")
        print("\n".join(_rows(out["fixed"])))
    if args.only != "fixed":
        data = cli_bench(target, assistant, lengths, args.runs, args.tokens, args.threads)
        out["cli"] = data
        out["load_after_cli"] = os.getloadavg()
        print(f"gemma bench (adaptive, maximum k), {args.runs} rounds; load average {out['load_before'][0]:.2f} before, "
              f"{data['machine']['load_average_1m']:.2f} at the end")
        for w in data["workloads"]:
            print("\n".join(_rows(w)))
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
