"""Issue 14, the engine side: huge prompts under a memory limit, tiny temperatures, the speedup
estimate, default threads, `--ctx` below llama.cpp's granularity, and chat with a base model.

Real llama.cpp on tiny synthetic GGUFs (tests/gguf_factory.py), the real Gemma 3 270M where the
behaviour depends on its vocabulary or on what a base model writes.
"""

from __future__ import annotations

import json
import resource
import subprocess
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

from gemma_cli import limits
from gemma_cli.chat import Conversation
from gemma_cli.engine import DraftConfig, Engine, EngineConfig, SamplingParams
from gemma_cli.engine.dialogue import STOPS, render_dialogue
from gemma_cli.engine.llama.threads import cgroup_cpu_limit, choose_threads, threads_env
from gemma_cli.engine.sampling import warp
from gemma_cli.engine.types import LiveStats
from gemma_cli.errors import ContextFullError
from gguf_factory import write_llama_gguf
from hub_server import ROOT, assert_one_line_error, gemma_cmd, gemma_env

GREEDY = SamplingParams(temperature=0.0)
MB = 1024 * 1024


@pytest.fixture(scope="module")
def base_tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model without a chat template: what a base model's GGUF looks like."""
    return write_llama_gguf(tmp_path_factory.mktemp("base") / "base-tiny.gguf", seed=7, chat_template=None)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return gemma_env(tmp_path_factory.mktemp("careless-engine") / "models", HF_HUB_OFFLINE="1")


def _limit_address_space() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))


# -- 2. huge input ---------------------------------------------------------------------------

