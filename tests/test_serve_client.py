"""Client mode: with GEMMA_HOST (or --host) the commands talk to `gemma serve` and print what they print in-process."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from hub_server import EXIT_RUNTIME, EXIT_USAGE, assert_one_line_error, gemma_env, run_gemma
from serve_helpers import ServerProcess, tiny_store

PROMPT = "Tell me a story"
GREEDY = ("--temperature", "0", "-n", "24")


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("serve-client")
    return tiny_store(d)


@pytest.fixture(scope="module")
def server(store: Path):
    with ServerProcess(store, "--threads", "1") as srv:
        yield srv


def both(store: Path, server: ServerProcess, *args: str, stdin: str | None = None):
    """The same command in-process and through the server (GEMMA_HOST)."""
    local = run_gemma(gemma_env(store), *args)
    remote = run_gemma(gemma_env(store, GEMMA_HOST=server.host), *args)
    return local, remote


def test_run_prints_the_same_text_json_and_statistics(store, server):
    local, remote = both(store, server, "run", "tiny", PROMPT, *GREEDY, "--threads", "1", "--verbose")
    assert local.returncode == remote.returncode == 0, (local.stderr, remote.stderr)
    assert remote.stdout == local.stdout and len(local.stdout) >= 10
    keys = lambda err: [line.split(":")[0] for line in err.splitlines() if ":" in line]  # noqa: E731
    assert keys(remote.stderr) == keys(local.stderr) and "draft source" in keys(remote.stderr)
    assert any("/api/generate" in line for line in server.log)  # it went there

    local, remote = both(store, server, "run", "tiny", PROMPT, *GREEDY, "--format", "json")
    a, b = json.loads(local.stdout), json.loads(remote.stdout)
    assert b["text"] == a["text"] and b["model"] == a["model"] == "tiny:latest" and b["stop_reason"] == a["stop_reason"]
    assert set(b) == set(a) and b["generated_tokens"] == a["generated_tokens"] == 24
    assert b["draft_source"] == a["draft_source"] and b["prompt_tokens"] == a["prompt_tokens"]

    # --raw --system: the system text, a blank line, the prompt, through the server too (whose raw ignores system)
    local, remote = both(store, server, "run", "tiny", PROMPT, "--raw", "--system", "Be brief.", *GREEDY, "--format", "json")
    a, b = json.loads(local.stdout), json.loads(remote.stdout)
    assert (b["text"], b["prompt_tokens"]) == (a["text"], a["prompt_tokens"])

    local, remote = both(store, server, "run", "tiny", PROMPT, *GREEDY, "--format", "jsonl", "--draft", "none")
    la, lb = [json.loads(x) for x in local.stdout.splitlines()], [json.loads(x) for x in remote.stdout.splitlines()]
    assert lb[:-1] == la[:-1]  # every piece: text, tokens, drafted (no drafting: no timing-dependent steps)
    assert lb[-1]["done"] and set(lb[-1]) == set(la[-1])


def test_host_option_and_chat(store, server):
    args = ("run", "--host", server.host, "tiny", PROMPT, *GREEDY)
    remote = run_gemma(gemma_env(store), *args)
    local = run_gemma(gemma_env(store), *args[:1], *args[3:])
    assert remote.returncode == 0 and remote.stdout == local.stdout

    chat = ("chat", "tiny", "--temperature", "0", "-n", "12")
    env = gemma_env(store)
    import subprocess

    from hub_server import ROOT, gemma_cmd

    talk = "Hello there\n/set draft none\nAnd again\n/show parameters\n"
    outs = [subprocess.run(gemma_cmd(*chat, *extra), env=env, cwd=ROOT, input=talk, capture_output=True, text=True,
                           timeout=120) for extra in ((), ("--host", server.host))]
    assert outs[0].returncode == outs[1].returncode == 0, outs[1].stderr
    assert outs[1].stdout == outs[0].stdout and "Set draft to none." in outs[1].stdout
    summaries = [[line.split(" · ")[0] for line in o.stderr.splitlines() if "tokens ·" in line] for o in outs]
    assert summaries[0] == summaries[1] == ["12 tokens", "12 tokens"]


def test_list_show_ps_stop(store, server):
    local, remote = both(store, server, "list", "--json")
    assert remote.returncode == 0 and json.loads(remote.stdout) == json.loads(local.stdout)
    local, remote = both(store, server, "show", "tiny")
    # the memory line quotes the RAM free at that moment, which other processes move between the two calls
    free_ram = re.compile(r"[0-9.]+ [KMGT]?B avail")
    assert free_ram.search(local.stdout), local.stdout
    assert remote.returncode == 0 and free_ram.sub("N avail", remote.stdout) == free_ram.sub("N avail", local.stdout)
    assert "Architecture  llama" in remote.stdout
    local, remote = both(store, server, "list")
    assert remote.stdout.splitlines()[0] == local.stdout.splitlines()[0] and "tiny:latest" in remote.stdout

    env = gemma_env(store, GEMMA_HOST=server.host)
    assert run_gemma(env, "run", "tiny", "hi", "-n", "2").returncode == 0
    ps = run_gemma(env, "ps")
    assert ps.returncode == 0 and "tiny:latest" in ps.stdout and ps.stdout.startswith("NAME")
    stop = run_gemma(env, "stop", "tiny")
    assert stop.returncode == 0, stop.stderr
    assert "tiny:latest" not in run_gemma(env, "ps").stdout
    again = run_gemma(env, "stop", "tiny")
    assert_one_line_error(again, "not loaded")


def test_rm_deletes_on_the_server_as_rm_does_here(tmp_path):
    """`gemma rm` in client mode removes from the server's store (and unloads), with in-process rm's lines and codes."""
    import httpx

    from gguf_factory import write_llama_gguf
    from serve_helpers import register

    there, here = tmp_path / "server-models", tmp_path / "local-models"
    for models in (there, here):  # the same model in both stores: the same lines from either rm
        register(models, "doomed", write_llama_gguf(tmp_path / "doomed.gguf", seed=9))
    with ServerProcess(there, "--threads", "1") as srv:
        env = gemma_env(here, GEMMA_HOST=srv.host)
        assert httpx.post(srv.url + "/api/generate", json={"model": "doomed", "keep_alive": -1}).status_code == 200
        typo = run_gemma(env, "rm", "doomed", "nosuch")
        assert typo.stderr == run_gemma(gemma_env(here), "rm", "doomed", "nosuch").stderr
        assert_one_line_error(typo, "model 'nosuch' is not in the store")
        assert "doomed:latest" in run_gemma(env, "list").stdout  # a typo removes nothing
        for bad in ("Bad Name!:x", "./doomed.gguf"):
            proc = run_gemma(env, "rm", bad)
            assert proc.stderr == run_gemma(gemma_env(here), "rm", bad).stderr
            assert_one_line_error(proc, "invalid model name", code=EXIT_USAGE)

        gone = run_gemma(env, "rm", "doomed")
        assert gone.returncode == 0 and gone.stderr == "", gone.stderr
        assert gone.stdout.startswith("deleted doomed:latest\nfreed ")
        assert "doomed:latest" not in run_gemma(env, "list").stdout
        assert [m["name"] for m in httpx.get(srv.url + "/api/ps").json()["models"]] == []
        assert not list((there / "blobs").glob("sha256-*"))
        again = run_gemma(env, "rm", "doomed")
        assert_one_line_error(again, "model 'doomed' is not in the store")

        local = run_gemma(gemma_env(here), "rm", "doomed")  # this machine's store was never touched
        assert local.returncode == 0 and local.stdout == gone.stdout
    assert_one_line_error(run_gemma(env, "rm", "doomed"), "cannot reach gemma serve")


def test_errors_are_the_same_lines_and_exit_codes(store, server):
    # Unknown models are runtime errors (1); malformed names and options are usage errors (2), as in-process.
    for code, args in ((EXIT_RUNTIME, ("run", "nosuch:model", "hi")), (EXIT_USAGE, ("run", "Bad Name!:x", "hi")),
                       (EXIT_USAGE, ("run", "tiny", "hi", "--draft", "magic")), (EXIT_RUNTIME, ("show", "nosuch:model")),
                       (EXIT_USAGE, ("run", "tiny", "hi", "--draft-tokens", "99"))):
        local, remote = both(store, server, *args)
        assert remote.returncode == local.returncode != 0, args
        assert remote.stderr == local.stderr and assert_one_line_error(remote, code=code), args


def test_a_server_that_is_not_running_is_one_clean_line(store):
    env = gemma_env(store, GEMMA_HOST="127.0.0.1:1")
    for args in (("run", "tiny", "hi"), ("list",), ("show", "tiny"), ("ps",), ("pull", "gemma3:270m")):
        proc = run_gemma(env, *args)
        assert proc.returncode == 1, args
        assert_one_line_error(proc, "cannot reach gemma serve at http://127.0.0.1:1")
    serve = run_gemma(gemma_env(store, GEMMA_HOST="127.0.0.1:1"), "run", "--host", "", "tiny", "hi", "-n", "2")
    assert serve.returncode == 0  # an empty --host means in-process, whatever GEMMA_HOST says
