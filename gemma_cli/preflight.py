"""Refuse, from the GGUF header alone, what would make llama.cpp abort the process.

llama.cpp's loader trusts model metadata: `GGML_ASSERT` (abort, exit 134, a
backtrace) guards the layer count, expert counts and RoPE scaling in
`llama_model_base::load_hparams`, duplicate token texts in the vocabulary
loader, head geometry when the compute graph is built, and the sliding-window
pattern when the KV cache is made. Exceptions it throws are harmless (the load
returns NULL and we print its reason); aborts are not. So every rule below
mirrors an assert (or a division) in the vendored llama.cpp for the
architectures gemma-cli loads, and a violation is one `ModelFileError` line.
Citations are to llama-cpp-python 0.3.36's vendor/llama.cpp/src.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from gemma_cli.errors import ModelFileError
from gemma_cli.gguf_meta import GGUFInfo, read_gguf
from gemma_cli.text_safety import clean_display

LLAMA_MAX_LAYERS = 512  # llama-hparams.h
LLAMA_MAX_EXPERTS = 1024  # llama-hparams.h
ROPE_SCALING_TYPES = ("none", "linear", "yarn", "longrope")  # llama-model.cpp LLAMA_ROPE_SCALING_TYPES
NO_VOCAB = ("no_vocab", "none")  # llama-vocab.cpp: LLAMA_VOCAB_TYPE_NONE, tokenizing asserts
MAX_EMBD = 1 << 20  # far beyond any real model; keeps products below overflow
MAX_CTX = (1 << 31) - 1  # n_ctx_train is a uint32; llama_context takes int32 sizes
SPECIAL_TOKENS = ("bos", "eos", "eot")  # the ids our engine looks up; others only warn in llama.cpp
GEMMA_ARCHS = ("gemma3", "gemma4", "gemma4-assistant")
CHECKED_ARCHS = ("llama",) + GEMMA_ARCHS


class _Refuse(Exception):
    def __init__(self, key: str, value: Any, rule: str) -> None:
        super().__init__(key, value, rule)
        self.key, self.value, self.rule = key, value, rule


def _show(value: Any) -> str:
    if isinstance(value, list):
        inner = ", ".join(_show(v) for v in value[:4])
        return f"[{inner}{', …' if len(value) > 4 else ''}] ({len(value)} values)" if len(value) > 4 else f"[{inner}]"
    return clean_display(repr(value), 40)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


class _Header:
    """Typed access to `{arch}.*` keys that raises `_Refuse` with the key's name."""

    def __init__(self, info: GGUFInfo) -> None:
        self.info, self.arch = info, info.architecture

    def key(self, suffix: str) -> str:
        return f"{self.arch}.{suffix}"

    def raw(self, suffix: str, default: Any = None) -> Any:
        return self.info.get(self.key(suffix), default)

    def uint(self, suffix: str, default: int | None = None, *, lo: int = 0, hi: int = (1 << 32) - 1) -> int:
        v = self.raw(suffix)
        if v is None:
            if default is None:
                raise _Refuse(self.key(suffix), None, "is missing")
            return default
        if not _is_int(v) or not lo <= v <= hi:
            raise _Refuse(self.key(suffix), v, f"must be an integer from {lo} to {hi}")
        return v

    def per_layer(self, suffix: str, n_layer: int, default: list[int] | None, *, lo: int = 0, hi: int = (1 << 32) - 1) -> list[int]:
        """A key llama.cpp reads with get_key_or_arr: a scalar, or an array of exactly n_layer values."""
        v = self.raw(suffix)
        if v is None:
            if default is None:
                raise _Refuse(self.key(suffix), None, "is missing")
            return default
        values = v if isinstance(v, list) else [v]
        if isinstance(v, list) and len(v) != n_layer:
            raise _Refuse(self.key(suffix), v, f"must have one value per layer ({n_layer})")
        if not all(_is_int(x) and lo <= x <= hi for x in values):
            raise _Refuse(self.key(suffix), v, f"values must be integers from {lo} to {hi}")
        return list(v) if isinstance(v, list) else [v] * n_layer


