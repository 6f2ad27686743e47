"""Will a pair fit in RAM? An estimate from GGUF headers, before llama.cpp allocates anything.

`show`, `doctor MODEL` and the engine (hence run, chat, serve) use the same
numbers, so a model that the OOM killer would end mid-load is refused with the
estimate and what to change instead.

What the estimate counts, following the vendored llama.cpp:
- weights: the file sizes (target + drafter; llama.cpp maps whole files, so a
  drafter that is the target's own file shares its pages and counts once, as
  long as weights are not repacked: GEMMA_CPU_REPACK, off by default, copies them);
- KV cache: F16 K and V per layer that owns a cache. KV-shared layers
  (`attention.shared_kv_layers`, E2B/E4B) reuse earlier layers' cache and
  cost nothing; sliding-window layers use their own (smaller) head size. The
  engine keeps SWA layers at the full context (`swa_full`, needed for exact
  rollback), so they are counted at n_ctx, not at the window; `swa_cells`
  says what a window-sized cache would be. V rows are padded to the widest
  layer, as llama.cpp does without flash attention (an upper bound);
- an MTP assistant owns no KV cache (it attends to the target's);
- an allowance for compute buffers and logits (10% of weights + 256 MiB + the
  vocabulary's logits rows).
`--gpu-layers N` moves N/n_layer of the target's weights and KV off RAM.

`gemma serve`'s batch scheduler adds a second context on the loaded model
(one n_ctx KV stream per parallel slot): `batch_slots_that_fit` says how many
slots the memory left after loading holds. `GEMMA_MEMORY_AVAILABLE` replaces
the measured free RAM (a container whose limit is not visible, tests).
"""

from __future__ import annotations

import contextlib
import functools
import os
from dataclasses import dataclass
from pathlib import Path

from gemma_cli.errors import InsufficientMemoryError, UsageError
from gemma_cli.gguf_meta import GGUFInfo, read_gguf

GIB = 1 << 30
KV_BYTES = 2  # F16 cache
SKIP_ENV = "GEMMA_SKIP_MEMORY_CHECK"  # set to 1 to load anyway (e.g. swap is intended)
AVAILABLE_ENV = "GEMMA_MEMORY_AVAILABLE"  # bytes of free RAM to assume instead of measuring ("6G", "512M")
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": GIB, "T": 1 << 40}


def _available_override() -> int | None:
    """`GEMMA_MEMORY_AVAILABLE` in bytes (a K/M/G/T suffix is binary), or None when unset."""
    raw = os.environ.get(AVAILABLE_ENV, "").strip()
    if not raw:
        return None
    text = raw.upper().removesuffix("IB").removesuffix("B")
    unit = text[-1:] if text[-1:] in _UNITS else ""
    try:
        value = float(text[: len(text) - len(unit)])
    except ValueError:
        value = -1.0
    if not 0 <= value < 1 << 60:
        raise UsageError(f"{AVAILABLE_ENV} must be an amount of memory like 6G, 512M or a number of bytes, got {raw!r}")
    return int(value * _UNITS[unit])


def available_memory() -> tuple[int | None, int | None]:
    """(available, total) bytes of RAM this process can use, from /proc/meminfo, sysconf and cgroup v2
    (available: `GEMMA_MEMORY_AVAILABLE` instead, when set)."""
    override = _available_override()
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
    return (avail if override is None else override), total


def _int(v: object, default: int = 0) -> int:
    return v if isinstance(v, int) and not isinstance(v, bool) else default


def _per_layer(info: GGUFInfo, suffix: str, n_layer: int, default: int) -> list[int]:
    v = info.arch_key(suffix, default)
    if isinstance(v, list) and len(v) == n_layer:
        return [_int(x, default) for x in v]
    return [_int(v, default)] * n_layer


