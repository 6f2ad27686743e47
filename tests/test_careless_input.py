"""Issue 14, careless input through the real CLI: /save refusals, /set values that used to
crash, invalid UTF-8, model names that used to become prompts, JSON errors, a store root
that is a file. Everything runs `python -m gemma_cli` in a subprocess on tiny synthetic GGUFs.
"""

from __future__ import annotations

import io
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from gguf_factory import write_llama_gguf
from hub_server import EXIT_USAGE, ROOT, HubServer, assert_one_line_error, gemma_cmd, gemma_env, run_gemma, write_catalog

REPO = "test-org/careless-GGUF"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_llama_gguf(tmp_path_factory.mktemp("careless") / "tiny.gguf", seed=41)


@pytest.fixture()
def env(tmp_path: Path) -> dict[str, str]:
    return gemma_env(tmp_path / "models", HF_HUB_OFFLINE="1")


def chat(env: dict[str, str], model: str | Path, script: str | bytes, *args: str) -> subprocess.CompletedProcess:
    """A piped chat session (no terminal): every line of `script` is one message or command."""
    data = script if isinstance(script, bytes) else script.encode()
    proc = subprocess.run(gemma_cmd("chat", str(model), "--threads", "1", "-n", "4", *args), env=env, cwd=ROOT,
                          input=data, capture_output=True, timeout=120)
    return subprocess.CompletedProcess(proc.args, proc.returncode, proc.stdout.decode(), proc.stderr.decode())


def summaries(stderr: str) -> int:
    return sum(1 for line in stderr.splitlines() if " tok/s · " in line)


# -- 4. /save -------------------------------------------------------------------------------

def test_save_never_clobbers_never_creates_directories_and_keeps_the_mode(env, tiny, tmp_path):
    precious = tmp_path / "notes.txt"
    precious.write_text("my precious notes\n")
    precious.chmod(0o640)
    fresh = tmp_path / "fresh.json"
    missing_dir = tmp_path / "no-such-dir"
    script = (
        f"hello\n/save {precious}\n/save {missing_dir / 'c.json'}\n/save {tmp_path}\n"
        f"/save {fresh}\n/save! {precious}\nstill here?\n"
    )
    proc = chat(env, tiny, script)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert f"{precious} already exists; use /save! {precious} to replace it" in proc.stderr
    assert f"directory {missing_dir} does not exist" in proc.stderr and not missing_dir.exists()
    assert "it is a directory" in proc.stderr
    assert summaries(proc.stderr) == 2  # the session went on after every refusal
    # /save! replaced the file atomically and kept its permissions
    doc = json.loads(precious.read_text())
    assert doc["format"] == "gemma-cli.chat" and len(doc["messages"]) == 2
    assert stat.S_IMODE(precious.stat().st_mode) == 0o640
    # a new file gets the ordinary permissions (umask), not mkstemp's 0600
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o666 & ~umask
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # no temp files left


# -- 6. seeds and other /set values ------------------------------------------------------------

def test_seed_minus_one_means_random_and_other_negatives_are_usage_errors(env, tiny):
    ok = run_gemma(env, "run", str(tiny), "hello", "--seed", "-1", "-n", "3", "--threads", "1", "--format", "json")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["generated_tokens"] >= 1
    bad = run_gemma(env, "run", str(tiny), "hello", "--seed", "-2", "-n", "3")
    assert bad.returncode == 2
    assert_one_line_error(bad, "--seed", "-1 for a random seed", code=EXIT_USAGE)


def test_chat_set_seed_minus_one_then_a_message_keeps_the_session(env, tiny):
    proc = chat(env, tiny, "/set seed -1\nhello\n/set seed -7\n/set seed 3\nagain\n/show parameters\n")
    assert proc.returncode == 0 and "Traceback" not in proc.stderr and "bug" not in proc.stderr, proc.stderr
    assert "Set seed to random" in proc.stdout
    assert "seed must be a whole number >= 0, or -1 for a random seed, got -7" in proc.stderr
    assert summaries(proc.stderr) == 2
    assert "seed:" in proc.stdout and "3" in proc.stdout.split("seed:")[1].splitlines()[0]


