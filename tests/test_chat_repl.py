"""Drive the real `gemma chat` REPL in a real pseudo-terminal (pexpect) on a tiny real GGUF.

The live status line is drawn between ESC 7 (save cursor) and ESC 8 (restore
cursor) on the terminal's last row; `reply_text` removes those segments and
all other escape sequences to see what the user reads in the scrolling area.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pexpect
import pytest

from gemma_cli.chat import Conversation
from gguf_factory import char_vocab, write_llama_gguf

TIMEOUT = 60
SUMMARY = re.compile(r"(\d+) tokens · ([\d.]+) tok/s.*?prompt (\d+)/(\d+) evaluated · ctx (\d+)/(\d+)([^\r\n]*)")
LIVE = re.compile(r"generating │ [\d.]+ tok/s( │ accept \d+% │ [\d.]+ tok/pass)? │ ctx \d+/\d+")
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[78=>]")
STATUS_SEGMENT = re.compile(r"\x1b7.*?\x1b8", re.S)


def reply_text(raw: str) -> str:
    return ANSI.sub("", STATUS_SEGMENT.sub("", raw)).replace("\r", "")


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # char vocabulary + "\n" (the chat template's newlines must tokenize)
    return write_llama_gguf(tmp_path_factory.mktemp("repl") / "chat-tiny.gguf", seed=11, vocab=char_vocab() + ["\n"])


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    e = dict(os.environ)
    e.update(
        GEMMA_HISTORY=str(tmp_path / "state" / "history"),
        GEMMA_MODELS=str(tmp_path / "models"),
        TERM="xterm-256color",
        PROMPT_TOOLKIT_NO_CPR="1",  # pexpect does not answer cursor-position requests
        PYTHONUNBUFFERED="1",
    )
    e.pop("NO_COLOR", None)
    return e


def spawn(model: Path, env: dict[str, str], *args: str) -> pexpect.spawn:
    child = pexpect.spawn(
        sys.executable,
        # one thread: with two, llama.cpp's spinning workers and this test process
        # fight over a 2-core machine and decoding slows down a hundredfold
        ["-m", "gemma_cli", "chat", str(model), "--threads", "1", *args],
        env=env,
        dimensions=(30, 120),
        encoding="utf-8",
        timeout=TIMEOUT,
    )
    child.expect_exact(">>> ")
    return child


def ask(child: pexpect.spawn, text: str) -> tuple[str, re.Match]:
    """Send a message; return what was shown up to the summary line, and that line's match."""
    child.sendline(text)
    child.expect(SUMMARY)
    shown = child.before
    match = child.match
    child.expect_exact(">>> ")
    return shown, match


def command(child: pexpect.spawn, line: str, expect: str) -> str:
    child.sendline(line)
    child.expect_exact(expect)
    out = child.before
    child.expect_exact(">>> ")
    return out


def bye(child: pexpect.spawn) -> int:
    child.sendline("/bye")
    child.expect(pexpect.EOF)
    child.close()
    return child.exitstatus


def test_turns_live_stats_set_save_load_and_bye(model: Path, env: dict[str, str], tmp_path: Path) -> None:
    child = spawn(model, env, "--max-tokens", "40", "--draft", "ngram", "--seed", "7")
    command(child, "/set temperature 0", "Set temperature to 0.")
    assert "temperature:  0.0" in command(child, "/show parameters", "highlight:")

    shown, first = ask(child, "hello there")
    assert LIVE.search(shown), "no live status line while generating"
    assert "evaluating" in shown
    n_gen, _, evaluated1, total1 = (int(first.group(i)) if i != 2 else first.group(i) for i in range(1, 5))
    assert 0 < n_gen <= 40
    assert evaluated1 == total1  # nothing cached yet

    shown2, second = ask(child, "tell me more")
    evaluated2, total2 = int(second.group(3)), int(second.group(4))
    assert total2 > total1
    assert evaluated2 < total2 - total1  # the first exchange came from the KV cache
    stats = command(child, "/show stats", "context used:")
    cached = re.search(r"prompt eval count:\s+(\d+) token\(s\) \((\d+) cached\)", stats)
    assert cached and int(cached.group(1)) == evaluated2 and int(cached.group(2)) == total2 - evaluated2

    saved = tmp_path / "my chat.json"
    command(child, f'/save "{saved}"', "Saved 4 message(s)")
    conv = Conversation.load(saved)
    assert [m["content"] for m in conv.turns if m["role"] == "user"] == ["hello there", "tell me more"]
    # what streamed to the terminal is what was recorded as the replies
    assert conv.turns[1]["content"].strip() and conv.turns[1]["content"].strip() in reply_text(shown)
    assert conv.turns[3]["content"].strip() in reply_text(shown2)

    command(child, "/clear", "Cleared the conversation.")
    command(child, f'/load "{saved}"', "Loaded 4 message(s)")
    _, third = ask(child, "and then?")
    assert int(third.group(4)) > total2  # the loaded history is part of the prompt again

    assert "Unknown command '/frob'" in command(child, "/frob", "/help") + "/help"
    command(child, "/set temperature hot", "temperature must be a number, got 'hot'")
    command(child, "/set top_p 7", "top_p must be in (0, 1]")
    command(child, "/load /nonexistent/file.json", "no such conversation file")
    command(child, "/show nonsense", "usage: /show")
    command(child, "/set draft ngram", "Set draft to ngram")
    command(child, "/set draft_tokens 99", "draft length must be between 1 and 32")
    assert "Traceback" not in child.before
    assert bye(child) == 0


