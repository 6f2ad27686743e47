"""`gemma run`'s documented contract, end to end through the real CLI in subprocesses.

The store's `gemma3:270m` is a tiny synthetic GGUF created under that name, so the
default-model paths run in milliseconds of inference; everything else (argument
parsing, stdin handling, formats, exit codes, signals, pipes) is the real program.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time

import pytest

from gguf_factory import char_vocab, write_llama_gguf
from hub_server import EXIT_USAGE, ROOT, assert_one_line_error, gemma_cmd, write_catalog

FAST = ("--threads", "1", "--ctx", "512")
GREEDY = ("--temperature", "0")
REPEAT = "abc abc abc abc abc abc abc"  # n-gram lookup has something to propose


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A store whose default model (`gemma3:270m`) is a tiny chat-templated GGUF; colours allowed."""
    d = tmp_path_factory.mktemp("run")
    model = write_llama_gguf(d / "run-tiny.gguf", seed=11, vocab=char_vocab() + ["\n"])
    e = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "GEMMA_", "NO_COLOR", "FORCE_COLOR"))}
    e.update(GEMMA_MODELS=str(d / "models"), HF_HUB_OFFLINE="1", TERM="xterm-256color", PYTHONUNBUFFERED="1")
    # An empty catalog: `create` refuses catalog names (`gemma pull` owns those), and this store's default must be ours.
    e["GEMMA_CATALOG"] = str(write_catalog(d / "catalog.json", {}))
    made = subprocess.run(gemma_cmd("create", "gemma3:270m", "--target", str(model), "--quiet"), env=e, cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    e["TINY"] = str(model)
    return e


def gemma(env: dict[str, str], *args: str, stdin: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(gemma_cmd(*args), env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          input=stdin, stdin=None if stdin is not None else subprocess.DEVNULL)


def as_json(proc: subprocess.CompletedProcess) -> dict:
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_stdin_goes_before_the_prompt(env):
    piped = as_json(gemma(env, "run", env["TINY"], "beta gamma", "--raw", *GREEDY, *FAST, "-n", "16", "--format", "json",
                          stdin="alpha delta\n"))
    joined = as_json(gemma(env, "run", env["TINY"], "alpha delta\n\nbeta gamma", "--raw", *GREEDY, *FAST, "-n", "16",
                           "--format", "json"))
    swapped = as_json(gemma(env, "run", env["TINY"], "beta gamma\n\nalpha delta", "--raw", *GREEDY, *FAST, "-n", "16",
                            "--format", "json"))
    assert piped["prompt_tokens"] == joined["prompt_tokens"] == swapped["prompt_tokens"]
    assert piped["text"] == joined["text"]
    assert swapped["text"] != joined["text"]  # the order matters, and it is stdin first


def test_lone_argument_is_the_prompt_and_stdout_has_only_the_text(env):
    shown = gemma(env, "run", "Hello", *GREEDY, *FAST, "-n", "20", "--verbose")  # one word, not a model: the prompt
    ref = as_json(gemma(env, "run", "gemma3:270m", "Hello", *GREEDY, *FAST, "-n", "20", "--format", "json"))
    assert shown.returncode == 0, shown.stderr
    assert ref["model"] == "gemma3:270m" and ref["generated_tokens"] == 20
    assert shown.stdout == ref["text"]  # exactly the generated text: no newline added, nothing else on stdout
    assert "\x1b" not in shown.stdout and "\x1b" not in shown.stderr  # piped: no colour or control codes
    assert re.search(r"^eval count: +19 token\(s\)$", shown.stderr, re.M), shown.stderr  # Ollama's: after the first
    assert re.search(r"^draft source: +ngram$", shown.stderr, re.M) and "total duration:" in shown.stderr


def test_formats_json_and_jsonl(env):
    one = as_json(gemma(env, "run", env["TINY"], REPEAT, *GREEDY, *FAST, "-n", "24", "--format", "json"))
    assert {"text", "stop_reason", "generated_tokens", "tokens_per_s", "acceptance_rate", "draft_proposed"} <= set(one)
    assert one["stop_reason"] == "length" and one["generated_tokens"] == 24
    lines = gemma(env, "run", env["TINY"], REPEAT, *GREEDY, *FAST, "-n", "24", "--format", "jsonl")
    assert lines.returncode == 0, lines.stderr
    objs = [json.loads(line) for line in lines.stdout.splitlines()]
    pieces, done = objs[:-1], objs[-1]
    assert done["done"] is True and done["stop_reason"] == "length" and "text" not in done
    assert all(set(p) == {"text", "tokens", "drafted"} for p in pieces) and len(pieces) >= 2
    assert "".join(p["text"] for p in pieces) == one["text"]
    assert sum(p["tokens"] for p in pieces) == 24 == done["generated_tokens"]
    assert sum(p["drafted"] for p in pieces) == done["emitted_from_draft"]


def test_no_prompt_is_a_usage_error_on_dev_null_and_on_a_terminal(env):
    assert_one_line_error(gemma(env, "run", env["TINY"]), "no prompt", code=EXIT_USAGE)
    main, child = os.openpty()  # a terminal on stdin: nothing to read, so usage
    try:
        proc = subprocess.run(gemma_cmd("run", env["TINY"]), env=env, cwd=ROOT, stdin=child, capture_output=True,
                              text=True, timeout=60)
    finally:
        os.close(child)
        os.close(main)
    assert_one_line_error(proc, "no prompt", code=EXIT_USAGE)


def test_runtime_errors_exit_1_with_one_line(env, tmp_path):
    assert_one_line_error(gemma(env, "run", "nosuch:model", "hi"), "unknown model 'nosuch:model'")
    assert_one_line_error(gemma(env, "run", str(tmp_path / "gone.gguf"), "hi"), "not found")
    assert_one_line_error(gemma(env, "run", env["TINY"], "a" * 600, "--threads", "1", "--ctx", "256"), "context holds")


def test_an_error_with_a_hint_is_one_line_that_carries_the_hint(env):
    """The house rule is one stderr line per error: the hint rides on it, and on --format json's object."""
    low = {**env, "GEMMA_MEMORY_AVAILABLE": "1M"}
    line = assert_one_line_error(gemma(low, "run", env["TINY"], "hi", *FAST), "RAM is available; try a smaller --ctx")
    assert line.endswith("GEMMA_SKIP_MEMORY_CHECK=1 loads it anyway"), line
    proc = gemma(low, "run", env["TINY"], "hi", *FAST, "--format", "json")
    assert proc.returncode == 1 and "; try a smaller --ctx" in json.loads(proc.stdout)["error"]


def test_stop_system_and_raw(env):
    ref = as_json(gemma(env, "run", env["TINY"], REPEAT, *GREEDY, *FAST, "-n", "40", "--format", "json"))["text"]
    stop = ref[len(ref) // 2 : len(ref) // 2 + 2]
    cut = as_json(gemma(env, "run", env["TINY"], REPEAT, *GREEDY, *FAST, "-n", "40", "--stop", stop, "--format", "json"))
    assert cut["text"] == ref[: ref.find(stop)] and cut["stop_reason"] == "stop"

    def prompt_tokens(*args: str) -> int:
        return as_json(gemma(env, "run", env["TINY"], "Hi", *GREEDY, *FAST, "-n", "1", "--format", "json", *args))["prompt_tokens"]

    raw, templated, with_system = prompt_tokens("--raw"), prompt_tokens(), prompt_tokens("--system", "Be brief.")
    assert raw == 2 + len("Hi")  # <s>, the SentencePiece space, one token per character: the text as is
    assert templated >= raw + len("user\nmodel\n") + 3  # + the template's words, newlines and turn markers
    assert with_system >= templated + len("Be brief.")  # the system message is part of the prompt
    # --raw --system: the system text, a blank line, then the prompt
    sys_raw = as_json(gemma(env, "run", env["TINY"], "Hi", "--raw", "--system", "Be brief.", *GREEDY, *FAST, "-n", "8",
                            "--format", "json"))
    joined = as_json(gemma(env, "run", env["TINY"], "Be brief.\n\nHi", "--raw", *GREEDY, *FAST, "-n", "8", "--format", "json"))
    assert (sys_raw["text"], sys_raw["prompt_tokens"]) == (joined["text"], joined["prompt_tokens"])


def test_same_seed_same_text_across_processes_with_and_without_ngram_drafting(env):
    def sampled(seed: str, *args: str) -> dict:
        return as_json(gemma(env, "run", env["TINY"], REPEAT, "--seed", seed, "-t", "0.7", *FAST, "-n", "40",
                             "--format", "json", *args))

    a, b, plain, other = sampled("7"), sampled("7"), sampled("7", "--draft", "none"), sampled("8")
    assert a["text"] == b["text"]
    assert a["draft_proposed"] > 0 and plain["draft_proposed"] == 0
    assert plain["text"] == a["text"]  # drafting changes the speed, not the words
    assert other["text"] != a["text"]


def _wait_for_output(proc: subprocess.Popen, n: int = 1, timeout: float = 60) -> bytes:
    got = b""
    deadline = time.monotonic() + timeout
    while len(got) < n:
        assert time.monotonic() < deadline and proc.poll() is None, "no output"
        got += os.read(proc.stdout.fileno(), 64)
    return got


@pytest.mark.parametrize("signals", [1, 2])
def test_ctrl_c_exits_130(env, signals):
    """One Ctrl-C stops generation cleanly; a second one right after interrupts at once: both exit 130."""
    proc = subprocess.Popen(gemma_cmd("run", env["TINY"], "Hello", *GREEDY, "--draft", "none", "-n", "20000", "--threads", "1",
                                      "--ctx", "20480"), env=env, cwd=ROOT, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _wait_for_output(proc, 5)
        for _ in range(signals):
            proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert b"Traceback" not in err


def test_closed_pipe_exits_0(env):
    proc = subprocess.Popen(gemma_cmd("run", env["TINY"], "Hello", *GREEDY, "--draft", "none", "-n", "20000", "--threads", "1",
                                      "--ctx", "20480"), env=env, cwd=ROOT, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _wait_for_output(proc, 10)  # like `| head -c 10`: read a little, then go away
        proc.stdout.close()
        err = proc.stderr.read()
        proc.wait(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert err == b"", err
