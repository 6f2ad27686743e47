"""Ownership of llama.cpp objects: models, contexts, batches, KV memory.

This is the only module (with `mtp.py` for the extension symbols) that imports
`llama_cpp`, so `gemma --help` and the store commands never pay for loading it.
Everything here is a thin, typed wrapper: validation that would otherwise end in
a llama.cpp abort happens *before* the C call, and NULL returns become
`GemmaError`s carrying llama.cpp's own last log line.
"""

from __future__ import annotations

import collections
import ctypes
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from gemma_cli import config
from gemma_cli.errors import ContextFullError, EngineError, ModelFileError
from gemma_cli.load_guard import guard_load

if TYPE_CHECKING:  # pragma: no cover
    import llama_cpp as _llama_cpp_t

_GGUF_MAGIC = b"GGUF"
_init_lock = threading.Lock()
_lib = None
_log_tail: collections.deque[str] = collections.deque(maxlen=8)
_log_callback = None  # keep a reference: llama.cpp calls it from C


def lib() -> "_llama_cpp_t":
    """Import llama_cpp, initialise the backend once and route its logs."""
    global _lib, _log_callback
    if _lib is not None:
        return _lib
    with _init_lock:
        if _lib is None:
            import llama_cpp

            @llama_cpp.llama_log_callback
            def _on_log(level: int, text: bytes, _user: ctypes.c_void_p) -> None:
                # Levels: 1 debug, 2 info, 3 warn, 4 error (5 = continuation).
                if level >= 3 and text:
                    _log_tail.append(text.decode("utf-8", "replace").strip())
                if os.environ.get("GEMMA_DEBUG") and text:
                    os.write(2, text)

            _log_callback = _on_log
            llama_cpp.llama_log_set(_on_log, ctypes.c_void_p(0))
            llama_cpp.llama_backend_init()
            _lib = llama_cpp
    return _lib


def last_log_line() -> str:
    """The most recent warning/error llama.cpp logged, for error messages."""
    return _log_tail[-1] if _log_tail else ""


def system_info() -> str:
    """`llama_print_system_info()`: the compiled-in CPU features and backends."""
    return lib().llama_print_system_info().decode("utf-8", "replace")


def build_has_amx() -> bool:
    """True when this llama.cpp build compiled the AMX kernels.

    Those kernels (`ggml_backend_amx_mul_mat`) segfault during decode on some
    AMX CPUs when weights are placed in the extra (repacked) buffer types.
    """
    return "AMX_INT8 = 1" in system_info()


def choose_cpu_repack() -> bool:
    """Whether to let llama.cpp repack CPU weights (`use_extra_bufts`). Default: off.

    With an AMX build, repacked weights go through `ggml_backend_amx_mul_mat`,
    which segfaults during decode on some AMX CPUs. Off is safe on every build,
    measured no slower for decoding here (Gemma 3 270M Q4_K_M, AVX2: 67 vs 65
    tok/s), and makes batched verification agree with one-token decoding
    more often. `GEMMA_CPU_REPACK=1` opts in (`gemma doctor` warns on AMX builds).
    """
    override = config.cpu_repack_override()
    return bool(override)


def check_gguf_file(path: Path) -> None:
    """Refuse what llama.cpp would fail on anyway, with a message naming the file."""
    if not path.exists():
        raise ModelFileError(f"model file not found: {path}")
    if not path.is_file():
        raise ModelFileError(f"not a file: {path}")
    with path.open("rb") as fh:
        head = fh.read(24)
    if len(head) < 4 or head[:4] != _GGUF_MAGIC:
        raise ModelFileError(f"not a GGUF file (bad magic): {path}")
    if len(head) < 24:
        raise ModelFileError(f"truncated GGUF file (header incomplete): {path}")


