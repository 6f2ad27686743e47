"""Conversation: fitting into the context, KV reuse across turns, save/load of untrusted files.

Everything runs against a real (tiny, synthetic) llama.cpp model: token counts
come from the model's real chat template and tokenizer.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gemma_cli.chat import ChatFileError, Conversation
from gemma_cli.engine.generate import DraftConfig, Engine, EngineConfig
from gemma_cli.engine.sampling import SamplingParams
from gemma_cli.errors import ContextFullError, GemmaError
from gguf_factory import char_vocab, write_llama_gguf


def chat_vocab() -> list[str]:
    # The char vocabulary plus "\n": the chat template has newlines, and an SPM
    # vocabulary without byte-fallback tokens makes llama.cpp abort on them.
    return char_vocab() + ["\n"]


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory):
    path = write_llama_gguf(tmp_path_factory.mktemp("chat") / "chat-tiny.gguf", seed=1, vocab=chat_vocab())
    eng = Engine(path, DraftConfig("ngram", 4), EngineConfig(n_ctx=256))
    yield eng
    eng.close()


def sample_conversation() -> Conversation:
    conv = Conversation(system="You are terse.")
    conv.add_user("hello there")
    conv.add_assistant("hi! what now?")
    conv.add_user('a "quoted" line\nand a second one')
    conv.add_assistant("ok")
    return conv


def test_save_load_round_trip_renders_the_same_prompt(engine, tmp_path: Path) -> None:
    conv = sample_conversation()
    (tmp_path / "sub").mkdir()  # save never creates directories (issue 14)
    path = conv.save(tmp_path / "sub" / "conv.json", model="tiny")
    loaded = Conversation.load(path)
    assert loaded.system == conv.system
    assert loaded.turns == conv.turns
    assert engine.chat_tokens(loaded.messages) == engine.chat_tokens(conv.messages)
    doc = json.loads(path.read_text(encoding="utf-8"))
    assert doc["model"] == "tiny"
    assert [m["role"] for m in doc["messages"]] == ["system", "user", "assistant", "user", "assistant"]


def test_saving_over_a_directory_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ChatFileError, match="is a directory"):
        sample_conversation().save(tmp_path)


MALFORMED = {
    "not-json": (b"{ this is not json", "not valid JSON"),
    "binary": (b"\xff\xfe\x00garbage", "not UTF-8"),
    "top-level-list": (b"[]", "JSON object"),
    "messages-not-list": (b'{"messages": {"role": "user"}}', "'messages' must be a list"),
    "message-not-object": (b'{"messages": ["hi"]}', "message 1 is not an object"),
    "bad-role": (b'{"messages": [{"role": "root", "content": "x"}]}', "role 'root'"),
    "content-not-text": (b'{"messages": [{"role": "user", "content": 3}]}', "no text 'content'"),
    "late-system": (
        b'{"messages": [{"role": "user", "content": "a"}, {"role": "system", "content": "b"}]}',
        "system prompt may only come first",
    ),
    "not-alternating": (
        b'{"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]}',
        "must alternate",
    ),
    "starts-with-assistant": (b'{"messages": [{"role": "assistant", "content": "a"}]}', "must alternate"),
    "dangling-user": (b'{"messages": [{"role": "user", "content": "a"}]}', "without a reply"),
    "wrong-format": (b'{"format": "something-else", "messages": []}', "expected 'gemma-cli.chat'"),
    "future-version": (b'{"version": 99, "messages": []}', "unsupported version 99"),
    "deep-nesting": (b"[" * 100000 + b"]" * 100000, "not valid JSON"),
    "huge-number": (b'{"format": "gemma-cli.chat", "version": 1' + b"0" * 5000 + b', "messages": []}', "not valid JSON"),
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_file_is_a_one_line_error(tmp_path: Path, name: str) -> None:
    data, expected = MALFORMED[name]
    path = tmp_path / f"{name}.json"
    path.write_bytes(data)
    with pytest.raises(ChatFileError) as info:
        Conversation.load(path)
    message = str(info.value)
    assert expected in message
    assert "\n" not in message and len(message) < 300
    assert isinstance(info.value, GemmaError)


def test_missing_file_and_directory_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ChatFileError, match="no such conversation file"):
        Conversation.load(tmp_path / "nope.json")
    with pytest.raises(ChatFileError, match="is a directory"):
        Conversation.load(tmp_path)
    import os

    os.mkfifo(tmp_path / "pipe.json")  # opening it to read would wait for a writer for ever
    with pytest.raises(ChatFileError, match="is not a regular file"):
        Conversation.load(tmp_path / "pipe.json")


def test_a_file_saved_with_a_byte_order_mark_loads(tmp_path: Path) -> None:
    path = tmp_path / "bom.json"
    path.write_bytes(b"\xef\xbb\xbf" + b'{"format": "gemma-cli.chat", "version": 1, "messages": []}')
    assert Conversation.load(path).turns == []


def test_fit_drops_oldest_exchanges_but_keeps_the_system_prompt(engine) -> None:
    conv = Conversation(system="SYSTEM-PROMPT-KEPT")
    for i in range(12):
        conv.add_user(f"question {i} " + "x" * 20)
        conv.add_assistant(f"answer {i} " + "y" * 20)
    conv.add_user("the newest question")
    full = len(engine.chat_tokens(conv.messages))
    assert full > engine.n_ctx  # the whole history cannot fit
    room = 64
    fitted = conv.fit(engine, reply_room=room)
    assert fitted.dropped_turns > 0
    assert len(fitted.tokens) + room <= engine.n_ctx
    assert conv.messages[0] == {"role": "system", "content": "SYSTEM-PROMPT-KEPT"}
    assert conv.turns[-1] == {"role": "user", "content": "the newest question"}
    assert conv.turns[0]["content"].startswith(f"question {fitted.dropped_turns} ")  # oldest ones went first
    assert fitted.tokens == engine.chat_tokens(conv.messages)
    # as little as possible was dropped: one more exchange would not have fitted
    fewer = Conversation(system=conv.system, turns=[
        {"role": "user", "content": f"question {fitted.dropped_turns - 1} " + "x" * 20},
        {"role": "assistant", "content": f"answer {fitted.dropped_turns - 1} " + "y" * 20},
        *conv.turns,
    ])
    assert len(engine.chat_tokens(fewer.messages)) + room > engine.n_ctx


def test_fit_refuses_a_message_that_alone_overflows_and_changes_nothing(engine) -> None:
    conv = Conversation(system="sys")
    conv.add_user("short")
    conv.add_assistant("reply")
    conv.add_user("z" * 400)
    before = conv.messages
    with pytest.raises(ContextFullError, match="context holds 256"):
        conv.fit(engine, reply_room=32)
    assert conv.messages == before  # nothing dropped for a message that cannot fit anyway
    assert conv.pop_user() == "z" * 400


def test_second_turn_evaluates_only_the_new_tokens(engine) -> None:
    conv = Conversation(system="be brief")
    conv.add_user("hello there")
    engine.reset()
    first = conv.fit(engine, reply_room=32)
    gen = engine.generate(first.tokens, max_tokens=12, sampling=SamplingParams(0.0))
    conv.add_assistant(gen.text())
    assert gen.stats.prompt_evaluated == len(first.tokens)  # a fresh cache: everything evaluated
    conv.add_user("more")
    second = conv.fit(engine, reply_room=32)
    gen2 = engine.generate(second.tokens, max_tokens=4, sampling=SamplingParams(0.0))
    gen2.text()
    assert gen2.stats.prompt_tokens == len(second.tokens)
    assert gen2.stats.prompt_evaluated < len(second.tokens) - len(first.tokens) + 1
    assert gen2.stats.prompt_evaluated > 0


def test_turn_order_is_enforced() -> None:
    conv = Conversation()
    with pytest.raises(ValueError):
        conv.add_assistant("no question yet")
    conv.add_user("q")
    with pytest.raises(ValueError):
        conv.add_user("another")
    assert conv.pop_user() == "q" and conv.pop_user() is None
