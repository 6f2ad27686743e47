"""Would verifying a second candidate in the same batch pay? Replayed on recorded greedy outputs.

    .venv/bin/python benchmarks/suffix_replay.py record --corpus benchmarks/corpus/tuning --out refs.json
    .venv/bin/python benchmarks/second_candidate.py refs.json [--curve pass_curve.json]

Tree verification (several continuations checked in one target pass) pays
when the extra rows cost less than what the rescued drafts save. This
replays the engine's drafter and controller over each recorded output and,
at every drafted step, prices one extra row (the curve's marginal cost of
batch k+2 over k+1) against the best case for the alternative: the matched
context's second most frequent continuation, counted as rescued when its
first token is the one the target produced, with every further token of its
earlier occurrence that the output repeats. An upper bound on the gain,
since a rescue is only possible where the first drafted token missed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from suffix_counts import full_curve  # noqa: E402
from suffix_replay import load_curve, make, simulate  # noqa: E402

from gemma_cli.engine.suffix import CHILDREN, COUNT, LAST  # noqa: E402


def rescue_run(drafter, out: list[int], n: int, draft0: int) -> int:
    """Tokens the second candidate would have yielded at output position n (0: none or wrong)."""
    _, node = drafter.local.longest_match()
    if node is None or not node[CHILDREN]:
        return 0
    second = max(((child[COUNT], tok) for tok, child in node[CHILDREN].items() if tok != draft0), default=None)
    if second is None or second[1] != out[n]:
        return 0
    tokens, src, run = drafter.local.tokens, node[CHILDREN][out[n]][LAST] + 1, 0
    while run < 15 and src + run < len(tokens) and n + 1 + run < len(out) and tokens[src + run] == out[n + 1 + run]:
        run += 1
    return 1 + run


def replay(prompt: list[int], out: list[int], curve: dict[int, float], k_max: int = 16) -> dict[str, float]:
    """One output: plain-pass units spent, what an extra row per drafted step would add, and the most it could save."""
    drafter, controller = make("new", k_max, curve, greedy=True)
    got = dict(extra_cost=0.0, drafted=0, first_missed=0, rescued=0, rescued_tokens=0)

    def step(n: int, draft: list[int], acc: int) -> None:
        if not draft:
            return
        got["drafted"] += 1
        got["extra_cost"] += curve[len(draft) + 2] - curve[len(draft) + 1]
        if acc == 0:
            got["first_missed"] += 1
            run = rescue_run(drafter, out, n, draft[0])
            got["rescued"] += run > 0
            got["rescued_tokens"] += run

    _, _, _, got["cost"], _ = simulate(prompt, out, drafter, controller, curve, k_max, True, on_step=step)
    return got


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("refs", type=Path, help="recorded outputs (suffix_replay.py record); greedy ones are used")
    ap.add_argument("--curve", default=None, help="pass-cost curve: pass_curve.py --json output or inline JSON")
    ap.add_argument("--tokens", type=int, default=128)
    args = ap.parse_args(argv)
    curve = full_curve(load_curve(args.curve))
    total: dict[str, float] = {}
    for key, ref in json.loads(args.refs.read_text()).items():
        if key.endswith("@greedy") and len(ref["out"]) >= 2:
            for name, value in replay(ref["prompt"], ref["out"][: args.tokens], curve).items():
                total[name] = total.get(name, 0) + value
    if not total:
        print("no greedy outputs in", args.refs)
        return 1
    print(f"drafted steps {total['drafted']:.0f}, first token missed {total['first_missed']:.0f}, "
          f"second candidate right {total['rescued']:.0f} ({total['rescued_tokens']:.0f} tokens)")
    print(f"an extra row on every drafted step: +{total['extra_cost']:.1f} one-token passes "
          f"({total['extra_cost'] / total['cost']:.1%} of the runs); the rescues save at most "
          f"{total['rescued_tokens']:.0f} ({total['rescued_tokens'] / total['cost']:.1%})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