class Model:
    """A loaded GGUF model: weights, vocabulary and metadata."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        n_gpu_layers: int = 0,
        cpu_repack: bool | None = None,
        use_mmap: bool = True,
    ) -> None:
        self.path = Path(path)
        check_gguf_file(self.path)
        guard_load(self.path)  # header checks + a child-process probe: no llama.cpp abort here
        ll = lib()
        params = ll.llama_model_default_params()
        params.n_gpu_layers = int(n_gpu_layers)
        params.use_mmap = use_mmap
        params.use_extra_bufts = choose_cpu_repack() if cpu_repack is None else cpu_repack
        self.cpu_repack = bool(params.use_extra_bufts)
        _log_tail.clear()
        ptr = ll.llama_model_load_from_file(str(self.path).encode(), params)
        if not ptr:
            detail = last_log_line() or "llama.cpp could not load it"
            raise ModelFileError(f"cannot load model {self.path}: {detail}")
        self.ptr = ptr
        self.vocab = ll.llama_model_get_vocab(ptr)
        self.n_vocab: int = ll.llama_vocab_n_tokens(self.vocab)
        self.n_embd: int = ll.llama_model_n_embd(ptr)
        self.n_ctx_train: int = ll.llama_model_n_ctx_train(ptr)
        self.architecture: str = self.meta("general.architecture") or "unknown"
        self._piece_buf = ctypes.create_string_buffer(256)
        self._pieces: dict[int, bytes] = {}
        self._eog_cache: dict[int, bool] = {}
        self._encodable: bool | set[str] | None = None

    # -- metadata ---------------------------------------------------------
    def meta(self, key: str) -> str | None:
        """A GGUF metadata value as llama.cpp renders it, or None."""
        buf = ctypes.create_string_buffer(1024)
        n = lib().llama_model_meta_val_str(self.ptr, key.encode(), buf, len(buf))
        return buf.value.decode("utf-8", "replace") if n >= 0 else None

    def chat_template(self) -> str | None:
        """The GGUF's default chat template (Jinja source), if it has one."""
        raw = lib().llama_model_chat_template(self.ptr, None)
        return raw.decode("utf-8", "replace") if raw else None

    @property
    def size_bytes(self) -> int:
        return int(lib().llama_model_size(self.ptr))

    @property
    def n_params(self) -> int:
        return int(lib().llama_model_n_params(self.ptr))

    # -- vocabulary -------------------------------------------------------
    @property
    def bos(self) -> int:
        return lib().llama_vocab_bos(self.vocab)

    @property
    def eos(self) -> int:
        return lib().llama_vocab_eos(self.vocab)

    @property
    def add_bos(self) -> bool:
        return bool(lib().llama_vocab_get_add_bos(self.vocab))

    def is_eog(self, token: int) -> bool:
        """End-of-generation (eos, eot, <end_of_turn>, ...), cached per id."""
        hit = self._eog_cache.get(token)
        if hit is None:
            hit = bool(lib().llama_vocab_is_eog(self.vocab, token))
            self._eog_cache[token] = hit
        return hit

    def token_text(self, token: int) -> str:
        """The vocabulary entry itself (for compatibility checks)."""
        raw = lib().llama_vocab_get_text(self.vocab, token)
        return raw.decode("utf-8", "replace") if raw else ""

    def _spm_byte_fallback(self) -> bool:
        """Does this SentencePiece vocabulary have the 256 `<0xXX>` byte tokens?

        llama.cpp's SPM tokenizer looks a missing character's bytes up with
        `unordered_map::at` and aborts the process when they are absent. Byte
        tokens sit near the start of every SPM vocabulary we know (llama at 3,
        Gemma at 238), so only the first ids are scanned.
        """
        texts = [self.token_text(i) for i in range(min(self.n_vocab, 2048))]
        try:
            first = texts.index("<0x00>")
        except ValueError:
            return False
        return all(self.token_text(first + b) == f"<0x{b:02X}>" for b in range(256) if first + b < self.n_vocab)

    def _check_encodable(self, text: str) -> None:
        """Refuse text llama.cpp would abort on (an SPM vocabulary without byte fallback)."""
        if self._encodable is None:
            ll = lib()
            if ll.llama_vocab_type(self.vocab) != 1 or self._spm_byte_fallback():  # 1 = SPM
                self._encodable = True
            else:
                self._encodable = {self.token_text(i) for i in range(self.n_vocab)}
        if self._encodable is True:
            return
        pieces = self._encodable
        for ch in text.replace(" ", "▁"):
            if ch in pieces:
                continue
            if not all(f"<0x{b:02X}>" in pieces or chr(b) in pieces for b in ch.encode("utf-8")):
                raise ModelFileError(f"{self.path.name} cannot encode the character {ch!r}: its vocabulary has no byte fallback")

    def tokenize(self, text: str, *, add_special: bool = True, parse_special: bool = True) -> list[int]:
        """Text to token ids; `parse_special` lets templates' control tokens through."""
        self._check_encodable(text)
        ll = lib()
        data = text.encode("utf-8")
        cap = len(data) + 16
        buf = (ll.llama_token * cap)()
        n = ll.llama_tokenize(self.vocab, data, len(data), buf, cap, add_special, parse_special)
        if n < 0:  # buffer too small: llama.cpp returns -needed
            cap = -n
            buf = (ll.llama_token * cap)()
            n = ll.llama_tokenize(self.vocab, data, len(data), buf, cap, add_special, parse_special)
        if n < 0:
            raise EngineError("tokenization failed")
        return list(buf[:n])

    def piece(self, token: int) -> bytes:
        """The bytes a token contributes to the output (special tokens render empty)."""
        cached = self._pieces.get(token)
        if cached is not None:
            return cached
        ll = lib()
        n = ll.llama_token_to_piece(self.vocab, token, self._piece_buf, len(self._piece_buf), 0, False)
        if n < 0:
            big = ctypes.create_string_buffer(-n)
            n = ll.llama_token_to_piece(self.vocab, token, big, len(big), 0, False)
            out = big.raw[:n]
        else:
            out = self._piece_buf.raw[:n]
        self._pieces[token] = out
        return out

    def detokenize(self, tokens: Sequence[int]) -> str:
        return b"".join(self.piece(t) for t in tokens).decode("utf-8", "replace")

    def close(self) -> None:
        if getattr(self, "ptr", None):
            lib().llama_model_free(self.ptr)
            self.ptr = None

    def __del__(self) -> None:  # pragma: no cover - best effort at interpreter exit
        try:
            self.close()
        except Exception:
            pass


