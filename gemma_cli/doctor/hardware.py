"""llama.cpp, GPU, CPU features and weight repacking: what this machine and this build can do.

llama.cpp is probed in a child process (`python -m gemma_cli.doctor
--probe-llama`): a build compiled for instructions this CPU lacks dies with
SIGILL on first use, and the doctor must survive that to say so.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from gemma_cli import config
from gemma_cli.doctor.report import FAIL, INFO, OK, WARN, Check
from gemma_cli.errors import UsageError

# The rebuild every hint below gives: pip's wheel cache ignores CMAKE_ARGS, so it must not reuse a cached wheel.
REINSTALL = "pip install --force-reinstall --no-cache-dir"
PINNED = "llama-cpp-python==0.3.36"  # as pyproject.toml pins it

# llama.cpp build feature (llama_print_system_info) -> the CPU flag it needs,
# in the vocabulary `cpu_features()` returns.
BUILD_NEEDS = {
    "SSE3": "sse3", "SSSE3": "ssse3", "AVX": "avx", "AVX2": "avx2", "F16C": "f16c",
    "FMA": "fma", "BMI2": "bmi2", "AVX_VNNI": "avx_vnni", "AVX512": "avx512f",
    "AVX512_VBMI": "avx512vbmi", "AVX512_VNNI": "avx512_vnni", "AVX512_BF16": "avx512_bf16",
    "AMX_INT8": "amx_int8", "NEON": "neon", "ARM_FMA": "neon", "DOTPROD": "dotprod",
    "MATMUL_INT8": "i8mm", "SVE": "sve", "SME": "sme",
}
# The CPU features worth reporting (what llama.cpp's CPU kernels can use).
FEATURES_THAT_MATTER = (
    "sse3", "ssse3", "avx", "avx2", "f16c", "fma", "bmi2", "avx_vnni", "avx512f", "avx512bw",
    "avx512vbmi", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16",
    "neon", "fp16", "dotprod", "i8mm", "sve", "sme",
)
# /proc/cpuinfo and sysctl spellings -> ours.
_FLAG_ALIASES = {
    "pni": "sse3", "asimd": "neon", "asimdhp": "fp16", "asimddp": "dotprod", "avx1.0": "avx",
    "avx512vnni": "avx512_vnni", "avx512bf16": "avx512_bf16", "feat_dotprod": "dotprod",
    "feat_i8mm": "i8mm", "feat_fp16": "fp16", "feat_sme": "sme", "feat_sve": "sve",
    "amx_tile": "amx_tile", "amxtile": "amx_tile", "amxint8": "amx_int8", "amxbf16": "amx_bf16",
}



# -- llama.cpp (child process) ----------------------------------------------
def probe_payload() -> dict[str, Any]:
    """Runs in the child: everything the doctor wants to know from llama.cpp."""
    from gemma_cli.engine import llama as engine

    payload: dict[str, Any] = dict(engine.capabilities())
    payload["version"] = payload["version"] or _dist_version("llama-cpp-python")
    payload["devices"] = [dict(d) for d in engine.backend_devices()]
    return payload


def _dist_version(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def probe_llama(timeout: float = 120.0) -> dict[str, Any]:
    """Import llama.cpp in a child process; {"error": ...} when it cannot be used."""
    cmd = [sys.executable, "-m", "gemma_cli.doctor", "--probe-llama"]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=os.environ.copy())
    except subprocess.TimeoutExpired:
        return {"error": f"importing llama.cpp did not finish within {timeout:.0f}s"}
    except OSError as exc:
        return {"error": f"cannot start {sys.executable}: {exc.strerror}"}
    if proc.returncode < 0:
        try:
            sig = signal.Signals(-proc.returncode).name
        except ValueError:
            sig = f"signal {-proc.returncode}"
        return {"error": f"llama.cpp crashed the process on import ({sig})", "signal": sig}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
        return {"error": tail[-1] if tail else f"probe exited with status {proc.returncode}"}
    try:
        return json.loads(lines[-1])
    except ValueError:
        return {"error": "unreadable probe output"}


def build_features(system_info: str) -> dict[str, dict[str, str]]:
    """'CPU : AVX2 = 1 | CUDA : ARCHS = 890 | ...' -> {"CPU": {"AVX2": "1"}, "CUDA": {...}}."""
    backends: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    for part in system_info.split("|"):
        part = part.strip()
        if not part:
            continue
        if " : " in part:  # a new backend section starts with "NAME : KEY = VALUE"
            name, _, part = part.partition(" : ")
            current = backends.setdefault(name.strip(), {})
        key, sep, value = part.partition("=")
        if current is not None and sep:
            current[key.strip()] = value.strip()
    return backends


def check_llama(probe: dict[str, Any]) -> Check:
    if "error" in probe:
        hint = f"reinstall it: {REINSTALL} {PINNED}"
        if probe.get("signal") == "SIGILL":
            hint = ("the build uses CPU instructions this machine lacks; rebuild portable: "
                    f'CMAKE_ARGS="-DGGML_NATIVE=OFF" {REINSTALL} {PINNED}')
        return Check("llama.cpp", FAIL, f"llama.cpp cannot be used: {probe['error']}", hint, {"error": probe["error"]})
    backends = build_features(probe.get("system_info", ""))
    cpu = backends.get("CPU", {})
    enabled = " ".join(k for k, v in cpu.items() if v == "1") or "none"
    summary = f"llama-cpp-python {probe.get('version') or 'unknown'}; CPU build features: {enabled}"
    return Check("llama.cpp", OK, summary, None, {
        "version": probe.get("version"), "system_info": probe.get("system_info", ""),
        "backends": sorted(backends), "mmap": probe.get("mmap"),
    })


def check_rpc(probe: dict[str, Any]) -> Check:
    """Whether this build can split models across machines (and, with GEMMA_RPC, whether those workers answer)."""
    from gemma_cli.engine.rpc_protocol import doctor_finding

    status, summary, hint = doctor_finding(None if "error" in probe else probe.get("rpc"), os.environ.get("GEMMA_RPC"))
    return Check("rpc", status, summary, hint)


def check_gpu(probe: dict[str, Any]) -> Check:
    if "error" in probe:
        return Check("gpu", INFO, "unknown (llama.cpp cannot be loaded)")
    backends = sorted(b for b in build_features(probe.get("system_info", "")) if b != "CPU")
    devices = probe.get("devices")
    gpus = [d for d in devices or [] if d.get("type") in ("gpu", "igpu")]
    details = {"gpu_offload": probe.get("gpu_offload", False), "backends": backends, "devices": devices}
    # An RPC-enabled CPU build reports offload support (to remote devices): that is no local GPU.
    if not probe.get("gpu_offload") or (not backends and not gpus and probe.get("rpc")):
        return Check("gpu", INFO, "none: this llama.cpp build is CPU-only", (
            'for a GPU, rebuild llama-cpp-python with CMAKE_ARGS="-DGGML_CUDA=on" (NVIDIA) or '
            '"-DGGML_METAL=on" (Apple), then use --gpu-layers -1'), details)
    if devices is not None and not gpus:
        return Check("gpu", WARN, f"GPU offload compiled in ({', '.join(backends) or 'unknown backend'}) but no GPU device found",
                     "check the driver (nvidia-smi) and that the CUDA runtime libraries are on the library path", details)
    names = ", ".join(f"{d.get('name')} ({d.get('description')})" for d in gpus) if gpus else ", ".join(backends)
    return Check("gpu", OK, f"GPU offload available: {names or 'yes'}; use --gpu-layers -1 to offload all layers", None, details)


# -- CPU ----------------------------------------------------------------------
def _normalise_flags(raw: set[str]) -> set[str]:
    return {_FLAG_ALIASES.get(f, f) for f in (x.lower() for x in raw)}


def cpu_features() -> set[str] | None:
    """The CPU's feature flags in our vocabulary, or None when they cannot be read."""
    if sys.platform.startswith("linux"):
        try:
            text = Path("/proc/cpuinfo").read_text(errors="replace")
        except OSError:
            return None
        for line in text.splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("flags", "Features"):
                return _normalise_flags(set(value.split()))
        return None
    if sys.platform == "darwin":
        flags: set[str] = set()
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(["sysctl", "machdep.cpu.features", "machdep.cpu.leaf7_features"],
                                 capture_output=True, text=True, timeout=5).stdout
            for line in out.splitlines():
                flags |= set(line.partition(":")[2].split())
            out = subprocess.run(["sysctl", "hw.optional"], capture_output=True, text=True, timeout=5).stdout
            for line in out.splitlines():
                key, _, value = line.partition(":")
                if value.strip() == "1":
                    flags.add(key.strip().rsplit(".", 1)[-1])
        return _normalise_flags(flags) or None
    return None


