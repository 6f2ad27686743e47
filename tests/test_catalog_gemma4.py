"""The shipped catalog's Gemma 4 entries against a test Hub: `gemma pull` asks for exactly the published paths (issue 17)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gemma4_factory import FAMILY, write_gemma4_pair
from gemma_cli.registry.catalog import load_catalog
from hub_server import HubServer, gemma_env

SIZES = {"e2b": "E2B", "e4b": "E4B", "12b": "12B", "26b": "26B-A4B", "31b": "31B"}
PUBLISHED_BYTES = {  # ggml-org's files as published (issue 17)
    "gemma-4-E4B-it-Q4_K_M.gguf": 5_335_289_824, "mtp-gemma-4-E4B-it-Q8_0.gguf": 98_653_280,
    "mtp-gemma-4-12B-it-Q8_0.gguf": 465_109_152, "mtp-gemma-4-31B-it-Q8_0.gguf": 514_687_104,
    "gemma-4-31B-it-Q4_K_M.gguf": 18_323_733_440,
}


def _entries() -> list[str]:
    return sorted(n for n in load_catalog().entries if n.startswith("gemma4:"))


def _expected(name: str) -> tuple[str, str, str]:
    size, _, quant = name.split(":")[1].partition("-")
    label = SIZES[size]
    repo = f"ggml-org/gemma-4-{label}-it-GGUF"
    return repo, f"gemma-4-{label}-it-{(quant or 'q4_k_m').upper()}.gguf", f"mtp-gemma-4-{label}-it-Q8_0.gguf"


@pytest.fixture(scope="module")
def pair_bytes(tmp_path_factory) -> tuple[bytes, bytes]:
    t, a = write_gemma4_pair(tmp_path_factory.mktemp("cat-g4"), FAMILY["e4b"])
    return t.read_bytes(), a.read_bytes()


def test_every_gemma4_entry_names_the_published_files():
    names = _entries()
    assert len(names) == 10
    for name in names:
        entry = load_catalog().lookup(name)
        repo, target, drafter = _expected(name)
        assert (entry.target.repo, entry.target.file) == (repo, target), name
        assert entry.drafter is not None and (entry.drafter.repo, entry.drafter.file) == (repo, drafter), name
        assert not any("mtp-*-Q8_0.gguf name follows" in u or "was not seen" in u for u in entry.unconfirmed), name
    for name in ("gemma4:e4b", "gemma4:31b"):  # both sizes published: the size is exact, not estimated
        entry = load_catalog().lookup(name)
        _, target, drafter = _expected(name)
        assert entry.approx_size_gb == round((PUBLISHED_BYTES[target] + PUBLISHED_BYTES[drafter]) / 1e9, 2)
        assert not any(u.startswith("approx_size_gb") for u in entry.unconfirmed)


@pytest.mark.parametrize("name", _entries())
def test_pull_requests_exactly_the_catalog_paths(name, pair_bytes, tmp_path: Path, monkeypatch):
    from gemma_cli.registry.pull import pull
    from gemma_cli.registry.resolve import resolve_model

    repo, target, drafter = _expected(name)
    with HubServer() as hub:
        hub.add(repo, target, pair_bytes[0])
        hub.add(repo, drafter, pair_bytes[1])
        env = gemma_env(tmp_path / "models", hub.endpoint)
        for key in ("GEMMA_MODELS", "HF_ENDPOINT", "HF_HOME"):
            monkeypatch.setenv(key, env[key])
        monkeypatch.delenv("GEMMA_CATALOG", raising=False)
        monkeypatch.delenv("HF_TOKEN", raising=False)
        pull(name)
        paths = {r.path.split("?")[0] for r in hub.state.requests}
    wanted = {f"/{repo}/resolve/main/{target}", f"/{repo}/resolve/main/{drafter}"}
    file_paths = {p for p in paths if "/resolve/" in p}
    assert file_paths == wanted, sorted(paths)
    pair = resolve_model(name)
    assert pair.draft_source == "mtp" and pair.drafter is not None
