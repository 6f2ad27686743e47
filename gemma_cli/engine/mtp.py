"""Gemma 4 Multi-Token-Prediction drafting with a `gemma4-assistant` GGUF.

The assistant is not a standalone model. Every draft row is a token plus a
hidden state, and the assistant attends to the *target's* KV cache (its own
context is a view of the target's last SWA and full layers). So:

- the target context emits its post-norm hidden row for every batch row
  (`llama_set_embeddings_nextn(target, True, masked=False)`);
- after each verify pass, `after_verify` copies the row of the last accepted
  token (the token *before* the new pending one) straight into the MTP batch;
- a draft is `k` one-row decodes, all at position `target.n_past` (the
  pending token's position, one past what the target's KV holds), each fed
  the previous draft token and the assistant's own projected hidden state;
- rollback is the target's alone: the assistant never writes KV.

This module (with `llama.py`) is the only one touching `llama_cpp`; it uses
the non-stable `llama_cpp_ext` symbols, which is why llama-cpp-python is
pinned exactly. Hidden rows move through preallocated numpy views; a draft
step allocates nothing in Python except the proposal list.
"""

from __future__ import annotations

import ctypes
from typing import TYPE_CHECKING, Sequence

import numpy as np

from gemma_cli.engine.llama import Context, Model, last_log_line, lib
from gemma_cli.compat import check_mtp_pair
from gemma_cli.engine.sampling import Dist
from gemma_cli.errors import EngineError, IncompatibleModelsError

if TYPE_CHECKING:  # pragma: no cover
    from gemma_cli.engine.speculative import TokenSampler


def _ext():
    lib()  # backend initialised and logs routed first
    from llama_cpp import llama_cpp_ext

    return llama_cpp_ext


def _addr(ptr: object) -> int:
    return ctypes.cast(ptr, ctypes.c_void_p).value or 0


class _FloatRows:
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


class MTPContext:
    """The assistant's llama.cpp context: type MTP, linked to the target context.

    Its batch carries both a token and a hidden row per entry. llama.cpp's
    `llama_batch_init` allocates either tokens or embeddings, so the token
    array is ours and is detached again before the batch is freed.
    """

    def __init__(self, assistant: Model, target: Context) -> None:
        ll = lib()
        ext = _ext()
        self.n_embd_in = int(ll.llama_model_n_embd_out(assistant.ptr))  # width of the target hidden rows
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
        other = ext.llama_get_ctx_other(ptr)
        if _addr(other) != _addr(target.ptr):
            ll.llama_free(ptr)
            self.ptr = None
            raise IncompatibleModelsError("the MTP assistant does not share the target's KV cache")
        ext.llama_set_embeddings_nextn(ptr, True, True)  # masked: a hidden row for the output row only
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
        self._logits = _FloatRows(assistant.n_vocab, 1)
        self._h_out = _FloatRows(self.n_embd_in, 1)
        self._ll = ll  # llama_decode looked up per call: benchmarks wrap it to time it
        self._get_logits = ll.llama_get_logits
        self._get_h = ext.llama_get_embeddings_nextn

    def step(self, token: int, pos: int) -> np.ndarray:
        """Decode (token, self.h_in) at `pos`; return the logits row (a view)."""
        self._tok[0] = token
        self._pos[0] = pos
        rc = self._ll.llama_decode(self.ptr, self._batch)
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


class MTPDrafter:
    """Drafter protocol implementation for a Gemma 4 target + its MTP assistant."""

    name = "mtp"
    last_key = None  # proposals are costly: k is decided before proposing, no per-class record
    samples_proposals = True  # sampled generations use rejection sampling against the assistant's distributions
    catch_up_seconds = 0.0  # the assistant reads the target's KV: nothing to catch up on

    def __init__(self, target_model: Model, assistant_model: Model, target_ctx: Context) -> None:
        # Header checks (cached, so repeating the engine's pre-load call is free):
        # several mismatches would abort the process inside llama.cpp.
        check_mtp_pair(target_model.path, assistant_model.path)
        ll = lib()
        if int(ll.llama_model_n_embd_out(assistant_model.ptr)) != target_model.n_embd:
            raise IncompatibleModelsError(
                f"{assistant_model.path.name} reads {ll.llama_model_n_embd_out(assistant_model.ptr)}-wide hidden "
                f"states, but {target_model.path.name} produces {target_model.n_embd}-wide ones"
            )
        if assistant_model.n_vocab != target_model.n_vocab:
            raise IncompatibleModelsError(
                f"{assistant_model.path.name} and {target_model.path.name} have different vocabularies"
            )
        self.target_model = target_model
        self.assistant = assistant_model
        # prior for the adaptive draft length: one draft row streams the assistant's weights once
        self.relative_cost = assistant_model.size_bytes / max(target_model.size_bytes, 1)
        self.target_ctx = target_ctx
        self.mtp: MTPContext | None = None
        self._ready = False  # h_in holds the hidden row for the pending token's predecessor
        self._t_rows = _FloatRows(target_model.n_embd, target_ctx.n_batch)
        self._get_target_h = _ext().llama_get_embeddings_nextn

    def attach(self, target: Context) -> None:
        """Turn on the target's hidden rows and create the linked MTP context."""
        self.target_ctx = target
        _ext().llama_set_embeddings_nextn(target.ptr, True, False)  # unmasked: one hidden row per batch row
        self._t_rows = _FloatRows(self.target_model.n_embd, target.n_batch)
        self.mtp = MTPContext(self.assistant, target)
        self._ready = False

    def begin(self, history: Sequence[int]) -> None:
        # A new generation may start after a KV trim: the row we hold may not
        # belong to the new pending token's predecessor. Wait for a verify pass.
        self._ready = False

    def propose(self, history: Sequence[int], k: int, sampler: "TokenSampler") -> tuple[list[int], list[Dist] | None]:
        mtp = self.mtp
        if mtp is None or not self._ready or k <= 0 or not history:
            return [], None
        pos = self.target_ctx.n_past  # the pending token's position, one past the target's KV
        if pos != len(history) - 1:  # not in the state after_verify left: draft nothing
            return [], None
        tokens: list[int] = []
        dists: list[Dist] = []
        tok = history[-1]
        sample = sampler.sample
        for i in range(k):
            row = mtp.step(tok, pos)  # same position for every draft row (shared KV)
            tok, dist = sample(row)
            tokens.append(tok)
            if dist is not None:
                dists.append(dist)
            if i + 1 < k:
                mtp.feed_back()
        self._ready = False  # h_in now holds draft state; the next verify refreshes it
        return tokens, (dists if dists else None)

    def after_verify(self, target: Context, row: int) -> None:
        """Copy the target's hidden row `row` (the new pending token's predecessor) into the MTP input."""
        if self.mtp is None:
            return
        rows = self._t_rows.view(self._get_target_h(target.ptr))
        if not 0 <= row < target.last_batch_len:
            self._ready = False
            return
        self.mtp.h_in[:] = rows[row]
        self._ready = True

    def close(self) -> None:
        if self.mtp is not None:
            self.mtp.close()
            self.mtp = None
        ctx = self.target_ctx
        if ctx is not None and getattr(ctx, "ptr", None):
            # plain decoding again: stop computing hidden rows for every batch row
            _ext().llama_set_embeddings_nextn(ctx.ptr, False, False)