def test_an_unexpected_error_in_a_turn_is_one_line_and_the_chat_goes_on(tiny):
    """Defence in depth: whatever a turn raises, the REPL says one line and keeps the conversation.

    A message holding a lone surrogate (what a JSON file can carry) makes the real tokenizer
    raise UnicodeEncodeError: a failure nothing upstream anticipated.
    """
    from gemma_cli.chat import Conversation
    from gemma_cli.cli.chat_input import PlainReader
    from gemma_cli.cli.repl import ChatRepl, ChatSettings
    from gemma_cli.engine.generate import DraftConfig, Engine, EngineConfig
    from gemma_cli.engine.sampling import SamplingParams
    from gemma_cli.pair import ModelPair

    engine = Engine(tiny, DraftConfig(source="none", tokens=1), EngineConfig(n_ctx=512, n_threads=1))
    try:
        conv = Conversation(turns=[{"role": "user", "content": "a\ud800b"}, {"role": "assistant", "content": "ok"}])
        out, err = io.StringIO(), io.StringIO()
        repl = ChatRepl(engine, ModelPair(name="tiny", target=tiny), ChatSettings(SamplingParams(), max_tokens=3), conv,
                        reader=PlainReader(io.BytesIO(b"hello\n/clear\nhello again\n")), out=out, err=err,
                        color=False, live=False)
        repl.run()
    finally:
        engine.close()
    lines = err.getvalue().splitlines()
    assert any(line.startswith("that message failed (UnicodeEncodeError") and "conversation is kept" in line for line in lines)
    assert summaries(err.getvalue()) == 1  # after /clear the next message got its reply
    assert conv.turns[0]["content"] == "hello again"


def test_a_saved_conversation_with_lone_surrogates_loads_as_replacement_characters(env, tiny, tmp_path):
    path = tmp_path / "odd.json"
    path.write_text('{"messages":[{"role":"user","content":"a\\ud800b"},{"role":"assistant","content":"ok"}]}')
    proc = chat(env, tiny, f"/load {path}\nhello\n")
    assert proc.returncode == 0 and "failed" not in proc.stderr, proc.stderr
    assert summaries(proc.stderr) == 1


# -- 7. invalid UTF-8 --------------------------------------------------------------------------

NOT_UTF8 = bytes(range(128, 256)) * 2 + b"\xff\xfe plain text \xc3\x28"


def test_invalid_utf8_on_stdin_and_in_arguments_is_replaced_and_said_once(env, tiny):
    cmd = [os.fsencode(sys.executable), b"-m", b"gemma_cli", b"run", os.fsencode(tiny), b"Summarize: \xff\xfe",
           b"-n", b"3", b"--threads", b"1", b"--system", b"be \xc3\x28 brief"]
    proc = subprocess.run(cmd, env=env, cwd=ROOT, input=NOT_UTF8, capture_output=True, timeout=120)
    err = proc.stderr.decode()
    assert proc.returncode == 0, err
    assert err.count("not valid UTF-8") == 1 and "Traceback" not in err


def test_piped_chat_with_invalid_utf8_keeps_going(env, tiny):
    proc = chat(env, tiny, b"hello \xff\xfe there\n" + NOT_UTF8 + b"\nand a valid line\n")
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.count("not valid UTF-8") == 1
    assert summaries(proc.stderr) == 3


# -- 11. a model name is never a prompt --------------------------------------------------------

def test_model_like_arguments_are_models():
    from gemma_cli.registry.resolve import looks_like_model

    for arg in ("nosuch:model", "gemma4:e4b", "gemma3", "x.gguf", "./dir/model.gguf"):
        assert looks_like_model(arg), arg
    for arg in ("Summarize:", "hello", "Why is the sky blue?", "a: b", "", "x" * 300):
        assert not looks_like_model(arg), arg


def test_unknown_and_unpulled_models_are_errors_not_prompts(env):
    unknown = run_gemma(env, "run", "nosuch:model")
    assert unknown.returncode == 1
    assert_one_line_error(unknown, "unknown model 'nosuch:model'")
    close = run_gemma(env, "run", "gemma3:27b", "hi")
    assert_one_line_error(close, "unknown model", "did you mean gemma3:270m")
    offline = subprocess.run(gemma_cmd("run", "gemma4:e4b"), env=env, cwd=ROOT, input="hi", capture_output=True,
                             text=True, timeout=60)
    assert offline.returncode == 1 and offline.stdout == ""
    assert "pulling it now" in offline.stderr
    assert offline.stderr.strip().splitlines()[-1].startswith("Error: gemma4:e4b is not pulled yet and could not be downloaded")
    assert "offline mode" in offline.stderr
    chat_unknown = run_gemma(env, "chat", "nosuch:model")
    assert_one_line_error(chat_unknown, "unknown model")