def check_cpu(features: set[str] | None, probe: dict[str, Any]) -> Check:
    machine = platform.machine() or "unknown"
    if features is None:
        return Check("cpu", INFO, f"{machine}: CPU features unreadable on this platform")
    have = [f for f in FEATURES_THAT_MATTER if f in features]
    details: dict[str, Any] = {"machine": machine, "features": have}
    build = build_features(probe.get("system_info", "")).get("CPU", {})
    missing = sorted(k for k, v in build.items() if v == "1" and k in BUILD_NEEDS and BUILD_NEEDS[k] not in features)
    details["build_needs_missing"] = missing
    summary = f"{machine}: {' '.join(have) or 'no SIMD features reported'}"
    if missing:
        return Check("cpu", FAIL, f"{summary}; llama.cpp was built for {', '.join(missing)}, which this CPU lacks",
                     f'rebuild portable: CMAKE_ARGS="-DGGML_NATIVE=OFF" {REINSTALL} {PINNED}',
                     details)
    unused = [f for f in ("avx512f", "amx_int8") if f in features and not any(BUILD_NEEDS.get(k) == f for k, v in build.items() if v == "1")]
    if build and unused:
        # Measured on a 2-core AVX-512 EPYC (Gemma 3 270M): prompt evaluation 1.33x, 16-token verification passes
        # ~1.2x, one-token decoding unchanged.
        flags = "-DGGML_NATIVE=ON" + (" -DGGML_RPC=on" if probe.get("rpc") else "")
        return Check("cpu", INFO, f"{summary}; the build does not use {', '.join(unused)}",
                     "optional: a native build evaluates prompts and long drafts faster here (one-token decoding"
                     f" about the same): CMAKE_ARGS=\"{flags}\" {REINSTALL} --no-deps {PINNED}"
                     + ("; keep GEMMA_CPU_REPACK unset with AMX kernels" if "amx_int8" in unused else ""),
                     details)
    return Check("cpu", OK, summary, None, details)


