"""`gemma serve` hands every llama.cpp decode to one compute thread (engine/llama/compute_thread.py).

libgomp keeps an OpenMP team per calling thread and throttles its spinning once it manages more
threads than CPUs; a server whose jobs run on several threads must therefore decode on one.
"""

from __future__ import annotations

import threading

import pytest

from gemma_cli.engine.generate import DraftConfig, Engine, EngineConfig
from gemma_cli.engine.llama import _lib, compute_thread
from gemma_cli.engine.llama.compute_thread import ComputeThread


def test_calls_run_on_the_compute_thread_and_raise_on_the_callers():
    ct = ComputeThread("test-compute")
    assert ct.call(lambda a, b: (a + b, threading.current_thread().name), 2, 3) == (5, "test-compute")
    with pytest.raises(ZeroDivisionError):
        ct.call(lambda: 1 / 0)
    assert ct.call(lambda: ct.call(lambda: threading.current_thread().name)) == "test-compute"  # re-entrant: no deadlock
    results: list[int] = []
    workers = [threading.Thread(target=lambda i=i: results.append(ct.call(lambda: i * i))) for i in range(8)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert sorted(results) == [i * i for i in range(8)]


class _ThreadRecorder:
    """A decode hook (the DecodeTimer's protocol) that records which thread ran each decode."""

    def __init__(self) -> None:
        self.threads: set[str] = set()

    def call(self, decode, ctx, batch) -> int:  # type: ignore[no-untyped-def]
        self.threads.add(threading.current_thread().name)
        return decode(ctx, batch)


def test_an_engine_used_from_several_threads_decodes_on_one(tiny_model, monkeypatch):
    eng = Engine(tiny_model, DraftConfig(source="ngram", tokens=3), EngineConfig(n_ctx=256, n_threads=2))
    prompt = eng.tokenize("abcabcabc")
    ref = eng.generate(prompt, max_tokens=24)
    ref.text()
    recorder = _ThreadRecorder()
    monkeypatch.setattr(_lib, "decode_timer", recorder)
    with compute_thread.installed() as ct:
        outs: list[list[int]] = []

        def job() -> None:
            eng.reset()
            g = eng.generate(prompt, max_tokens=24)
            g.text()
            outs.append(g.result.tokens)

        for _ in range(3):  # one after another, each from a new thread (as server jobs are)
            t = threading.Thread(target=job)
            t.start()
            t.join()
    assert outs == [ref.result.tokens] * 3
    assert recorder.threads == {ct._thread.name}
    eng.close()
