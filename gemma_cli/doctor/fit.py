"""Does a model (target + drafter weights and KV caches) fit in the memory this process can use?"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from gemma_cli.doctor.report import FAIL, GIB, INFO, OK, WARN, Check
from gemma_cli.errors import GemmaError
from gemma_cli.gguf_meta import read_gguf
from gemma_cli.load_guard import guard_load
from gemma_cli.pair import ModelPair
from gemma_cli.registry.resolve import resolve_model


def memory() -> tuple[int | None, int | None]:
    """(available, total) bytes of RAM this process can use; None where unknown."""
    avail = total = None
    with contextlib.suppress(OSError, ValueError):
        info = {}
        for line in Path("/proc/meminfo").read_text().splitlines():
            key, _, value = line.partition(":")
            parts = value.split()
            if parts:
                info[key] = int(parts[0]) * 1024
        avail, total = info.get("MemAvailable"), info.get("MemTotal")
    if total is None:
        with contextlib.suppress(ValueError, OSError, AttributeError):
            total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if avail is None:
        with contextlib.suppress(ValueError, OSError, AttributeError):
            avail = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    with contextlib.suppress(OSError, ValueError):  # a container's cgroup v2 limit
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            used = int(Path("/sys/fs/cgroup/memory.current").read_text().strip())
            room = max(int(limit) - used, 0)
            avail = room if avail is None else min(avail, room)
            total = int(limit) if total is None else min(total, int(limit))
    return avail, total


def kv_bytes(path: Path, n_ctx: int) -> int:
    """F16 K+V cache for `n_ctx` tokens on every layer (an upper bound with swa_full)."""
    info = read_gguf(path)
    n_layer = int(info.arch_key("block_count", 0) or 0)
    n_embd = int(info.arch_key("embedding_length", 0) or 0)
    n_head = info.arch_key("attention.head_count", 1) or 1
    n_head_kv = info.arch_key("attention.head_count_kv", n_head) or n_head
    heads = n_head if isinstance(n_head, int) else max(n_head)
    key_len = int(info.arch_key("attention.key_length", n_embd // max(heads, 1)) or 0)
    value_len = int(info.arch_key("attention.value_length", key_len) or 0)
    per_layer = n_head_kv if isinstance(n_head_kv, list) else [n_head_kv] * n_layer
    return sum(int(h) * (key_len + value_len) * 2 * n_ctx for h in per_layer[:n_layer])


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
        files = [pair.target] + ([pair.drafter] if pair.drafter else [])
        for f in files:
            guard_load(f)  # header checks + probe load: what would abort `run` fails here
        weights = sum(p.stat().st_size for p in files)
        kv = kv_bytes(pair.target, n_ctx)
        if pair.drafter is not None and pair.draft_source != "mtp":  # an MTP head shares the target's KV
            kv += kv_bytes(pair.drafter, n_ctx)
    except GemmaError as exc:
        return Check("model", FAIL, f"{model}: {exc}", exc.hint, {"model": model})
    except OSError as exc:
        return Check("model", FAIL, f"{model}: cannot read {exc.filename}: {exc.strerror}", None, {"model": model})
    overhead = weights // 10 + (256 << 20)  # compute buffers, logits, runtime: a rough allowance
    need = weights + kv + overhead
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
