"""Drive the real `gemma chat` REPL in a real pseudo-terminal (pexpect) on a tiny real GGUF.

The live status line is drawn between ESC 7 (save cursor) and ESC 8 (restore
cursor) on the terminal's last row; `reply_text` removes those segments and
all other escape sequences to see what the user reads in the scrolling area.
"""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pexpect
import pytest

from gemma_cli.chat import Conversation
from gguf_factory import char_vocab, padded_copy, write_llama_gguf

TIMEOUT = 60
SUMMARY = re.compile(r"(\d+) tokens · ([\d.]+) tok/s.*?prompt (\d+)/(\d+) evaluated · ctx (\d+)/(\d+)([^\r\n]*)")
LIVE = re.compile(r"generating │ [\d.]+ tok/s( │ accept \d+% │ [\d.]+ tok/pass)? │ ctx \d+/\d+")
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[78=>]")
STATUS_SEGMENT = re.compile(r"\x1b7.*?\x1b8", re.S)


def reply_text(raw: str) -> str:
    return ANSI.sub("", STATUS_SEGMENT.sub("", raw)).replace("\r", "")


def after_input(raw: str) -> str:
    """What was shown after the input line was accepted (prompt_toolkit ends bracketed paste there)."""
    return raw.rsplit("\x1b[?2004l", 1)[-1]


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
    child.logfile_read = io.StringIO()  # everything the terminal showed, for whole-session checks
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
    command(child, "/set top_p 7", "top_p must be in [0, 1]")
    command(child, "/load /nonexistent/file.json", "no such conversation file")
    command(child, "/show nonsense", "usage: /show")
    command(child, "/set draft ngram", "Set draft to ngram")
    command(child, "/set draft_tokens 99", "draft length must be between 1 and 32")
    session = child.logfile_read.getvalue()
    assert "Set draft to ngram" in session and "Traceback" not in session
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
    assert reply_text(after_input(coloured)) == reply_text(after_input(plain))
    # Only the reply (after the prompt line), as runs of coloured and plain characters. Each step
    # prints its accepted drafts (coloured) and then the target's own token (plain); the vocabulary
    # is one character per token, so characters count tokens.
    reply = after_input(STATUS_SEGMENT.sub("", coloured)).replace("\r\n", "\n").strip("\n")
    runs = [("d", m[1]) if m[1] else ("o", m[2])
            for m in re.finditer(r"\x1b\[36m([^\x1b]*)\x1b\[0m|\x1b\[[0-9;?]*[A-Za-z]|([^\x1b])", reply) if m[1] or m[2]]
    while runs and runs[-1] == ("o", "\n"):  # the line end the renderer adds after the reply
        runs.pop()
    drafted = sum(len(t) for kind, t in runs if kind == "d")
    own = sum(len(t) for kind, t in runs if kind == "o")
    n_tokens, passes = int(m2.group(1)), round(int(m2.group(1)) / float(re.search(r"([\d.]+) tok/pass", m2.group(0))[1]))
    assert drafted > 0, "no drafted text was coloured"
    assert own + drafted == n_tokens, reply
    assert own == passes  # exactly one plain token per target pass: the target's own tokens are uncoloured
    kinds = [kind for kind, _ in runs]
    assert all(b == "o" for a, b in zip(kinds, kinds[1:], strict=False) if a == "d")  # every drafted run ends at a plain token
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


