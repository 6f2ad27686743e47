"""A long prompt is decoded in n_batch chunks, and between them it can be cancelled or let others take a turn.

Why: a prompt is the first decode step of a generation, and a 2,600-token one took ~20 s on a 2-core CPU
(Gemma 3 270M) in which a client that went away could not stop it, and `gemma serve`'s other requests on
the model waited for all of it (probe, session 18).
"""

from __future__ import annotations

import threading
import time

import pytest

from gemma_cli.engine import DraftConfig, Engine, EngineConfig
from gemma_cli.engine.types import StopReason
from gemma_cli.server.lanes import TurnLock
from gguf_factory import write_llama_gguf

N_BATCH = 64


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory):
    model = write_llama_gguf(tmp_path_factory.mktemp("long") / "long.gguf", seed=7, n_ctx=1024)
    eng = Engine(model, DraftConfig(source="none"), EngineConfig(n_ctx=1024, n_batch=N_BATCH, n_threads=1))
    yield eng
    eng.close()


def _prompt(eng: Engine) -> list[int]:
    tokens = eng.tokenize("the quick brown fox jumps over the lazy dog; " * 12)
    assert len(tokens) > 4 * N_BATCH
    return tokens


def test_a_cancel_between_chunks_stops_the_prompt_and_keeps_what_was_decoded(engine):
    prompt = _prompt(engine)
    engine.reset()
    fresh = engine.generate(prompt, max_tokens=8)
    fresh_text = fresh.text()

    engine.reset()
    calls = []
    gen = engine.generate(prompt, max_tokens=8)

    def cancel_after_two() -> None:
        calls.append(engine.ctx.n_past)
        if len(calls) == 2:
            gen.cancel()

    gen.between_chunks = cancel_after_two
    assert gen.text() == "" and gen.result.stop_reason is StopReason.CANCELLED
    assert calls == [N_BATCH, 2 * N_BATCH]  # called between chunks, and nothing decoded after the cancel
    assert engine.ctx.n_past == 2 * N_BATCH and engine.ctx.between_chunks is None
    assert gen.result.stats.prompt_evaluated == 2 * N_BATCH  # what it evaluated, not the whole prompt

    # the chunks decoded stay as a cached prefix: the same prompt again evaluates only the rest, to the same text
    again = engine.generate(prompt, max_tokens=8)
    assert again.text() == fresh_text
    assert again.result.stats.prompt_evaluated == len(prompt) - 2 * N_BATCH


def test_a_short_prompt_never_calls_the_hook(engine):
    engine.reset()
    gen = engine.generate(engine.tokenize("short"), max_tokens=4)
    gen.between_chunks = lambda: pytest.fail("no chunks to be between")
    gen.text()


def test_pause_hands_the_turn_to_every_waiter_then_takes_it_back():
    turns, order = TurnLock(), []
    turns.acquire()
    waiters = [threading.Thread(target=lambda i=i: (turns.acquire(), order.append(i), turns.release())) for i in range(2)]
    for w in waiters:
        w.start()
    deadline = time.monotonic() + 10
    while len(turns._waiters) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    turns.pause()  # both take their turn before it returns
    order.append("back")
    turns.release()
    for w in waiters:
        w.join(10)
    assert sorted(order[:2]) == [0, 1] and order[2:] == ["back"]
    turns.acquire()
    turns.pause()  # no one waits: returns at once, still held
    turns.release()


def test_a_cancel_made_before_the_generation_starts_decodes_nothing(engine):
    """Taking the slot clears its cancel flag: a request cancelled while it waited (the model loading, another
    request's turn) then decoded its whole prompt before the cancel was seen again (review, session 18)."""
    engine.reset()
    gen = engine.generate(_prompt(engine), max_tokens=8)
    gen.cancel()
    assert gen.text() == "" and gen.result.stop_reason is StopReason.CANCELLED
    assert engine.ctx.n_past == 0
