"""The Gemma 4 MTP assistant's llama.cpp context, linked to the target's (see `engine/mtp.py`).

The assistant attends to the *target's* KV cache and writes none of its own;
each decode is one row carrying a token and a hidden state, at the position
the drafter gives. Hidden rows move through preallocated numpy views; a step
allocates nothing in Python.
"""

from __future__ import annotations

import ctypes

import numpy as np

from gemma_cli.engine.llama import _lib
from gemma_cli.engine.llama._lib import ext, last_log_line, lib
from gemma_cli.engine.llama.context import Context, FloatRows, _addr
from gemma_cli.engine.llama.model import Model
from gemma_cli.errors import EngineError, IncompatibleModelsError


class MTPContext:
    """The assistant's llama.cpp context: type MTP, linked to the target context.

    Its batch carries both a token and a hidden row per entry. llama.cpp's
    `llama_batch_init` allocates either tokens or embeddings, so the token
    array is ours and is detached again before the batch is freed.

    `rows` > 1 drafts for several sequences of a multi-sequence target at once
    (`step_rows`: one decode, a row per sequence); the shared cache view then
    needs the target's sequence count and KV layout, so both are copied.
    """

    def __init__(self, assistant: Model, target: Context, rows: int = 1) -> None:
        ll = lib()
        e = ext()
        self.n_embd_in = assistant.n_embd_out  # width of the target hidden rows
        self.rows = rows
        p = ll.llama_context_default_params()
        p.n_ctx = target.n_ctx
        p.n_batch = p.n_ubatch = rows  # one row per sequence and decode
        p.n_seq_max = target.n_seq_max
        if target.n_seq_max > 1:
            p.kv_unified = target.kv_unified
        p.n_rs_seq = 0
        p.n_outputs_max = rows
        p.n_threads = p.n_threads_batch = target.n_threads
        p.no_perf = True
        p.swa_full = True  # as the target: the shared cache's layout must match
        p.flash_attn_type = target.flash_attn_type  # V layout of the shared cache depends on it
        p.ctx_type = ll.LLAMA_CONTEXT_TYPE_MTP
        p.ctx_other = target.ptr
        ptr = ll.llama_init_from_model(assistant.ptr, p)
        if not ptr:
            raise EngineError(f"cannot create the MTP draft context: {last_log_line() or 'unknown error'}")
        self.ptr = ptr
        self.model = assistant
        other = e.llama_get_ctx_other(ptr)
        if _addr(other) != _addr(target.ptr):
            ll.llama_free(ptr)
            self.ptr = None
            raise IncompatibleModelsError("the MTP assistant does not share the target's KV cache")
        e.llama_set_embeddings_nextn(ptr, True, True)  # masked: a hidden row for the output row only
        self._batch = ll.llama_batch_init(rows, self.n_embd_in, 1)
        self._tokens = (ll.llama_token * rows)()
        self._batch.token = ctypes.cast(self._tokens, type(self._batch.token))
        b = self._batch
        b.n_tokens = 1
        for i in range(rows):
            b.n_seq_id[i] = 1
            b.seq_id[i][0] = 0
            b.logits[i] = 1
        self._tok = np.ctypeslib.as_array(self._tokens, shape=(rows,))
        self._pos = np.ctypeslib.as_array(b.pos, shape=(rows,))
        self.h_rows = np.ctypeslib.as_array(b.embd, shape=(rows, self.n_embd_in))  # the rows the next decode reads
        self.h_in = self.h_rows[0]  # one-sequence use: the row the next `step` reads
        self._seq_now = [0] * rows  # mirror of the batch's seq_id[i][0]
        self._logits = FloatRows(assistant.n_vocab, rows)
        self._h_out = FloatRows(self.n_embd_in, rows)
        self._decode = ll.llama_decode
        self._get_logits = ll.llama_get_logits
        self._get_h = e.llama_get_embeddings_nextn

    def step(self, token: int, pos: int) -> np.ndarray:
        """Decode (token, self.h_in) at `pos` of sequence 0; return the logits row (a view)."""
        return self.step_rows([token], [pos], [0])[0]

    def feed_back(self) -> None:
        """The assistant's projected hidden state becomes the next decode's input row."""
        self.h_in[:] = self._h_out.view(self._get_h(self.ptr))[0]

    def step_rows(self, tokens: list[int], positions: list[int], seqs: list[int]) -> np.ndarray:
        """One decode of row i = (tokens[i], self.h_rows[i]) at positions[i] of sequence seqs[i];
        return the (n, n_vocab) logits rows (a view, valid until the next decode)."""
        n = len(tokens)
        if not 0 < n <= self.rows:
            raise EngineError(f"an MTP batch of {n} rows does not fit {self.rows}")
        self._tok[:n] = tokens
        self._pos[:n] = positions
        b, now = self._batch, self._seq_now
        for i, seq in enumerate(seqs):
            if now[i] != seq:
                b.seq_id[i][0] = now[i] = seq
        b.n_tokens = n
        rc = _lib.run_decode(self._decode, self.ptr, b)
        if rc != 0:
            raise EngineError(f"MTP draft decode failed (code {rc}): {last_log_line() or 'no detail'}")
        return self._logits.view(self._get_logits(self.ptr))[:n]

    def feed_back_rows(self, keep: list[int]) -> None:
        """Rows `keep` of the last decode's projected hidden states become the next decode's rows 0..len(keep)-1."""
        self.h_rows[: len(keep)] = self._h_out.view(self._get_h(self.ptr))[keep]

    def close(self) -> None:
        ptr, self.ptr = getattr(self, "ptr", None), None  # let go first: a Ctrl-C mid-close must not free twice
        batch, self._batch = getattr(self, "_batch", None), None
        if ptr:
            ll = lib()
            if batch is not None:
                batch.token = type(batch.token)()  # ours, not llama_batch_free's
                ll.llama_batch_free(batch)
            ll.llama_free(ptr)

    def __del__(self) -> None:  # pragma: no cover
        try:
            self.close()
        except Exception:
            pass