def test_commands_change_what_the_next_reply_does(model: Path, env: dict[str, str], tmp_path: Path) -> None:
    """/help, /?, /show, /set seed|top_k|min_p|system|verbose|draft, --system, dropped exchanges, /exit (piped: fast)."""
    def reply(n: int) -> str:
        return f"hello there\n/save {tmp_path / f'r{n}.json'}\n/clear\n"

    script = "".join([
        "/help\n", "/?\n", "/show system\n", "/show info\n", "/show template\n",
        "/set temperature 0\n", reply(0),                       # greedy reference
        "/set temperature 1\n/set seed 5\n", reply(1), reply(2),  # same seed twice
        "/set seed 6\n", reply(3),                              # another seed
        "/set top_k 1\n", reply(4),                             # top-1 sampling is greedy
        "/set top_k 0\n/set min_p 0.999\n", reply(5),           # so is min-p near 1
        "/set min_p 0\n/set temperature 0\n/set system Be brief.\n/show system\n/set verbose on\n",
        "/set draft none\n/set draft_tokens 5\n/show info\n", reply(6),
        "/set draft ngram\n/set verbose off\n",
        "/set max_tokens 24\n", *(f"message number {i} is a rather long one, to fill the context\n" for i in range(4)),
        "/exit\n", "this is never sent\n",
    ])
    proc = subprocess.run(
        [sys.executable, "-m", "gemma_cli", "chat", str(model), "--threads", "1", "--max-tokens", "16", "--ctx", "256",
         "--system", "You are terse."],
        input=script, capture_output=True, text=True, env=env, timeout=TIMEOUT,
    )
    assert proc.returncode == 0, proc.stderr
    out, err = proc.stdout, proc.stderr
    assert "Traceback" not in out + err

    def saved(n: int) -> Conversation:
        return Conversation.load(tmp_path / f"r{n}.json")

    replies = [saved(n).turns[1]["content"] for n in range(7)]
    assert out.count("/set PARAM VALUE") == 2 and out.count("/bye, /exit") == 2  # /help and /?
    assert out.count("You are terse.") == 1 and "Be brief." in out  # /show system: --system, then /set system
    assert saved(0).system == "You are terse." and saved(6).system == "Be brief."
    assert re.search(r"architecture: +llama", out) and re.search(r"draft: +ngram, up to", out)  # /show info
    assert re.search(r"draft: +none$", out, re.M)  # /show info after /set draft none
    assert "Set draft_tokens to 5; drafting is off" in out  # not "Set draft to none." for a length
    assert "<start_of_turn>" in out  # /show template prints the GGUF's template
    assert replies[1] == replies[2] != replies[3]  # the seed is used
    assert replies[1] != replies[0] and replies[4] == replies[0] == replies[5]  # top_k 1 and min_p 0.999 are greedy
    summaries = [m.group(0) for m in SUMMARY.finditer(err)]
    assert len(summaries) == 7 + 4  # nothing after /exit was sent
    assert "accepted" in summaries[5] and "accepted" not in summaries[6]  # /set draft none really stopped drafting
    assert "accepted" in summaries[7]  # and /set draft ngram brought it back
    assert re.search(r"^draft source: +none$", err, re.M) and len(re.findall(r"^eval count:", err, re.M)) == 1  # verbose for one reply
    dropped = re.findall(r"dropped the oldest (\d+) exchange\(s\), kept the system prompt", err)
    assert dropped and all(int(n) >= 1 for n in dropped)


