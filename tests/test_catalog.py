"""The shipped catalog and name validation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gemma_cli.errors import InvalidModelNameError, ModelNotFoundError
from gemma_cli.registry.catalog import CatalogError, load_catalog
from gemma_cli.store.names import parse_name


@pytest.fixture()
def builtin(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("GEMMA_CATALOG", raising=False)
    return load_catalog()


@pytest.mark.parametrize("size", ["e2b", "e4b", "12b", "26b", "31b"])
def test_gemma4_entries_pair_a_q4_target_with_its_mtp_assistant(builtin, size):
    entry = builtin.lookup(f"gemma4:{size}")
    assert entry.quantization == "Q4_K_M" and entry.target.file.endswith("-Q4_K_M.gguf")
    assert entry.target.repo.startswith("ggml-org/gemma-4-") and entry.target.repo.endswith("-it-GGUF")
    assert entry.drafter is not None and entry.drafter.repo == entry.target.repo
    assert entry.drafter.file.startswith("mtp-") and entry.drafter.file.endswith("-Q8_0.gguf")
    assert entry.draft_source == "mtp" and entry.approx_size_gb
    assert entry.unconfirmed, "what could not be checked offline must be marked"
    q8 = builtin.lookup(f"gemma4:{size}-q8_0")
    assert q8.quantization == "Q8_0" and q8.drafter == entry.drafter


def test_moe_gets_the_shortest_drafts_and_default_tags(builtin):
    lengths = {s: builtin.lookup(f"gemma4:{s}").draft_tokens for s in ["e2b", "e4b", "12b", "26b", "31b"]}
    assert lengths["26b"] == min(lengths.values()) < max(lengths.values())
    assert builtin.lookup("gemma4").name == "gemma4:e4b"
    assert builtin.lookup("GEMMA4:E4B-Q4_K_M").name == "gemma4:e4b"  # case-insensitive alias
    default = builtin.lookup("gemma3")
    assert default.name == "gemma3:270m" and default.package and default.drafter is None
    assert default.draft_source == "ngram"


def test_unknown_names_suggest_the_closest(builtin):
    with pytest.raises(ModelNotFoundError, match="did you mean gemma4:e4b"):
        builtin.lookup("gemma4:e5b")
    with pytest.raises(ModelNotFoundError, match="gemma4:31b"):
        builtin.lookup("gemma4:31")
    with pytest.raises(ModelNotFoundError, match=r"did you mean gemma3:270m, gemma3:270m-q4_k_m\?"):
        builtin.lookup("gemma3:1b")  # the family's own tags, not gemma4:31b for sharing characters


@pytest.mark.parametrize("bad", ["../x", "a/b", "x:../y", "x\0y", "", "  ", "a:", "..:x", "-x", "x:.", "x y",
                                 "a" * 300, "x:a..b", "C:\\evil"])
def test_illegal_names_are_refused(bad):
    with pytest.raises(InvalidModelNameError):
        parse_name(bad)


def test_valid_names_normalise():
    assert str(parse_name("Gemma4:E4B")) == "gemma4:e4b"
    assert str(parse_name("mine")) == "mine:latest"
    assert str(parse_name("mine", "v1")) == "mine:v1"


def test_catalog_override_and_malformed_catalog(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    good = tmp_path / "c.json"
    good.write_text(json.dumps({"models": {"x:y": {"target": {"repo": "o/r", "file": "f.gguf"}}}}))
    monkeypatch.setenv("GEMMA_CATALOG", str(good))
    assert load_catalog().names() == ["x:y"]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"models": {"../evil": {"target": {"repo": "o/r", "file": "f"}}}}))
    monkeypatch.setenv("GEMMA_CATALOG", str(bad))
    with pytest.raises(CatalogError, match="malformed"):
        load_catalog()
    monkeypatch.setenv("GEMMA_CATALOG", str(tmp_path / "missing.json"))
    with pytest.raises(CatalogError, match="cannot read"):
        load_catalog()
