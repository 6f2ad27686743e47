"""Does a model (target + drafter weights and KV caches) fit in the memory this process can use?"""

from __future__ import annotations

from pathlib import Path

from gemma_cli.doctor.report import FAIL, GIB, INFO, OK, WARN, Check
from gemma_cli.errors import GemmaError
from gemma_cli.gguf_meta import read_gguf
from gemma_cli.load_guard import guard_load
from gemma_cli.memory import available_memory, estimate_memory, kv_cache_bytes
from gemma_cli.pair import ModelPair
from gemma_cli.registry.resolve import resolve_model


def memory() -> tuple[int | None, int | None]:
    """(available, total) bytes of RAM this process can use; None where unknown."""
    return available_memory()


def kv_bytes(path: Path, n_ctx: int) -> int:
    """F16 K+V cache for `n_ctx` tokens as the engine allocates it (gemma_cli.memory)."""
    return kv_cache_bytes(read_gguf(path), n_ctx)


def _resolve(model: str) -> ModelPair:
    """A .gguf path is taken as is (no copy into the store); names go through the store."""
    path = Path(model).expanduser()
    if model.endswith(".gguf") or path.is_file():
        return ModelPair(name=model, target=path)
    return resolve_model(model)


def check_model(model: str, n_ctx: int = 4096) -> Check:
    """Do target + drafter weights and their KV caches fit in available RAM?"""
    try:
        pair = _resolve(model)
        for f in [pair.target] + ([pair.drafter] if pair.drafter else []):
            guard_load(f)  # header checks + probe load: what would abort `run` fails here
        est = estimate_memory(pair.target, pair.drafter, drafter_is_mtp=pair.draft_source == "mtp", n_ctx=n_ctx)
    except GemmaError as exc:
        return Check("model", FAIL, f"{model}: {exc}", exc.hint, {"model": model})
    except OSError as exc:
        return Check("model", FAIL, f"{model}: cannot read {exc.filename}: {exc.strerror}", None, {"model": model})
    weights, kv, overhead, need = est.target_weights + est.drafter_weights, est.kv, est.overhead, est.total
    avail, total = memory()
    details = {
        "model": pair.name, "target": str(pair.target), "drafter": str(pair.drafter) if pair.drafter else None,
        "weights_bytes": weights, "kv_bytes": kv, "overhead_bytes": overhead, "needed_bytes": need,
        "available_bytes": avail, "total_bytes": total, "n_ctx": n_ctx,
    }
    what = f"{pair.name}: needs about {need / GIB:.2f} GiB (weights {weights / GIB:.2f}, KV at {n_ctx} tokens {kv / GIB:.2f})"
    if avail is None:
        return Check("model", INFO, f"{what}; available memory unknown", None, details)
    room = f"{avail / GIB:.2f} GiB available"
    if need > avail:
        return Check("model", FAIL, f"{what}; only {room}: it does not fit",
                     "use a smaller quantization or model, a smaller --ctx, offload layers with --gpu-layers on a GPU build, or close other programs",
                     details)
    if need > 0.8 * avail:
        return Check("model", WARN, f"{what}; {room}: tight", "close other programs or use a smaller --ctx", details)
    return Check("model", OK, f"{what}; {room}", None, details)
