"""Can this drafter draft for this target? Checked from GGUF headers, before loading weights.

Same vocabulary rule as llama.cpp's speculative decoding: sizes within 128
and identical token texts from id 5 on (the first ids are specials that may
differ). A gemma4-assistant (MTP) head reads the target's hidden state, so its
`embedding_length_out` must equal the target's embedding width.
"""

from __future__ import annotations

from gemma_cli.errors import IncompatibleModelsError
from gemma_cli.gguf_meta import GGUFInfo

MAX_VOCAB_DIFF = 128
FIRST_COMPARED_TOKEN = 5
MTP_ARCHS = ("gemma4-assistant", "gemma4_assistant")


def vocab_problem(target: GGUFInfo, drafter: GGUFInfo) -> str | None:
    """Why the vocabularies are incompatible, or None when they match."""
    t, d = target.tokens, drafter.tokens
    if not t or not d:
        return None if drafter.architecture in MTP_ARCHS and not d else "a model has no token list (tokenizer.ggml.tokens)"
    if abs(len(t) - len(d)) > MAX_VOCAB_DIFF:
        return f"vocabulary sizes differ by more than {MAX_VOCAB_DIFF} ({len(t)} vs {len(d)})"
    for i in range(FIRST_COMPARED_TOKEN, min(len(t), len(d))):
        if t[i] != d[i]:
            return f"token {i} differs ({t[i]!r} vs {d[i]!r})"
    return None


def check_pair(target: GGUFInfo, drafter: GGUFInfo) -> None:
    """Raise IncompatibleModelsError with the reason when `drafter` cannot draft for `target`."""
    name_t, name_d = target.path.name, drafter.path.name
    why = vocab_problem(target, drafter)
    if why is None and drafter.architecture in MTP_ARCHS:
        out = drafter.arch_key("embedding_length_out")
        width = target.arch_key("embedding_length")
        if out is None or width is None or out != width:
            why = f"MTP head embedding_length_out {out} does not match the target's embedding_length {width}"
    if why:
        raise IncompatibleModelsError(f"drafter {name_d} cannot draft for {name_t}: {why}")
