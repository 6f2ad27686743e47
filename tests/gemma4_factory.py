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
    wr.add_head_count_kv(s.n_head_kv)
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
) -> tuple[Path, Path]:
    """Write target and assistant GGUFs into out_dir; return their paths.

    `assistant_overrides` replaces assistant metadata values (key suffix after
    the architecture -> value, or None to drop the key) to build broken pairs.
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
    wr = gguf.GGUFWriter(str(t_path), "gemma4")
    wr.add_name("tiny-gemma4" if s.n_vocab <= 0 else "synthetic-gemma4")
    wr.add_context_length(s.n_ctx)
    wr.add_embedding_length(Et)
    wr.add_block_count(s.n_layer)
    wr.add_feed_forward_length(s.n_ff)
    wr.add_head_count(s.n_head)
    wr.add_embedding_length_per_layer_input(0)
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
    for i, is_swa in enumerate(pattern):
        p = f"blk.{i}."
        hd = s.head_dim_swa if is_swa else s.head_dim
        wr.add_tensor(p + "attn_norm.weight", ones(Et))
        wr.add_tensor(p + "attn_q.weight", w(s.n_head * hd, Et))
        wr.add_tensor(p + "attn_k.weight", w(s.n_head_kv * hd, Et))
        wr.add_tensor(p + "attn_v.weight", w(s.n_head_kv * hd, Et))
        wr.add_tensor(p + "attn_output.weight", w(Et, s.n_head * hd))
        wr.add_tensor(p + "attn_q_norm.weight", ones(hd))
        wr.add_tensor(p + "attn_k_norm.weight", ones(hd))
        wr.add_tensor(p + "post_attention_norm.weight", ones(Et, s.noise))
        wr.add_tensor(p + "ffn_norm.weight", ones(Et))
        wr.add_tensor(p + "ffn_gate.weight", w(s.n_ff, Et))
        wr.add_tensor(p + "ffn_up.weight", w(s.n_ff, Et))
        wr.add_tensor(p + "ffn_down.weight", w(Et, s.n_ff))
        wr.add_tensor(p + "post_ffw_norm.weight", ones(Et, s.noise))
        wr.add_tensor(p + "layer_output_scale.weight", ones(1))
    _finish(wr)

    # ---------------- assistant ----------------
    a_path = out / assistant_name
    a_pattern = s.assistant_pattern()
    wr = gguf.GGUFWriter(str(a_path), "gemma4-assistant")
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
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--noise", type=float, default=None, help="target noise gain (lower = higher acceptance)")
    args = ap.parse_args(argv)
    spec = replace(MID if args.mid else TINY, seed=args.seed)
    if args.noise is not None:
        spec = replace(spec, noise=args.noise)
    t, a = write_gemma4_pair(args.out_dir, spec)
    print(t)
    print(a)


if __name__ == "__main__":
    main()