def _check_generic(h: _Header) -> int:
    """llama_model_base::load_hparams, run for every architecture. Returns n_layer."""
    n_layer = h.uint("block_count", lo=1, hi=LLAMA_MAX_LAYERS)  # GGML_ASSERT(n_layer_all > 0 && <= LLAMA_MAX_LAYERS)
    n_nextn = h.uint("nextn_predict_layers", 0)
    if n_nextn > n_layer:  # GGML_ASSERT(n_layer_nextn <= n_layer_all)
        raise _Refuse(h.key("nextn_predict_layers"), n_nextn, f"must not exceed block_count ({n_layer})")
    n_expert = h.uint("expert_count", 0, hi=LLAMA_MAX_EXPERTS)  # GGML_ASSERT(n_expert <= LLAMA_MAX_EXPERTS)
    used = max(h.per_layer("expert_used_count", n_layer, [0]), default=0)
    groups = h.uint("expert_group_count", 0)
    group_used = h.uint("expert_group_used_count", 0)
    if used > n_expert:
        raise _Refuse(h.key("expert_used_count"), used, f"exceeds expert_count ({n_expert})")
    if n_expert > 0:
        if used == 0:
            raise _Refuse(h.key("expert_used_count"), used, f"must be at least 1 with {n_expert} experts")
        if groups >= n_expert:
            raise _Refuse(h.key("expert_group_count"), groups, f"must be below expert_count ({n_expert})")
        if groups > 1:
            if n_expert % groups:
                raise _Refuse(h.key("expert_group_count"), groups, f"must divide expert_count ({n_expert})")
            if not 0 < group_used < groups:
                raise _Refuse(h.key("expert_group_used_count"), group_used, f"must be from 1 to {groups - 1}")
    elif groups:
        raise _Refuse(h.key("expert_group_count"), groups, "must be 0 without experts")
    scaling = h.raw("rope.scaling.type")
    if scaling is not None and scaling not in ROPE_SCALING_TYPES:  # GGML_ASSERT(rope_scaling_type_train != UNSPECIFIED)
        raise _Refuse(h.key("rope.scaling.type"), scaling, f"must be one of {', '.join(ROPE_SCALING_TYPES)}")
    for name in ("attention.layer_norm_rms_epsilon", "attention.layer_norm_epsilon"):
        eps = h.raw(name)  # ggml-cpu ops: GGML_ASSERT(eps >= 0.0f) at the first decode, after the load probe passed
        if eps is not None and (isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 <= eps < math.inf):
            raise _Refuse(h.key(name), eps, "must be a finite number >= 0")
    return n_layer


