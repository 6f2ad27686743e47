"""Architecture-faithful synthetic Gemma 4 pairs: a `gemma4` target and its `gemma4-assistant` MTP drafter.

Real Gemma 4 weights cannot be downloaded here, so tests and the benchmark
build their own pair with the `gguf` package (seeded, F32). llama.cpp loads
both and runs its real MTP code path: the assistant reads the target's
post-norm hidden rows and attends to the target's last SWA and full layers'
KV cache.

Random transformers make useless drafters (a random tied model mostly echoes
its input), so both models carry a *planted* next-token structure: a random
permutation `succ` over the ordinary tokens. The target's LM head maps the
current token's embedding to `succ(token)`; its layers add context-dependent
noise of strength `noise` (the post-attention / post-FFN norm gains), which
makes the target leave the planted chain now and then. The assistant
predicts `succ(token)` from the target's token embedding through its own
projections, so it agrees with the target exactly where the noise did not
win: `noise` dials the acceptance rate.

Usage from a shell (for the CLI end-to-end check):
    python -m tests.gemma4_factory OUTDIR            # tiny pair
    python -m tests.gemma4_factory OUTDIR --mid      # mid-size benchmark pair (~400 MB)
    python -m tests.gemma4_factory OUTDIR --mid-moe  # mid-size 26B-A4B-shaped MoE pair (~460 MB)
writes OUTDIR/target.gguf and OUTDIR/assistant.gguf.
"""

from __future__ import annotations

import argparse
import mmap
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import gguf
import numpy as np

try:
    from tests.gguf_factory import CHAT_TEMPLATE, SPECIALS, char_vocab
except ImportError:  # pytest puts tests/ itself on sys.path
    from gguf_factory import CHAT_TEMPLATE, SPECIALS, char_vocab  # type: ignore[no-redef]

N_SPECIAL = len(SPECIALS)


@dataclass(frozen=True)
class Gemma4PairSpec:
    """Shapes and knobs of a synthetic pair. Defaults: the tiny test pair."""

    n_vocab: int = 0  # 0: the character vocabulary of tests.gguf_factory
    # target
    n_embd: int = 64
    n_layer: int = 4
    n_head: int = 2
    n_head_kv: int = 1
    head_dim: int = 32  # full-attention layers
    head_dim_swa: int = 16  # sliding-window layers
    n_ff: int = 128
    sliding_window: int = 16
    swa_pattern: tuple[bool, ...] | None = None  # None: alternate, ending [SWA, full]
    # assistant
    a_n_embd: int = 32
    a_n_layer: int = 2
    a_n_head: int = 2
    a_n_ff: int = 64
    a_swa_pattern: tuple[bool, ...] | None = None  # None: all SWA but the last
    # family features (0/None/False: off, the original dense shape)
    n_head_kv_full: int | None = None  # KV heads of full-attention layers (26B/31B: fewer than SWA layers)
    full_v_from_k: bool = False  # full layers without attn_v (llama.cpp then uses K as V; 26B/31B)
    n_embd_per_layer: int = 0  # E2B/E4B per-layer token embeddings (PLE)
    shared_kv_layers: int = 0  # E2B/E4B: trailing layers reuse earlier layers' KV cache
    double_wide_mlp: bool = False  # E2B/E4B: KV-shared layers have a 2x wide FFN
    softcap: float = 0.0  # final_logit_softcapping (E2B/E4B: 30)
    n_expert: int = 0  # 26B-A4B MoE: experts per layer (the dense FFN stays as the shared expert)
    n_expert_used: int = 0
    n_ff_exp: int = 0
    a_centroids: int = 0  # E-series assistants: masked-embedding clusters (0: no masked_embd tensors)
    # behaviour
    sharpness: float = 6.0  # planted-token logit margin (target and assistant)
    noise: float = 0.8  # target layers' residual noise gain: higher = lower acceptance
    a_noise: float = 0.05  # assistant layers' noise gain
    n_ctx: int = 4096
    seed: int = 0

    def target_pattern(self) -> tuple[bool, ...]:
        if self.swa_pattern is not None:
            return tuple(self.swa_pattern)
        # ... SWA, full, SWA, full: the last two are [SWA, full] like Gemma 4
        return tuple((self.n_layer - 1 - i) % 2 == 1 for i in range(self.n_layer))

    def kv_heads(self, pattern: Sequence[bool]) -> int | list[int]:
        """Per-layer KV head counts when SWA and full layers differ (as converted), else the scalar."""
        if self.n_head_kv_full is None:
            return self.n_head_kv
        return [self.n_head_kv if swa else self.n_head_kv_full for swa in pattern]

    def n_ff_layers(self) -> int | list[int]:
        if not self.double_wide_mlp:
            return self.n_ff
        first_shared = self.n_layer - self.shared_kv_layers
        return [self.n_ff if i < first_shared else 2 * self.n_ff for i in range(self.n_layer)]

    def assistant_pattern(self) -> tuple[bool, ...]:
        if self.a_swa_pattern is not None:
            return tuple(self.a_swa_pattern)
        return tuple(i < self.a_n_layer - 1 for i in range(self.a_n_layer))


