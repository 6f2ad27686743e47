"""Can this drafter draft for this target? One rulebook, read from GGUF headers before any weights load.

`gemma create` refuses a pair with the reason, `gemma show` reports it,
`gemma pull` classifies a drafter (MTP head or small model) and the engine
checks before llama.cpp loads anything, all with the rules below:

- A small drafter model ("model"): llama.cpp's speculative-decoding rule
  (common_speculative_are_compatible): same tokenizer type and BOS/EOS ids,
  vocabulary sizes within MAX_VOCAB_DIFF, identical token texts from id
  FIRST_COMPARED_TOKEN on (the first ids are specials that may differ).
- A Gemma 4 MTP assistant (ASSISTANT_ARCH, llama.cpp's LLM_ARCH_GEMMA4_ASSISTANT):
  llama.cpp does not validate the pair, and several mismatches end in a
  GGML_ASSERT or an out-of-bounds tensor view that abort the whole process
  when the MTP context is created or first decodes (see docs/mtp.md). The
  assistant has no KV cache of its own: its SWA layers attend to the
  target's second-to-last layer's cache and its full-attention layers to the
  last layer's; it reads the target's hidden state (embedding_length_out) and
  embeds tokens with the target's table. Hence the rules on the target's layer
  pattern, equal KV head counts, head sizes, window, RoPE, hidden width and
  an identical vocabulary.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any, Callable, NoReturn

from gemma_cli.errors import IncompatibleModelsError
from gemma_cli.gemma4_layout import assistant_layout_problem, target_layout_problem
from gemma_cli.gguf_meta import GGUFInfo, read_gguf

TARGET_ARCH = "gemma4"
ASSISTANT_ARCH = "gemma4-assistant"  # the only spelling llama.cpp's loader accepts (llama-arch.cpp)
MAX_VOCAB_DIFF = 128  # llama.cpp's SPEC_VOCAB_MAX_SIZE_DIFFERENCE
FIRST_COMPARED_TOKEN = 5  # llama.cpp's SPEC_VOCAB_CHECK_START_TOKEN_ID
_SPECIAL_KEYS = ("tokenizer.ggml.model", "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id")


class _Refused(Exception):
    """Internal: a rule failed; the message is the reason."""


def is_mtp_assistant(architecture: str | None) -> bool:
    return architecture == ASSISTANT_ARCH


def draft_source_for(drafter_arch: str | None, fallback: str) -> str:
    """'mtp' for a Gemma 4 assistant, 'model' for any other drafter GGUF; without one, the fallback (ngram/none)."""
    if drafter_arch is None:
        return fallback if fallback in ("ngram", "none") else "ngram"
    return "mtp" if is_mtp_assistant(drafter_arch) else "model"


def token_list_problem(n_target: int, n_drafter: int, target_text: Callable[[int], str],
                       drafter_text: Callable[[int], str]) -> str | None:
    """The vocabulary rule (sizes, token texts) for any token source: GGUF headers or a loaded model."""
    if abs(n_target - n_drafter) > MAX_VOCAB_DIFF:
        return f"vocabulary sizes differ by more than {MAX_VOCAB_DIFF} ({n_target} vs {n_drafter})"
    for i in range(FIRST_COMPARED_TOKEN, min(n_target, n_drafter)):
        a, b = target_text(i), drafter_text(i)
        if a != b:
            return f"token {i} differs ({a!r} vs {b!r})"
    return None


def vocab_problem(target: GGUFInfo, drafter: GGUFInfo) -> str | None:
    """Why a small drafter model's vocabulary is incompatible with the target's, or None."""
    t, d = target.tokens, drafter.tokens
    if not t or not d:
        return "a model has no token list (tokenizer.ggml.tokens)"
    for key in _SPECIAL_KEYS:
        if target.get(key) != drafter.get(key):
            return f"different tokenizers ({key}: {target.get(key)!r} vs {drafter.get(key)!r})"
    return token_list_problem(len(t), len(d), t.__getitem__, d.__getitem__)


def mtp_problem(target: GGUFInfo, assistant: GGUFInfo) -> str | None:
    """Why llama.cpp cannot safely run this Gemma 4 target + MTP assistant, or None."""
    try:
        _mtp_rules(target, assistant)
    except _Refused as refused:
        return str(refused)
    return None


def pair_problem(target: GGUFInfo, drafter: GGUFInfo) -> str | None:
    """Why `drafter` cannot draft for `target` (MTP or model rules by its architecture), or None."""
    if is_mtp_assistant(drafter.architecture):
        return mtp_problem(target, drafter)
    return vocab_problem(target, drafter)


def check_pair(target: GGUFInfo, drafter: GGUFInfo) -> None:
    """Raise IncompatibleModelsError with the reason when `drafter` cannot draft for `target`."""
    why = pair_problem(target, drafter)
    if why:
        raise IncompatibleModelsError(f"drafter {drafter.path.name} cannot draft for {target.path.name}: {why}")


def check_model_pair(target_path: str | os.PathLike[str], drafter_path: str | os.PathLike[str]) -> None:
    """`check_pair` for files (headers cached): what the engine calls before loading a drafter model."""
    check_pair(_read(Path(target_path)), _read(Path(drafter_path)))


def check_mtp_pair(target_path: str | os.PathLike[str], assistant_path: str | os.PathLike[str]) -> None:
    """Raise IncompatibleModelsError unless llama.cpp can safely run this MTP pair.

    Reads headers only (cheap, cached); call it before loading either model.
    """
    tp, ap = Path(target_path), Path(assistant_path)
    why = mtp_problem(_read(tp), _read(ap))
    if why:
        raise IncompatibleModelsError(f"{ap.name} cannot draft (MTP) for {tp.name}: {why}")


@functools.lru_cache(maxsize=4)
def _read_cached(path: str, mtime_ns: int, size: int) -> GGUFInfo:
    return read_gguf(path)


def _read(path: Path) -> GGUFInfo:
    # Keyed on mtime and size: the engine checks before loading and the
    # drafter checks again, but a big vocabulary is parsed only once.
    st = os.stat(path)
    return _read_cached(str(path), st.st_mtime_ns, st.st_size)


def _per_layer(info: GGUFInfo, suffix: str, n_layer: int, default: Any = None) -> list[Any] | None:
    """A key that may be a scalar or a per-layer array, as a per-layer list."""
    v = info.arch_key(suffix, default)
    if v is None:
        return None
    if isinstance(v, list):
        return v if len(v) == n_layer else None
    return [v] * n_layer


def _pattern(info: GGUFInfo, n_layer: int) -> list[bool] | None:
    v = info.arch_key("attention.sliding_window_pattern")
    if not isinstance(v, list) or len(v) != n_layer or not all(isinstance(b, (bool, int)) for b in v):
        return None
    return [bool(b) for b in v]


def _positive_int(info: GGUFInfo, suffix: str) -> int | None:
    v = info.arch_key(suffix)
    return v if isinstance(v, int) and not isinstance(v, bool) and v > 0 else None


def check_gemma4_target(target_path: str | os.PathLike[str]) -> None:
    """A gemma4 target without a sliding-window layer aborts llama.cpp at context creation."""
    tp = Path(target_path)
    t = _read(tp)
    layers = _positive_int(t, "block_count")
    pattern = _pattern(t, layers) if layers else None
    if pattern is None or not any(pattern):
        raise IncompatibleModelsError(
            f"{tp.name} is a malformed Gemma 4 model: it needs a per-layer attention.sliding_window_pattern with at least one sliding-window layer"
        )
    why = target_layout_problem(t, pattern, layers)
    if why:
        raise IncompatibleModelsError(f"{tp.name} is a malformed Gemma 4 model: {why}")


def _mtp_rules(t: GGUFInfo, a: GGUFInfo) -> None:
    """Every MTP pair rule in the order a reader would check them; raises _Refused(why)."""

    def fail(why: str) -> NoReturn:
        raise _Refused(why)

    # -- architectures ----------------------------------------------------
    if not is_mtp_assistant(a.architecture):
        fail(f"the drafter is a {a.architecture!r} model, not a Gemma 4 MTP assistant ({ASSISTANT_ARCH!r})")
    if t.architecture != TARGET_ARCH:
        fail(f"MTP assistants draft for Gemma 4 ({TARGET_ARCH!r}) targets; the target is {t.architecture!r}")

    # -- target layer layout --------------------------------------------
    t_layers = _positive_int(t, "block_count")
    if t_layers is None or t_layers < 2:
        fail("the target needs at least 2 layers (block_count)")
    t_pat = _pattern(t, t_layers)
    if t_pat is None:
        fail(f"the target has no per-layer attention.sliding_window_pattern array of length {t_layers}")
    if t_pat[-2:] != [True, False]:
        got = ", ".join("SWA" if b else "full" for b in t_pat[-2:])
        fail(f"the target's last two layers must be [SWA, full] (the assistant reads their KV cache); they are [{got}]")
    if not any(t_pat):
        fail("the target has no sliding-window layer (llama.cpp requires one)")
    why = target_layout_problem(t, t_pat, t_layers)
    if why:
        fail(f"the target is malformed: {why}")

    # -- assistant layout --------------------------------------------------
    a_layers = _positive_int(a, "block_count")
    if a_layers is None or a_layers < 2:
        fail(f"the assistant needs at least 2 layers, has {a.arch_key('block_count')}")
    nextn = a.arch_key("nextn_predict_layers")
    if nextn is None:
        fail("the assistant lacks nextn_predict_layers")
    if nextn != a_layers:
        fail(f"the assistant's nextn_predict_layers ({nextn}) must equal its block_count ({a_layers})")
    a_pat = _pattern(a, a_layers)
    if a_pat is None:
        fail(f"the assistant has no per-layer attention.sliding_window_pattern array of length {a_layers}")
    if not any(a_pat):
        fail("the assistant has no sliding-window layer (llama.cpp requires one)")
    why = assistant_layout_problem(a)
    if why:
        fail(why)

    # -- widths ----------------------------------------------------------
    t_embd = _positive_int(t, "embedding_length")
    a_embd = _positive_int(a, "embedding_length")
    out = a.arch_key("embedding_length_out")
    if t_embd is None or a_embd is None:
        fail("embedding_length missing")
    if out is None:
        fail("the assistant lacks embedding_length_out (the target hidden size it reads)")
    if out != t_embd:
        fail(f"the assistant's embedding_length_out {out} (the hidden-state width it reads) "
             f"does not match the target's embedding_length {t_embd}")
    if out == a_embd:
        fail("the assistant's embedding_length_out equals its own width; it must carry the target hidden size")

    # -- shared KV cache geometry ---------------------------------------
    t_kv = _per_layer(t, "attention.head_count_kv", t_layers, t.arch_key("attention.head_count"))
    a_kv = _per_layer(a, "attention.head_count_kv", a_layers, a.arch_key("attention.head_count"))
    if t_kv is None or a_kv is None:
        fail("attention.head_count_kv missing or malformed")
    for il, swa in enumerate(a_pat):
        src = t_layers - 2 if swa else t_layers - 1
        if a_kv[il] != t_kv[src]:
            fail(f"KV head counts differ: assistant layer {il} has {a_kv[il]}, target layer {src} has {t_kv[src]} (head_count_kv)")
    for suffix in ("attention.key_length", "attention.value_length", "attention.key_length_swa",
                   "attention.value_length_swa", "attention.sliding_window"):
        tv, av = t.arch_key(suffix), a.arch_key(suffix)
        if tv is None or av is None:
            fail(f"{suffix} missing in the {'target' if tv is None else 'assistant'}")
        if tv != av:
            fail(f"{suffix} differs (target {tv}, assistant {av})")
    for info, who in ((t, "target"), (a, "assistant")):
        if info.arch_key("attention.key_length") != info.arch_key("attention.value_length") or info.arch_key(
            "attention.key_length_swa"
        ) != info.arch_key("attention.value_length_swa"):
            fail(f"the {who}'s key and value head sizes differ (Gemma 4 requires them equal)")
    for suffix, default in (("rope.freq_base", 10000.0), ("rope.freq_base_swa", None),
                            ("rope.dimension_count", None), ("rope.dimension_count_swa", None)):
        tv, av = t.arch_key(suffix, default), a.arch_key(suffix, default)
        if tv != av:
            fail(f"{suffix} differs (target {tv}, assistant {av})")

    # -- vocabulary (the assistant embeds tokens with the target's table) -
    for key in ("tokenizer.ggml.model", "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id"):
        if t.get(key) != a.get(key):
            fail(f"different vocabularies ({key}: {t.get(key)!r} vs {a.get(key)!r})")
    tt, at = t.tokens, a.tokens
    if len(tt) != len(at):
        fail(f"different vocabularies ({len(tt)} vs {len(at)} tokens)")
    if tt != at:
        i = next(i for i, (x, y) in enumerate(zip(tt, at, strict=False)) if x != y)
        fail(f"different vocabularies (token {i}: {tt[i]!r} vs {at[i]!r})")

    # -- tensors llama.cpp requires (a clear message instead of "not found") -
    names = {ti.name: ti for ti in a.tensors}
    need = ["nextn.pre_projection.weight", "nextn.post_projection.weight", "token_embd.weight", "output_norm.weight"]
    need += [f"blk.{i}.layer_output_scale.weight" for i in range(a_layers)]
    if not all(a_pat):
        need.append("rope_freqs.weight")
    missing = [n for n in need if n not in names]
    if missing:
        fail(f"the assistant lacks tensor(s) {', '.join(missing[:3])}")
    pre = names["nextn.pre_projection.weight"].shape
    if tuple(pre) != (2 * t_embd, a_embd):
        fail(f"nextn.pre_projection has shape {list(pre)}, expected [{2 * t_embd}, {a_embd}]")
    if not all(t_pat) and "rope_freqs.weight" not in {ti.name for ti in t.tensors}:
        fail("the target lacks tensor rope_freqs.weight")