def test_run_pulls_a_catalog_model_that_is_not_there_yet(tmp_path, tiny):
    with HubServer() as hub:
        hub.add(REPO, "tiny.gguf", tiny.read_bytes())
        catalog = write_catalog(tmp_path / "catalog.json", {"tinycat:1": {"target": (REPO, "tiny.gguf"), "draft_source": "ngram"}})
        env = gemma_env(tmp_path / "models", hub.endpoint, catalog)
        proc = run_gemma(env, "run", "tinycat:1", "hello", "-n", "3", "--threads", "1", "--format", "json")
        assert proc.returncode == 0, proc.stderr
        assert "tinycat:1 is not pulled yet; pulling it now" in proc.stderr
        assert json.loads(proc.stdout)["model"] == "tinycat:1"
        again = run_gemma(env, "run", "tinycat:1", "hello", "-n", "3", "--threads", "1")
        assert again.returncode == 0 and "pulling" not in again.stderr
        assert hub.served("tiny.gguf") == tiny.stat().st_size  # downloaded once


# -- 12. JSON errors ---------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", [["--format", "json"], ["-f", "jsonl"], ["--format=json"]])
def test_json_formats_print_the_failure_as_json_on_stdout(env, tiny, fmt):
    unknown = run_gemma(env, "run", "nosuch:model", "hi", *fmt)
    assert json.loads(unknown.stdout) == {"error": "unknown model 'nosuch:model'; `gemma list --available` shows the catalog",
                                          "exit_code": 1}
    assert_one_line_error(unknown, "unknown model")
    usage = run_gemma(env, "run", str(tiny), "hi", "--seed", "-3", *fmt)
    doc = json.loads(usage.stdout)
    assert doc["exit_code"] == 2 == usage.returncode and "--seed" in doc["error"]
    click_usage = run_gemma(env, "run", str(tiny), "hi", "--max-tokens", "lots", *fmt)
    assert json.loads(click_usage.stdout)["exit_code"] == 2 == click_usage.returncode
    text = run_gemma(env, "run", "nosuch:model", "hi")
    assert text.stdout == ""  # plain text output: stdout stays empty


# -- 15. the store root is a file --------------------------------------------------------------

def test_a_store_root_that_is_a_file_is_one_clear_error_everywhere(tmp_path, tiny):
    root = tmp_path / "models"
    root.write_text("not a directory")
    env = gemma_env(root, HF_HUB_OFFLINE="1")
    for args in (["list"], ["run", "hi"], ["pull", "gemma3:270m"], ["rm", "x"], ["verify"],
                 ["create", "mine", "--target", str(tiny)], ["show", "mine"]):
        proc = run_gemma(env, *args)
        assert proc.returncode == 1, (args, proc.stdout)
        assert_one_line_error(proc, f"the model store {root} is a regular file", "GEMMA_MODELS")
    below = gemma_env(root / "sub", HF_HUB_OFFLINE="1")
    assert_one_line_error(run_gemma(below, "list"), f"inside {root}, which is a regular file")


# -- session 14's careless-user sweep ----------------------------------------------------------

def test_threads_past_llamas_limit_and_an_infinite_temperature_are_usage_errors(env, tiny):
    # --threads 100000 used to abort the process (std::bad_alloc in ggml's thread pool, exit 134)
    assert_one_line_error(run_gemma(env, "run", str(tiny), "hi", "-n", "2", "--threads", "100000"),
                          "--threads must be between 1 and 512", code=EXIT_USAGE)
    assert_one_line_error(run_gemma(env, "rpc-worker", "--threads", "9999"), "--threads must be between 1 and 512",
                          code=EXIT_USAGE)
    # inf used to run in-process while client mode refused it: both refuse it now
    assert_one_line_error(run_gemma(env, "run", str(tiny), "hi", "-n", "2", "--temperature", "inf"),
                          "temperature must be a finite number", code=EXIT_USAGE)


