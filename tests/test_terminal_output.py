"""Generated text on a terminal: a model file's token texts must not drive the terminal (escape sequences)."""

from __future__ import annotations

import io
import os
import pty
import subprocess
from pathlib import Path

import pytest

from gguf_factory import char_vocab, write_llama_gguf
from hub_server import ROOT, gemma_cmd, gemma_env

ESCAPES = [f"\x1b[3{i % 8}mX{i}" for i in range(40)] + ["\x1b]0;PWNED\x07", "\x1b[2J", "\x1b[8A", "\x07"]


@pytest.fixture(scope="module")
def hostile_tokens(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model whose vocabulary holds escape sequences (recolour, retitle, clear, cursor up, bell)."""
    return write_llama_gguf(tmp_path_factory.mktemp("esc") / "esc.gguf", vocab=char_vocab() + ESCAPES, seed=2,
                            chat_template=None)


def _run_on(stdout_is_terminal: bool, model: Path, env: dict[str, str]) -> bytes:
    args = gemma_cmd("run", str(model), "Hi", "-n", "200", "--seed", "1", "--temperature", "1.5", "--threads", "1")
    if not stdout_is_terminal:
        return subprocess.run(args, env=env, cwd=ROOT, capture_output=True, timeout=60, check=True).stdout
    master, slave = pty.openpty()
    proc = subprocess.Popen(args, env=env, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=slave, stderr=subprocess.PIPE)
    os.close(slave)
    out = b""
    try:
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            out += chunk
        assert proc.wait(60) == 0, proc.stderr.read() if proc.stderr else ""
    finally:
        os.close(master)
        proc.kill()
    return out


def test_escape_sequences_in_generated_text_reach_a_pipe_but_never_a_terminal(hostile_tokens: Path, tmp_path: Path):
    from gemma_cli.text_safety import terminal_text

    env = gemma_env(tmp_path / "models")
    piped = _run_on(False, hostile_tokens, env)
    assert b"\x1b" in piped  # the model did write escape tokens: piped on, the text is the model's, byte for byte
    shown = _run_on(True, hostile_tokens, env)
    assert b"\x1b" not in shown and b"\x07" not in shown, shown[:200]
    expected = terminal_text(piped.decode("utf-8"))
    assert shown.decode("utf-8").replace("\r\n", "\n").rstrip("\n") == expected.rstrip("\n")


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("highlight", [False, True])
def test_the_chat_renderer_shows_a_reply_without_its_escape_sequences_on_a_terminal(highlight: bool):
    """`gemma chat` (local and client mode) writes replies through ReplyRenderer: on a terminal the model's
    escape sequences go, its own drafted-token colouring (highlight) stays; a pipe gets the text as is."""
    from gemma_cli.cli.render import DRAFT_STYLE, ReplyRenderer, styled
    from gemma_cli.engine import LiveStats, Piece

    pieces = [Piece("ok \x1b]0;PWNED\x07", 2, 1, draft_chars=3), Piece("\x1b[2Jline\n\tnext\x1b", 3, 0), Piece("[8A!", 1, 0)]
    term, pipe = _Terminal(), io.StringIO()
    for out, color in ((term, highlight), (pipe, False)):  # colour is never on for a pipe (output.use_color)
        ReplyRenderer(out, io.StringIO(), live=False, color=color, highlight=highlight).stream(
            pieces, LiveStats(), prompt_tokens=1)
    assert pipe.getvalue() == "".join(p.text for p in pieces) + "\n"
    shown = term.getvalue()
    assert "PWNED" not in shown and "\x07" not in shown and "\x1b[2J" not in shown and "\x1b]" not in shown
    assert shown.replace(styled("ok ", DRAFT_STYLE, True), "ok ") == "ok line\n\tnext[8A!\n"


def test_a_model_file_name_with_escape_sequences_is_shown_cleaned(tiny_model: Path, tmp_path: Path):
    """A file name is bytes anyone chose: doctor, create, chat (banner, /show info) and bench show it cleaned."""
    import shutil

    from hub_server import run_gemma

    hostile = tmp_path / "\x1b[31mRED\x1b]0;PWNTITLE\x07\rX.gguf"
    shutil.copy(tiny_model, hostile)
    env = gemma_env(tmp_path / "models")
    runs = [
        run_gemma(env, "doctor", str(hostile)),
        run_gemma(env, "create", "esc:name", "--target", str(hostile)),
        run_gemma(env, "bench", str(hostile), "-w", "chat", "--runs", "1", "--max-tokens", "4", "--threads", "1"),
        subprocess.run(gemma_cmd("chat", str(hostile), "-n", "4", "--threads", "1"), env=env, cwd=ROOT,
                       input="hi\n/show info\n/bye\n", capture_output=True, text=True, timeout=60),
    ]
    for proc in runs:
        shown = proc.stdout + proc.stderr
        assert "RED" in shown, (proc.args, shown[-500:])  # the name is shown ...
        assert "\x1b" not in shown and "\x07" not in shown and "\r" not in shown, (proc.args, shown[-500:])  # ... cleaned
