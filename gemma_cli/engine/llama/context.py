"""One llama.cpp context: a reusable batch, KV rollback, zero-copy logits and hidden rows.

The decode call sites here and in `mtp_context.py` are the hot path: the C
functions are looked up once per context, and the benchmark's decode timer
costs one global read per decode when it is not installed.
"""

from __future__ import annotations

import ctypes
from time import perf_counter
from typing import Callable, Sequence

import numpy as np

from gemma_cli.engine.llama import _lib
from gemma_cli.engine.llama._lib import ext, forget_log, last_log_line, lib
from gemma_cli.engine.llama.governor import ThreadGovernor
from gemma_cli.engine.llama.model import Model
from gemma_cli.engine.llama.threads import default_threads
from gemma_cli.errors import ContextFullError, EngineError

CTX_STEP = 256  # llama.cpp allocates contexts in multiples of this many tokens


def rounded_context(n_ctx: int) -> int:
    """The context size a `Context` asked for `n_ctx` really gets: rounded up to CTX_STEP tokens."""
    return -(-int(n_ctx) // CTX_STEP) * CTX_STEP
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
        n_seq_max: int = 1,
        kv_unified: bool = False,
        govern: bool = False,
    ) -> None:
        if n_ctx <= 0:
            raise ValueError(f"context size must be positive, got {n_ctx}")  # callers validate (gemma_cli.limits)
        if n_batch <= 0:
            raise ValueError(f"batch size must be positive, got {n_batch}")
        ll = lib()
        threads = n_threads or default_threads()
        # llama.cpp pads n_ctx up to CTX_STEP but caps n_batch at the n_ctx asked for: round first, so
        # `--ctx 8` is a 256-token context with a batch that still holds a draft.
        n_ctx = rounded_context(n_ctx)
        params = ll.llama_context_default_params()
        params.n_ctx = int(n_ctx)
        params.n_batch = int(n_batch)
        params.n_ubatch = int(n_batch)
        params.n_seq_max = int(n_seq_max)
        # Several sequences get a KV stream each unless `kv_unified`: a sequence's cells then sit
        # exactly where they would alone, and attention sums run in the same order, so its logits are
        # bit-identical to a solo run (in a unified pool, interleaved cells moved a near-tie by 0.14;
        # the pool is faster for several sequences: Gemma 3 270M, 4 slots, 1.09x vs 0.77x serialized).
        if n_seq_max > 1:
            params.kv_unified = bool(kv_unified)
        self.kv_unified = n_seq_max > 1 and bool(kv_unified)
        self.n_seq_max = int(n_seq_max)
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
        forget_log()
        ptr = ll.llama_init_from_model(model.ptr, params)
        if not ptr:
            raise EngineError(f"cannot create a llama.cpp context (n_ctx={n_ctx}): {last_log_line() or 'unknown error'}")
        self.ptr = ptr
        self.n_ctx: int = ll.llama_n_ctx(ptr)
        self.n_batch: int = ll.llama_n_batch(ptr)
        self.n_threads = threads  # as created; the governor may decode with fewer (`threads_now`)
        self.threads_now = threads
        # `govern`: the thread count follows this context's timings (governor.py); the engine asks for it
        # when the user left the count to us and decoding runs on this CPU.
        self.governor = ThreadGovernor(threads, self.set_threads) if govern and threads > 1 else None
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
        self._seq_now = np.zeros(self.n_batch, dtype=np.int32)  # mirror of the batch's seq_id[i][0]
        self._logits_addr: int | None = None
        self._logits_view = np.empty((0, model.n_vocab), dtype=np.float32)
        self._decode = ll.llama_decode
        self._get_logits = ll.llama_get_logits
        self._seq_rm = ll.llama_memory_seq_rm
        self._hidden: FloatRows | None = None  # see set_hidden_rows
        # Called between the n_batch chunks of a long decode (a prompt): the running generation checks there
        # whether it was cancelled (raising stops the decode, the chunks done stay in the KV and `n_past`), and a
        # server lets other requests take a turn. None: nothing between chunks.
        self.between_chunks: Callable[[], None] | None = None

    def decode(self, tokens: Sequence[int], n_outputs: int = 1) -> None:
        """Append `tokens` at `n_past`; the last `n_outputs` rows get logits.

        Long inputs are split into `n_batch` chunks; only the final chunk can
        carry outputs, so `n_outputs` must fit in one batch (checked: llama.cpp
        would otherwise abort the process).
        """
        n = len(tokens)
        if n == 0:
            return
        governor = self.governor
        if governor is not None and n == 1:
            t0 = perf_counter()
            self._decode_chunks(tokens, n, n_outputs)
            governor.observe(1, perf_counter() - t0)
            return
        self._decode_chunks(tokens, n, n_outputs)

    def _decode_chunks(self, tokens: Sequence[int], n: int, n_outputs: int) -> None:
        if n_outputs > self.n_batch or n_outputs > n:
            raise EngineError(f"cannot request {n_outputs} output rows from a {n}-token decode (n_batch {self.n_batch})")
        if self.n_past + n > self.n_ctx:
            raise ContextFullError(f"context full: {self.n_past} + {n} tokens exceed n_ctx {self.n_ctx}")
        decode, batch = self._decode, self._batch
        tail = min(n, self.n_batch)  # the final chunk carries every output row
        start = 0
        while start < n:
            m = min(self.n_batch, n - tail - start) or tail
            self._tok[:m] = tokens[start : start + m]
            self._pos[:m] = self._ar[:m] + self.n_past
            self._out[:m] = 0
            if start + m == n:
                self._out[m - n_outputs : m] = 1
            batch.n_tokens = m
            rc = _lib.run_decode(decode, self.ptr, batch)
            if rc != 0:
                raise EngineError(f"llama_decode failed (code {rc}): {last_log_line() or 'no detail'}")
            self.n_past += m
            start += m
            if start < n and self.between_chunks is not None:
                self.last_batch_len, self.n_outputs = m, 0  # what the KV holds if the hook stops the decode here
                self.between_chunks()
        self.last_batch_len = m
        self.n_outputs = n_outputs

    def set_threads(self, n: int) -> None:
        """Decode with `n` threads from the next pass on (llama_set_n_threads; the governor's lever)."""
        lib().llama_set_n_threads(self.ptr, int(n), int(n))
        self.threads_now = int(n)

    def logits(self) -> np.ndarray:
        """(n_outputs, n_vocab) float32 view over llama.cpp's logits buffer. Valid until the next decode.

        The view is rebuilt only when llama.cpp moved its buffer or a batch
        has more rows than it covers: building a ctypes array type costs more
        than the rest of a step. It covers VIEW_ROWS at once (only the first
        n_outputs are ever read), so growing drafts do not rebuild it.
        """
        ptr = self._get_logits(self.ptr)
        addr = ctypes.cast(ptr, ctypes.c_void_p).value
        if addr != self._logits_addr or self.n_outputs > self._logits_view.shape[0]:
            rows = max(self.n_outputs, VIEW_ROWS)
            self._logits_view = np.ctypeslib.as_array(ptr, shape=(rows, self.model.n_vocab))
            self._logits_addr = addr
        return self._logits_view[: self.n_outputs]

    def trim(self, n_keep: int) -> None:
        """Drop KV positions >= n_keep (rollback of rejected drafts)."""
        if n_keep < self.n_past:
            self._seq_rm(self.memory, 0, n_keep, -1)
            self.n_past = n_keep

    def clear(self) -> None:
        lib().llama_memory_clear(self.memory, True)
        self.n_past = 0

    def pos_max(self) -> int:
        """Highest position llama.cpp holds for sequence 0 (-1 when empty)."""
        return int(lib().llama_memory_seq_pos_max(self.memory, 0))

    # -- several sequences (engine/batch.py) ------------------------------------
    def decode_rows(self, tokens: np.ndarray, positions: np.ndarray, seqs: np.ndarray, outputs: np.ndarray) -> None:
        """One decode of rows that may belong to different sequences (`n_past` is not used).

        `outputs` flags the rows that get logits; `logits()` returns them in
        row order. All rows must fit in one batch. With one KV stream per
        sequence llama.cpp splits a batch whose sequences have different
        row counts into several ubatches (still one call).
        """
        n = len(tokens)
        if n == 0 or n > self.n_batch:
            raise EngineError(f"a batch of {n} rows does not fit n_batch {self.n_batch}")
        self._tok[:n] = tokens
        self._pos[:n] = positions
        self._out[:n] = outputs
        now, batch = self._seq_now, self._batch
        changed = np.flatnonzero(now[:n] != seqs)
        if len(changed):
            seq_id = batch.seq_id
            for i in changed.tolist():
                seq_id[i][0] = int(seqs[i])
            now[changed] = np.asarray(seqs)[changed]
        batch.n_tokens = n
        rc = _lib.run_decode(self._decode, self.ptr, batch)
        if rc != 0:
            raise EngineError(f"llama_decode failed (code {rc}): {last_log_line() or 'no detail'}")
        self.last_batch_len = n
        self.n_outputs = int(np.count_nonzero(outputs))

    def seq_trim(self, seq: int, n_keep: int) -> None:
        """Drop sequence `seq`'s positions >= n_keep (0: the whole sequence)."""
        self._seq_rm(self.memory, seq, n_keep, -1)

    def seq_copy(self, src: int, dst: int, n: int) -> None:
        """Give the empty sequence `dst` the KV of `src`'s positions [0, n).

        With one stream per sequence llama.cpp copies whole streams only (it
        asserts otherwise), so copy it all and drop what lies past n.
        """
        if self.kv_unified:  # one pool: the cells are shared, not copied
            lib().llama_memory_seq_cp(self.memory, src, dst, 0, n)
            return
        lib().llama_memory_seq_cp(self.memory, src, dst, -1, -1)
        self._seq_rm(self.memory, dst, n, -1)

    def seq_state(self, seq: int = 0) -> bytes:
        """Sequence `seq`'s KV cells (positions and K/V rows), as `load_seq_state` takes them, on any context of this model."""
        ll = lib()
        size = int(ll.llama_state_seq_get_size(self.ptr, seq))
        buf = (ctypes.c_uint8 * max(size, 1))()
        got = int(ll.llama_state_seq_get_data(self.ptr, buf, size, seq))
        return bytes(buf)[:got]

    def load_seq_state(self, seq: int, state: bytes) -> None:
        """Give the empty sequence `seq` the cells `seq_state` returned (an exact copy: the same K/V rows)."""
        buf = (ctypes.c_uint8 * max(len(state), 1)).from_buffer_copy(state or b"\0")
        if not lib().llama_state_seq_set_data(self.ptr, buf, len(state), seq):
            raise EngineError(f"llama.cpp could not load {len(state)} bytes of KV state into sequence {seq}")

    def seq_pos_max(self, seq: int) -> int:
        """Highest position llama.cpp holds for `seq` (-1 when empty)."""
        return int(lib().llama_memory_seq_pos_max(self.memory, seq))

    # -- hidden rows (Gemma 4 MTP) -------------------------------------------
    def set_hidden_rows(self, enabled: bool, *, masked: bool = False) -> None:
        """Make each decode also emit its post-norm hidden rows (every batch row, or only output rows when `masked`)."""
        e = ext()
        e.llama_set_embeddings_nextn(self.ptr, enabled, masked)
        self._hidden = FloatRows(self.model.n_embd, self.n_batch) if enabled else None
        self._get_hidden = e.llama_get_embeddings_nextn

    def hidden_rows(self) -> np.ndarray:
        """(n_batch, n_embd) view over the last decode's hidden rows; valid until the next decode."""
        if self._hidden is None:
            raise ValueError("hidden rows are off: call set_hidden_rows(True) first")
        return self._hidden.view(self._get_hidden(self.ptr))

    def close(self) -> None:
        # Let go first: a Ctrl-C that lands between two frees must not make `__del__` free them again.
        ptr, self.ptr = getattr(self, "ptr", None), None
        batch, self._batch = getattr(self, "_batch", None), None
        if ptr:
            ll = lib()
            if batch is not None:
                ll.llama_batch_free(batch)
            ll.llama_free(ptr)

    def __del__(self) -> None:  # pragma: no cover
        try:
            self.close()
        except Exception:
            pass


def _addr(ptr: object) -> int:
    return ctypes.cast(ptr, ctypes.c_void_p).value or 0


class FloatRows:
    """A numpy view over a llama.cpp float buffer, rebuilt only when the buffer moves."""

    __slots__ = ("width", "rows", "_addr", "_view")

    def __init__(self, width: int, rows: int) -> None:
        self.width, self.rows = width, rows
        self._addr = 0
        self._view: np.ndarray | None = None

    def view(self, ptr: object) -> np.ndarray:
        a = _addr(ptr)
        if a == 0:
            raise EngineError(f"llama.cpp returned no buffer: {last_log_line() or 'no detail'}")
        if a != self._addr or self._view is None:
            self._view = np.ctypeslib.as_array(ptr, shape=(self.rows, self.width))
            self._addr = a
        return self._view