@pytest.mark.parametrize("megabytes", [5, 30])
def test_huge_stdin_is_refused_fast_under_an_address_space_limit(env, gemma3_path, megabytes):
    """It used to take 2.2 GB and 29 s (30 MB), or die of std::bad_alloc under a 4 GB limit."""
    text = (b"The quick brown fox jumps over the lazy dog. " * (megabytes * MB // 45 + 1))[: megabytes * MB]
    t0 = time.perf_counter()
    proc = subprocess.run(gemma_cmd("run", str(gemma3_path), "-n", "4", "--threads", "1"), env=env, cwd=ROOT, input=text,
                          capture_output=True, timeout=120, preexec_fn=_limit_address_space)
    elapsed = time.perf_counter() - t0
    proc = subprocess.CompletedProcess(proc.args, proc.returncode, proc.stdout.decode(), proc.stderr.decode())
    assert proc.returncode == 1, proc  # not a signal (negative), not a crash
    line = assert_one_line_error(proc, "the prompt is at least", f"({megabytes}.0 MB)", "context holds 4096")
    at_least = int(line.split("at least ")[1].split()[0])
    assert megabytes * MB / at_least <= 48  # bounded by Gemma 3's longest token (48 bytes), so a true lower bound
    assert proc.stdout == ""
    assert elapsed < 30, elapsed  # measured 3-4 s on a loaded 2-core machine (model load included)


def test_long_prompt_is_counted_in_chunks_and_refused_early(tiny_model):
    eng = Engine(tiny_model, DraftConfig(source="none"), EngineConfig(n_ctx=131072, n_threads=1))
    try:
        text = "ab " * (MB // 2)  # 1.5 MB: below n_ctx x the longest token, so it has to be counted
        assert len(text) < (eng.n_ctx - 1) * eng.target.max_token_bytes()
        t0 = time.perf_counter()
        with pytest.raises(ContextFullError, match=r"at least \d+ tokens \(1\.5 MB\) but the context holds 131072"):
            eng.generate(text)
        assert time.perf_counter() - t0 < 30
    finally:
        eng.close()


def test_chunked_count_agrees_with_one_tokenization(tiny_model):
    eng = Engine(tiny_model, DraftConfig(source="none"), EngineConfig(n_ctx=512, n_threads=1))
    try:
        text = "\n".join(f"line {i}: the cat sat on the mat, {i * 7} times." for i in range(400))
        whole = len(eng.target.tokenize(text))
        chunked = eng.target.count_tokens(text, stop_after=10**9, chunk_bytes=1000)
        assert abs(chunked - whole) <= 2 * (len(text) // 1000 + 1)
        assert eng.target.count_tokens(text, stop_after=100, chunk_bytes=1000) < whole  # stops early
    finally:
        eng.close()


def test_a_prompt_that_fits_is_still_tokenized_exactly(tiny_model):
    eng = Engine(tiny_model, DraftConfig(source="none"), EngineConfig(n_ctx=512, n_threads=1))
    try:
        assert eng.tokenize("hello world") == eng.target.tokenize("hello world")
        with pytest.raises(ContextFullError, match=r"the prompt has \d+ tokens but the context holds 512"):
            eng.generate("x" * 600)  # too long, but cheap to tokenize: counted exactly
    finally:
        eng.close()


def test_chat_drops_history_rather_than_refusing_when_only_the_total_is_huge(tiny_model):
    eng = Engine(tiny_model, DraftConfig(source="none"), EngineConfig(n_ctx=512, n_threads=1))
    try:
        conv = Conversation()
        conv.turns = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a" * 20000}]
        conv.add_user("short question")
        fitted = conv.fit(eng, 16)
        assert fitted.dropped_turns == 1 and len(fitted.tokens) < eng.n_ctx
        conv.add_assistant("ok")
        conv.add_user("b" * 50000)
        with pytest.raises(ContextFullError, match="at least"):
            conv.fit(eng, 16)
    finally:
        eng.close()


# -- 14. tiny temperatures ---------------------------------------------------------------------

@pytest.mark.parametrize("temperature", [1e-320, 1e-300, 1e-5])
def test_tiny_temperature_is_greedy_without_warnings(tiny_model, temperature):
    assert SamplingParams(temperature=temperature).greedy
    eng = Engine(tiny_model, DraftConfig(source="ngram", tokens=4), EngineConfig(n_ctx=512, n_threads=1))
    try:
        greedy = eng.generate("abcabc", max_tokens=24, sampling=GREEDY).text()
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            with np.errstate(all="raise"):
                tiny = eng.generate("abcabc", max_tokens=24, sampling=SamplingParams(temperature=temperature, seed=5)).text()
        assert tiny == greedy
    finally:
        eng.close()


def test_warp_at_a_tiny_temperature_is_the_argmax():
    logits = np.array([0.5, 3.0, 2.9, -1.0], dtype=np.float32)
    with np.errstate(all="raise"):
        d = warp(logits, SamplingParams(temperature=1e-320))
    assert list(d.ids) == [1] and list(d.probs) == [1.0]
    assert not SamplingParams(temperature=limits.GREEDY_TEMPERATURE).greedy  # the threshold itself samples


# -- 13. speedup estimate ----------------------------------------------------------------------

def test_speedup_estimate_needs_this_generations_own_plain_and_drafting_steps():
    s = LiveStats(generated_tokens=41, step_seconds=0.2, plain_steps=2, plain_step_seconds=0.02, draft_steps=20)
    assert s.speedup_estimate is None  # too few plain steps: no baseline of its own
    s.plain_steps, s.plain_step_seconds = 4, 0.04  # 10 ms per plain step
    assert s.speedup_estimate == pytest.approx(40 * 0.01 / 0.2)
    s.draft_steps = 3
    assert s.speedup_estimate is None
    assert LiveStats(single_pass_seconds=0.01, step_seconds=0.1, generated_tokens=30).speedup_estimate is None


def test_speedup_estimate_is_null_in_json_and_na_in_verbose_without_drafting(env, tiny_model):
    proc = subprocess.run(gemma_cmd("run", str(tiny_model), "abcabcabc", "--draft", "none", "-n", "12", "--temperature", "0",
                                    "--threads", "1", "--format", "json"), env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["speedup_estimate"] is None and doc["plain_steps"] >= 3 and doc["draft_steps"] == 0
    proc = subprocess.run(gemma_cmd("run", str(tiny_model), "abcabcabc", "--draft", "ngram", "-n", "12", "--temperature", "0",
                                    "--threads", "1", "--verbose"), env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    line = next(x for x in proc.stderr.splitlines() if x.startswith("speedup estimate:"))
    assert "n/a" in line or ("plain" in line and "drafting steps" in line)


# -- 10. default threads -----------------------------------------------------------------------

@pytest.mark.parametrize(
    "allowed, physical, quota, expected",
    [
        (2, 2, None, 2),  # every core: the governor drops threads when another program competes (README)
        (8, 4, None, 4),  # SMT siblings count once
        (64, 64, 2, 2),  # a cgroup quota of 2 CPUs on a 64-CPU host
        (4, None, None, 4),  # topology unknown: the allowed CPUs
        (1, 1, 0, 1),  # never fewer than one
    ],
)
def test_default_thread_count_follows_cores_affinity_and_quota(allowed, physical, quota, expected):
    assert choose_threads(allowed, physical, quota) == expected


def test_cgroup_quota_caps_the_cpus(tmp_path):
    f = tmp_path / "cpu.max"
    f.write_text("150000 100000\n")
    assert cgroup_cpu_limit(f) == 2
    f.write_text("max 100000\n")
    assert cgroup_cpu_limit(f) is None
    assert cgroup_cpu_limit(tmp_path / "missing") is None


def test_idle_threads_spin_briefly_unless_the_user_chose():
    assert threads_env({}) == {"GOMP_SPINCOUNT": "300000"}
    assert threads_env({"OMP_WAIT_POLICY": "active"}) == {}
    assert threads_env({"GOMP_SPINCOUNT": "1000"}) == {}


def test_the_wait_policy_is_in_place_before_llama_cpp_loads(env, tiny_model):
    code = (f"import os; from gemma_cli.engine.llama import Model, Context; m = Model({str(tiny_model)!r}); "
            "c = Context(m, n_ctx=256); print(os.environ.get('GOMP_SPINCOUNT'), c.n_threads >= 1)")
    clean = {k: v for k, v in env.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    proc = subprocess.run([*gemma_cmd()[:1], "-c", code], env={**clean, "PYTHONPATH": str(ROOT)}, cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.stdout.split() == ["300000", "True"], proc.stderr


# -- confusing: --ctx below llama.cpp's granularity --------------------------------------------

def test_a_tiny_context_is_rounded_up_and_still_holds_a_draft(tiny_model):
    eng = Engine(tiny_model, DraftConfig(source="ngram", tokens=16), EngineConfig(n_ctx=8, n_threads=1))
    try:
        assert eng.n_ctx == 256 and eng.ctx.n_batch >= 17
        assert eng.generate("abcabc", max_tokens=8, sampling=GREEDY).text() is not None
    finally:
        eng.close()


def test_cli_says_when_ctx_is_rounded_up(env, tiny_model):
    proc = subprocess.run(gemma_cmd("run", str(tiny_model), "abc", "--ctx", "64", "-n", "2", "--threads", "1",
                                    "--draft-tokens", "16"), env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "note: --ctx 64 was rounded up to 256" in proc.stderr


# -- 16. chat with a base model ----------------------------------------------------------------

def test_base_model_chat_is_a_transcript_with_stops(base_tiny):
    eng = Engine(base_tiny, DraftConfig(source="none"), EngineConfig(n_ctx=1024, n_threads=1))
    try:
        assert eng.is_base_model and eng.chat_stops == STOPS
        conv = Conversation(system="Be brief.")
        conv.add_user("hi there")
        first = conv.fit(eng, 16).tokens
        text = eng.target.detokenize(first)
        assert text.lstrip().startswith("Be brief.") and text.endswith("User: hi there\nAssistant:")
        assert "<start_of_turn>" not in text
        conv.add_assistant(" hello!")
        conv.add_user("and now?")
        second = conv.fit(eng, 16).tokens
        assert second[: len(first) - 1] == first[:-1]  # the frame is stable: the KV cache keeps the history
    finally:
        eng.close()


def test_chat_model_keeps_its_template(tiny_model):
    eng = Engine(tiny_model, DraftConfig(source="none"), EngineConfig(n_ctx=512, n_threads=1))
    try:
        assert not eng.is_base_model and eng.chat_stops == ()
    finally:
        eng.close()


def test_render_dialogue_keeps_every_message_on_its_line():
    text = render_dialogue([{"role": "user", "content": "one\n\n two "}, {"role": "assistant", "content": "x"},
                            {"role": "user", "content": "q"}])
    assert "User: one\n two\nAssistant: x\n\nUser: q\nAssistant:" in text


def test_render_dialogue_uses_every_system_message_and_skips_empty_ones():
    user = {"role": "user", "content": "hi"}
    text = render_dialogue([{"role": "system", "content": ""}, {"role": "system", "content": "Be a pirate."}, user,
                            {"role": "assistant", "content": "arr"}, {"role": "system", "content": "Answer in French."},
                            user])
    assert text.startswith("Be a pirate.\nAnswer in French.\n\n")  # an API client's later system message counts too
    assert render_dialogue([{"role": "system", "content": " "}, user]) == render_dialogue([user])  # empty: the intro


def test_chat_with_the_real_base_model_answers_and_stops_at_the_next_turn(env, gemma3_path):
    proc = subprocess.run(gemma_cmd("chat", str(gemma3_path), "--temperature", "0", "-n", "60", "--threads", "1"),
                          env=env, cwd=ROOT, input="What is the capital of France?\n", capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "is a base model (pre-trained, not instruction-tuned)" in proc.stderr
    assert "gemma pull gemma4:e2b" in proc.stderr
    assert "Paris" in proc.stdout and "User:" not in proc.stdout
    assert "stop string" in proc.stderr  # the reply ended at the transcript's next turn, not at max tokens


def test_catalog_and_show_call_the_default_model_a_base_model(env, gemma3_path):
    raw = json.loads((ROOT / "gemma_cli/data/catalog.json").read_text())
    description = raw["models"]["gemma3:270m"]["description"]
    assert "base" in description and "instruct " not in description
    proc = subprocess.run(gemma_cmd("show", str(gemma3_path)), env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "base model (no chat template: continues text)" in proc.stdout