def check_repack(probe: dict[str, Any], features: set[str] | None) -> Check:
    """The `use_extra_bufts` choice that avoids the AMX decode crash."""
    try:
        override = config.cpu_repack_override()
    except UsageError as exc:
        return Check("cpu-repack", WARN, str(exc), "unset it, or set it to 1 or 0")
    if "error" in probe:
        return Check("cpu-repack", INFO, "unknown (llama.cpp cannot be loaded)")
    repack = bool(probe.get("cpu_repack"))
    amx_build = bool(probe.get("build_has_amx"))
    amx_cpu = features is not None and "amx_int8" in features
    source = "GEMMA_CPU_REPACK" if override is not None else "default"
    details = {"cpu_repack": repack, "source": source, "build_has_amx": amx_build, "cpu_has_amx": amx_cpu}
    state = "on" if repack else "off"
    if repack and amx_build:
        return Check("cpu-repack", WARN, f"CPU weight repacking {state} ({source}) on a build with AMX kernels",
                     "the AMX path can segfault during decode on some CPUs; unset GEMMA_CPU_REPACK (or set it to 0) if gemma crashes",
                     details)
    why = "safe on every build" if not repack else "no AMX kernels in this build"
    hint = None
    if not repack and not amx_build:  # the opt-in is safe here: say what it buys and what it costs
        hint = ("optional: GEMMA_CPU_REPACK=1 makes draft verification cheaper on this build; passes of 4+ rows then"
                " round differently from one-token passes, so near-ties may part from plain decoding more often")
    return Check("cpu-repack", INFO if hint else OK, f"CPU weight repacking {state} ({source}; {why})", hint, details)
