"""Would the E-series assistants' clustered ("masked embedding") head make drafting cheaper? (issue 17, item 2)

    .venv/bin/python benchmarks/masked_head.py                   # widths 256,512; 2048 clusters; 2 threads
    .venv/bin/python benchmarks/masked_head.py --widths 256 --clusters 1024,2048,4096 --json out.json

llama.cpp 0.3.36 cannot load an assistant that carries `masked_embd_*`
tensors, and it does not expose the assistant's pre-head hidden state, so the
idea cannot ship through it. This measures what it would save:

1. numpy, at the published vocabulary (262,144) and assistant widths: the full
   head (`h @ W.T`, every row) against the clustered head (centroid scores,
   the top cluster(s), then logits for those clusters' rows only, stored
   contiguously in cluster order as `masked_embd_ordering` allows), in float32
   and with an int8 weight proxy (int8 rows, int32 accumulation: same rows
   touched, a quarter of the bytes; numpy has no int8 BLAS, so its absolute
   time is slow; the full/clustered ratio is the figure to read).
2. llama.cpp: one assistant draft step (`MTPContext.step`) on two synthetic
   E-series-shaped pairs that differ only in vocabulary (262,144 vs 16,384):
   the difference is what the full head costs inside the real drafting step.

Saved fraction of a draft step = llama.cpp's head cost x (1 - clustered/full)
/ the 262k step. Lossless either way: the target verifies every token, and a
sampled proposal's distribution is the restricted one it was drawn from.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

VOCAB = 262_144


def _timeit(fn, repeat: int) -> float:
    """Median seconds per call (after one warm-up call)."""
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def head_costs(width: int, clusters: int, top: int, repeat: int, seed: int = 0) -> dict:
    """Full vs clustered head in numpy at vocabulary VOCAB, float32 and int8-proxy weights."""
    import numpy as np

    rng = np.random.default_rng(seed)
    W = rng.standard_normal((VOCAB, width), dtype=np.float32)  # rows already in cluster order
    per = VOCAB // clusters
    centroids = W.reshape(clusters, per, width).mean(axis=1)
    h = rng.standard_normal(width, dtype=np.float32)
    Wq = np.clip(np.round(W * 32), -127, 127).astype(np.int8)
    cq = np.clip(np.round(centroids * 32), -127, 127).astype(np.int8)
    hq = np.clip(np.round(h * 16), -127, 127).astype(np.int8)

    def full_f32():
        return int(np.argmax(W @ h))

    def clustered_f32():
        scores = centroids @ h
        best = np.argpartition(scores, -top)[-top:] if top > 1 else [int(np.argmax(scores))]
        return [int(np.argmax(W[c * per:(c + 1) * per] @ h)) for c in best]

    def full_i8():
        return int(np.argmax(Wq.astype(np.int32, copy=False) @ hq.astype(np.int32)))

    def clustered_i8():
        scores = cq.astype(np.int32) @ hq.astype(np.int32)
        best = np.argpartition(scores, -top)[-top:] if top > 1 else [int(np.argmax(scores))]
        h32 = hq.astype(np.int32)
        return [int(np.argmax(Wq[c * per:(c + 1) * per].astype(np.int32) @ h32)) for c in best]

    out = {"width": width, "clusters": clusters, "top_clusters": top, "rows_scored": clusters + top * per}
    out["f32_full_ms"] = _timeit(full_f32, repeat) * 1e3
    out["f32_clustered_ms"] = _timeit(clustered_f32, repeat) * 1e3
    out["i8_full_ms"] = _timeit(full_i8, max(repeat // 4, 3)) * 1e3
    out["i8_clustered_ms"] = _timeit(clustered_i8, repeat) * 1e3
    out["f32_ratio"] = out["f32_clustered_ms"] / out["f32_full_ms"]
    out["i8_ratio"] = out["i8_clustered_ms"] / out["i8_full_ms"]
    return out


def assistant_step_ms(work: Path, width: int, n_vocab: int, threads: int, repeat: int) -> float:
    """Median wall time of one MTP draft step (llama.cpp) of a synthetic E-series-shaped assistant."""
    from gemma4_factory import FAMILY, write_gemma4_pair
    from gemma_cli.engine import DraftConfig, Engine, EngineConfig, SamplingParams

    spec = replace(FAMILY["e2b"], n_vocab=n_vocab, n_embd=320,  # differs from every width: compat refuses equal widths
                   a_n_embd=width, a_n_layer=4, a_n_head=4, a_n_ff=4 * width)
    d = work / f"e2b-v{n_vocab}-w{width}"
    if not (d / "assistant.gguf").is_file():
        write_gemma4_pair(d, spec)
    target, assistant = d / "target.gguf", d / "assistant.gguf"
    eng = Engine(target, DraftConfig(source="mtp", tokens=1, model_path=assistant, adaptive=False),
                 EngineConfig(n_ctx=512, n_threads=threads))
    try:
        g = eng.generate([1] + list(range(300, 320)), max_tokens=8, sampling=SamplingParams())
        g.text()
        mtp = eng.drafter.mtp  # the linked assistant context (benchmark only: not a public API)
        pos = eng.ctx.n_past
        tok = g.result.tokens[-1]
        return _timeit(lambda: mtp.step(tok, pos), repeat) * 1e3
    finally:
        eng.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="clustered vs full assistant head at vocabulary 262,144")
    ap.add_argument("--widths", default="256,512", help="assistant hidden widths")
    ap.add_argument("--clusters", default="2048", help="cluster counts")
    ap.add_argument("--top", default="1,4", help="clusters kept per draft token")
    ap.add_argument("--threads", type=int, default=2, help="llama.cpp threads (numpy: one BLAS thread)")
    ap.add_argument("--repeat", type=int, default=40)
    ap.add_argument("--skip-llama", action="store_true", help="numpy only (no synthetic pairs, ~1.6 GB of files)")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "gemma-bench" / "masked-head")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    # One BLAS thread: a 128-row matvec with a second thread to wake measures the scheduler, not the head
    # (12 ms per call on a busy 2-core machine); the full head is then also one thread, so the ratio is fair.
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):  # before numpy loads its BLAS
        os.environ.setdefault(var, "1")
    widths = [int(x) for x in args.widths.split(",")]
    out: dict = {"vocab": VOCAB, "threads": args.threads, "load_before": os.getloadavg(), "numpy": [], "llama": []}
    print(f"vocabulary {VOCAB}, numpy 1 thread, llama.cpp {args.threads} threads, load average {out['load_before'][0]:.2f}")
    print("numpy head (ms per draft token): width clusters top | f32 full clustered ratio | int8-proxy full clustered ratio")
    for width in widths:
        for c in (int(x) for x in args.clusters.split(",")):
            for top in (int(x) for x in args.top.split(",")):
                r = head_costs(width, c, top, args.repeat)
                out["numpy"].append(r)
                print(f"  {width:4d} {c:5d} {top:2d} | {r['f32_full_ms']:7.3f} {r['f32_clustered_ms']:7.3f} {r['f32_ratio']:6.3f}"
                      f" | {r['i8_full_ms']:7.3f} {r['i8_clustered_ms']:7.3f} {r['i8_ratio']:6.3f}")
    if not args.skip_llama:
        args.work.mkdir(parents=True, exist_ok=True)
        print("llama.cpp assistant draft step (ms): width | vocab 262144 | vocab 16384 | head share | saved (f32 ratio, best top)")
        for width in widths:
            big = assistant_step_ms(args.work, width, VOCAB, args.threads, args.repeat)
            small = assistant_step_ms(args.work, width, 16_384, args.threads, args.repeat)
            head = max(big - small * 1.0, 0.0) * VOCAB / (VOCAB - 16_384)  # the small head's rows, added back
            ratios = [r["f32_ratio"] for r in out["numpy"] if r["width"] == width]
            saved = head * (1 - min(ratios)) / big if ratios else 0.0
            out["llama"].append({"width": width, "step_ms_262k": big, "step_ms_16k": small, "head_ms": head,
                                 "head_share": head / big, "saved_fraction": saved})
            print(f"  {width:4d} | {big:7.3f} | {small:7.3f} | {head / big:5.1%} | {saved:5.1%}")
    out["load_after"] = os.getloadavg()
    print(f"load average after {out['load_after'][0]:.2f}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
