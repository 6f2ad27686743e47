"""A loaded GGUF model: weights, vocabulary and metadata (wraps llama.cpp's model and vocab).

Validation that would otherwise end in a llama.cpp abort happens *before* the
C call (bad files, text an SPM vocabulary without byte fallback cannot encode),
and NULL returns become `GemmaError`s carrying llama.cpp's own last log line.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path
from typing import Sequence

from gemma_cli.engine.llama._lib import choose_cpu_repack, forget_log, last_log_line, lib
from gemma_cli.errors import EngineError, ModelFileError
from gemma_cli.gguf_meta import check_model_file
from gemma_cli.load_guard import guard_load

_GGUF_MAGIC = b"GGUF"
VOCAB_SPM = 1  # llama_vocab_type: SentencePiece


def check_gguf_file(path: Path) -> None:
    """Refuse what llama.cpp would fail on anyway, with a message naming the file."""
    check_model_file(path)
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
        devices: Sequence[int] = (),
        tensor_split: Sequence[float] = (),
        buft_overrides: int | None = None,
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
        if devices:  # ggml_backend_dev_t list (e.g. RPC workers, see engine/rpc.py); NULL-terminated
            self._devices = (ctypes.c_void_p * (len(devices) + 1))(*devices, None)
            params.devices = ctypes.cast(self._devices, ctypes.c_void_p)
        if tensor_split:
            self._tensor_split = (ctypes.c_float * ll.llama_max_devices())(*tensor_split)
            params.tensor_split = self._tensor_split
        if buft_overrides:  # address of a NULL-terminated llama_model_tensor_buft_override array the caller keeps alive
            params.tensor_buft_overrides = buft_overrides
        forget_log()
        ptr = ll.llama_model_load_from_file(str(self.path).encode(), params)
        if not ptr:
            detail = last_log_line() or "llama.cpp could not load it"
            raise ModelFileError(f"cannot load model {self.path}: {detail}")
        self.ptr = ptr
        self.vocab = ll.llama_model_get_vocab(ptr)
        self.n_vocab: int = ll.llama_vocab_n_tokens(self.vocab)
        self.n_embd: int = ll.llama_model_n_embd(ptr)
        self.n_ctx_train: int = ll.llama_model_n_ctx_train(ptr)
        self.vocab_type: int = ll.llama_vocab_type(self.vocab)  # llama_vocab_type: 1 SPM, 2 BPE, ...
        self.architecture: str = self.meta("general.architecture") or "unknown"
        self._piece_buf = ctypes.create_string_buffer(256)
        self._pieces: dict[int, bytes] = {}
        self._eog_cache: dict[int, bool] = {}
        self._encodable: bool | set[str] | None = None
        self._max_token_bytes: int | None = None

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

    @property
    def n_embd_out(self) -> int:
        """Width of the hidden rows the model reads: a Gemma 4 MTP assistant's must equal its target's n_embd."""
        return int(lib().llama_model_n_embd_out(self.ptr))

    @property
    def n_swa(self) -> int:
        """Sliding-window attention span (0: none). llama.cpp may reuse a sequence's KV cells that fell
        out of its window for any sequence's new tokens, so such cells cannot be copied to another."""
        return int(lib().llama_model_n_swa(self.ptr))

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
            if self.vocab_type != VOCAB_SPM or self._spm_byte_fallback():
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

    def max_token_bytes(self) -> int:
        """The most input bytes one token can stand for (special tokens by their text), scanned once.

        A text of B bytes is at least ceil(B / max_token_bytes) tokens, which
        lets a huge prompt be refused without tokenizing it (Gemma 3: 48, a
        run of sixteen '…'). One pass over the vocabulary, ~0.3 s for 262k tokens.
        """
        if self._max_token_bytes is None:
            ll = lib()
            fn, vocab, buf = ll.llama_token_to_piece, self.vocab, ctypes.create_string_buffer(256)
            most = 1
            for token in range(self.n_vocab):
                n = fn(vocab, token, buf, 256, 0, True)
                most = max(most, -n if n < 0 else n)
            self._max_token_bytes = most
        return self._max_token_bytes

    def count_tokens(self, text: str, *, stop_after: int, chunk_bytes: int = 1 << 20) -> int:
        """How many tokens `text` is (about), tokenized in chunks, stopping once past `stop_after`.

        Splits at whitespace, so the count can differ from one whole
        tokenization by a token or so per chunk; it bounds memory to one
        chunk's worth, where tokenizing megabytes at once costs ~150 bytes
        of llama.cpp memory per input byte.
        """
        data = text.encode("utf-8")
        total, start, first = 0, 0, True
        while start < len(data) and total <= stop_after:
            end = min(len(data), start + chunk_bytes)
            if end < len(data):
                cut = max(data.rfind(b" ", start, end), data.rfind(b"\n", start, end))
                if cut > start:
                    end = cut
                else:  # no whitespace: cut at a UTF-8 character boundary
                    while end > start + 1 and (data[end] & 0xC0) == 0x80:
                        end -= 1
            total += len(self.tokenize(data[start:end].decode("utf-8", "replace"), add_special=first))
            start, first = end, False
        return total

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
        ptr, self.ptr = getattr(self, "ptr", None), None  # let go first: a Ctrl-C mid-close must not free twice
        if ptr:
            lib().llama_model_free(ptr)

    def __del__(self) -> None:  # pragma: no cover - best effort at interpreter exit
        try:
            self.close()
        except Exception:
            pass