def test_a_drafter_that_would_not_fit_beside_the_target_is_refused_on_one_line_and_the_chat_goes_on(
        model: Path, env: dict[str, str], tmp_path: Path) -> None:
    """/set draft model loads the pair's drafter next to a running target: what it adds is checked against the
    free RAM (GEMMA_MEMORY_AVAILABLE stands in for it), refused with its hint, and nothing changes."""
    from gemma_cli.memory import estimate_memory

    drafter = padded_copy(model, tmp_path / "padded-drafter.gguf", 320 << 20)  # the same model, 320 MiB more to map
    made = subprocess.run([sys.executable, "-m", "gemma_cli", "create", "padded:tiny", "--target", str(model),
                           "--draft", str(drafter), "--quiet"], capture_output=True, text=True, env=env, timeout=TIMEOUT)
    assert made.returncode == 0, made.stderr
    script = "/set draft model\nhello there\n/show info\n/exit\n"
    args = [sys.executable, "-m", "gemma_cli", "chat", "padded:tiny", "--draft", "ngram", "--threads", "1",
            "--ctx", "256", "--max-tokens", "8"]
    tight = dict(env, GEMMA_MEMORY_AVAILABLE=str(estimate_memory(model, n_ctx=256).ram + (16 << 20)))
    proc = subprocess.run(args, input=script, capture_output=True, text=True, env=tight, timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    refusal = [line for line in proc.stderr.splitlines() if "the drafter needs about" in line]
    assert len(refusal) == 1 and re.search(r"0\.3[45] GiB more .* only 0\.2\d GiB of RAM is available; "
                                           r"keep the n-gram drafter \(draft ngram\)", refusal[0]), proc.stderr
    assert re.search(r"draft: +ngram, up to", proc.stdout) and len(SUMMARY.findall(proc.stderr)) == 1  # kept, and on
    roomy = subprocess.run(args, input=script, capture_output=True, text=True, env=env, timeout=TIMEOUT)
    assert roomy.returncode == 0 and "Set draft to model" in roomy.stdout, roomy.stderr  # with room, it loads


def test_typed_escape_sequences_are_text_not_a_prompt_toolkit_crash(model: Path, env: dict[str, str]) -> None:
    """ESC [ 3 1 m typed or pasted parses as a mouse event: prompt_toolkit's handler printed a traceback and
    "Press ENTER to continue", and dropped the rest of the line."""
    child = spawn(model, env, "--max-tokens", "4")
    command(child, "/set system be \x1b[31mred and \x1b[1;2mbold", "Set the system prompt.")
    shown = command(child, "/show system", "bold")
    assert shown.endswith("be red and "), repr(shown)  # then "bold": kept, and shown without the sequences
    session = child.logfile_read.getvalue()
    assert "Traceback" not in session and "Exception" not in session and "Press ENTER" not in session, session[-2000:]
    assert bye(child) == 0


@pytest.mark.parametrize("history", ["/dev/zero", "big"])
def test_a_history_that_is_a_device_or_huge_is_not_used_and_the_chat_works(model: Path, env: dict[str, str],
                                                                          tmp_path: Path, history: str) -> None:
    """prompt_toolkit reads the whole history file: GEMMA_HISTORY=/dev/zero grew to gigabytes and froze the chat
    (probe, session 18). Now one line says why the history is not saved, and the chat goes on."""
    from gemma_cli.cli.chat_input import MAX_HISTORY_BYTES

    if history == "big":
        path = tmp_path / "big-history"
        with path.open("wb") as f:
            f.truncate(MAX_HISTORY_BYTES + 1)  # sparse: no disk used
        history = str(path)
    child = spawn(model, dict(env, GEMMA_HISTORY=history), "--max-tokens", "3")
    assert "history is not saved" in child.logfile_read.getvalue()
    ask(child, "hello")
    assert bye(child) == 0
    if history != "/dev/zero":
        assert Path(history).stat().st_size == MAX_HISTORY_BYTES + 1  # left as it was: never truncated or rewritten


def test_clear_is_a_fresh_start_for_the_kv_cache_too(model: Path, env: dict[str, str]) -> None:
    """After /clear the same question is evaluated whole, as the first time: with the old prompt cached it was one
    token, whose pass rounds differently from the prompt's own, and greedy chat answered otherwise (probe, session 18)."""
    child = spawn(model, env, "--max-tokens", "3", "--temperature", "0")
    command(child, "/set verbose on", "Set verbose on.")
    ask(child, "hello there")
    command(child, "/clear", "Cleared the conversation.")
    ask(child, "hello there")
    assert bye(child) == 0
    cached = re.findall(r"prompt eval count: +\d+ token\(s\) \((\d+) cached\)", child.logfile_read.getvalue())
    assert cached == ["0", "0"], cached


def test_a_dumb_terminal_gets_no_live_line_and_no_colour(model: Path, env: dict[str, str]) -> None:
    """TERM=dumb (Emacs shell-mode): the live status line's scroll region and cursor moves, and colours, showed as
    garbage there (probe, session 18)."""
    child = spawn(model, dict(env, TERM="dumb"), "--max-tokens", "3")
    ask(child, "hello there")
    assert bye(child) == 0
    shown = child.logfile_read.getvalue()
    for code in ("\x1b[1;", "r\x1b[", "\x1b[2m", "\x1b[31m", "\x1b[36m", "\x1b[2K"):  # scroll region, dim, red, cyan, erase
        assert code not in shown, (code, shown[-400:])
