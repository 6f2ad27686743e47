"""The verification-cost curve measured on this machine, kept between processes.

How long a pass of b tokens takes is a property of the machine, the model
file, the thread count and the llama.cpp build, and it is far from linear on
a CPU (Gemma 3 270M on a 2-core EPYC: 2 tokens 1.7x one, 4 tokens 2.1x, 3
tokens 2.4x: odd sizes cost more). A fresh process (`gemma run`) that does
not know it prices unmeasured sizes from a prior and pays for trying them;
replayed on the tuning set with this machine's curve, a known curve gave
1.43x plain (geometric mean) against 1.36x from a cold start, median 1.24x
against 1.09x (`benchmarks/suffix_replay.py replay --explore`).

So `attach` seeds an engine's `PassCosts` from the curve saved for the same
key and saves the engine's curve when it closes. Every pass measured in the
new process moves them (`adaptive.observe_pass`), so a machine that got
slower or faster is re-measured as it is used. The file lives in
`$GEMMA_CACHE` (default: the user cache dir); a missing, unreadable or
malformed file, or a malformed entry, is ignored (it is only a prior).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Mapping

from gemma_cli import config

if TYPE_CHECKING:  # pragma: no cover
    from gemma_cli.engine import Engine

FILE_NAME = "pass-costs.json"
MAX_ENTRIES = 64  # keys kept (most recently saved first)
MAX_FILE_BYTES = 1 << 20
MAX_BATCH = 4096  # pass sizes beyond any n_batch we use are not costs we wrote


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cache_key(engine: "Engine", target: Path) -> str:
    """What the costs depend on: this CPU, the model file, threads, batch, repacking, offload, RPC split, the build."""
    from gemma_cli.engine.llama import system_info

    try:
        st = target.stat()
        model = [str(target.resolve()), st.st_size, st.st_mtime_ns]
    except OSError:
        model = [str(target)]
    cfg = engine.config
    parts = [
        _cpu_model(), os.cpu_count(), system_info().strip(), model, engine.ctx.n_threads, engine.ctx.n_batch,
        engine.target.cpu_repack, cfg.n_gpu_layers, cfg.rpc or "", cfg.tensor_split or "",
    ]
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()[:32]


def cache_file() -> Path:
    return config.cache_dir() / FILE_NAME


def _read_all() -> dict[str, dict[str, float]]:
    path = cache_file()
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            return {}
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def _valid_curve(raw: object) -> dict[int, float] | None:
    if not isinstance(raw, dict):
        return None
    curve: dict[int, float] = {}
    for k, v in raw.items():
        try:
            batch = int(k)
        except (TypeError, ValueError):
            return None
        if not 1 <= batch <= MAX_BATCH or isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < 60:
            return None
        curve[batch] = float(v)
    return curve or None


def load(key: str) -> dict[int, float] | None:
    """The saved curve for `key`, {batch_size: seconds}, or None."""
    return _valid_curve(_read_all().get(key))


def save(key: str, curve: Mapping[int, float]) -> None:
    """Store `curve` under `key` (atomic; keeps the MAX_ENTRIES most recent keys). Failures are silent: a cache."""
    clean = _valid_curve({str(b): s for b, s in curve.items()})
    if clean is None or len(clean) < 2:  # only plain passes measured: nothing a later process could use
        return
    entries = {key: {str(b): s for b, s in sorted(clean.items())}}
    for other, value in _read_all().items():
        if other != key and len(entries) < MAX_ENTRIES and isinstance(other, str):
            entries[other] = value
    path = cache_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".pass-costs.", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(entries, f)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError:
        pass


def attach(engine: "Engine", target: Path) -> bool:
    """Seed the engine's pass costs from this machine's saved curve; save them back when it closes.

    Returns whether a saved curve was found (`--verbose` says so).
    """
    key = cache_key(engine, target)
    curve = load(key)  # validated: every batch size >= 1, every time positive and finite
    if curve:
        engine.costs.seed(curve)
    # First load here: measure now; later loads: the sizes the saved curve still lacks (engine/pass_probe.py)
    if engine.probe_pass_costs(saved=curve):
        save(key, engine.costs.curve)
    engine.on_close(lambda: save(key, engine.costs.curve))
    return bool(curve)
