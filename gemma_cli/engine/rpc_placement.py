"""Where a target model's layers go when it is split across RPC workers and this machine.

llama.cpp puts the first `n_layer + 1 - n_gpu_layers` layers on the local CPU
and spreads the rest over the model's devices by `tensor_split`. So a split
"one share per worker, then this machine" becomes: the workers' devices with
their shares as `tensor_split`, and `n_gpu_layers` = the workers' fraction of
all layers. Default shares are free memory, as llama.cpp's own default.
While the model loads, llama.cpp's log is read to report what actually
landed where (layers, weights, KV cache, compute buffers).
"""

from __future__ import annotations

import contextlib
import ctypes
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

from gemma_cli.engine import rpc
from gemma_cli.engine.rpc_protocol import WorkerInfo, parse_endpoints, probe
from gemma_cli.errors import UsageError

# A Gemma 4 MTP assistant attends to the target's KV cache of its last two layers
# (SWA layers read n-2, full layers n-1; compat.check_mtp_pair). Its context runs
# on this machine, and ggml's scheduler aborts on a KV tensor in a worker's buffer
# ("pre-allocated tensor (cache_k_lN) in a buffer (RPC0[...]) that cannot run the
# operation", ggml-backend.cpp:941). So with MTP those layers stay here: the CPU
# device goes last in the model's device list, after the workers'.
MTP_TAIL = 2
MTP_UNSUPPORTED = (
    "MTP drafting over --rpc needs the target's last layers on this machine, and this model was loaded "
    "without MTP: load it with --draft mtp (or auto)"
)
# The output projection stays on this machine: run on a worker, it would send
# back n_vocab floats per output row (1 MiB a token for Gemma's 262k
# vocabulary, more per speculative pass) instead of one hidden state.
LOCAL_OUTPUT = rb"^(output|token_embd)\.weight$"
_LAYER = re.compile(r"layer\s+(\d+) assigned to device (\S+?),")
_BUFFER = re.compile(r"(\S+)\s+(model|KV|compute) buffer size =\s*([\d.]+) MiB")


def parse_tensor_split(spec: str | None, n_workers: int) -> list[float] | None:
    """`--tensor-split 2,1,1` -> shares: one per worker in --rpc order, then this machine."""
    if spec is None:
        return None
    try:
        values = [float(v) for v in spec.split(",") if v.strip()]
    except ValueError:
        raise UsageError(f"--tensor-split takes comma-separated numbers, e.g. 1,1,1; got {spec!r}") from None
    if len(values) != n_workers + 1:
        raise UsageError(
            f"--tensor-split needs {n_workers + 1} values: one per --rpc worker in order, then this machine (0 = nothing here)"
        )
    # llama.cpp takes 32-bit floats: nan and inf (and 1e39, inf there) were a crash report or a failed load
    if not all(0 <= v <= 1e6 for v in values) or not any(values[:-1]):
        raise UsageError("--tensor-split values must be numbers from 0 to 1e6 (shares, e.g. 2,1,1) and give the workers something")
    return values


def layers_on_workers(n_layer: int, shares: Sequence[float]) -> int:
    """`n_gpu_layers` for llama.cpp: the workers' fraction of the n_layer + 1 (output) layers, at least 1."""
    total = sum(shares)
    frac = sum(shares[:-1]) / total
    return min(n_layer + 1, max(1, round((n_layer + 1) * frac)))


def with_local_tail(n_layer: int, n_gpu: int, split: list[float], tail: int) -> tuple[int, list[float]]:
    """(n_gpu_layers, tensor_split) that also put the last `tail` layers and the output norm on a final local device.

    llama.cpp gives device d the layers whose fraction of the offloaded range
    falls below its cumulative share; half-layer margins keep float rounding
    from moving a boundary layer.
    """
    on_workers = max(1, min(n_gpu, n_layer - tail))
    total = sum(split)
    scaled = [v * (on_workers - 0.5) / total for v in split]
    return on_workers + tail + 1, scaled + [tail + 1.5]


def device_split(workers: Sequence[WorkerInfo], shares: Sequence[float]) -> list[float]:
    """Each worker's share divided among its devices by their free memory."""
    out: list[float] = []
    for w, share in zip(workers, shares[:-1], strict=True):
        free = [f for f, _ in w.memory]
        total = sum(free)
        out += [share * (f / total if total else 1 / len(free)) for f in free]
    return out


