"""benchmarks/native/tools.py reads llama.cpp's own summaries (lines captured from the built tools)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("native_tools", ROOT / "benchmarks" / "native" / "tools.py")
assert _spec and _spec.loader
nt = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("native_tools", nt)
_spec.loader.exec_module(nt)

SPECULATIVE_LOG = """\
0.43.568.247 I encoded  283 tokens in    8.136 seconds, speed:   34.784 t/s
0.43.568.248 I decoded   39 tokens in   29.737 seconds, speed:    1.311 t/s
0.43.568.248 I n_draft   = 3
0.43.568.248 I n_predict = 39
0.43.568.249 I n_drafted = 64
0.43.568.249 I n_accept  = 25
0.43.568.249 I accept    = 39.062%
"""

COMPLETION_LOG = """\
0.40.534.892 I common_perf_print:    sampling time =       6.83 ms
0.40.534.948 I common_perf_print: prompt eval time =   10458.54 ms /   283 tokens (   36.96 ms per token,    27.06 tokens per second)
0.40.534.965 I common_perf_print:        eval time =   17522.67 ms /    15 runs   ( 1168.18 ms per token,     0.86 tokens per second)
0.40.534.980 I common_perf_print:       total time =   28018.07 ms /   298 tokens
"""


def test_parse_speculative_summary() -> None:
    rate, generated, drafted, accepted, prompt = nt.parse_speculative(SPECULATIVE_LOG)
    assert (generated, drafted, accepted, prompt) == (39, 64, 25, 283)
    assert rate == pytest.approx(39 / 29.737)


def test_parse_completion_counts_the_prompts_token_too() -> None:
    rate, generated, prompt = nt.parse_completion(COMPLETION_LOG)
    assert generated == 16  # 15 single-token decodes after the one the prompt produced
    assert prompt == 283
    assert rate == pytest.approx(15 / 17.52267)


def test_missing_summaries_are_errors() -> None:
    with pytest.raises(nt.NativeError):
        nt.parse_speculative(COMPLETION_LOG)
    with pytest.raises(nt.NativeError):
        nt.parse_completion(SPECULATIVE_LOG.replace("encoded", "x"))


def test_configs_and_missing_tools(tmp_path: Path) -> None:
    labels = [c.label for c in nt.NGRAM_CONFIGS]
    assert len(set(labels)) == len(labels) and "mod" in labels
    assert nt.PLAIN.is_plain and not any(c.is_plain for c in nt.NGRAM_CONFIGS)
    assert nt.bin_dir(tmp_path) == tmp_path
    with pytest.raises(nt.NativeError, match="build.sh"):
        nt.check_tools(tmp_path)
