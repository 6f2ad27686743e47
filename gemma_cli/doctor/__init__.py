"""`gemma doctor`: health checks as data, so the CLI renders them and tests read them.

Each check returns a `Check` (ok / warn / fail / info, a one-line summary, a
hint saying what to do, machine-readable details). `run_doctor` gathers them
into a `Report`; any "fail" makes the command exit non-zero.

llama.cpp is probed in a child process (`python -m gemma_cli.doctor
--probe-llama`): a build compiled for instructions this CPU lacks dies with
SIGILL on first use, and the doctor must survive that to say so.
"""

from __future__ import annotations

from gemma_cli import __version__, config
from gemma_cli.doctor.fit import check_model, kv_bytes, memory
from gemma_cli.doctor.hardware import (
    build_features,
    check_cpu,
    check_gpu,
    check_llama,
    check_repack,
    check_rpc,
    cpu_features,
    probe_llama,
)
from gemma_cli.doctor.hub import check_hub
from gemma_cli.doctor.report import FAIL, INFO, OK, WARN, Check, DoctorFailed, Report
from gemma_cli.doctor.storage import catalog_model_names, check_disk, check_store, store_model_names


def run_doctor(model: str | None = None, n_ctx: int = 4096, hub_timeout: float = 3.0) -> Report:
    """Every check, in the order a user would fix things."""
    root = config.models_dir()
    probe = probe_llama()
    features = cpu_features()
    checks = [
        check_llama(probe),
        check_gpu(probe),
        check_rpc(probe),
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


__all__ = [
    "OK", "WARN", "FAIL", "INFO", "Check", "Report", "DoctorFailed", "run_doctor", "require_ok",
    "probe_llama", "build_features", "check_llama", "check_gpu", "check_rpc", "cpu_features", "check_cpu", "check_repack",
    "check_store", "check_disk", "store_model_names", "catalog_model_names", "check_hub",
    "memory", "kv_bytes", "check_model",
]