def _check_geometry(h: _Header, n_layer: int) -> None:
    """Heads, widths and RoPE: what the graph builders and KV cache divide by or assert on."""
    h.uint("context_length", lo=1, hi=MAX_CTX)
    n_embd = h.uint("embedding_length", lo=1, hi=MAX_EMBD)
    h.per_layer("feed_forward_length", n_layer, None, lo=1, hi=MAX_EMBD * 16)
    heads = h.per_layer("attention.head_count", n_layer, None, lo=1, hi=MAX_EMBD)
    kv_heads = h.per_layer("attention.head_count_kv", n_layer, heads, lo=1, hi=MAX_EMBD)
    for il, (nh, nkv) in enumerate(zip(heads, kv_heads, strict=True)):
        if nh % nkv:  # grouped-query attention broadcasts K/V: ggml_can_repeat asserts otherwise
            raise _Refuse(h.key("attention.head_count_kv"), kv_heads if len(set(kv_heads)) > 1 else nkv,
                          f"must divide head_count ({nh}) in every layer (layer {il} does not)")
    if n_embd < heads[0] and h.raw("attention.key_length") is None:
        raise _Refuse(h.key("embedding_length"), n_embd, f"is smaller than head_count ({heads[0]}): zero-width heads")
    head_k = h.uint("attention.key_length", n_embd // heads[0], lo=1, hi=MAX_EMBD)
    head_v = h.uint("attention.value_length", head_k, lo=1, hi=MAX_EMBD)
    rot = h.uint("rope.dimension_count", head_k, lo=0, hi=MAX_EMBD)
    if rot > head_k or rot % 2:  # ggml_rope: n_dims <= ne0, pairs of dimensions
        raise _Refuse(h.key("rope.dimension_count"), rot, f"must be even and at most the head size ({head_k})")
    if h.arch == "llama" and not head_k == head_v == rot:  # models/llama.cpp GGML_ASSERTs in the graph
        name, value = ("attention.value_length", head_v) if head_v != head_k else ("rope.dimension_count", rot)
        raise _Refuse(h.key(name), value, f"must equal attention.key_length ({head_k}) for llama models")
    if h.arch in ("gemma4", "gemma4-assistant"):
        k_swa = h.uint("attention.key_length_swa", lo=1, hi=MAX_EMBD)
        v_swa = h.uint("attention.value_length_swa", lo=1, hi=MAX_EMBD)
        if head_k != head_v or k_swa != v_swa:  # models/gemma4.cpp: GGML_ASSERT(n_embd_head == n_embd_head_v)
            raise _Refuse(h.key("attention.value_length"), head_v, "Gemma 4 needs equal key and value head sizes")
        rot_swa = h.uint("rope.dimension_count_swa", k_swa, hi=MAX_EMBD)
        if rot_swa > k_swa or rot_swa % 2:
            raise _Refuse(h.key("rope.dimension_count_swa"), rot_swa, f"must be even and at most the head size ({k_swa})")


def _swa_pattern(h: _Header, n_layer: int, default_period: int) -> list[bool]:
    v = h.raw("attention.sliding_window_pattern")
    if isinstance(v, list):
        if len(v) != n_layer or not all(isinstance(b, (bool, int)) for b in v):
            raise _Refuse(h.key("attention.sliding_window_pattern"), v, f"must have one boolean per layer ({n_layer})")
        return [bool(b) for b in v]
    period = default_period if v is None else v
    if not _is_int(period) or period < 0:
        raise _Refuse(h.key("attention.sliding_window_pattern"), v, "must be a layer period or a boolean array")
    return [period == 0 or il % period < period - 1 for il in range(n_layer)]  # llama_hparams::set_swa_pattern


def _check_windows(h: _Header, n_layer: int) -> None:
    """Sliding-window layout: the iSWA KV cache asserts at least one SWA layer (llama-model.cpp create_memory)."""
    if h.arch == "gemma3":
        window = h.raw("attention.sliding_window")
        if window is None or window == 0:
            return
        h.uint("attention.sliding_window", lo=1)
        pattern = _swa_pattern(h, n_layer, 6)
    elif h.arch in ("gemma4", "gemma4-assistant"):
        h.uint("attention.sliding_window", lo=1)
        if not isinstance(h.raw("attention.sliding_window_pattern"), list):
            raise _Refuse(h.key("attention.sliding_window_pattern"), h.raw("attention.sliding_window_pattern"),
                          f"must be an array of one boolean per layer ({n_layer})")
        pattern = _swa_pattern(h, n_layer, 0)
        shared = h.uint("attention.shared_kv_layers", 0)
        first_shared = n_layer - shared
        if shared and (first_shared < 2 or not pattern[first_shared - 2] or pattern[first_shared - 1]):
            # KV reuse: GGML_ASSERT(n_layer_kv_from_start >= 2); layers read the last SWA / full cache before them
            raise _Refuse(h.key("attention.shared_kv_layers"), shared,
                          "must leave at least two own-KV layers, the last two [sliding-window, full]")
    else:
        return
    if not any(pattern):
        raise _Refuse(h.key("attention.sliding_window_pattern"), h.raw("attention.sliding_window_pattern"),
                      "has no sliding-window layer, which this architecture requires")


def _check_vocab(info: GGUFInfo, n_embd: int | None) -> None:
    """llama-vocab.cpp: duplicate texts fail GGML_ASSERT(id_to_token.size() == token_to_id.size())."""
    model = info.get("tokenizer.ggml.model")
    if model is None or model in NO_VOCAB:
        raise _Refuse("tokenizer.ggml.model", model, "must name a tokenizer (gemma-cli needs a vocabulary)")
    tokens = info.get("tokenizer.ggml.tokens")
    if not isinstance(tokens, list) or not tokens or not all(isinstance(t, str) for t in tokens):
        raise _Refuse("tokenizer.ggml.tokens", None if tokens is None else f"{type(tokens).__name__}",
                      "must be a non-empty list of strings")
    n_vocab = len(tokens)
    texts = [t or f"[EMPTY_{i}]" for i, t in enumerate(tokens)]  # llama.cpp renames empty tokens so
    if len(set(texts)) != n_vocab:
        seen: set[str] = set()
        dup = next(i for i, t in enumerate(texts) if t in seen or seen.add(t))  # type: ignore[func-returns-value]
        raise _Refuse("tokenizer.ggml.tokens", texts[dup], f"appears twice (token {dup}); token texts must be unique")
    for name in SPECIAL_TOKENS:
        key = f"tokenizer.ggml.{name}_token_id"
        v = info.get(key)
        if v is not None and (not _is_int(v) or not 0 <= v < n_vocab):
            raise _Refuse(key, v, f"must be a token id below the vocabulary size ({n_vocab})")
    for t in info.tensors:
        if (t.name in ("token_embd.weight", "output.weight") and len(t.shape) == 2 and n_embd is not None
                and tuple(t.shape) != (n_embd, n_vocab)):
            raise _Refuse(t.name, list(t.shape), f"must have shape [{n_embd}, {n_vocab}] (embedding_length, vocabulary size)")


def check_header(info: GGUFInfo) -> None:
    """Raise ModelFileError if llama.cpp would abort loading or running this model."""
    h = _Header(info)
    try:
        n_layer = _check_generic(h)
        n_embd = None
        if info.architecture in CHECKED_ARCHS:
            _check_geometry(h, n_layer)
            _check_windows(h, n_layer)
            n_embd = h.uint("embedding_length", lo=1)
        _check_vocab(info, n_embd)
    except _Refuse as r:
        value = "" if r.value is None else f" = {_show(r.value)}"
        raise ModelFileError(
            f"{clean_display(info.path.name, 80)} cannot be loaded safely: {r.key}{value} {r.rule}"
        ) from None


def preflight(path: str | Path) -> GGUFInfo:
    """Read the header of `path` and refuse it if llama.cpp would abort on it."""
    info = read_gguf(path)
    check_header(info)
    return info