def kv_layout(info: GGUFInfo) -> list[tuple[bool, int, int]]:
    """Per layer that owns a KV cache: (is_swa, K width, V width) in elements per token."""
    n_layer = _int(info.arch_key("block_count"))
    n_embd = _int(info.arch_key("embedding_length"))
    heads = _per_layer(info, "attention.head_count", n_layer, 1)
    kv_heads = _per_layer(info, "attention.head_count_kv", n_layer, 0)
    pattern = info.arch_key("attention.sliding_window_pattern")
    swa = [bool(b) for b in pattern] if isinstance(pattern, list) and len(pattern) == n_layer else [False] * n_layer
    shared = _int(info.arch_key("attention.shared_kv_layers"))
    out = []
    for il in range(max(n_layer - shared, 0)):
        h_kv = kv_heads[il] or heads[il]
        default_k = n_embd // max(heads[il], 1)
        k_full = _int(info.arch_key("attention.key_length"), default_k)
        v_full = _int(info.arch_key("attention.value_length"), k_full)
        if swa[il]:
            k = _int(info.arch_key("attention.key_length_swa"), k_full)
            v = _int(info.arch_key("attention.value_length_swa"), v_full)
        else:
            k, v = k_full, v_full
        out.append((swa[il], h_kv * k, h_kv * v))
    return out


def kv_cache_bytes(info: GGUFInfo, n_ctx: int, *, swa_full: bool = True) -> int:
    """F16 KV cache bytes for `n_ctx` tokens (see the module doc for what is counted)."""
    layers = kv_layout(info)
    if not layers:
        return 0
    v_max = max(v for _, _, v in layers)
    window = _int(info.arch_key("attention.sliding_window"))
    total = 0
    for is_swa, k, _ in layers:
        cells = n_ctx if swa_full or not is_swa or not window else min(n_ctx, swa_cells(window, n_ctx))
        total += (k + v_max) * cells * KV_BYTES
    return total