def default_threads() -> int:
    """Physical-ish core count available to this process (llama.cpp is compute bound per core)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS
        return max(1, os.cpu_count() or 1)


VIEW_ROWS = 64  # rows a logits view spans: more than any draft verification needs


class Context:
    """One llama.cpp context (sequence 0) with a reusable batch and KV trimming.

    `n_past` mirrors the number of positions held in KV memory; `decode` appends
    at `n_past`, `trim` rolls back. Logits come back as zero-copy numpy views.
    """

    def __init__(
        self,
        model: Model,
        *,
        n_ctx: int,
        n_batch: int = 512,
        n_threads: int | None = None,
        ctx_type: int | None = None,
        ctx_other: "Context | None" = None,
        n_outputs_max: int = 0,
        flash_attn: int | None = None,
    ) -> None:
        if n_ctx <= 0:
            raise EngineError(f"context size must be positive, got {n_ctx}")
        if n_batch <= 0:
            raise EngineError(f"batch size must be positive, got {n_batch}")
        ll = lib()
        threads = n_threads or default_threads()
        params = ll.llama_context_default_params()
        params.n_ctx = int(n_ctx)
        params.n_batch = int(n_batch)
        params.n_ubatch = int(n_batch)
        params.n_seq_max = 1
        params.n_outputs_max = int(n_outputs_max)
        params.n_threads = threads
        params.n_threads_batch = threads
        params.no_perf = True
        params.swa_full = True  # keep SWA layers' KV so rollback inside the window is exact
        if flash_attn is not None:
            params.flash_attn_type = flash_attn
        if ctx_type is not None:
            params.ctx_type = ctx_type
        if ctx_other is not None:
            params.ctx_other = ctx_other.ptr
        self.model = model
        self.flash_attn_type = int(params.flash_attn_type)
        _log_tail.clear()
        ptr = ll.llama_init_from_model(model.ptr, params)
        if not ptr:
            raise EngineError(f"cannot create a llama.cpp context (n_ctx={n_ctx}): {last_log_line() or 'unknown error'}")
        self.ptr = ptr
        self.n_ctx: int = ll.llama_n_ctx(ptr)
        self.n_batch: int = ll.llama_n_batch(ptr)
        self.n_threads = threads
        self.memory = ll.llama_get_memory(ptr)
        self.n_past = 0
        self.n_outputs = 0
        self.last_batch_len = 0
        self._batch = ll.llama_batch_init(self.n_batch, 0, 1)
        b = self._batch
        self._tok = np.ctypeslib.as_array(b.token, shape=(self.n_batch,))
        self._pos = np.ctypeslib.as_array(b.pos, shape=(self.n_batch,))
        self._out = np.ctypeslib.as_array(b.logits, shape=(self.n_batch,))
        np.ctypeslib.as_array(b.n_seq_id, shape=(self.n_batch,))[:] = 1
        for i in range(self.n_batch):
            b.seq_id[i][0] = 0
        self._ar = np.arange(self.n_batch, dtype=np.int32)
        self._logits_addr: int | None = None
        self._logits_view = np.empty((0, model.n_vocab), dtype=np.float32)

    def decode(self, tokens: Sequence[int], n_outputs: int = 1) -> None:
        """Append `tokens` at `n_past`; the last `n_outputs` rows get logits.

        Long inputs are split into `n_batch` chunks; only the final chunk can
        carry outputs, so `n_outputs` must fit in one batch (checked: llama.cpp
        would otherwise abort the process).
        """
        n = len(tokens)
        if n == 0:
            return
        if n_outputs > self.n_batch or n_outputs > n:
            raise EngineError(f"cannot request {n_outputs} output rows from a {n}-token decode (n_batch {self.n_batch})")
        if self.n_past + n > self.n_ctx:
            raise ContextFullError(f"context full: {self.n_past} + {n} tokens exceed n_ctx {self.n_ctx}")
        ll = lib()
        tail = min(n, self.n_batch)  # the final chunk carries every output row
        start = 0
        while start < n:
            m = min(self.n_batch, n - tail - start) or tail
            self._tok[:m] = tokens[start : start + m]
            self._pos[:m] = self._ar[:m] + self.n_past
            self._out[:m] = 0
            if start + m == n:
                self._out[m - n_outputs : m] = 1
            self._batch.n_tokens = m
            rc = ll.llama_decode(self.ptr, self._batch)
            if rc != 0:
                raise EngineError(f"llama_decode failed (code {rc}): {last_log_line() or 'no detail'}")
            self.n_past += m
            start += m
        self.last_batch_len = m
        self.n_outputs = n_outputs

    def logits(self) -> np.ndarray:
        """(n_outputs, n_vocab) float32 view over llama.cpp's logits buffer. Valid until the next decode.

        The view is rebuilt only when llama.cpp moved its buffer or a batch
        has more rows than it covers: building a ctypes array type costs more
        than the rest of a step. It covers VIEW_ROWS at once (only the first
        n_outputs are ever read), so growing drafts do not rebuild it.
        """
        ptr = lib().llama_get_logits(self.ptr)
        addr = ctypes.cast(ptr, ctypes.c_void_p).value
        if addr != self._logits_addr or self.n_outputs > self._logits_view.shape[0]:
            rows = max(self.n_outputs, VIEW_ROWS)
            self._logits_view = np.ctypeslib.as_array(ptr, shape=(rows, self.model.n_vocab))
            self._logits_addr = addr
        return self._logits_view[: self.n_outputs]

    def trim(self, n_keep: int) -> None:
        """Drop KV positions >= n_keep (rollback of rejected drafts)."""
        if n_keep < self.n_past:
            lib().llama_memory_seq_rm(self.memory, 0, n_keep, -1)
            self.n_past = n_keep

    def clear(self) -> None:
        lib().llama_memory_clear(self.memory, True)
        self.n_past = 0

    def pos_max(self) -> int:
        """Highest position llama.cpp holds for sequence 0 (-1 when empty)."""
        return int(lib().llama_memory_seq_pos_max(self.memory, 0))

    def close(self) -> None:
        if getattr(self, "ptr", None):
            ll = lib()
            ll.llama_batch_free(self._batch)
            ll.llama_free(self.ptr)
            self.ptr = None

    def __del__(self) -> None:  # pragma: no cover
        try:
            self.close()
        except Exception:
            pass


_DEVICE_TYPES = {0: "cpu", 1: "gpu", 2: "igpu", 3: "accel"}


def backend_devices() -> list[dict[str, object]]:
    """ggml's compute devices (CPU, CUDA0, Metal, ...) with their memory, for `gemma doctor`."""
    lib()
    from llama_cpp._ggml import libggml as g

    g.ggml_backend_dev_count.argtypes = []
    g.ggml_backend_dev_count.restype = ctypes.c_size_t
    g.ggml_backend_dev_get.argtypes = [ctypes.c_size_t]
    g.ggml_backend_dev_get.restype = ctypes.c_void_p
    for fn in (g.ggml_backend_dev_name, g.ggml_backend_dev_description):
        fn.argtypes = [ctypes.c_void_p]
        fn.restype = ctypes.c_char_p
    g.ggml_backend_dev_type.argtypes = [ctypes.c_void_p]
    g.ggml_backend_dev_type.restype = ctypes.c_int
    g.ggml_backend_dev_memory.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_size_t), ctypes.POINTER(ctypes.c_size_t)]
    g.ggml_backend_dev_memory.restype = None
    out: list[dict[str, object]] = []
    for i in range(g.ggml_backend_dev_count()):
        dev = g.ggml_backend_dev_get(i)
        free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
        g.ggml_backend_dev_memory(dev, ctypes.byref(free), ctypes.byref(total))
        out.append(
            {
                "name": (g.ggml_backend_dev_name(dev) or b"").decode("utf-8", "replace"),
                "description": (g.ggml_backend_dev_description(dev) or b"").decode("utf-8", "replace"),
                "type": _DEVICE_TYPES.get(g.ggml_backend_dev_type(dev), "unknown"),
                "free_bytes": int(free.value),
                "total_bytes": int(total.value),
            }
        )
    return out
