"""The batch scheduler's KV (one n_ctx stream per slot) is checked against free memory before `gemma serve` creates it.

Too little memory for GEMMA_NUM_PARALLEL slots: fewer slots, or (fewer than two) one request at a time on the
engine; one line says so, and every request still gets its answer. GEMMA_MEMORY_AVAILABLE stands in for a small
machine: set after the engine loaded, it is the free RAM the check sees.
"""

from __future__ import annotations

import threading
import time

import pytest

from gemma_cli.engine.generate import DraftConfig, Engine, EngineConfig
from gemma_cli.errors import UsageError
from gemma_cli.memory import AVAILABLE_ENV, BATCH_BUFFERS, SKIP_ENV, available_memory, batch_slots_that_fit
from gemma_cli.server.lanes import Lanes
from gemma_cli.server.manager import Slot
from gguf_factory import char_vocab
from lossless import check_greedy_lossless

DRAFT = DraftConfig(source="ngram", tokens=3)
PROMPTS = ["abcabcabcab", "hello hello hello hel", "x=1; y=2; x=1; y=", "one two three one two"]
N_TOKENS = 60


@pytest.fixture()
def engine(tiny_model, monkeypatch):
    monkeypatch.delenv(SKIP_ENV, raising=False)
    monkeypatch.delenv(AVAILABLE_ENV, raising=False)
    eng = Engine(tiny_model, DRAFT, EngineConfig(n_ctx=512, n_threads=1))
    yield eng
    eng.close()


