"""benchmarks/native/tools.py reads llama.cpp's own summaries (lines captured from the built tools);
benchmarks/native/policies.py replays llama.cpp's n-gram rules."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load(module_name: str, path: Path):
    """A benchmark script as a module (benchmarks/ and benchmarks/native are not packages)."""
    spec = importlib.util.spec_from_file_location(module_name, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(module_name, module)
    spec.loader.exec_module(module)
    return module


def _load_native(name: str):
    """benchmarks/native/<name>.py as module native_<name>."""
    return _load(f"native_{name}", ROOT / "benchmarks" / "native" / f"{name}.py")


nt = _load_native("tools")
policies = _load_native("policies")

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


NATIVE_INFO = ("0.00.966.254 I system_info: n_threads = 2 (n_threads_batch = 2) / 2 | CPU : SSE3 = 1 | SSSE3 = 1 | "
               "AVX = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | BMI2 = 1 | AVX512 = 1 | AVX512_VNNI = 1 | LLAMAFILE = 1 | "
               "OPENMP = 1 | REPACK = 1 | ")
PORTABLE_INFO = "CPU : SSE3 = 1 | SSSE3 = 1 | AVX = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | BMI2 = 1 | LLAMAFILE = 1 | OPENMP = 1 | REPACK = 1 | "


def test_build_flavor_follows_the_cpu_features_a_build_reports(tmp_path: Path, monkeypatch) -> None:
    assert nt.cpu_features(PORTABLE_INFO) == nt.PORTABLE_FEATURES
    native = nt.cpu_features(NATIVE_INFO)
    assert {"AVX512", "AVX512_VNNI", "AVX2"} <= native and not native <= nt.PORTABLE_FEATURES
    assert nt.cpu_features("CPU : AVX = 0 | AVX2 = 1 |") == {"AVX2"}  # a feature compiled out is not counted
    assert nt.flavor(nt.cpu_features(PORTABLE_INFO)) == "portable" and nt.flavor(native) == "native"
    # The loaded wheel's own report decides the folder: build-<v> for a portable wheel, build-<v>-native otherwise.
    flavor = nt.wheel_flavor()
    assert flavor in ("portable", "native")
    monkeypatch.setenv("GEMMA_NATIVE_DIR", str(tmp_path))
    assert nt.bin_dir(flavor="portable") == tmp_path / f"build-{nt.VERSION}" / "bin"
    assert nt.bin_dir(flavor="native") == tmp_path / f"build-{nt.VERSION}-native" / "bin"
    assert nt.bin_dir() == nt.bin_dir(flavor=flavor)


def test_generated_text_cuts_the_echoed_prompt() -> None:
    assert nt.generated_text("PROMPT and more", "PROMPT") == " and more"
    prompt = "x" * 10 + "the end of a long prompt that the tool echoed back with a changed first line" * 2
    assert nt.generated_text("y" + prompt[1:] + " generated", prompt) == " generated"
    assert nt.generated_text("only generated", "a prompt that is not echoed") == "only generated"


def test_ngram_simple_port_copies_after_the_latest_match() -> None:
    text = [1, 2, 3, 4, 5, 6, 7, 8, 9, 1, 2, 3, 40, 41, 42, 43, 44, 45, 1, 2, 3]
    draft = policies.SimpleNgram(3, 4).propose(text)
    assert draft == [40, 41, 42, 43]  # after the latest earlier "1 2 3", not the first
    assert policies.SimpleNgram(3, 4).propose(text[:-1] + [99]) == []  # "2 99" never came before


def test_map_k_port_drafts_at_most_what_the_key_last_had_accepted() -> None:
    text = [7] + list(range(100, 140)) + list(range(100, 103))  # (position 0 never counts as a match, as in llama.cpp)
    mk = policies.MapK(3, 8)
    assert mk.propose(text) == list(range(103, 111))
    mk.accept(2)
    assert mk.propose(text) == [103, 104]


def test_ngram_mod_port_drafts_only_long_chains_and_replay_counts_passes() -> None:
    loop = list(range(1000, 1030))
    prompt = loop * 3
    mod = policies.NgramMod()
    assert len(mod.propose(prompt)) == 64  # a 30-token loop seen three times chains on and on
    assert policies.NgramMod().propose(list(range(500))) == []  # no 24-token context seen twice
    out = loop[:20]  # the text goes on with the loop: every draft is right
    curve = {b: 1.0 + 0.5 * (b - 1) for b in range(1, 80)}
    cost, drafted, accepted = policies.replay(prompt, out, policies.NgramMod(), curve)
    assert drafted == accepted == 19 and cost == curve[20]  # one pass from the prompt, its draft cut at the text's end
    assert policies.make("simple-4/16").m == 16 and policies.make("map-k-3/16").n == 3 and policies.make("plain") is None


def test_share_for_prices_the_wanted_tokens_with_the_last_draft_cut() -> None:
    curve = {b: float(b) for b in range(1, 80)}  # a pass costs its row count
    done = [(0, 0), (0, 0), (8, 8), (64, 64)]  # 1 + 1 + 9 + 65 = 76 tokens
    assert policies.share_for(done, curve, 200) == 1.0  # it never ran past what was wanted
    # 20 wanted: the passes up to 11 tokens (1 + 1 + 9 rows), then the 64-token draft cut to 8 (9 rows)
    assert policies.share_for(done, curve, 20) == (1 + 1 + 9 + 9) / (1 + 1 + 9 + 65)


def test_steps_follow_llama_cpps_loop() -> None:
    """The first pass is the prompt's last token with a draft made from the prompt; each pass keeps the
    agreeing prefix and one more token, and the text's last token is always a pass's own."""
    prompt = [1, 2, 3, 4, 5, 6, 7, 8, 9, 1, 2, 3, 4, 5, 6, 7, 8, 9, 1, 2]
    out = [3, 4, 5, 6, 7, 8, 40, 41]
    done = policies.steps(prompt, out, policies.SimpleNgram(2, 6))
    assert done[0] == (6, 6)  # "1 2" came before, followed by 3..8: drafted from the prompt, all right
    assert sum(a + 1 for _, a in done) == len(out)


def test_vs_native_compares_the_drafters_on_either_loops_text() -> None:
    """The replayed tables: gemma's default against the best llama.cpp rule on gemma plain's text and on
    llama.cpp plain's, so a measured loss where the two greedy texts part can be told from a weaker drafter."""
    vs = _load("bench_vs_native", ROOT / "benchmarks" / "vs_native.py")
    rep = {"gemma default": {"speedup": 2.0}, "llama mod": {"speedup": 1.6}, "llama simple-4/16": {"speedup": 1.25}}
    best, ratio = vs._replayed_ratio(rep)
    assert best == "llama mod" and ratio["median"] == pytest.approx(1.25)
    assert vs._replayed_ratio({"llama mod": {"speedup": 1.0}}) == ("llama mod", None)
    assert vs._replayed_ratio({}) == (None, None)

    run = dict(tok_s=40.0, proposed=0, accepted=0, generated=128, overhead_ms_per_step=0.3)
    w = {"runs": {"gemma plain": [run], "gemma default": [dict(run, tok_s=60.0, proposed=90, accepted=60)],
                  "llama plain": [dict(run, tok_s=42.0)], "llama mod": [dict(run, tok_s=70.0, proposed=100, accepted=90)]},
         "same_text": {"gemma default": {"speedup": 1.5}, "llama mod": {"speedup": 1.2}},
         "native_text": {"gemma default": {"speedup": 2.1}, "llama mod": {"speedup": 1.4}}}
    s = vs.summarize(w)
    assert s["default_vs_best_native"]["median"] == pytest.approx(60 / 70)  # measured: each on its own text
    assert s["default_vs_best_native_same_text"]["median"] == pytest.approx(1.25)
    assert s["best_native_native_text"] == "llama mod"
    assert s["default_vs_best_native_native_text"]["median"] == pytest.approx(1.5)