def test_ctrl_c_stops_generation_and_the_chat_goes_on(model: Path, env: dict[str, str], tmp_path: Path) -> None:
    child = spawn(model, env, "--temperature", "0", "--draft", "none", "--max-tokens", "20000", "--ctx", "16384")
    child.sendline("hello there")
    child.expect(LIVE)  # it is generating (20000 tokens would take many seconds)
    child.expect(r"UUUU")  # and text is streaming
    child.sendintr()
    child.expect(SUMMARY)
    stopped = child.match
    assert "cancelled" in stopped.group(7)
    assert 0 < int(stopped.group(1)) < 20000
    child.expect_exact("partial reply stays in the conversation")
    child.expect_exact(">>> ")

    command(child, "/set max_tokens 5", "Set max_tokens to 5.")
    _, after = ask(child, "still there?")
    assert int(after.group(1)) <= 5 and "cancelled" not in after.group(7)
    # the partial first reply was kept: the second prompt contains it
    assert int(after.group(4)) > int(stopped.group(1))
    command(child, f"/save {tmp_path / 'c.json'}", "Saved 4 message(s)")
    assert bye(child) == 0


def test_multiline_block_paste_history_and_ctrl_d(model: Path, env: dict[str, str], tmp_path: Path) -> None:
    child = spawn(model, env, "--max-tokens", "3", "--temperature", "0")
    child.sendline('"""')
    child.sendline("line one")
    child.sendline('line two"""')
    child.expect(SUMMARY)
    child.expect_exact(">>> ")
    child.send("\x1b[200~pasted one\npasted two\x1b[201~")
    child.send("\r")
    child.expect(SUMMARY)
    child.expect_exact(">>> ")
    path = tmp_path / "m.json"
    command(child, f"/save {path}", "Saved 4 message(s)")
    users = [m["content"] for m in Conversation.load(path).turns if m["role"] == "user"]
    assert users == ["line one\nline two", "pasted one\npasted two"]
    child.sendeof()  # Ctrl-D at the prompt leaves
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    history = Path(env["GEMMA_HISTORY"]).read_text(encoding="utf-8")
    assert "+pasted one" in history and "+/save" in history  # prompt_toolkit FileHistory lines

    # the history survives into the next session: Up recalls the last line
    child = spawn(model, env, "--max-tokens", "3")
    child.send("\x1b[A")
    child.expect_exact("m.json")  # prompt_toolkit redraws with cursor moves, so match the tail
    child.sendcontrol("c")  # Ctrl-C at the prompt drops the line
    child.expect_exact(">>> ")
    assert bye(child) == 0


def test_highlight_colours_drafted_tokens(model: Path, env: dict[str, str]) -> None:
    # greedy + n-gram drafting on a model that falls into a loop: many drafts are accepted
    child = spawn(model, env, "--max-tokens", "60", "--temperature", "0", "--draft", "ngram")
    plain, m1 = ask(child, "hello there")
    assert "\x1b[36m" not in plain
    assert "accepted 0/" not in m1.group(0)
    command(child, "/clear", "Cleared")
    command(child, "/set highlight on", "Set highlight on.")
    coloured, m2 = ask(child, "hello there")  # same prompt, greedy: the same reply, now coloured
    # after the last echo of the prompt: under load prompt_toolkit may redraw the typed line more than once
    assert reply_text(coloured).rsplit("hello there", 1)[-1] == reply_text(plain).rsplit("hello there", 1)[-1]
    drafted = re.findall(r"\x1b\[36m([^\x1b]+)\x1b\[0m", STATUS_SEGMENT.sub("", coloured))
    assert drafted, "no drafted text was coloured"
    assert sum(map(len, drafted)) < len(reply_text(coloured))  # the target's own tokens stay plain
    assert bye(child) == 0


def test_piped_stdin_plain_output(model: Path, env: dict[str, str], tmp_path: Path) -> None:
    script = f'hello there\n"""\ntwo\nlines\n"""\n/save {tmp_path / "p.json"}\n/bye\n'
    proc = subprocess.run(
        [sys.executable, "-m", "gemma_cli", "chat", str(model), "--threads", "1", "--max-tokens", "8", "--temperature", "0"],
        input=script, capture_output=True, text=True, env=env, timeout=TIMEOUT,
    )
    assert proc.returncode == 0, proc.stderr
    assert "\x1b" not in proc.stdout and "\x1b" not in proc.stderr
    assert len(SUMMARY.findall(proc.stderr)) == 2
    conv = Conversation.load(tmp_path / "p.json")
    assert [m["content"] for m in conv.turns if m["role"] == "user"] == ["hello there", "two\nlines"]
    assert conv.turns[1]["content"] in proc.stdout


def test_bad_model_is_a_one_line_error(env: dict[str, str], tmp_path: Path) -> None:
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\x00" * 10)
    proc = subprocess.run(
        [sys.executable, "-m", "gemma_cli", "chat", str(bad)], input="", capture_output=True, text=True, env=env, timeout=TIMEOUT
    )
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().startswith("Error:")