def swa_cells(window: int, n_ctx: int, n_ubatch: int = 512) -> int:
    """Cells of a window-sized SWA cache (llama.cpp: pad(min(n_ctx, window + n_ubatch), 256))."""
    return -(-min(n_ctx, window + n_ubatch) // 256) * 256


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes a pair needs at a context size; `ram` is what stays on the CPU side."""

    n_ctx: int
    target_weights: int
    drafter_weights: int
    kv: int
    overhead: int
    gpu: int = 0  # moved to the GPU by --gpu-layers

    @property
    def total(self) -> int:
        return self.target_weights + self.drafter_weights + self.kv + self.overhead

    @property
    def ram(self) -> int:
        return self.total - self.gpu

    def summary(self) -> str:
        gpu = f", {self.gpu / GIB:.2f} GiB of it on the GPU" if self.gpu else ""
        return (f"about {self.total / GIB:.2f} GiB (weights {self.target_weights / GIB:.2f}"
                f" + drafter {self.drafter_weights / GIB:.2f}, KV at {self.n_ctx} tokens {self.kv / GIB:.2f},"
                f" buffers {self.overhead / GIB:.2f}){gpu}")

    def as_dict(self) -> dict[str, int]:
        return {"n_ctx": self.n_ctx, "target_weights_bytes": self.target_weights,
                "drafter_weights_bytes": self.drafter_weights, "kv_bytes": self.kv,
                "overhead_bytes": self.overhead, "gpu_bytes": self.gpu, "total_bytes": self.total,
                "ram_bytes": self.ram}


@functools.lru_cache(maxsize=4)
def _read_cached(path: str, mtime_ns: int, size: int) -> GGUFInfo:
    return read_gguf(path, strings=False)  # shapes and hyperparameters only: skip decoding the vocabulary


def _read(path: str | os.PathLike[str]) -> GGUFInfo:
    # The engine estimates on every load; a 262k-token header is parsed once per file version.
    st = os.stat(path)
    return _read_cached(str(path), st.st_mtime_ns, st.st_size)


def _weights(info: GGUFInfo) -> int:
    # The file size: mmap maps the whole file, and a file longer than its header claims still counts.
    return info.file_size or Path(info.path).stat().st_size


def _same_file(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def estimate_memory(target: str | os.PathLike[str], drafter: str | os.PathLike[str] | None = None, *,
                    drafter_is_mtp: bool = False, n_ctx: int = 4096, gpu_layers: int = 0) -> MemoryEstimate:
    """The estimate for a target (+ drafter) at `n_ctx`; reads headers only."""
    t = _read(target)
    t_w, kv = _weights(t), kv_cache_bytes(t, n_ctx)
    d_file = d_w = 0  # the drafter's file, and what of it is not already mapped for the target
    if drafter is not None:
        d = _read(drafter)
        d_file = _weights(d)
        d_w = 0 if _same_file(target, drafter) else d_file
        if not drafter_is_mtp:  # a small drafter model has its own cache; an MTP head shares the target's
            kv += kv_cache_bytes(d, n_ctx)
    n_vocab = len(t.metadata.get("tokenizer.ggml.tokens") or ()) or 262_144  # a SkippedArray keeps its length
    overhead = (t_w + d_file) // 10 + (256 << 20) + 4 * n_vocab * 16  # compute buffers, logits rows
    n_layer = max(_int(t.arch_key("block_count")), 1)
    gpu = 0
    if gpu_layers != 0:  # negative: all layers, as llama.cpp reads it
        frac = 1.0 if gpu_layers < 0 else min(gpu_layers, n_layer) / n_layer
        gpu = int(frac * (t_w + kv_cache_bytes(t, n_ctx)))
    return MemoryEstimate(n_ctx, t_w, d_w, kv, overhead, gpu)


def _check_skipped() -> bool:
    """`GEMMA_SKIP_MEMORY_CHECK` set to anything but 0: the user loads anyway (e.g. swap is intended)."""
    return os.environ.get(SKIP_ENV, "") not in ("", "0")


def check_fits(estimate: MemoryEstimate, available: int | None = None) -> None:
    """Raise InsufficientMemoryError when the estimate exceeds available RAM (unknown RAM: no check)."""
    if _check_skipped():
        return
    if available is None:
        available = available_memory()[0]
    if available is None or estimate.ram <= available:
        return
    kv_share = estimate.kv / max(estimate.total, 1)
    ctx_hint = f"a smaller --ctx (the KV cache is {estimate.kv / GIB:.2f} GiB at {estimate.n_ctx})" if kv_share > 0.2 \
        else "a smaller --ctx"
    raise InsufficientMemoryError(
        f"the model needs {estimate.summary()} but only {available / GIB:.2f} GiB of RAM is available",
        hint=f"try {ctx_hint}, a smaller quantization or model, or --gpu-layers N on a GPU build; "
             f"{SKIP_ENV}=1 loads it anyway",
    )


def check_drafter_fits(target: str | os.PathLike[str], drafter: str | os.PathLike[str], *, drafter_is_mtp: bool,
                       n_ctx: int, available: int | None = None) -> None:
    """Refuse a drafter that would not fit beside a target already loaded (the REPL's `/set draft`, a
    server request's `draft`): what the pair needs beyond the target alone, against the RAM free now."""
    if _check_skipped():
        return
    pair = estimate_memory(target, drafter, drafter_is_mtp=drafter_is_mtp, n_ctx=n_ctx)
    alone = estimate_memory(target, n_ctx=n_ctx)
    extra, extra_kv, extra_buffers = pair.total - alone.total, pair.kv - alone.kv, pair.overhead - alone.overhead
    if available is None:
        available = available_memory()[0]  # GEMMA_MEMORY_AVAILABLE: free RAM now, as the batch check reads it
    if available is None or extra <= available:
        return
    raise InsufficientMemoryError(
        f"the drafter needs about {extra / GIB:.2f} GiB more (weights {pair.drafter_weights / GIB:.2f}, KV at {n_ctx}"
        f" tokens {extra_kv / GIB:.2f}, buffers {extra_buffers / GIB:.2f}) but only {available / GIB:.2f} GiB of RAM"
        " is available",
        hint=f"keep the n-gram drafter (draft ngram), or use a smaller drafter or context; {SKIP_ENV}=1 loads it anyway",
    )


def check_fits_gpu(estimate: MemoryEstimate, gpu_free: int | None) -> None:
    """Raise InsufficientMemoryError when the share `--gpu-layers` offloads exceeds the GPUs' free memory.

    `gpu_free`: free bytes summed over the GPU devices llama.cpp sees (None: no GPU, nothing offloaded,
    no check). A driver out of memory fails the load late, or falls back silently; this says why up front.
    """
    if _check_skipped() or gpu_free is None or estimate.gpu <= gpu_free:
        return
    raise InsufficientMemoryError(
        f"--gpu-layers would put {estimate.gpu / GIB:.2f} GiB on the GPU but only {gpu_free / GIB:.2f} GiB of "
        f"GPU memory is free (the model needs {estimate.summary()})",
        hint=f"try fewer --gpu-layers (about {max(int(100 * gpu_free / max(estimate.gpu, 1)) - 5, 0)}% of them), "
             f"a smaller --ctx or quantization; {SKIP_ENV}=1 loads it anyway",
    )


BATCH_BUFFERS = 32 << 20  # allowance for the compute buffer besides its logits (2.5 MiB measured, 270M)


@dataclass(frozen=True)
class SlotsFit:
    """How many parallel slots of a batch scheduler fit (`slots`, of `wanted`), and the figures behind it."""

    slots: int
    wanted: int
    per_slot: int = 0  # RAM bytes of one slot's KV stream
    buffers: int = 0  # RAM bytes of the context's buffers, whatever the slot count
    available: int | None = None  # None: not checked (skipped, or free RAM unknown)

    def summary(self) -> str:
        avail = "unknown" if self.available is None else f"{self.available / GIB:.2f} GiB"
        return (f"{self.slots} of {self.wanted} parallel slots fit in memory (KV {self.per_slot / GIB:.2f} GiB per slot"
                f" + buffers {self.buffers / GIB:.2f} GiB; {avail} available)")


def batch_slots_that_fit(target: str | os.PathLike[str], n_ctx: int, wanted: int, *, n_batch: int = 512,
                         gpu_layers: int = 0, available: int | None = None, gpu_free: int | None = None) -> SlotsFit:
    """How many of `wanted` KV streams of `n_ctx` cells a batch context on the loaded `target` can have.

    Counts per slot its F16 KV (as `kv_cache_bytes`), and once the context's buffers: the logits of a
    full `n_batch` batch and of one row per slot (what llama.cpp reserves: 514 MiB measured for a
    262k vocabulary at n_batch 512) plus BATCH_BUFFERS. `available` is free RAM *now*, with the
    engine loaded (default: measured). `--gpu-layers` moves that share of the KV to the GPUs,
    checked against `gpu_free` when given. `GEMMA_SKIP_MEMORY_CHECK` or unknown free RAM: all fit.
    """
    if _check_skipped():
        return SlotsFit(wanted, wanted)
    if available is None:
        available = available_memory()[0]
    if available is None:
        return SlotsFit(wanted, wanted)
    info = _read(target)
    kv = kv_cache_bytes(info, n_ctx)
    n_vocab = len(info.metadata.get("tokenizer.ggml.tokens") or ()) or 262_144
    n_layer = max(_int(info.arch_key("block_count")), 1)
    frac = 0.0 if gpu_layers == 0 else 1.0 if gpu_layers < 0 else min(gpu_layers, n_layer) / n_layer
    on_gpu = int(frac * kv)
    per_slot = kv - on_gpu
    buffers = 4 * n_vocab * (n_batch + wanted) + BATCH_BUFFERS
    slots = wanted
    while slots and (buffers + slots * per_slot > available or (gpu_free is not None and slots * on_gpu > gpu_free)):
        slots -= 1
    return SlotsFit(slots, wanted, per_slot, buffers, available)
