"""Hostile model files, chat templates and metadata strings (issue 14, items 1, 3, 8).

Every file here is a real tiny model whose metadata was then made hostile
(tests/hostile_factory.py). For each hyperparameter llama.cpp asserts on, the
header preflight must refuse the file in one line; where llama.cpp really
aborts on it, the child-process probe must turn that abort into one line too
(which also proves the preflight rule guards a real abort). Through the CLI,
run/show/create end with exit 1, one line on stderr, nothing on stdout, no
signal death and no traceback.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gemma_cli.engine.template import render_chat
from gemma_cli.engine.template_limits import TemplateLimitError
from gemma_cli.errors import ModelFileError
from gemma_cli.load_guard import guard_load, probe_file
from gemma_cli.preflight import preflight
from gemma_cli.text_safety import clean_display
from gguf_factory import char_vocab
from hostile_factory import write_hostile

REPO = Path(__file__).resolve().parents[1]
VOCAB = char_vocab()

# id, architecture, metadata overrides, model shape, text the refusal must name, llama.cpp aborts on it
CASES = [
    ("layers-huge", "llama", {"{arch}.block_count": 100000}, {}, "block_count", True),
    ("layers-huge-gemma3", "gemma3", {"{arch}.block_count": 100000}, {}, "block_count", True),
    ("layers-zero", "llama", {"{arch}.block_count": 0}, {}, "block_count", True),
    ("nextn-over-layers", "llama", {"{arch}.nextn_predict_layers": 5}, {}, "nextn_predict_layers", True),
    ("experts-over-max", "llama", {"{arch}.expert_count": 2000}, {}, "expert_count", True),
    ("experts-used-without-experts", "llama", {"{arch}.expert_used_count": 2}, {}, "expert_used_count", True),
    ("experts-none-used", "llama", {"{arch}.expert_count": 4, "{arch}.expert_used_count": 0}, {}, "expert_used_count", True),
    ("expert-groups-without-experts", "llama", {"{arch}.expert_group_count": 2}, {}, "expert_group_count", True),
    ("rope-scaling-unknown", "llama", {"{arch}.rope.scaling.type": "bogus"}, {}, "rope.scaling.type", True),
    ("kv-heads-not-divisor", "llama", {}, {"n_head": 2, "n_head_kv": 3}, "head_count_kv", True),
    ("duplicate-tokens", "llama", {"tokenizer.ggml.tokens": VOCAB[:-1] + ["a"]}, {}, "appears twice", True),
    ("gemma3-window-no-swa-layer", "gemma3", {"{arch}.attention.sliding_window_pattern": 1}, {}, "sliding_window_pattern", True),
    ("gemma3-pattern-all-full", "gemma3", {"{arch}.attention.sliding_window_pattern": [False, False]}, {}, "sliding_window_pattern", True),
    ("gemma4-all-kv-shared", "gemma4", {"{arch}.attention.shared_kv_layers": 4}, {}, "shared_kv_layers", True),
    ("gemma4-one-own-kv-layer", "gemma4", {"{arch}.attention.shared_kv_layers": 3}, {}, "shared_kv_layers", True),
    # refused as malformed; llama.cpp throws (or misbehaves later) rather than aborting
    ("heads-zero", "llama", {"{arch}.attention.head_count": 0}, {}, "head_count", False),
    ("heads-array-length", "llama", {"{arch}.attention.head_count": [2, 2, 2]}, {}, "one value per layer", False),
    ("embedding-zero", "llama", {"{arch}.embedding_length": 0}, {}, "embedding_length", False),
    ("ffn-zero", "llama", {"{arch}.feed_forward_length": 0}, {}, "feed_forward_length", False),
    ("ffn-array-length", "llama", {"{arch}.feed_forward_length": [64]}, {}, "one value per layer", False),
    ("context-zero", "llama", {"{arch}.context_length": 0}, {}, "context_length", False),
    ("value-length-mismatch", "llama", {"{arch}.attention.value_length": 8}, {}, "value_length", False),
    ("rope-dims-over-head", "llama", {"{arch}.rope.dimension_count": 40}, {}, "rope.dimension_count", False),
    ("no-vocabulary", "llama", {"tokenizer.ggml.model": "none"}, {}, "tokenizer.ggml.model", False),
    ("vocab-vs-embedding-shape", "llama", {"tokenizer.ggml.tokens": VOCAB + ["extra"],
                                           "tokenizer.ggml.scores": [0.0] * (len(VOCAB) + 1),
                                           "tokenizer.ggml.token_type": [1] * (len(VOCAB) + 1)}, {}, "token_embd.weight", False),
    ("bos-out-of-range", "llama", {"tokenizer.ggml.bos_token_id": 100000}, {}, "bos_token_id", False),
    ("gemma3-pattern-length", "gemma3", {"{arch}.attention.sliding_window_pattern": [True]}, {}, "one boolean per layer", False),
    ("block-count-string", "llama", {"{arch}.block_count": "12"}, {}, "block_count", False),
    # llama.cpp loads these, then aborts at the first decode (GGML_ASSERT(eps >= 0.0f) in ggml-cpu): the probe cannot see it
    ("rms-eps-nan", "llama", {"{arch}.attention.layer_norm_rms_epsilon": float("nan")}, {}, "layer_norm_rms_epsilon", False),
    ("rms-eps-negative", "gemma3", {"{arch}.attention.layer_norm_rms_epsilon": -1.0}, {}, "layer_norm_rms_epsilon", False),
    ("rope-dims-zero", "llama", {"{arch}.rope.dimension_count": 0}, {}, "rope.dimension_count = 0", False),
]
ABORTING = [c for c in CASES if c[5]]

EVIL = "MIT\x1b[2J\x1b]0;pwned\x07\rForged: all tests passed\x07\x9b31m\u202eevil"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("hostile")
    files = {cid: write_hostile(d / f"{cid}.gguf", arch, ov, **shape) for cid, arch, ov, shape, _, _ in CASES}
    files["evil-strings"] = write_hostile(d / "evil-strings.gguf", "llama", {
        "general.license": EVIL + "x" * 10_000_000, "general.name": "tiny\x1b[31m red\rforged"})
    return files


def _cli(*args: str, env_extra: dict[str, str], timeout: float = 60) -> tuple[subprocess.CompletedProcess[bytes], float]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "NO_COLOR": "1", **env_extra}
    env.pop("GEMMA_DEBUG", None)
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "gemma_cli", *args], check=False, capture_output=True, timeout=timeout,
                          env=env, stdin=subprocess.DEVNULL, cwd=REPO)
    return proc, time.monotonic() - t0


def _assert_one_line_failure(proc: subprocess.CompletedProcess[bytes], elapsed: float, must_say: str) -> None:
    err = proc.stderr.decode("utf-8", "replace")
    assert proc.returncode == 1, (proc.returncode, err)  # not 134, not a negative signal number
    assert proc.stdout == b"", proc.stdout[:500]
    assert "Traceback" not in err and "GGML_ASSERT" not in err
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("Error: ") and must_say in err, err
    assert elapsed < 30


# -- item 1: the header preflight and the probe -------------------------------
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_preflight_refuses_in_one_line(corpus: dict[str, Path], case: tuple) -> None:
    cid, _, _, _, says, _ = case
    with pytest.raises(ModelFileError) as err:
        preflight(corpus[cid])
    message = str(err.value)
    assert says in message and f"{cid}.gguf" in message and "\n" not in message


@pytest.mark.parametrize("case", ABORTING, ids=[c[0] for c in ABORTING])
def test_probe_turns_a_real_llama_abort_into_one_line(corpus: dict[str, Path], case: tuple) -> None:
    """Without the preflight, llama.cpp really aborts on these; the child probe reports it."""
    with pytest.raises(ModelFileError, match=r"^llama\.cpp aborted while loading .*GGML_ASSERT\(.*\) failed$"):
        probe_file(corpus[case[0]], timeout=60)


def test_valid_models_pass_both_checks_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from gemma4_factory import write_gemma4_pair

    monkeypatch.setenv("GEMMA_CACHE", str(tmp_path / "cache"))
    target, assistant = write_gemma4_pair(tmp_path / "pair")
    files = [write_hostile(tmp_path / f"{a}.gguf", a) for a in ("llama", "gemma3")] + [target, assistant]
    for f in files:
        guard_load(f)
    assert len(list((tmp_path / "cache" / "probed").iterdir())) == len(files)
    t0 = time.perf_counter()
    for f in files:
        guard_load(f)  # remembered: no header parse, no child
    assert time.perf_counter() - t0 < 0.5


@pytest.mark.parametrize("command", ["run", "show", "create"])
@pytest.mark.parametrize("cid", ["layers-huge", "gemma3-window-no-swa-layer", "duplicate-tokens"])
def test_cli_refuses_hostile_file(corpus: dict[str, Path], tmp_path: Path, command: str, cid: str) -> None:
    path = str(corpus[cid])
    args = {"run": ["run", path, "hi"], "show": ["show", path], "create": ["create", "hostile:1", "--target", path]}[command]
    proc, elapsed = _cli(*args, env_extra={"GEMMA_MODELS": str(tmp_path / "models"), "GEMMA_CACHE": str(tmp_path / "cache")})
    _assert_one_line_failure(proc, elapsed, "cannot be loaded safely")
    if command == "create":
        assert not (tmp_path / "models" / "manifests").exists() or not any((tmp_path / "models" / "manifests").rglob("*.json"))


def test_run_json_format_failure_prints_no_backtrace(corpus: dict[str, Path], tmp_path: Path) -> None:
    proc, _ = _cli("run", str(corpus["layers-huge"]), "hi", "--format", "json",
                   env_extra={"GEMMA_MODELS": str(tmp_path / "m"), "GEMMA_CACHE": str(tmp_path / "c")})
    assert proc.returncode == 1 and b"GGML" not in proc.stdout + proc.stderr and b"Traceback" not in proc.stderr


# -- item 3: templates that loop, allocate or print without end ----------------
HOSTILE_TEMPLATES = {
    "nested-range": "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    "lipsum": "{{ lipsum(n=10**7) }}",
    "print-gigabytes": "{% for i in range(100000) %}{% for j in range(100000) %}{{ 'x' * 1000 }}{% endfor %}{% endfor %}",
    "multiply-string": "{{ 'x' * 10**10 }}",
    "double-with-tilde": "{% set ns = namespace(s='a') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
    "double-with-plus": "{% set ns = namespace(s='a') %}{% for i in range(64) %}{% set ns.s = ns.s + ns.s %}{% endfor %}",
    "huge-center": "{{ 'x'|center(10**9) }}",
    "huge-format-width": "{{ '{:>999999999}'.format(1) }}",
    "percent-width": "{{ '%0999999999d' % 1 }}",
    "replace-amplifies": "{% set s = 'a' * 100000 %}{{ s|replace('a', s) }}",
    "join-amplifies": "{{ ('x' * 1000000)|list|join('y' * 1000) }}",
    "slice-generator": "{% for x in [1]|slice(10**6) %}{% for y in [1]|slice(10**6) %}{% endfor %}{% endfor %}",
    "wordwrap-spin": "{{ ('a ' * 1000000)|wordwrap(1) }}",
    "macro-recursion": "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
    "expandtabs-amplifies": "{{ ('\t' * 1000000).expandtabs(1000000) }}",
    "indent-amplifies": "{{ ('a\n' * 1000000)|indent('b' * 1000000) }}",
    "wordwrap-amplifies": "{{ ('a' * 1000000)|wordwrap(1, true, 'b' * 1000000) }}",
    "format-fields-repeat": "{{ ('{0}' * 1000).format('x' * 1000000) }}",
    "percent-fields-repeat": "{{ ('%s' * 1000) % (('x' * 1000000,) * 1000) }}",
    "integer-squaring": "{% set ns = namespace(x=3) %}{% for i in range(40) %}{% set ns.x = ns.x * ns.x %}{% endfor %}",
}


@pytest.mark.parametrize("name", list(HOSTILE_TEMPLATES))
def test_hostile_template_ends_fast_with_one_line(name: str) -> None:
    t0 = time.monotonic()
    with pytest.raises(ModelFileError) as err:
        render_chat(HOSTILE_TEMPLATES[name], [{"role": "user", "content": "hi"}])
    assert time.monotonic() - t0 < 2.5
    assert "\n" not in str(err.value) and str(err.value).startswith("chat template")


def test_limits_leave_real_templates_alone() -> None:
    from gguf_factory import CHAT_TEMPLATE

    long_chat = [{"role": "user" if i % 2 == 0 else "assistant", "content": "word " * 2000} for i in range(60)]
    text = render_chat(CHAT_TEMPLATE, long_chat)
    assert text.count("<start_of_turn>") == 61 and len(text) > 600_000
    assert render_chat(None, [{"role": "user", "content": "hi"}]).endswith("<start_of_turn>model\n")


def test_limits_raise_template_errors() -> None:
    from gemma_cli.engine.template import TemplateError

    with pytest.raises(TemplateLimitError, match="loop iterations|longer than") as err:
        render_chat("{% for i in range(100000) %}{% for j in range(3) %}{% endfor %}{% endfor %}", [])
    assert isinstance(err.value, TemplateError)


def test_cli_run_with_a_hanging_template_fails_fast(tmp_path: Path) -> None:
    model = write_hostile(tmp_path / "loop.gguf", "llama", {"tokenizer.chat_template": HOSTILE_TEMPLATES["nested-range"]})
    proc, elapsed = _cli("run", str(model), "hi", "--max-tokens", "4",
                         env_extra={"GEMMA_MODELS": str(tmp_path / "m"), "GEMMA_CACHE": str(tmp_path / "c")})
    _assert_one_line_failure(proc, elapsed, "chat template")
    assert "refusing it" in proc.stderr.decode()


# -- item 8: strings from the file reach the terminal cleaned and bounded ------
def test_clean_display() -> None:
    assert clean_display("a\x1b[31mred\x1b[0m\x07\rb") == "ared b"
    assert clean_display("title\x1b]0;pwned\x07end") == "titleend"
    assert clean_display("c1\x9b31m\u202eok") == "c131mok"
    assert clean_display("line1\nline2\tx") == "line1 line2 x"
    assert clean_display("line1\r\nline2\tx", multiline=True) == "line1\nline2\tx"
    long = clean_display("y" * 10_000_000, 50)
    assert long.startswith("y" * 49 + "…") and "(10000000 characters)" in long and len(long) < 80


def test_show_cleans_and_truncates_metadata(corpus: dict[str, Path], tmp_path: Path) -> None:
    env = {"GEMMA_MODELS": str(tmp_path / "m"), "GEMMA_CACHE": str(tmp_path / "c")}
    proc, _ = _cli("show", str(corpus["evil-strings"]), env_extra=env)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.decode()
    assert not any(c in out for c in "\x1b\x07\r\x9b\u202e"), repr(out[:300])
    assert len(proc.stdout) < 4000
    license_line = next(ln for ln in out.splitlines() if ln.startswith("License"))
    assert "MIT" in license_line and "…" in license_line
    proc, _ = _cli("show", "--json", str(corpus["evil-strings"]), env_extra=env)
    facts = json.loads(proc.stdout)["target"]
    assert len(proc.stdout) < 4000 and "\x1b" not in facts["license"] + facts["name"] and "\r" not in facts["name"]


def test_error_lines_quoting_file_text_are_cleaned(tmp_path: Path) -> None:
    template = "{{ raise_exception('\x1b[2J\rForged line\x07') }}"
    model = write_hostile(tmp_path / "raise.gguf", "llama", {"tokenizer.chat_template": template})
    proc, elapsed = _cli("run", str(model), "hi", env_extra={"GEMMA_MODELS": str(tmp_path / "m"), "GEMMA_CACHE": str(tmp_path / "c")})
    _assert_one_line_failure(proc, elapsed, "Forged line")
    assert not any(c in proc.stderr.decode() for c in "\x1b\x07\r")
