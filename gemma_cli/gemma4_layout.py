"""Gemma 4 family layouts read from a GGUF header: what llama.cpp 0.3.36 would abort or fail on.

`compat` asks these before any weights load. Each rule mirrors a line of the
vendored loader (src/models/gemma4*.cpp, llama-model.cpp load_hparams and the
KV-cache reuse callback), so a broken E2B/E4B, 26B-A4B or dense file is
refused with one line instead of a GGML_ASSERT that kills the process:

- experts (26B-A4B): `expert_used_count <= expert_count <= 1024`, both zero or
  both positive (GGML_ASSERTs in load_hparams); the router and expert tensors
  must carry the header's expert count and widths;
- KV sharing (E2B/E4B): the trailing `shared_kv_layers` reuse the last SWA and
  the last full layer before them, which must exist and be of the same kind
  (GGML_ASSERTs in the cache's reuse callback);
- per-layer embeddings (E2B/E4B): the PLE tables match `embedding_length_per_layer_input`;
- every tensor the loader requires is present, with the hidden width it expects;
- assistants: `masked_embd_*` tensors (E-series clustered head) make
  llama.cpp 0.3.36 fail to load the file (their declared shape is empty).
"""

from __future__ import annotations

from typing import Any

from gemma_cli.gguf_meta import GGUFInfo

MAX_EXPERTS = 1024  # llama.cpp's LLAMA_MAX_EXPERTS
MASKED_EMBD = ("masked_embd_centroids.weight", "masked_embd_ordering")


def _int(info: GGUFInfo, suffix: str, default: int = 0) -> Any:
    v = info.arch_key(suffix, default)
    if isinstance(v, list):
        return max(v) if v and all(isinstance(x, int) for x in v) else None
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def _per_layer(info: GGUFInfo, suffix: str, n_layer: int, default: Any) -> list[Any] | None:
    v = info.arch_key(suffix, default)
    if isinstance(v, list):
        return v if len(v) == n_layer else None
    return [v] * n_layer


def expert_problem(info: GGUFInfo) -> str | None:
    """The generic expert-count asserts of llama.cpp's load_hparams (any architecture)."""
    n_expert, n_used = _int(info, "expert_count"), _int(info, "expert_used_count")
    if n_expert is None or n_used is None or n_expert < 0 or n_used < 0:
        return "expert_count / expert_used_count are malformed"
    if n_expert > MAX_EXPERTS:
        return f"expert_count {n_expert} exceeds llama.cpp's limit of {MAX_EXPERTS}"
    if n_used > n_expert:
        return f"expert_used_count {n_used} exceeds expert_count {n_expert}"
    if n_expert > 0 and n_used == 0:
        return f"expert_count is {n_expert} but expert_used_count is 0"
    return None


def _moe_problem(info: GGUFInfo, names: dict[str, tuple[int, ...]], n_layer: int, n_embd: int) -> str | None:
    n_expert = _int(info, "expert_count")
    n_ff_exp = _int(info, "expert_feed_forward_length")
    moe_layers = [il for il in range(n_layer) if f"blk.{il}.ffn_gate_inp.weight" in names]
    if not moe_layers:
        return None
    if not n_expert:
        return f"layer {moe_layers[0]} has an expert router (ffn_gate_inp) but expert_count is 0 or missing"
    if not n_ff_exp:
        return "the model has experts but no expert_feed_forward_length"
    for il in moe_layers:
        p = f"blk.{il}."
        need = ["ffn_gate_inp.scale", "pre_ffw_norm_2.weight", "post_ffw_norm_1.weight", "post_ffw_norm_2.weight",
                "ffn_down_exps.weight"]
        if p + "ffn_gate_up_exps.weight" not in names:
            need += ["ffn_gate_exps.weight", "ffn_up_exps.weight"]
        missing = [p + n for n in need if p + n not in names]
        if missing:
            return f"MoE layer {il} lacks tensor(s) {', '.join(missing[:3])}"
        router = names[p + "ffn_gate_inp.weight"]
        if router != (n_embd, n_expert):
            return f"{p}ffn_gate_inp has shape {list(router)}, expected [{n_embd}, {n_expert}] (expert_count {n_expert})"
        down = names[p + "ffn_down_exps.weight"]
        if down != (n_ff_exp, n_embd, n_expert):
            return (f"{p}ffn_down_exps has shape {list(down)}, expected [{n_ff_exp}, {n_embd}, {n_expert}] "
                    f"(expert_feed_forward_length, embedding_length, expert_count)")
    return None