TINY = Gemma4PairSpec()
# Realistic proportions for the benchmark: ~400 MB F32 target, ~50 MB assistant.
MID = Gemma4PairSpec(
    n_vocab=32000, n_embd=640, n_layer=12, n_head=4, n_head_kv=1, head_dim=256, head_dim_swa=128,
    n_ff=2048, sliding_window=512, a_n_embd=256, a_n_layer=4, a_n_head=4, a_n_ff=1024,
    sharpness=12.0, noise=1.0, a_noise=0.05,
)

# 26B-A4B proportions for the MoE benchmark (~460 MB F32): 32 experts, 4 used per token (the published
# 128 / 8 route 1/16; 1/8 here keeps the file small), so a verify pass of 4 tokens touches ~3.3x the expert
# weights a plain step does (published: ~3.6x); experts are ~1/3 of the weights a plain step reads
# (published: ~2/5). The dense FFN is the shared expert; fewer KV heads and K-as-V on full layers.
MID_MOE = replace(
    MID, n_vocab=16384, n_embd=512, n_layer=8, n_head_kv=2, n_head_kv_full=1, full_v_from_k=True,
    swa_pattern=(True, True, True, False, True, True, True, False), n_ff=768,
    n_expert=32, n_expert_used=4, n_ff_exp=256, seed=26,
)

# The published family, scaled down: same features and layer patterns, tiny widths.
# Patterns: E2B 4 SWA : 1 full, the others 5 : 1 (the last layer is full in all).
def _every(n_layer: int, period: int) -> tuple[bool, ...]:
    """SWA except every `period`-th layer (1-based), as the published layer_types."""
    return tuple((i + 1) % period != 0 for i in range(n_layer))


FAMILY: dict[str, Gemma4PairSpec] = {
    # per-layer embeddings, KV-shared trailing layers (2x FFN), soft-capped logits. The assistants carry no
    # masked_embd tensors: the vendored converter skips them and llama.cpp 0.3.36 cannot load them (a_centroids)
    "e2b": replace(TINY, n_layer=10, swa_pattern=_every(10, 5), n_embd_per_layer=8, shared_kv_layers=5,
                   double_wide_mlp=True, softcap=30.0, noise=0.5, seed=11),
    "e4b": replace(TINY, n_layer=12, n_head_kv=2, swa_pattern=_every(12, 6), n_embd_per_layer=8,
                   shared_kv_layers=6, double_wide_mlp=True, softcap=30.0, noise=0.5, seed=12),
    # MoE: router + experts beside the dense shared expert; fewer KV heads and K-as-V on full layers
    "26b-a4b": replace(TINY, n_layer=6, n_head_kv=2, n_head_kv_full=1, full_v_from_k=True,
                       swa_pattern=_every(6, 6), n_expert=8, n_expert_used=2, n_ff_exp=32, seed=13),
    "12b": replace(TINY, n_layer=6, n_head_kv=2, n_head_kv_full=1, swa_pattern=_every(6, 6), seed=14),
    "31b": replace(TINY, n_layer=12, n_head_kv=2, n_head_kv_full=1, full_v_from_k=True,
                   swa_pattern=_every(12, 6), noise=0.5, seed=15),
}


