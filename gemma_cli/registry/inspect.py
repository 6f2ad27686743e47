"""What `gemma show` reports, read from GGUF headers only (no weights are loaded)."""

from __future__ import annotations

from typing import Any

from gemma_cli.compat import is_mtp_assistant, pair_problem
from gemma_cli.errors import GemmaError
from gemma_cli.gguf_meta import GGUFInfo, read_gguf
from gemma_cli.memory import available_memory, estimate_memory
from gemma_cli.pair import ModelPair
from gemma_cli.preflight import check_header
from gemma_cli.registry.catalog import load_catalog
from gemma_cli.store.layout import Layout
from gemma_cli.store.store import load
from gemma_cli.text_safety import clean_display, clean_tree


def parameter_size_text(n: int) -> str:
    for unit, div in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= div:
            return f"{n / div:.1f}{unit}".replace(".0" + unit, unit)
    return str(n)


def _model_facts(info: GGUFInfo) -> dict[str, Any]:
    check_header(info)  # refuse what llama.cpp would abort on, as run would
    return clean_tree({
        "file": str(info.path),
        "architecture": info.architecture,
        "parameters": info.n_params,
        "parameters_human": parameter_size_text(info.n_params),
        "context_length": info.arch_key("context_length"),
        "embedding_length": info.arch_key("embedding_length"),
        "quantization": info.quantization,
        "size_bytes": info.file_size,
        "vocab_size": len(info.tokens),
        "chat_template": bool(info.get("tokenizer.chat_template")),
        # No template: a base model (llama.cpp has no turn format for it); `chat` frames it as a transcript.
        "kind": "chat model (has a chat template)" if info.get("tokenizer.chat_template") else "base model (no chat template: continues text)",
        "license": info.get("general.license"),
        "name": info.get("general.name"),
        "experts": info.arch_key("expert_count"),
        "experts_used": info.arch_key("expert_used_count"),
    })  # strings from the file: no escape sequences, bounded length


def describe(pair: ModelPair) -> dict[str, Any]:
    """Facts about a resolved pair: target, drafter, compatibility, tuned draft lengths."""
    target = read_gguf(pair.target)
    out: dict[str, Any] = {"name": pair.name, "target": _model_facts(target), "draft_source": pair.draft_source,
                           "draft_tokens": pair.draft_tokens, "drafter": None, "tuned": {}}
    if pair.drafter is not None:
        drafter = read_gguf(pair.drafter)
        facts = _model_facts(drafter)
        problem = pair_problem(target, drafter)
        facts["vocabulary"] = clean_display(f"incompatible: {problem}", 300) if problem else "compatible (same token list)"
        if is_mtp_assistant(drafter.architecture):
            facts["kv_cache"] = "shares the target's KV cache (no KV of its own)"
            facts["embedding_length_out"] = drafter.arch_key("embedding_length_out")
        out["drafter"] = facts
    out["memory"] = memory_facts(pair)
    try:
        catalog = load_catalog()
        ref = catalog.ref(pair.name)
        manifest = load(ref, Layout.default())
    except GemmaError:  # a path, not a store name
        manifest = None
    else:
        entry = catalog.get(ref, follow_latest=False)  # a model of your own named gemma3:latest has no catalog advice
        if entry is not None and entry.draft_advice:
            out["draft_advice"] = entry.draft_advice
    if manifest is not None:
        out["tuned"] = manifest.tuned
        out["id"] = manifest.id
        out["created"] = manifest.created
        out["sources"] = [layer.source for layer in manifest.layers]
    return out


MEMORY_CONTEXTS = (4096, 8192)  # the default --ctx and the README table's context


def memory_facts(pair: ModelPair) -> dict[str, Any]:
    """Estimated RAM at the default and an 8k context (gemma_cli.memory), and what is available now."""
    is_mtp = pair.draft_source == "mtp"
    estimates = {str(n): estimate_memory(pair.target, pair.drafter, drafter_is_mtp=is_mtp, n_ctx=n).as_dict()
                 for n in MEMORY_CONTEXTS}
    return {"estimates": estimates, "available_bytes": available_memory()[0]}


def list_entries(layout: Layout | None = None) -> list[dict[str, Any]]:
    """Every stored model as `gemma list --json` prints it (and `gemma serve` sends for it).

    An unreadable manifest is listed as {"name", "error"} rather than hidden.
    """
    from gemma_cli.store.store import list_models

    out: list[dict[str, Any]] = []
    for ref, m in list_models(layout):
        if isinstance(m, Exception):
            out.append({"name": str(ref), "error": str(m)})
        else:
            out.append({"name": m.name, "id": m.id, "size": m.size, "draft_source": m.draft_source,
                        "drafter": m.drafter.filename if m.drafter else None, "modified": m.created,
                        "target": m.target.digest, "drafter_digest": m.drafter.digest if m.drafter else None,
                        "drafter_size": m.drafter.size if m.drafter else None})
    return out