def _shared_kv_problem(info: GGUFInfo, pattern: list[bool], n_layer: int) -> str | None:
    shared = _int(info, "attention.shared_kv_layers")
    if shared is None or shared < 0:
        return "attention.shared_kv_layers is malformed"
    if shared == 0:
        return None
    n_kv = n_layer - shared
    if n_kv < 2:
        return f"attention.shared_kv_layers {shared} leaves {n_kv} layer(s) with a KV cache; llama.cpp needs at least 2"
    kv_heads = _per_layer(info, "attention.head_count_kv", n_layer, info.arch_key("attention.head_count"))
    for il in range(n_kv, n_layer):
        src = n_kv - (2 if pattern[il] else 1)
        if pattern[src] != pattern[il]:
            kind = "SWA" if pattern[il] else "full"
            return (f"KV-shared layer {il} ({kind}) would reuse layer {src}, which is not {kind}: "
                    f"the last two layers before the {shared} shared ones must be [SWA, full]")
        if kv_heads is not None and kv_heads[il] != kv_heads[src]:
            return f"KV-shared layer {il} has {kv_heads[il]} KV heads, the layer it reuses ({src}) has {kv_heads[src]}"
    return None


def _required_tensors(info: GGUFInfo, pattern: list[bool], n_layer: int, names: dict) -> list[str]:
    shared = _int(info, "attention.shared_kv_layers") or 0
    need = ["token_embd.weight", "output_norm.weight"]
    if not all(pattern):
        need.append("rope_freqs.weight")
    ple = _int(info, "embedding_length_per_layer_input") or 0
    if ple:
        need += ["per_layer_token_embd.weight", "per_layer_model_proj.weight", "per_layer_proj_norm.weight"]
    for il in range(n_layer):
        p = f"blk.{il}."
        need += [p + n for n in ("attn_norm.weight", "attn_output.weight", "attn_q_norm.weight",
                                 "post_attention_norm.weight", "ffn_norm.weight", "ffn_gate.weight", "ffn_up.weight",
                                 "ffn_down.weight", "post_ffw_norm.weight")]
        if p + "attn_qkv.weight" not in names:
            need.append(p + "attn_q.weight")
            if il < n_layer - shared:
                need.append(p + "attn_k.weight")
        if il < n_layer - shared:
            need.append(p + "attn_k_norm.weight")
        if ple:
            need += [p + "inp_gate.weight", p + "proj.weight", p + "post_norm.weight"]
    return need


def target_layout_problem(info: GGUFInfo, pattern: list[bool], n_layer: int) -> str | None:
    """Why llama.cpp would abort or fail loading this gemma4 target (pattern already validated), or None."""
    why = expert_problem(info) or _shared_kv_problem(info, pattern, n_layer)
    if why:
        return why
    n_embd = _int(info, "embedding_length")
    if not n_embd:
        return "embedding_length missing"
    names = {t.name: tuple(t.shape) for t in info.tensors}
    missing = [n for n in _required_tensors(info, pattern, n_layer, names) if n not in names]
    if missing:
        return f"the model lacks tensor(s) {', '.join(missing[:3])}"
    emb = names["token_embd.weight"]
    if emb[0] != n_embd:
        return f"token_embd has width {emb[0]}, but embedding_length is {n_embd}"
    ple = _int(info, "embedding_length_per_layer_input")
    if ple is None:
        return "embedding_length_per_layer_input is malformed"
    if ple and names["per_layer_token_embd.weight"][0] != ple * n_layer:
        got = names["per_layer_token_embd.weight"][0]
        return f"per_layer_token_embd has width {got}, expected {ple} x {n_layer} layers = {ple * n_layer}"
    return _moe_problem(info, names, n_layer, n_embd)


def assistant_layout_problem(info: GGUFInfo) -> str | None:
    """Why llama.cpp 0.3.36 would abort or fail loading this gemma4-assistant file, or None."""
    why = expert_problem(info)
    if why:
        return why
    present = [n for n in MASKED_EMBD if any(t.name == n for t in info.tensors)]
    if present:
        return (f"the assistant carries the clustered-head tensor {present[0]}, which llama.cpp 0.3.36 cannot load; "
                "use an assistant GGUF converted without masked_embd tensors")
    return None