BYTES = [f"<0x{b:02X}>" for b in range(256)]
_BYTE_SET = frozenset(BYTES)


def make_vocab(n_vocab: int) -> list[str]:
    """Specials + characters + the 256 byte-fallback tokens, padded with synthetic word pieces up to n_vocab.

    The byte tokens matter: llama.cpp's SentencePiece tokenizer looks up
    `<0xNN>` for any character outside the vocabulary (a newline in a chat
    template) and terminates the process if it is missing. Vocabularies
    smaller than the base are truncated (no bytes: token-id prompts only).
    Ids: specials 0-4, then characters, then bytes, then word pieces.
    """
    chars = [t for t in char_vocab() if t not in _BYTE_SET]  # specials + characters, whatever the shared factory adds
    base = chars + BYTES
    if n_vocab <= 0:
        return base
    if n_vocab < len(base):
        return base[:n_vocab]
    return base + [f"▁w{i}" for i in range(n_vocab - len(base))]


def _unit_rows(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    m = rng.standard_normal((n, dim))
    return m / np.linalg.norm(m, axis=1, keepdims=True)


def _write_tokenizer(wr: gguf.GGUFWriter, vocab: list[str]) -> None:
    n = len(vocab)
    wr.add_tokenizer_model("llama")
    wr.add_token_list(vocab)
    wr.add_token_scores([0.0] * 3 + [-float(i) for i in range(n - 3)])
    types = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
    types += [
        gguf.TokenType.CONTROL if t in SPECIALS else gguf.TokenType.BYTE if t in _BYTE_SET else gguf.TokenType.NORMAL
        for t in vocab[3:]
    ]
    wr.add_token_types(types)
    wr.add_unk_token_id(0)
    wr.add_bos_token_id(1)
    wr.add_eos_token_id(2)
    wr.add_add_bos_token(True)
    wr.add_add_eos_token(False)
    if "<end_of_turn>" in vocab:
        wr.add_eot_token_id(vocab.index("<end_of_turn>"))


def _attn_keys(wr: gguf.GGUFWriter, s: Gemma4PairSpec, pattern: Sequence[bool]) -> None:
    wr.add_head_count_kv(s.kv_heads(pattern))
    wr.add_key_length(s.head_dim)
    wr.add_value_length(s.head_dim)
    wr.add_key_length_swa(s.head_dim_swa)
    wr.add_value_length_swa(s.head_dim_swa)
    wr.add_rope_dimension_count(s.head_dim)
    wr.add_rope_dimension_count_swa(s.head_dim_swa)
    wr.add_rope_freq_base(1_000_000.0)
    wr.add_rope_freq_base_swa(10_000.0)
    wr.add_sliding_window(s.sliding_window)
    wr.add_sliding_window_pattern([bool(b) for b in pattern])
    wr.add_layer_norm_rms_eps(1e-6)


class _Writer(gguf.GGUFWriter):
    """A GGUFWriter that leaves out named tensors (broken variants)."""

    def __init__(self, path: str, arch: str, drop: Sequence[str] = ()) -> None:
        super().__init__(path, arch)
        self._drop = frozenset(drop)

    def add_tensor(self, name: str, tensor: np.ndarray, *args, **kwargs) -> None:  # type: ignore[override]
        if name not in self._drop:
            super().add_tensor(name, tensor, *args, **kwargs)


def _override(wr: gguf.GGUFWriter, arch: str, overrides: dict | None) -> None:
    """Replace (same GGUF type; new keys as uint32) or drop (None) metadata keys `arch.suffix`."""
    for suffix, value in (overrides or {}).items():
        key = f"{arch}.{suffix}"
        kv = wr.kv_data[0]
        if value is None:
            kv.pop(key, None)
        elif key in kv:
            kv[key] = gguf.GGUFValue(value=value, type=kv[key].type, sub_type=kv[key].sub_type)
        else:
            wr.add_uint32(key, value)


def _finish(wr: gguf.GGUFWriter) -> None:
    wr.write_header_to_file()
    wr.write_kv_data_to_file()
    wr.write_tensors_to_file()
    wr.close()


def write_gemma4_pair(
    out_dir: str | Path,
    spec: Gemma4PairSpec = TINY,
    *,
    target_name: str = "target.gguf",
    assistant_name: str = "assistant.gguf",
    assistant_overrides: dict | None = None,
    target_overrides: dict | None = None,
    drop_tensors: Sequence[str] = (),
) -> tuple[Path, Path]:
    """Write target and assistant GGUFs into out_dir; return their paths.

    `assistant_overrides` replaces assistant metadata values (key suffix after
    the architecture -> value, or None to drop the key) to build broken pairs;
    `target_overrides` does the same for the target's keys, and
    `drop_tensors` leaves tensors of those names out of both files.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    s = spec
    vocab = make_vocab(s.n_vocab)
    V = len(vocab)
    rng = np.random.default_rng(s.seed)
    f32 = np.float32

    # Planted structure: succ is a permutation of the ordinary tokens.
    ordinary = np.array([i for i in range(N_SPECIAL, V) if vocab[i] not in _BYTE_SET])
    succ = np.arange(V)
    succ[ordinary] = rng.permutation(ordinary)
    Et, Ea = s.n_embd, s.a_n_embd
    emb_unit = _unit_rows(rng, V, Et)  # target token directions
    P = rng.standard_normal((Ea, Et)) / np.sqrt(Ea)  # assistant's view of a target embedding

    def w(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) / np.sqrt(shape[-1])).astype(f32)

    def ones(n: int, v: float = 1.0) -> np.ndarray:
        return np.full(n, v, dtype=f32)

    # ---------------- target ----------------
    t_path = out / target_name
    pattern = s.target_pattern()
    wr = _Writer(str(t_path), "gemma4", drop_tensors)
    wr.add_name("tiny-gemma4" if s.n_vocab <= 0 else "synthetic-gemma4")
    wr.add_context_length(s.n_ctx)
    wr.add_embedding_length(Et)
    wr.add_block_count(s.n_layer)
    wr.add_feed_forward_length(s.n_ff_layers())
    wr.add_head_count(s.n_head)
    wr.add_embedding_length_per_layer_input(s.n_embd_per_layer)
    wr.add_uint32("gemma4.attention.shared_kv_layers", s.shared_kv_layers)
    if s.softcap:
        wr.add_float32("gemma4.final_logit_softcapping", s.softcap)
    if s.n_expert:
        wr.add_uint32("gemma4.expert_count", s.n_expert)
        wr.add_uint32("gemma4.expert_used_count", s.n_expert_used)
        wr.add_uint32("gemma4.expert_feed_forward_length", s.n_ff_exp)
    _attn_keys(wr, s, pattern)
    wr.add_file_type(gguf.LlamaFileType.ALL_F32)
    _write_tokenizer(wr, vocab)
    wr.add_chat_template(CHAT_TEMPLATE)

    # token_embd rows have unit norm; the graph scales by sqrt(E), so the residual has RMS ~1
    wr.add_tensor("token_embd.weight", emb_unit.astype(f32))
    head = np.zeros((V, Et))
    # logit(succ(i)) = sharpness when the hidden state is token i's (normed) direction
    head[succ[ordinary]] = emb_unit[ordinary] * (s.sharpness / np.sqrt(Et))
    wr.add_tensor("output.weight", head.astype(f32))
    wr.add_tensor("output_norm.weight", ones(Et))
    wr.add_tensor("rope_freqs.weight", ones(s.head_dim // 2))
    kv_heads = s.kv_heads(pattern)
    n_ff = s.n_ff_layers()
    first_shared = s.n_layer - s.shared_kv_layers
    Pl = s.n_embd_per_layer
    if Pl:
        wr.add_tensor("per_layer_token_embd.weight", w(V, Pl * s.n_layer))
        wr.add_tensor("per_layer_model_proj.weight", w(Pl * s.n_layer, Et))
        wr.add_tensor("per_layer_proj_norm.weight", ones(Pl))
    for i, is_swa in enumerate(pattern):
        p = f"blk.{i}."
        hd = s.head_dim_swa if is_swa else s.head_dim
        n_kv = kv_heads[i] if isinstance(kv_heads, list) else kv_heads
        ff = n_ff[i] if isinstance(n_ff, list) else n_ff
        wr.add_tensor(p + "attn_norm.weight", ones(Et))
        wr.add_tensor(p + "attn_q.weight", w(s.n_head * hd, Et))
        if i < first_shared:  # KV-shared layers have no K/V projections of their own
            wr.add_tensor(p + "attn_k.weight", w(n_kv * hd, Et))
            if is_swa or not s.full_v_from_k:
                wr.add_tensor(p + "attn_v.weight", w(n_kv * hd, Et))
            wr.add_tensor(p + "attn_k_norm.weight", ones(hd))
        wr.add_tensor(p + "attn_output.weight", w(Et, s.n_head * hd))
        wr.add_tensor(p + "attn_q_norm.weight", ones(hd))
        wr.add_tensor(p + "post_attention_norm.weight", ones(Et, s.noise))
        wr.add_tensor(p + "ffn_norm.weight", ones(Et))
        wr.add_tensor(p + "ffn_gate.weight", w(ff, Et))
        wr.add_tensor(p + "ffn_up.weight", w(ff, Et))
        wr.add_tensor(p + "ffn_down.weight", w(Et, ff))
        wr.add_tensor(p + "post_ffw_norm.weight", ones(Et, s.noise))
        wr.add_tensor(p + "layer_output_scale.weight", ones(1))
        if s.n_expert:  # router on the attention output, experts beside the dense (shared) FFN
            X, F = s.n_expert, s.n_ff_exp
            wr.add_tensor(p + "ffn_gate_inp.weight", (3.0 * w(X, Et)).astype(f32))
            wr.add_tensor(p + "ffn_gate_inp.scale", ones(Et))
            wr.add_tensor(p + "pre_ffw_norm_2.weight", ones(Et))
            wr.add_tensor(p + "post_ffw_norm_1.weight", ones(Et))
            wr.add_tensor(p + "post_ffw_norm_2.weight", ones(Et))
            wr.add_tensor(p + "ffn_gate_exps.weight", w(X, F, Et))
            wr.add_tensor(p + "ffn_up_exps.weight", w(X, F, Et))
            wr.add_tensor(p + "ffn_down_exps.weight", w(X, Et, F))
            wr.add_tensor(p + "ffn_down_exps.scale", ones(X))
        if Pl:
            wr.add_tensor(p + "inp_gate.weight", w(Pl, Et))
            wr.add_tensor(p + "proj.weight", w(Et, Pl))
            wr.add_tensor(p + "post_norm.weight", ones(Et, s.noise))
    _override(wr, "gemma4", target_overrides)
    _finish(wr)

    # ---------------- assistant ----------------
    a_path = out / assistant_name
    a_pattern = s.assistant_pattern()
    wr = _Writer(str(a_path), "gemma4-assistant", drop_tensors)
    wr.add_name("tiny-gemma4-assistant" if s.n_vocab <= 0 else "synthetic-gemma4-assistant")
    overrides = dict(assistant_overrides or {})
    keys = {
        "context_length": (wr.add_uint32, s.n_ctx),
        "embedding_length": (wr.add_uint32, Ea),
        "embedding_length_out": (wr.add_uint32, Et),
        "block_count": (wr.add_uint32, s.a_n_layer),
        "nextn_predict_layers": (wr.add_uint32, s.a_n_layer),
        "feed_forward_length": (wr.add_uint32, s.a_n_ff),
        "attention.head_count": (wr.add_uint32, s.a_n_head),
    }
    for suffix, (adder, value) in keys.items():
        value = overrides.pop(suffix, value)
        if value is not None:
            adder(f"gemma4-assistant.{suffix}", value)
    a_spec = replace(s, n_head_kv=overrides.pop("attention.head_count_kv", s.n_head_kv))
    _attn_keys(wr, a_spec, a_pattern)
    wr.add_uint32("gemma4-assistant.attention.shared_kv_layers", 0)
    wr.add_file_type(gguf.LlamaFileType.ALL_F32)
    _write_tokenizer(wr, vocab)
    if overrides:
        raise ValueError(f"unknown assistant overrides: {sorted(overrides)}")

    # LM head (tied token_embd): logit(succ(i)) = sharpness when the hidden is P e_i
    pe = emb_unit @ P.T
    pe /= np.linalg.norm(pe, axis=1, keepdims=True)
    a_head = np.zeros((V, Ea))
    a_head[succ[ordinary]] = pe[ordinary] * (s.sharpness / np.sqrt(Ea))
    wr.add_tensor("token_embd.weight", a_head.astype(f32))
    wr.add_tensor("output_norm.weight", ones(Ea))
    if s.a_centroids:
        # E-series clustered head: centroid scores pick clusters, the ordering lists each cluster's tokens
        # (equal-size clusters: cluster c holds ordering[c*V/C:(c+1)*V/C])
        ordering = rng.permutation(V)
        cluster = np.empty(V, dtype=np.int64)
        cluster[ordering] = np.arange(V) * s.a_centroids // V
        centroids = np.stack([a_head[cluster == c].mean(axis=0) for c in range(s.a_centroids)])
        wr.add_tensor("masked_embd_centroids.weight", centroids.astype(f32))
        wr.add_tensor("masked_embd_ordering", ordering.astype(np.int32))
    # input = [target token embedding * sqrt(Et), target hidden]; the token half carries the signal
    pre = np.concatenate([P / np.sqrt(Et), 0.02 * w(Ea, Et)], axis=1)
    wr.add_tensor("nextn.pre_projection.weight", pre.astype(f32))
    wr.add_tensor("nextn.post_projection.weight", w(Et, Ea))
    wr.add_tensor("rope_freqs.weight", ones(s.head_dim // 2))
    for i, is_swa in enumerate(a_pattern):
        p = f"blk.{i}."
        hd = s.head_dim_swa if is_swa else s.head_dim
        wr.add_tensor(p + "attn_norm.weight", ones(Ea))
        wr.add_tensor(p + "attn_q.weight", w(s.a_n_head * hd, Ea))
        wr.add_tensor(p + "attn_output.weight", w(Ea, s.a_n_head * hd))
        wr.add_tensor(p + "attn_q_norm.weight", ones(hd))
        wr.add_tensor(p + "post_attention_norm.weight", ones(Ea, s.a_noise))
        wr.add_tensor(p + "layer_output_scale.weight", ones(1))
        wr.add_tensor(p + "ffn_norm.weight", ones(Ea))
        wr.add_tensor(p + "ffn_gate.weight", w(s.a_n_ff, Ea))
        wr.add_tensor(p + "ffn_up.weight", w(s.a_n_ff, Ea))
        wr.add_tensor(p + "ffn_down.weight", w(Ea, s.a_n_ff))
        wr.add_tensor(p + "post_ffw_norm.weight", ones(Ea, s.a_noise))
    _finish(wr)
    return t_path, a_path


def set_target_noise(target_path: str | Path, noise: float) -> None:
    """Rewrite the target's noise gains in place (no weight regeneration).

    The benchmark tunes acceptance this way: only the small post-norm
    vectors change, so a 400 MB file is patched in milliseconds.
    """
    from gemma_cli.gguf_meta import read_gguf

    info = read_gguf(target_path)
    with open(target_path, "r+b") as fh, mmap.mmap(fh.fileno(), 0) as mm:
        for t in info.tensors:
            if t.name.endswith(("post_attention_norm.weight", "post_ffw_norm.weight")) and t.ggml_type == 0:
                start = info.data_offset + t.offset
                mm[start : start + 4 * t.n_elements] = np.full(t.n_elements, noise, dtype=np.float32).tobytes()
        mm.flush()


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out_dir")
    ap.add_argument("--mid", action="store_true", help="mid-size benchmark pair (~400 MB) instead of the tiny one")
    ap.add_argument("--mid-moe", action="store_true", help="mid-size 26B-A4B-shaped MoE benchmark pair")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--noise", type=float, default=None, help="target noise gain (lower = higher acceptance)")
    args = ap.parse_args(argv)
    spec = replace(MID_MOE if args.mid_moe else MID if args.mid else TINY, seed=args.seed)
    if args.noise is not None:
        spec = replace(spec, noise=args.noise)
    t, a = write_gemma4_pair(args.out_dir, spec)
    print(t)
    print(a)


if __name__ == "__main__":
    main()
