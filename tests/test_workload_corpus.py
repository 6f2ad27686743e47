"""The benchmark corpus (benchmarks/corpus/) meets its promises: classes, split, sizes, no overlap."""

from __future__ import annotations

import importlib.util
import sys
from collections import Counter
from importlib import resources
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _corpus_module():
    spec = importlib.util.spec_from_file_location("workload_corpus", ROOT / "benchmarks" / "workload_corpus.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("workload_corpus", module)
    spec.loader.exec_module(module)
    return module


wc = _corpus_module()


def test_corpus_size_classes_and_split() -> None:
    prompts = wc.load("all")
    assert len(prompts) >= 24
    kinds = {p.kind for p in prompts}
    assert len(kinds) >= 8 and kinds == set(wc.CLASSES)
    tuning = Counter(p.kind for p in prompts if p.set == "tuning")
    validation = Counter(p.kind for p in prompts if p.set == "validation")
    for kind in wc.CLASSES:
        assert tuning[kind] >= 1, kind
        assert validation[kind] >= 2, kind


def test_prompts_are_distinct_and_not_copied_from_the_builtin_workloads() -> None:
    prompts = wc.load("all")
    texts = [p.prompt for p in prompts]
    assert len(set(texts)) == len(texts)
    assert len({p.name for p in prompts}) == len(prompts)
    builtin = resources.files("gemma_cli").joinpath("data", "workloads")
    shipped = [f.read_text(encoding="utf-8").strip() for f in builtin.iterdir() if f.name.endswith(".txt")]
    assert shipped
    for p in prompts:
        for s in shipped:
            # no shared paragraph-sized span either way
            assert s[:200] not in p.prompt and p.prompt[:200] not in s, p.name


def test_short_and_long_prompts() -> None:
    sizes = {p.name: len(p.prompt) for p in wc.load("all")}
    assert min(sizes.values()) < 800  # short prompts (~100-200 tokens)
    assert max(sizes.values()) > 4500  # long prompts (~1,500-2,000 tokens)
    assert max(sizes.values()) < 9000  # stays under ~2k tokens: fits a 4k context with 256 generated
    long_validation = [n for n, s in sizes.items() if n.startswith("validation/") and s > 2500]
    assert len(long_validation) >= 3


def test_selection_and_bad_input() -> None:
    only = wc.load("validation", ["code-edit"])
    assert only and all(p.kind == "code-edit" and p.set == "validation" for p in only)
    assert [p.short for p in wc.load("tuning", ["qa-1"])] == ["qa-1"]
    with pytest.raises(wc.CorpusError, match="unknown set"):
        wc.load("test")
    with pytest.raises(wc.CorpusError, match="no corpus prompt matches"):
        wc.load("all", ["no-such-prompt"])


def test_misnamed_or_empty_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "tuning").mkdir()
    (tmp_path / "validation").mkdir()
    (tmp_path / "tuning" / "poetry-1.txt").write_text("Roses are red")
    with pytest.raises(wc.CorpusError, match="not named"):
        wc.load("tuning", root=tmp_path)
    (tmp_path / "tuning" / "poetry-1.txt").unlink()
    (tmp_path / "tuning" / "prose-1.txt").write_text("  \n")
    with pytest.raises(wc.CorpusError, match="empty"):
        wc.load("tuning", root=tmp_path)