@dataclass
class Placement:
    """The plan for one target model, and afterwards what llama.cpp reported."""

    workers: list[WorkerInfo]
    devices: list[list[int]]
    shares: list[float]
    n_layer: int
    n_gpu_layers: int
    tensor_split: list[float]
    local_free: int
    local_tail: int = 0  # last layers kept on this machine (MTP_TAIL for an MTP assistant)
    log: list[str] = field(default_factory=list)
    _overrides: object = None  # the ctypes override array: llama.cpp keeps a pointer to it

    @classmethod
    def plan(cls, spec: str, target: Path, tensor_split: str | None = None, probe_timeout: float = 3.0,
             local_tail: int = 0) -> "Placement":
        """Probe the workers (bounded time), register them with ggml, decide the split.

        `local_tail` keeps the target's last layers here too (for an MTP assistant, which reads their KV).
        """
        from gemma_cli.gguf_meta import read_gguf

        endpoints = parse_endpoints(spec)
        explicit = parse_tensor_split(tensor_split, len(endpoints))
        rpc.require_rpc()
        workers = [probe(ep, probe_timeout) for ep in endpoints]
        info = read_gguf(target)
        n_layer = int(info.arch_key("block_count", 0) or 0)
        if n_layer <= 0:
            raise UsageError(f"{target.name}: no block_count in its metadata; cannot split it across workers")
        devices = rpc.add_workers(workers)
        local_free, _ = rpc.device_memory(rpc.local_cpu_device())
        shares = explicit or [float(w.free_bytes) for w in workers] + [float(local_free)]
        n_gpu = layers_on_workers(n_layer, shares)
        split = device_split(workers, shares)
        if local_tail:
            if n_layer <= local_tail:
                raise UsageError(f"{target.name} has {n_layer} layers: too few to split across workers with MTP drafting")
            n_gpu, split = with_local_tail(n_layer, n_gpu, split, local_tail)
        return cls(workers, devices, shares, n_layer, n_gpu, split, local_free, local_tail)

    def model_kwargs(self) -> dict:
        """Keyword arguments for `llama.Model` (the target only: drafters stay local)."""
        if self._overrides is None:
            class Override(ctypes.Structure):
                _fields_ = [("pattern", ctypes.c_char_p), ("buft", ctypes.c_void_p)]

            cpu_buft = rpc.ggml().ggml_backend_dev_buffer_type(rpc.local_cpu_device())
            self._overrides = (Override * 2)(Override(LOCAL_OUTPUT, cpu_buft), Override(None, None))
        tail = [rpc.local_cpu_device()] if self.local_tail else []
        return {
            "n_gpu_layers": self.n_gpu_layers,
            "devices": [d for devs in self.devices for d in devs] + tail,
            "tensor_split": self.tensor_split,
            "buft_overrides": ctypes.addressof(self._overrides),
        }

    @contextlib.contextmanager
    def loading(self) -> Iterator[None]:
        """Around model + context creation: record llama.cpp's placement log, then harden the sockets."""
        from gemma_cli.engine.llama import log_lines

        with log_lines(lambda ln: "assigned to device" in ln or "buffer size" in ln) as lines:
            try:
                yield
            finally:
                self.log.extend(lines)
        rpc.harden_connections([w.endpoint for w in self.workers])

    # -- reporting ------------------------------------------------------------------
    def _owner(self, device: str) -> str:
        """Buffer 'RPC0[127.0.0.1:50052]' (per-server index) or device 'RPC3' -> the worker's text; else this machine."""
        name, _, rest = device.partition("[")
        for w, devs in zip(self.workers, self.devices, strict=True):
            if rest.rstrip("]") == w.endpoint.address or (not rest and name in {rpc.device_name(d) for d in devs}):
                return w.endpoint.text
        return "this machine"

    def summary(self) -> dict[str, dict]:
        """Per place: layers, MiB of weights / KV / compute buffers (from llama.cpp's log)."""
        places: dict[str, dict] = {"this machine": {"layers": [], "model": 0.0, "KV": 0.0, "compute": 0.0}}
        for w in self.workers:
            places[w.endpoint.text] = {"layers": [], "model": 0.0, "KV": 0.0, "compute": 0.0}
        for line in self.log:
            m = _LAYER.search(line)
            if m:
                places[self._owner(m.group(2))]["layers"].append(int(m.group(1)))
                continue
            m = _BUFFER.search(line)
            if m and not line.lstrip().startswith("~"):
                places[self._owner(m.group(1))][m.group(2)] += float(m.group(3))
        return places

    def describe(self) -> list[str]:
        """Human lines for --verbose: where each part of the model lives."""
        out = []
        for place, d in self.summary().items():
            worker = next((w for w in self.workers if w.endpoint.text == place), None)
            layers = _ranges(d["layers"], self.n_layer)
            if place == "this machine":
                layers = "embeddings, output projection" + (f", {layers}" if layers != "none" else "")
            mem = f"{worker.free_bytes / 2**30:.1f} of {worker.total_bytes / 2**30:.1f} GiB free" if worker else ""
            out.append(
                f"{place}: {layers}; weights {d['model']:.1f} MiB, KV {d['KV']:.1f} MiB, compute {d['compute']:.1f} MiB"
                + (f"; {mem} before loading" if mem else "")
            )
        return out


def _ranges(layers: list[int], n_layer: int) -> str:
    """[0,1,2,5,6,26] with n_layer 26 -> 'layers 0-2, 5-6, output norm' (the projection itself stays local)."""
    blocks = sorted(i for i in layers if i < n_layer)
    parts: list[str] = []
    for i in blocks:
        if parts and parts[-1][1] == i - 1:
            parts[-1][1] = i
        else:
            parts.append([i, i])
    text = ", ".join(f"{a}-{b}" if a != b else f"{a}" for a, b in parts)
    text = f"layers {text}" if text else ""
    if n_layer in layers:
        text = f"{text}, output norm" if text else "output norm"
    return text or "none"
