"""The RAM estimate from headers (gemma_cli.memory) and the refusal before load (issue 17, item 4)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from gemma4_factory import FAMILY, TINY, write_gemma4_pair
from gemma_cli.engine.generate import DraftConfig, Engine, EngineConfig
from gemma_cli.errors import InsufficientMemoryError
from gemma_cli.gguf_meta import read_gguf
from gemma_cli.memory import AVAILABLE_ENV, MemoryEstimate, check_fits, check_fits_gpu, estimate_memory, kv_cache_bytes
from gguf_factory import padded_copy
from hub_server import gemma_env, run_gemma

HUGE_CTX = 131072


@pytest.fixture(scope="module")
def e2b(tmp_path_factory) -> tuple[Path, Path]:
    return write_gemma4_pair(tmp_path_factory.mktemp("mem-e2b"), FAMILY["e2b"])


@pytest.fixture(scope="module")
def huge(tmp_path_factory) -> tuple[Path, Path]:
    """Tiny weights, but a header claiming 4096 KV heads and a 128k context: ~275 GB of KV cache."""
    kv = {"attention.head_count": 4096, "attention.head_count_kv": 4096}  # valid (KV heads divide heads), huge KV
    spec = replace(TINY, n_ctx=HUGE_CTX)
    return write_gemma4_pair(tmp_path_factory.mktemp("mem-huge"), spec, target_overrides=kv, assistant_overrides=kv)


def test_kv_counts_only_layers_with_their_own_cache_at_their_head_size(e2b):
    """E2B shape: 10 layers, the last 5 KV-shared; of the 5 with a cache, 4 SWA (head 16) and 1 full (head 32)."""
    info = read_gguf(e2b[0])
    # K: 4 x 16 + 32; V padded to the widest layer (32) on all 5 layers; F16; the engine keeps SWA at full context
    assert kv_cache_bytes(info, 1000) == (4 * 16 + 32 + 5 * 32) * 2 * 1000
    assert kv_cache_bytes(info, 1000, swa_full=False) < kv_cache_bytes(info, 1000)
    dense = read_gguf(write_gemma4_pair(e2b[0].parent / "noshare", replace(FAMILY["e2b"], shared_kv_layers=0))[0])
    assert kv_cache_bytes(dense, 1000) == 2 * kv_cache_bytes(info, 1000)  # 10 cached layers instead of 5


def test_mtp_assistant_adds_weights_but_no_kv(e2b):
    target, assistant = e2b
    alone = estimate_memory(target, n_ctx=8192)
    paired = estimate_memory(target, assistant, drafter_is_mtp=True, n_ctx=8192)
    assert paired.kv == alone.kv
    assert paired.drafter_weights == assistant.stat().st_size and paired.total > alone.total
    assert estimate_memory(target, n_ctx=16384).kv == 2 * alone.kv


def test_a_target_drafting_for_itself_maps_its_weights_once_but_keeps_two_caches(e2b, tmp_path):
    """Both loads mmap the same file, so its pages are shared; each model still has its own KV cache and buffers."""
    target = e2b[0]
    alone = estimate_memory(target, n_ctx=8192)
    itself = estimate_memory(target, target, n_ctx=8192)
    assert itself.drafter_weights == 0 and itself.target_weights == alone.target_weights
    assert itself.kv == 2 * alone.kv and itself.overhead > alone.overhead
    copy = tmp_path / "copy.gguf"
    copy.write_bytes(target.read_bytes())  # another file with the same bytes is mapped on its own
    assert estimate_memory(target, copy, n_ctx=8192).drafter_weights == target.stat().st_size


def test_a_drafter_switched_in_that_would_not_fit_is_refused_and_the_engine_keeps_its_drafter(tiny_model, tmp_path,
                                                                                               monkeypatch):
    """Engine.set_draft (the REPL's /set draft, a server request's draft) checks what a drafter model adds against
    the free RAM before anything changes: refused, the n-gram drafter still drafts and the output is the same."""
    from gemma_cli.engine.sampling import SamplingParams

    target = tiny_model
    drafter = padded_copy(target, tmp_path / "big-drafter.gguf", 256 << 20)  # the same model, 256 MiB more to map
    greedy = SamplingParams(temperature=0.0)
    with Engine(target, DraftConfig(source="ngram", tokens=4), EngineConfig(n_ctx=256, n_threads=1)) as engine:
        before = engine.generate("abcabcabcabc", max_tokens=48, sampling=greedy)
        list(before)  # run it to the end
        assert before.result.stats.draft_proposed > 0
        monkeypatch.setenv(AVAILABLE_ENV, "128M")
        with pytest.raises(InsufficientMemoryError, match=r"the drafter needs about 0\.2\d GiB more .* only 0\.12 GiB"):
            engine.set_draft(DraftConfig(source="model", tokens=4, model_path=drafter))
        assert engine.draft.source == "ngram" and engine.drafter.name == "ngram"
        engine.reset()
        after = engine.generate("abcabcabcabc", max_tokens=48, sampling=greedy)
        list(after)
        assert after.result.tokens == before.result.tokens and after.result.stats.draft_proposed > 0
        monkeypatch.setenv(AVAILABLE_ENV, "8G")
        engine.set_draft(DraftConfig(source="model", tokens=4, model_path=drafter))  # with room, it loads
        assert engine.draft.source == "model"


def test_check_fits_refuses_with_estimate_and_what_to_change():
    est = MemoryEstimate(n_ctx=HUGE_CTX, target_weights=5 << 30, drafter_weights=100 << 20, kv=40 << 30, overhead=1 << 30)
    with pytest.raises(InsufficientMemoryError) as err:
        check_fits(est, available=8 << 30)
    assert "GiB" in str(err.value) and str(HUGE_CTX) in str(err.value) and "\n" not in str(err.value)
    assert "--ctx" in err.value.hint and "quantization" in err.value.hint and "--gpu-layers" in err.value.hint
    check_fits(est, available=64 << 30)  # fits: no error


def test_offloading_more_than_the_gpus_hold_is_refused_with_what_to_change():
    est = MemoryEstimate(n_ctx=8192, target_weights=18 << 30, drafter_weights=500 << 20, kv=4 << 30, overhead=1 << 30,
                         gpu=20 << 30)
    with pytest.raises(InsufficientMemoryError) as err:
        check_fits_gpu(est, gpu_free=12 << 30)
    assert "20.00 GiB on the GPU" in str(err.value) and "12.00 GiB" in str(err.value) and "\n" not in str(err.value)
    assert "fewer --gpu-layers" in err.value.hint and "55%" in err.value.hint
    check_fits_gpu(est, gpu_free=24 << 30)  # fits
    check_fits_gpu(est, gpu_free=None)  # no GPU: nothing is offloaded, nothing to check


def test_gpu_layers_without_a_gpu_counts_everything_in_ram(huge):
    """A CPU-only build ignores --gpu-layers: the RAM check must not subtract a GPU share that never leaves RAM."""
    from gemma_cli.engine.llama import backend_devices

    if any(d["type"] in ("gpu", "igpu") for d in backend_devices()):
        pytest.skip("this machine has a GPU device")
    target, _ = huge
    with pytest.raises(InsufficientMemoryError):
        Engine(target, DraftConfig(source="none"), EngineConfig(n_ctx=HUGE_CTX, n_gpu_layers=-1))


def test_engine_refuses_a_pair_that_cannot_fit_before_loading(huge):
    target, assistant = huge
    est = estimate_memory(target, assistant, drafter_is_mtp=True, n_ctx=HUGE_CTX)
    assert est.kv > 200 << 30
    with pytest.raises(InsufficientMemoryError):
        Engine(target, DraftConfig(source="mtp", tokens=3, model_path=assistant), EngineConfig(n_ctx=HUGE_CTX))
    with pytest.raises(InsufficientMemoryError):
        Engine(target, DraftConfig(source="none"), EngineConfig(n_ctx=HUGE_CTX))
    gpu = estimate_memory(target, assistant, drafter_is_mtp=True, n_ctx=HUGE_CTX, gpu_layers=-1)
    assert gpu.ram < est.ram / 50  # all layers offloaded: weights and KV leave RAM


def test_run_and_show_and_doctor_report_the_estimate(huge, tmp_path):
    target, assistant = huge
    env = gemma_env(tmp_path / "models", HF_HUB_OFFLINE="1")
    assert run_gemma(env, "create", "huge:ctx", "--target", str(target), "--draft", str(assistant)).returncode == 0
    proc = run_gemma(env, "run", "huge:ctx", "hello", "--ctx", str(HUGE_CTX))
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith("Error: ") and "GiB" in lines[0] and f"KV at {HUGE_CTX} tokens" in lines[0], proc.stderr
    assert "--ctx" in proc.stderr
    shown = run_gemma(env, "show", "huge:ctx")
    assert shown.returncode == 0 and "Memory        about" in shown.stdout and "8192 tokens" in shown.stdout
    doc = run_gemma(env, "doctor", "huge:ctx", "--ctx", str(HUGE_CTX))
    assert "does not fit" in doc.stdout + doc.stderr
