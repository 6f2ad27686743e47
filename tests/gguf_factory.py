"""Write tiny, real GGUF models with the `gguf` package (seeded random weights).

llama.cpp loads them in milliseconds, so tests exercise real inference fast.
Shared by tests and benchmarks; numpy shapes are the reverse of ggml's.
"""

from __future__ import annotations

import string
from pathlib import Path

import gguf
import numpy as np

SPECIALS = ["<unk>", "<s>", "</s>", "<start_of_turn>", "<end_of_turn>"]
CHARS = ["▁"] + list(string.ascii_letters + string.digits + string.punctuation.replace("▁", ""))
BYTES = [f"<0x{b:02X}>" for b in range(256)]  # SentencePiece byte fallback: any text encodes

# A minimal Gemma-style template, so `gemma run` without --raw works on tiny models.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n"
    "{{ m['content'] }}<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)


def char_vocab() -> list[str]:
    """Specials + byte fallback + one token per printable ASCII character (SentencePiece style, ▁ = space)."""
    return SPECIALS + BYTES + CHARS


def write_llama_gguf(
    path: str | Path,
    *,
    vocab: list[str] | None = None,
    n_embd: int = 32,
    n_layer: int = 2,
    n_head: int = 2,
    n_head_kv: int = 1,
    n_ff: int = 64,
    n_ctx: int = 512,
    seed: int = 0,
    logit_scale: float = 1.0,
    chat_template: str | None = CHAT_TEMPLATE,
    name: str = "tiny",
) -> Path:
    """A tiny llama-architecture model; `logit_scale` sharpens (>1) or flattens its outputs."""
    path = Path(path)
    vocab = vocab or char_vocab()
    n_vocab = len(vocab)
    rng = np.random.default_rng(seed)
    hd = n_embd // n_head

    def w(*shape: int, scale: float | None = None) -> np.ndarray:
        s = scale if scale is not None else 1.0 / np.sqrt(shape[-1])
        return (rng.standard_normal(shape) * s).astype(np.float32)

    wr = gguf.GGUFWriter(str(path), "llama")
    wr.add_name(name)
    wr.add_context_length(n_ctx)
    wr.add_embedding_length(n_embd)
    wr.add_block_count(n_layer)
    wr.add_feed_forward_length(n_ff)
    wr.add_head_count(n_head)
    wr.add_head_count_kv(n_head_kv)
    wr.add_rope_dimension_count(hd)
    wr.add_rope_freq_base(10000.0)
    wr.add_layer_norm_rms_eps(1e-5)
    wr.add_file_type(gguf.LlamaFileType.ALL_F32)
    wr.add_tokenizer_model("llama")
    wr.add_token_list(vocab)
    wr.add_token_scores([0.0] * 3 + [-float(i) for i in range(n_vocab - 3)])
    types = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
    types += [
        gguf.TokenType.CONTROL if t in SPECIALS else gguf.TokenType.BYTE if t.startswith("<0x") else gguf.TokenType.NORMAL
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
    if chat_template:
        wr.add_chat_template(chat_template)

    wr.add_tensor("token_embd.weight", w(n_vocab, n_embd, scale=1.0))
    wr.add_tensor("output_norm.weight", np.ones(n_embd, dtype=np.float32))
    out = w(n_vocab, n_embd, scale=logit_scale / np.sqrt(n_embd) * 4)
    out[[i for i, t in enumerate(vocab) if t.startswith("<0x")]] = 0.0  # byte fallback encodes input; rarely emitted
    wr.add_tensor("output.weight", out)
    for i in range(n_layer):
        p = f"blk.{i}."
        wr.add_tensor(p + "attn_norm.weight", np.ones(n_embd, dtype=np.float32))
        wr.add_tensor(p + "attn_q.weight", w(n_embd, n_embd))
        wr.add_tensor(p + "attn_k.weight", w(n_head_kv * hd, n_embd))
        wr.add_tensor(p + "attn_v.weight", w(n_head_kv * hd, n_embd))
        wr.add_tensor(p + "attn_output.weight", w(n_embd, n_embd))
        wr.add_tensor(p + "ffn_norm.weight", np.ones(n_embd, dtype=np.float32))
        wr.add_tensor(p + "ffn_gate.weight", w(n_ff, n_embd))
        wr.add_tensor(p + "ffn_up.weight", w(n_ff, n_embd))
        wr.add_tensor(p + "ffn_down.weight", w(n_embd, n_ff))
    wr.write_header_to_file()
    wr.write_kv_data_to_file()
    wr.write_tensors_to_file()
    wr.close()
    return path


def padded_copy(model: str | Path, path: str | Path, extra: int) -> Path:
    """`model` copied to `path` and made `extra` bytes longer, sparsely (nothing written): the same model to
    llama.cpp, but a bigger file to map, so the memory estimate counts it (a drafter that does not fit)."""
    path = Path(path)
    path.write_bytes(Path(model).read_bytes())
    with path.open("r+b") as fh:
        fh.truncate(path.stat().st_size + extra)
    return path
