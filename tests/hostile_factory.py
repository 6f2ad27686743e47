"""Hostile GGUF files: real tiny models whose metadata is then overridden.

`write_hostile(path, arch, overrides)` writes a loadable tiny model of `arch`
(llama from gguf_factory; gemma3 here: llama's tensors plus Gemma's norms;
gemma4 from gemma4_factory) and replaces or drops metadata keys just before
the header is written, so every other key and every tensor stays consistent
and llama.cpp gets as far as the value under test.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import gguf
import numpy as np

try:
    from tests.gguf_factory import CHAT_TEMPLATE, char_vocab, write_llama_gguf
except ImportError:  # pytest puts tests/ itself on sys.path
    from gguf_factory import CHAT_TEMPLATE, char_vocab, write_llama_gguf  # type: ignore[no-redef]

DROP = object()
T = gguf.GGUFValueType


def _typed(value: Any) -> gguf.GGUFValue:
    """A GGUFValue for an override: ints as UINT32 (INT32 if negative), lists by their first element."""
    if isinstance(value, gguf.GGUFValue):
        return value
    if isinstance(value, bool):
        return gguf.GGUFValue(value, T.BOOL)
    if isinstance(value, int):
        return gguf.GGUFValue(value, T.INT32 if value < 0 else T.UINT32 if value < 1 << 32 else T.UINT64)
    if isinstance(value, float):
        return gguf.GGUFValue(value, T.FLOAT32)
    if isinstance(value, str):
        return gguf.GGUFValue(value, T.STRING)
    if isinstance(value, list):
        first = value[0] if value else 0
        sub = (T.BOOL if isinstance(first, bool) else T.INT32 if isinstance(first, int)
               else T.FLOAT32 if isinstance(first, float) else T.STRING)
        return gguf.GGUFValue(value, T.ARRAY, sub)
    raise TypeError(value)


@contextmanager
def _overriding(overrides: dict[str, Any]) -> Iterator[None]:
    original = gguf.GGUFWriter.write_header_to_file

    def write_header_to_file(self: gguf.GGUFWriter, path: Path | None = None) -> None:
        arch = self.kv_data[0]["general.architecture"].value
        for key, value in overrides.items():
            key = key.replace("{arch}", arch)
            if value is DROP:
                self.kv_data[0].pop(key, None)
            else:
                self.kv_data[0][key] = _typed(value)
        original(self, path)

    gguf.GGUFWriter.write_header_to_file = write_header_to_file  # type: ignore[method-assign]
    try:
        yield
    finally:
        gguf.GGUFWriter.write_header_to_file = original  # type: ignore[method-assign]


def write_gemma3_gguf(path: str | Path, *, n_embd: int = 32, n_layer: int = 2, n_head: int = 2, n_head_kv: int = 1,
                      n_ff: int = 64, sliding_window: int = 16, seed: int = 0) -> Path:
    """A tiny gemma3-architecture model (SWA on all but every 6th layer, as Gemma 3)."""
    path = Path(path)
    vocab = char_vocab()
    rng = np.random.default_rng(seed)
    hd = n_embd // n_head

    def w(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) / np.sqrt(shape[-1])).astype(np.float32)

    wr = gguf.GGUFWriter(str(path), "gemma3")
    wr.add_name("tiny-gemma3")
    wr.add_context_length(512)
    wr.add_embedding_length(n_embd)
    wr.add_block_count(n_layer)
    wr.add_feed_forward_length(n_ff)
    wr.add_head_count(n_head)
    wr.add_head_count_kv(n_head_kv)
    wr.add_key_length(hd)
    wr.add_value_length(hd)
    wr.add_sliding_window(sliding_window)
    wr.add_rope_freq_base(10000.0)
    wr.add_layer_norm_rms_eps(1e-6)
    wr.add_file_type(gguf.LlamaFileType.ALL_F32)
    wr.add_tokenizer_model("llama")
    wr.add_token_list(vocab)
    wr.add_token_scores([0.0] * len(vocab))
    wr.add_token_types([gguf.TokenType.CONTROL if i < 5 else gguf.TokenType.BYTE if t.startswith("<0x")
                        else gguf.TokenType.NORMAL for i, t in enumerate(vocab)])
    wr.add_bos_token_id(1)
    wr.add_eos_token_id(2)
    wr.add_chat_template(CHAT_TEMPLATE)
    ones = np.ones(n_embd, dtype=np.float32)
    wr.add_tensor("token_embd.weight", w(len(vocab), n_embd))
    wr.add_tensor("output_norm.weight", ones)
    for i in range(n_layer):
        p = f"blk.{i}."
        for name, t in (("attn_norm", ones), ("attn_q", w(n_head * hd, n_embd)), ("attn_k", w(n_head_kv * hd, n_embd)),
                        ("attn_v", w(n_head_kv * hd, n_embd)), ("attn_output", w(n_embd, n_head * hd)),
                        ("post_attention_norm", ones), ("attn_q_norm", np.ones(hd, dtype=np.float32)),
                        ("attn_k_norm", np.ones(hd, dtype=np.float32)), ("ffn_norm", ones),
                        ("ffn_gate", w(n_ff, n_embd)), ("ffn_up", w(n_ff, n_embd)), ("ffn_down", w(n_embd, n_ff)),
                        ("post_ffw_norm", ones)):
            wr.add_tensor(p + name + ".weight", t)
    wr.write_header_to_file()
    wr.write_kv_data_to_file()
    wr.write_tensors_to_file()
    wr.close()
    return path


def write_hostile(path: str | Path, arch: str, overrides: dict[str, Any] | None = None, **shape: Any) -> Path:
    """A tiny `arch` model ("llama", "gemma3", "gemma4") with `overrides` applied to its metadata.

    Keys may use `{arch}`; values are Python values (see `_typed`), a
    `gguf.GGUFValue` for exact types, or DROP to remove the key.
    """
    path = Path(path)
    with _overriding(overrides or {}):
        if arch == "llama":
            return write_llama_gguf(path, **shape)
        if arch == "gemma3":
            return write_gemma3_gguf(path, **shape)
        if arch == "gemma4":
            try:
                from tests.gemma4_factory import Gemma4PairSpec, write_gemma4_pair
            except ImportError:
                from gemma4_factory import Gemma4PairSpec, write_gemma4_pair  # type: ignore[no-redef]
            target, _ = write_gemma4_pair(path.parent / (path.stem + ".d"), Gemma4PairSpec(**shape))
            target.rename(path)
            return path
    raise ValueError(arch)
