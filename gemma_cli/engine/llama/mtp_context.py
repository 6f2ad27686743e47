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
    """

    def __init__(self, assistant: Model, target: Context) -> None:
        ll = lib()
        e = ext()
        self.n_embd_in = assistant.n_embd_out  # width of the target hidden rows
        p = ll.llama_context_default_params()
        p.n_ctx = target.n_ctx
        p.n_batch = p.n_ubatch = 1  # one row per decode
        p.n_seq_max = 1
        p.n_rs_seq = 0
        p.n_outputs_max = 1
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
        self._batch = ll.llama_batch_init(1, self.n_embd_in, 1)
        self._tokens = (ll.llama_token * 1)()
        self._batch.token = ctypes.cast(self._tokens, type(self._batch.token))
        b = self._batch
        b.n_tokens = 1
        b.n_seq_id[0] = 1
        b.seq_id[0][0] = 0
        b.logits[0] = 1
        self._tok = np.ctypeslib.as_array(self._tokens, shape=(1,))
        self._pos = np.ctypeslib.as_array(b.pos, shape=(1,))
        self.h_in = np.ctypeslib.as_array(b.embd, shape=(self.n_embd_in,))  # the row the next decode reads
        self._logits = FloatRows(assistant.n_vocab, 1)
        self._h_out = FloatRows(self.n_embd_in, 1)
        self._decode = ll.llama_decode
        self._get_logits = ll.llama_get_logits
        self._get_h = e.llama_get_embeddings_nextn

    def step(self, token: int, pos: int) -> np.ndarray:
        """Decode (token, self.h_in) at `pos`; return the logits row (a view)."""
        self._tok[0] = token
        self._pos[0] = pos
        timer = _lib.decode_timer
        rc = self._decode(self.ptr, self._batch) if timer is None else timer.call(self._decode, self.ptr, self._batch)
        if rc != 0:
            raise EngineError(f"MTP draft decode failed (code {rc}): {last_log_line() or 'no detail'}")
        return self._logits.view(self._get_logits(self.ptr))[0]

    def feed_back(self) -> None:
        """The assistant's projected hidden state becomes the next decode's input row."""
        self.h_in[:] = self._h_out.view(self._get_h(self.ptr))[0]

    def close(self) -> None:
        if getattr(self, "ptr", None):
            ll = lib()
            self._batch.token = type(self._batch.token)()  # ours, not llama_batch_free's
            ll.llama_batch_free(self._batch)
            ll.llama_free(self.ptr)
            self.ptr = None

    def __del__(self) -> None:  # pragma: no cover
        try:
            self.close()
        except Exception:
            pass