def _wait(predicate, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_slots_that_fit_count_each_slots_kv_and_the_buffers_once(tiny_model, monkeypatch):
    monkeypatch.delenv(SKIP_ENV, raising=False)
    # tiny: 2 layers, 1 KV head of 16 (K and V), F16: 128 bytes per cell; buffers: the logits of n_batch + 4 rows
    per_slot, buffers = 128 * 512, 4 * len(char_vocab()) * (512 + 4) + BATCH_BUFFERS
    fit = batch_slots_that_fit(tiny_model, 512, 4, n_batch=512, available=buffers + 4 * per_slot)
    assert (fit.slots, fit.per_slot, fit.buffers) == (4, per_slot, buffers)
    assert batch_slots_that_fit(tiny_model, 512, 4, available=buffers + 4 * per_slot - 1).slots == 3
    assert batch_slots_that_fit(tiny_model, 512, 4, available=buffers + per_slot).slots == 1
    assert batch_slots_that_fit(tiny_model, 512, 4, available=buffers - 1).slots == 0
    assert batch_slots_that_fit(tiny_model, 1024, 4, available=buffers + 4 * per_slot).slots == 2  # twice the context
    gpu = batch_slots_that_fit(tiny_model, 512, 4, available=buffers, gpu_layers=-1, gpu_free=3 * per_slot)
    assert (gpu.slots, gpu.per_slot) == (3, 0)  # all KV offloaded: RAM holds the buffers, the GPU 3 slots
    assert "2 of 4 parallel slots" in batch_slots_that_fit(tiny_model, 512, 4, available=buffers + 2 * per_slot).summary()
    monkeypatch.setenv(SKIP_ENV, "1")
    assert batch_slots_that_fit(tiny_model, 512, 4, available=0).slots == 4


def test_memory_available_override(monkeypatch):
    monkeypatch.setenv(AVAILABLE_ENV, "512M")
    assert available_memory()[0] == 512 << 20
    monkeypatch.setenv(AVAILABLE_ENV, "1.5GiB")
    assert available_memory()[0] == 3 << 29
    monkeypatch.setenv(AVAILABLE_ENV, "123456")
    assert available_memory()[0] == 123456
    for bad in ("lots", "-1G", "G", "nan"):
        monkeypatch.setenv(AVAILABLE_ENV, bad)
        with pytest.raises(UsageError, match=AVAILABLE_ENV):
            available_memory()


def _serve_four(engine: Engine, lanes: Lanes, first_in_batch, together: bool = False) -> dict[int, object]:
    """Request 0 holds the engine lane; 1-3 arrive meanwhile (the batch lane, if memory allows); all run to the end.

    `together`: 1-3 start generating only once all three hold their lanes (a barrier inside the lane), so a fast
    one cannot finish before the last has arrived; then they may all finish before this thread looks again, so
    callers wait for `batched_total`, which only grows (`batched == 3` was a race on a loaded machine)."""
    results: dict[int, object] = {}
    barrier = threading.Barrier(3) if together else None

    def job(i: int) -> None:
        with lanes.lane(DRAFT) as view:
            if barrier is not None:
                barrier.wait(timeout=30)
            gen = view.generate(engine.tokenize(PROMPTS[i]), max_tokens=N_TOKENS)
            for _ in gen:
                pass
            results[i] = gen.result

    threads = [threading.Thread(target=job, args=(i,)) for i in (1, 2, 3)]
    with lanes.lane(DRAFT) as view:
        assert view.target is engine
        for t in threads:
            t.start()
        _wait(first_in_batch)  # the others took their lanes (or were told to wait for the engine)
        gen = view.generate(engine.tokenize(PROMPTS[0]), max_tokens=N_TOKENS)
        for _ in gen:
            pass
        results[0] = gen.result
    for t in threads:
        t.join(60)
    return results


def _check_solo(engine: Engine, results: dict[int, object]) -> None:
    assert sorted(results) == [0, 1, 2, 3]
    for i, got in results.items():
        prompt = engine.tokenize(PROMPTS[i])
        ref = engine.generate(prompt, max_tokens=N_TOKENS)
        ref.text()
        check_greedy_lossless(engine, prompt, ref.result, got)  # a real difference raises


def test_scheduler_gets_the_slots_that_fit(engine, monkeypatch):
    fit = batch_slots_that_fit(engine.target.path, engine.n_ctx, 4, n_batch=engine.ctx.n_batch, available=1 << 50)
    monkeypatch.setenv(AVAILABLE_ENV, str(fit.buffers + 2 * fit.per_slot + fit.per_slot // 2))  # room for 2.5 slots
    lines: list[str] = []
    lanes = Lanes(engine, 4, exact=False, name="tiny", log=lines.append)
    results = _serve_four(engine, lanes, lambda: lanes.batched_total == 3, together=True)
    assert lanes.scheduler is not None and lanes.scheduler.n_slots == 2 and lanes.n_parallel == 2
    assert lanes.batched_total >= 3 and lanes.peak == 4  # three shared 2 slots, next to the engine's request
    assert len(lines) == 1 and lines[0].startswith("tiny: only 2 of 4 parallel slots fit") and "batching 2" in lines[0]
    _check_solo(engine, results)
    slot = Slot("tiny", None, parallel=4)  # what /api/ps shows for this model: the 2 that batch, not the 4 asked for
    try:
        assert slot.parallel_now == 4
        slot.lanes = lanes
        assert slot.parallel_now == 2
    finally:
        slot.worker.shutdown()
    lanes.close()


def test_too_little_memory_for_two_slots_runs_requests_one_at_a_time(engine, monkeypatch):
    fit = batch_slots_that_fit(engine.target.path, engine.n_ctx, 4, n_batch=engine.ctx.n_batch, available=1 << 50)
    monkeypatch.setenv(AVAILABLE_ENV, str(fit.buffers + fit.per_slot + fit.per_slot // 2))  # room for 1.5 slots
    lines: list[str] = []
    lanes = Lanes(engine, 4, exact=False, name="tiny", log=lines.append)
    results = _serve_four(engine, lanes, lambda: len(lines) == 1)
    assert lanes.scheduler is None and lanes.n_parallel == 1 and lanes.batched_total == 0 and lanes.peak == 1
    assert "1 of 4 parallel slots" in lines[0] and "one at a time" in lines[0] and len(lines) == 1
    _check_solo(engine, results)
    lanes.close()


def test_enough_memory_keeps_every_slot_and_says_nothing(engine, monkeypatch):
    fit = batch_slots_that_fit(engine.target.path, engine.n_ctx, 4, n_batch=engine.ctx.n_batch, available=1 << 50)
    monkeypatch.setenv(AVAILABLE_ENV, str(fit.buffers + 4 * fit.per_slot))
    lines: list[str] = []
    lanes = Lanes(engine, 4, exact=False, name="tiny", log=lines.append)
    results = _serve_four(engine, lanes, lambda: lanes.batched_total == 3, together=True)
    assert lanes.scheduler is not None and lanes.scheduler.n_slots == 4 and not lines
    _check_solo(engine, results)
    lanes.close()