def test_endless_piped_input_is_refused_at_the_cap_without_filling_memory(env, tiny):
    from gemma_cli.limits import MAX_STDIN_BYTES

    limit = (MAX_STDIN_BYTES * 4 + (1 << 30), ) * 2  # an address-space cap the unbounded read would have hit
    for args in (["run", str(tiny), "go", "-n", "2"], ["chat", str(tiny), "-n", "2"]):
        with open("/dev/zero", "rb") as zero:  # endless, and no newline for chat's line reader
            proc = subprocess.run(gemma_cmd(*args, "--threads", "1"), env=env, cwd=ROOT, stdin=zero, capture_output=True,
                                  text=True, timeout=120,
                                  preexec_fn=lambda: __import__("resource").setrlimit(__import__("resource").RLIMIT_AS, limit))
        assert proc.returncode == EXIT_USAGE, (args, proc.stderr[-500:])
        assert "Traceback" not in proc.stderr and "the piped input is over 64.0 MB" in proc.stderr, proc.stderr[-500:]


def test_closed_standard_streams(env, tiny):
    def run_closed(fd: int, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(gemma_cmd(*args), env=env, cwd=ROOT, text=True, timeout=120, capture_output=True,
                              stdin=subprocess.DEVNULL, preexec_fn=lambda: os.close(fd))

    for fmt in ([], ["--format", "json"]):  # a closed stdout is refused up front, in one line, not after the work
        proc = run_closed(1, "run", str(tiny), "hi", "-n", "2", "--threads", "1", *fmt)
        assert_one_line_error(proc, "standard output is closed")
    # a closed stdin reads as empty input: the prompt argument still runs, chat ends at once
    proc = run_closed(0, "run", str(tiny), "hi", "-n", "2", "--threads", "1")
    assert proc.returncode == 0 and "Traceback" not in proc.stderr and "Error" not in proc.stderr, proc.stderr
    proc = run_closed(0, "chat", str(tiny), "-n", "2", "--threads", "1")
    assert proc.returncode == 0 and "Error" not in proc.stderr, proc.stderr


@pytest.mark.skipif(not Path("/sys/kernel").is_dir(), reason="needs Linux's /sys, where nobody may create files")
def test_a_store_that_cannot_be_written_is_one_line(tiny):
    env = gemma_env(Path("/sys/kernel/gemma-store"), HF_HUB_OFFLINE="1")  # EPERM even for root, as a read-only mount
    for args in (["create", "mine", "--target", str(tiny)], ["pull", "gemma3:270m"]):
        proc = run_gemma(env, *args)
        assert_one_line_error(proc, "cannot write /sys/kernel/gemma-store", "GEMMA_MODELS")


def test_on_off_variables_refuse_what_they_do_not_understand(env, tiny):
    bad = dict(env, GEMMA_CPU_REPACK="maybe")
    assert_one_line_error(run_gemma(bad, "run", str(tiny), "hi", "-n", "2"), "GEMMA_CPU_REPACK must be 1 or 0",
                          code=EXIT_USAGE)
    assert_one_line_error(run_gemma(dict(env, GEMMA_PROBE="sometimes"), "serve"), "GEMMA_PROBE must be 1 or 0",
                          code=EXIT_USAGE)
    doctor = run_gemma(bad, "doctor")  # doctor reports it on its own line; llama.cpp itself is fine
    lines = doctor.stdout.splitlines()
    assert any(line.startswith("warn  cpu-repack") and "GEMMA_CPU_REPACK must be 1 or 0" in line for line in lines), doctor.stdout
    assert any(line.startswith("ok    llama.cpp") for line in lines), doctor.stdout
    assert run_gemma(dict(env, GEMMA_CPU_REPACK="off"), "run", str(tiny), "hi", "-n", "2", "--threads", "1").returncode == 0


def test_a_loaded_conversation_cannot_drive_the_terminal(env, tiny, tmp_path):
    path = tmp_path / "ctl.json"
    path.write_text(json.dumps({"system": "be \x1b]0;title\x07 brief", "messages": [
        {"role": "user", "content": "hi\x1b[31mRED\x07"}, {"role": "assistant", "content": "\x1b]0;pwned\x07ok\x1b[2J"}]}))
    proc = chat(env, tiny, f"/load {path}\n/show system\n/bye\n")
    assert proc.returncode == 0, proc.stderr
    shown = proc.stdout + proc.stderr
    assert "Last reply:" in shown and "ok" in shown
    assert "\x1b" not in shown and "\x07" not in shown, repr(shown)


def test_save_bang_never_replaces_a_fifo_or_a_device(env, tiny, tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    proc = chat(env, tiny, f"/save! {fifo}\n/save! /dev/null\n/bye\n")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("not a regular file; it is left as it is") == 2, proc.stderr
    assert stat.S_ISFIFO(fifo.stat().st_mode) and stat.S_ISCHR(os.stat("/dev/null").st_mode)


class _NotGemma:
    """A real HTTP server on 127.0.0.1 that is not gemma serve: HTML, wrong shapes, a stream cut mid-object."""

    ROUTES = {
        "/api/tags": (200, "text/html", b"<html>x</html>"),
        "/api/ps": (200, "application/json", json.dumps({"models": [{"name": "a\x1b[31mb\x07c\x9bd", "size": 5}]}).encode()),
        "/api/show": (200, "application/json", b'{"gemma": {"describe": {"name": 5}}}'),
        "/api/generate": (200, "application/x-ndjson", b'{"response": "hi", "x_gemma": {"tokens": 1}}\n{"model": "gem'),
    }

    def __enter__(self) -> str:
        import http.server
        import threading

        routes = self.ROUTES

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self) -> None:
                if self.command == "POST":
                    self.rfile.read(int(self.headers.get("Content-Length") or 0))
                status, kind, body = routes.get(self.path.split("?")[0], (404, "text/plain", b"nope"))
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _answer

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return f"127.0.0.1:{self.server.server_address[1]}"

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()


def test_client_mode_against_another_program_is_one_line(env):
    with _NotGemma() as host:
        remote = dict(env, GEMMA_HOST=host)
        for args, needle in ((["list"], "/api/tags did not answer as gemma serve does (not JSON)"),
                             (["show", "gemma3:270m"], "/api/show did not answer as gemma serve does"),
                             (["run", "gemma3:270m", "hi", "-n", "2"], "/api/generate closed the stream in the middle of a line"),
                             (["chat", "gemma3:270m"], "/api/show did not answer as gemma serve does"),
                             (["pull", "gemma3:270m"], "/api/pull did not answer as gemma serve does (HTTP 404 Not Found")):
            proc = run_gemma(remote, *args)
            assert_one_line_error(proc, needle)
        ps = run_gemma(remote, "ps")  # the names a server sends are shown without their control characters
        assert ps.returncode == 0, ps.stderr
        assert "abcd" in ps.stdout.replace(" ", "") and not any(c in ps.stdout for c in "\x1b\x07\x9b"), repr(ps.stdout)


def test_a_directory_pipe_or_link_loop_named_gguf_is_called_what_it_is_and_never_blocks(env, tmp_path):
    """`show`/`run`/`bench` said "model file not found" for a directory or a FIFO that exists, and `gemma doctor
    FIFO.gguf` blocked for ever opening it (probe, session 18)."""
    folder, fifo, loop = tmp_path / "dir.gguf", tmp_path / "f.gguf", tmp_path / "l1.gguf"
    folder.mkdir()
    os.mkfifo(fifo)
    loop.symlink_to(tmp_path / "l2.gguf")
    (tmp_path / "l2.gguf").symlink_to(loop)
    # one command each (they share resolve_model's check): the suite's time
    for args, says in ((("show", str(folder)), "is a directory"), (("run", str(fifo), "hi"), "is a pipe or socket"),
                       (("bench", str(loop)), "Too many levels of symbolic links")):
        assert_one_line_error(run_gemma(env, *args, timeout=30), says)
    doctor = run_gemma(env, "doctor", str(fifo), timeout=30)
    assert doctor.returncode == 1 and "is a pipe or socket" in doctor.stdout


def test_a_context_past_what_llama_cpp_can_count_is_a_usage_error(env, tiny):
    """--ctx 4294967296 wrapped around llama.cpp's 32-bit n_ctx to 256 behind GEMMA_SKIP_MEMORY_CHECK (probe, session 18)."""
    proc = run_gemma(dict(env, GEMMA_SKIP_MEMORY_CHECK="1"), "run", str(tiny), "--ctx", "4294967296", "hi", "-n", "2")
    assert_one_line_error(proc, "--ctx must be at most 16,777,216 tokens", code=EXIT_USAGE)
