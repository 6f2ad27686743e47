"""The defensive GGUF header reader: real files parse, hostile or broken ones fail with one clear error."""

from __future__ import annotations

import struct
import time
from pathlib import Path

import pytest

from gemma_cli.errors import ModelFileError
from gemma_cli.gguf_meta import read_gguf
from gguf_factory import char_vocab, write_llama_gguf


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_llama_gguf(tmp_path_factory.mktemp("meta") / "m.gguf", seed=31, n_ctx=256, n_embd=32)


def test_reads_header_without_weights(model):
    info = read_gguf(model)
    assert info.architecture == "llama" and info.arch_key("context_length") == 256
    assert info.arch_key("embedding_length") == 32 and info.quantization == "F32"
    assert info.tokens == char_vocab() and info.get("tokenizer.chat_template")
    assert info.n_params == sum(t.n_elements for t in info.tensors) > 0
    assert info.expected_size == info.file_size  # F32 tensors fill the file exactly


def _header(n_tensors: int, n_kv: int) -> bytes:
    return b"GGUF" + struct.pack("<IQQ", 3, n_tensors, n_kv)


def _kv_string(key: str, value: str) -> bytes:
    k, v = key.encode(), value.encode()
    return struct.pack("<Q", len(k)) + k + struct.pack("<I", 8) + struct.pack("<Q", len(v)) + v


@pytest.mark.parametrize("data, needle", [
    (b"", "not a GGUF"),
    (b"<html>", "not a GGUF"),
    (b"GGUF", "truncated"),
    (b"GGUF" + struct.pack("<I", 99) + b"\0" * 16, "version 99"),
    (_header(0, 1 << 40), "implausible"),
    (_header(0, 1) + struct.pack("<Q", 1 << 62), "exceeds the file"),  # a key longer than the file
    (_header(0, 1) + _kv_string("a", "b")[:-1], "exceeds the file"),
    # an array claiming 2^24 strings in a tiny file: refused before allocating
    (_header(0, 1) + struct.pack("<Q", 1) + b"k" + struct.pack("<IIQ", 9, 8, (1 << 24)), "exceeds the file"),
    (_header(0, 1) + struct.pack("<Q", 1) + b"k" + struct.pack("<IIQ", 9, 8, (1 << 40)), "implausible"),
    (_header(0, 1) + struct.pack("<Q", 1) + b"k" + struct.pack("<I", 77), "unknown value type"),
    (_header(1, 0) + struct.pack("<Q", 1) + b"t" + struct.pack("<I", 1000), "dimensions"),
])
def test_malformed_headers_fail_fast_with_one_line(tmp_path, data, needle):
    path = tmp_path / "bad.gguf"
    path.write_bytes(data)
    start = time.process_time()
    with pytest.raises(ModelFileError) as err:
        read_gguf(path)
    assert needle.lower() in str(err.value).lower() and "\n" not in str(err.value)
    assert time.process_time() - start < 1.0


def test_wrongly_typed_metadata_does_not_crash_accessors(tmp_path):
    import gguf

    w = gguf.GGUFWriter(str(tmp_path / "odd.gguf"), "llama")
    w.add_array("general.file_type", [1, 2])
    w.add_string("tokenizer.ggml.tokens", "not-a-list")
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    info = read_gguf(tmp_path / "odd.gguf")
    assert info.quantization.startswith("type") and info.tokens == []


def test_truncated_tensor_data_and_missing_file(model, tmp_path):
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(model.read_bytes()[: model.stat().st_size - 100])
    with pytest.raises(ModelFileError, match="truncated GGUF"):
        read_gguf(cut)
    with pytest.raises(ModelFileError, match="not found"):
        read_gguf(tmp_path / "nope.gguf")
    with pytest.raises(ModelFileError, match="is a directory, not a GGUF file"):
        read_gguf(tmp_path)  # a directory


def test_shapes_only_read_skips_the_vocabulary_but_keeps_everything_else(tmp_path, monkeypatch):
    import gemma_cli.gguf_meta as meta

    monkeypatch.setattr(meta, "SKIP_STRING_ARRAYS_OVER", 4)  # the tiny vocabulary counts as long here
    path = write_llama_gguf(tmp_path / "m.gguf", seed=1)
    full, lean = read_gguf(path), read_gguf(path, strings=False)
    assert lean.tensors == full.tensors and lean.data_offset == full.data_offset
    skipped = lean.metadata["tokenizer.ggml.tokens"]
    assert isinstance(skipped, meta.SkippedArray) and len(skipped) == len(full.tokens) > 4
    assert {k: v for k, v in lean.metadata.items() if k != "tokenizer.ggml.tokens"} == {
        k: v for k, v in full.metadata.items() if k != "tokenizer.ggml.tokens"
    }
    cut = tmp_path / "cut.gguf"  # a vocabulary that runs past the end of the file is still refused
    cut.write_bytes(path.read_bytes()[: full.data_offset // 2])
    with pytest.raises(ModelFileError):
        read_gguf(cut, strings=False)
