"""A defensive GGUF metadata reader: the key/value header and tensor index only.

Model files are untrusted input. This reader never loads weights, bounds every
length and count by the bytes actually present, caps array sizes, and turns any
malformation into `ModelFileError` with the file name, so a hostile or
truncated header is a clear one-line error, never a crash, a hang or a huge
allocation. (`gguf.GGUFReader` memory-maps and materialises every array,
which is slow for 262k-token vocabularies and fails with raw exceptions.)
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from gemma_cli.errors import ModelFileError

MAGIC = b"GGUF"
MAX_KV = 1 << 20
MAX_TENSORS = 1 << 20
MAX_ARRAY = 1 << 24
MAX_STRING = 1 << 26
MAX_DIMS = 8

# GGUF value types
_SCALARS = {
    0: ("<B", 1),  # uint8
    1: ("<b", 1),  # int8
    2: ("<H", 2),  # uint16
    3: ("<h", 2),  # int16
    4: ("<I", 4),  # uint32
    5: ("<i", 4),  # int32
    6: ("<f", 4),  # float32
    7: ("<?", 1),  # bool
    10: ("<Q", 8),  # uint64
    11: ("<q", 8),  # int64
    12: ("<d", 8),  # float64
}
_STRING, _ARRAY = 8, 9

# ggml tensor types -> (block size in elements, bytes per block), for size accounting.
_GGML_BLOCKS = {
    0: (1, 4), 1: (1, 2), 2: (32, 18), 3: (32, 20), 6: (32, 22), 7: (32, 24), 8: (32, 34),
    9: (32, 36), 10: (256, 84), 11: (256, 110), 12: (256, 144), 13: (256, 176), 14: (256, 210),
    15: (256, 292), 16: (256, 66), 17: (256, 74), 18: (256, 98), 19: (256, 50), 20: (32, 18),
    21: (256, 110), 22: (256, 82), 23: (256, 136), 24: (1, 1), 25: (1, 2), 26: (1, 4),
    27: (1, 8), 28: (1, 8), 29: (256, 56), 30: (1, 2), 34: (256, 54), 35: (256, 66),
    39: (32, 17),
}

# llama.cpp's general.file_type -> quantization name
FILE_TYPES = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 10: "Q2_K",
    11: "Q3_K_S", 12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S",
    17: "Q5_K_M", 18: "Q6_K", 19: "IQ2_XXS", 20: "IQ2_XS", 21: "Q2_K_S", 22: "IQ3_XS",
    23: "IQ3_XXS", 24: "IQ1_S", 25: "IQ4_NL", 26: "IQ3_S", 27: "IQ3_M", 28: "IQ2_S",
    29: "IQ2_M", 30: "IQ4_XS", 31: "IQ1_M", 32: "BF16", 36: "TQ1_0", 37: "TQ2_0", 38: "MXFP4_MOE",
}


@dataclass
class TensorInfo:
    name: str
    shape: tuple[int, ...]
    ggml_type: int
    offset: int

    @property
    def n_elements(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def n_bytes(self) -> int | None:
        block = _GGML_BLOCKS.get(self.ggml_type)
        if block is None:
            return None
        return self.n_elements // block[0] * block[1]


@dataclass
class GGUFInfo:
    """What a GGUF header says: metadata, tensor index, and where the data starts."""

    path: Path
    version: int
    metadata: dict[str, Any]
    tensors: list[TensorInfo] = field(default_factory=list)
    data_offset: int = 0
    file_size: int = 0

    def get(self, key: str, default: Any = None) -> Any:
        return self.metadata.get(key, default)

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", "unknown"))

    def arch_key(self, suffix: str, default: Any = None) -> Any:
        """`{architecture}.{suffix}`, e.g. arch_key('embedding_length')."""
        return self.metadata.get(f"{self.architecture}.{suffix}", default)

    @property
    def quantization(self) -> str:
        ft = self.metadata.get("general.file_type")
        if ft is None:
            return "unknown"
        return FILE_TYPES.get(ft, f"type {ft}") if isinstance(ft, int) else f"type {ft!r}"[:40]

    @property
    def n_params(self) -> int:
        return sum(t.n_elements for t in self.tensors)

    @property
    def tokens(self) -> list[str]:
        tokens = self.metadata.get("tokenizer.ggml.tokens")
        return list(tokens) if isinstance(tokens, list) else []  # untrusted: may be any type

    @property
    def expected_size(self) -> int | None:
        """Bytes the file must have to hold every tensor (None if a type is unknown)."""
        end = self.data_offset
        for t in self.tensors:
            nb = t.n_bytes
            if nb is None:
                return None
            end = max(end, self.data_offset + t.offset + nb)
        return end


class SkippedArray:
    """A long string array walked over but not decoded (`read_gguf(..., strings=False)`): only its length."""

    def __init__(self, count: int) -> None:
        self.count = count

    def __len__(self) -> int:
        return self.count


SKIP_STRING_ARRAYS_OVER = 4096  # the vocabulary and merges: ~1 s of decoding for Gemma's 262k tokens


class _Reader:
    def __init__(self, fh: BinaryIO, size: int, path: Path, strings: bool = True) -> None:
        self.fh, self.size, self.path, self.strings = fh, size, path, strings

    def skip_strings(self, count: int) -> SkippedArray:
        """Walk `count` length-prefixed strings with bounds checks, without decoding them."""
        chunk = 1 << 20
        base = self.fh.tell()
        buf, off = self.fh.read(min(self.size - base, chunk)), 0
        for _ in range(count):
            if off + 8 > len(buf):  # refill from the next string's length prefix
                base += off
                self.fh.seek(base)
                buf, off = self.fh.read(min(self.size - base, chunk)), 0
                if len(buf) < 8:
                    raise self.fail("truncated header")
            n = struct.unpack_from("<Q", buf, off)[0]
            if n > MAX_STRING or base + off + 8 + n > self.size:
                raise self.fail(f"string length {n} exceeds the file")
            off += 8 + n
        self.fh.seek(base + off)
        return SkippedArray(count)

    def fail(self, why: str) -> ModelFileError:
        return ModelFileError(f"malformed GGUF file {self.path}: {why}")

    def take(self, n: int) -> bytes:
        if n < 0 or self.fh.tell() + n > self.size:
            raise self.fail("truncated header")
        data = self.fh.read(n)
        if len(data) != n:
            raise self.fail("truncated header")
        return data

    def scalar(self, vtype: int) -> Any:
        fmt, n = _SCALARS[vtype]
        return struct.unpack(fmt, self.take(n))[0]

    def u32(self) -> int:
        return struct.unpack("<I", self.take(4))[0]

    def u64(self) -> int:
        return struct.unpack("<Q", self.take(8))[0]

    def string(self) -> str:
        n = self.u64()
        if n > MAX_STRING or self.fh.tell() + n > self.size:
            raise self.fail(f"string length {n} exceeds the file")
        return self.take(n).decode("utf-8", "replace")

    def value(self, vtype: int, depth: int = 0) -> Any:
        if vtype in _SCALARS:
            return self.scalar(vtype)
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            if depth > 2:
                raise self.fail("arrays nested too deeply")
            etype = self.u32()
            count = self.u64()
            if count > MAX_ARRAY:
                raise self.fail(f"array of {count} elements is implausible")
            if etype in _SCALARS:
                fmt, n = _SCALARS[etype]
                raw = self.take(n * count)
                return list(struct.unpack("<" + fmt[1] * count, raw))
            # minimum 8 bytes per string element: refuse counts the file cannot hold
            if etype == _STRING and self.fh.tell() + 8 * count > self.size:
                raise self.fail("string array exceeds the file")
            if etype == _STRING and not self.strings and count > SKIP_STRING_ARRAYS_OVER:
                return self.skip_strings(count)
            return [self.value(etype, depth + 1) for _ in range(count)]
        raise self.fail(f"unknown value type {vtype}")


def model_file_problem(path: Path) -> str | None:
    """Why `path` cannot be a GGUF file to read (missing, a directory, a device, a pipe, ...), or None.

    Says what the path is, so `--target /dev/zero` is not "not found", and checked before opening: a FIFO
    named x.gguf blocked `gemma doctor` for ever, and `show`/`run` called a directory "not found".
    """
    import stat

    try:
        mode = path.stat().st_mode
    except (FileNotFoundError, NotADirectoryError):
        return f"model file not found: {path}"
    except OSError as exc:
        return f"cannot read {path}: {exc.strerror or exc}"
    if stat.S_ISDIR(mode):
        return f"{path} is a directory, not a GGUF file; give the .gguf file inside it"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return f"{path} is a device, not a GGUF file"
    if stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode):
        return f"{path} is a pipe or socket, not a GGUF file; save the model to a file first"
    if not stat.S_ISREG(mode):
        return f"{path} is not a regular file"
    return None


def check_model_file(path: Path) -> None:
    """Raise ModelFileError saying what `path` is when it cannot be a GGUF file to read (`model_file_problem`)."""
    problem = model_file_problem(path)
    if problem is not None:
        raise ModelFileError(problem)


def read_gguf(path: str | Path, *, strings: bool = True) -> GGUFInfo:
    """Parse a GGUF header defensively; raise ModelFileError on anything odd.

    `strings=False` leaves long string arrays (vocabulary, merges) undecoded, as
    `SkippedArray`s: for callers that need shapes and hyperparameters only.
    """
    path = Path(path)
    check_model_file(path)
    try:
        size = path.stat().st_size
        fh = path.open("rb")
    except FileNotFoundError:
        raise ModelFileError(f"model file not found: {path}") from None
    except OSError as exc:
        raise ModelFileError(f"cannot read {path}: {exc.strerror}") from None
    with fh:
        r = _Reader(fh, size, path, strings)
        if size < 4 or fh.read(4) != MAGIC:
            raise ModelFileError(f"not a GGUF file: {path}")
        version = r.u32()
        if version not in (2, 3):
            raise r.fail(f"unsupported GGUF version {version}")
        n_tensors, n_kv = r.u64(), r.u64()
        if n_kv > MAX_KV or n_tensors > MAX_TENSORS:
            raise r.fail(f"implausible counts ({n_tensors} tensors, {n_kv} keys)")
        meta: dict[str, Any] = {}
        for _ in range(n_kv):
            key = r.string()
            meta[key] = r.value(r.u32())
        tensors = []
        for _ in range(n_tensors):
            name = r.string()
            n_dims = r.u32()
            if n_dims > MAX_DIMS:
                raise r.fail(f"tensor {name!r} has {n_dims} dimensions")
            shape = tuple(r.u64() for _ in range(n_dims))
            tensors.append(TensorInfo(name, shape, r.u32(), r.u64()))
        align = meta.get("general.alignment", 32)
        if not isinstance(align, int) or align <= 0 or align & (align - 1):
            raise r.fail(f"bad alignment {align!r}")
        pos = fh.tell()
        data_offset = (pos + align - 1) // align * align
    info = GGUFInfo(path, version, meta, tensors, data_offset, size)
    expected = info.expected_size
    if expected is not None and expected > size:
        raise ModelFileError(f"truncated GGUF file {path}: {size} bytes, tensors need {expected}")
    return info


def read_architecture(path: str | Path, max_keys: int = 16) -> str | None:
    """`general.architecture` without parsing the whole header (it is among the first keys).

    Cheap enough to call before every load; None when it is not among the
    first `max_keys` keys (then callers fall back to `read_gguf`).
    """
    path = Path(path)
    check_model_file(path)
    try:
        size = path.stat().st_size
        with path.open("rb") as fh:
            r = _Reader(fh, size, path)
            if size < 4 or fh.read(4) != MAGIC:
                raise ModelFileError(f"not a GGUF file: {path}")
            r.u32()
            r.u64()
            n_kv = r.u64()
            for _ in range(min(n_kv, max_keys)):
                key = r.string()
                value = r.value(r.u32())
                if key == "general.architecture":
                    return str(value)
    except FileNotFoundError:
        raise ModelFileError(f"model file not found: {path}") from None
    except OSError as exc:
        raise ModelFileError(f"cannot read {path}: {exc.strerror}") from None
    return None
