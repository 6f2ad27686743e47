"""`gemma doctor` through the real CLI in a subprocess: fields, statuses, exit codes."""

from __future__ import annotations

import http.server
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
from importlib import metadata
from pathlib import Path

import pytest

from gemma_cli import doctor
from gemma_cli.doctor import FAIL, INFO, OK, WARN

GEMMA = [sys.executable, "-m", "gemma_cli"]
CHECKS = ["llama.cpp", "gpu", "rpc", "cpu", "cpu-repack", "store", "disk", "hub"]


def closed_port() -> int:
    """A local port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_doctor(*args: str, env: dict[str, str] | None = None, **overrides: str) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "GEMMA_"))}
    base.update({"NO_COLOR": "1", "HF_HUB_DISABLE_TELEMETRY": "1"})
    base.update(env or {})
    base.update(overrides)
    return subprocess.run(GEMMA + ["doctor", *args], capture_output=True, text=True, env=base, timeout=120)


def checks_of(proc: subprocess.CompletedProcess) -> dict[str, dict]:
    report = json.loads(proc.stdout)
    return {c["name"]: c for c in report["checks"]}


@pytest.fixture()
def store(tmp_path: Path) -> Path:
    return tmp_path / "store"


def test_healthy_with_unreachable_hub_is_exit_0_and_a_warning(store: Path) -> None:
    endpoint = f"http://127.0.0.1:{closed_port()}"
    proc = run_doctor("--json", GEMMA_MODELS=str(store), HF_ENDPOINT=endpoint)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["ok"] is True
    checks = checks_of(proc)
    assert list(checks) == CHECKS
    assert all({"name", "status", "summary", "hint", "details"} <= set(c) for c in checks.values())
    llama = checks["llama.cpp"]
    assert llama["status"] == OK
    assert llama["details"]["version"] == metadata.version("llama-cpp-python")
    assert llama["details"]["system_info"].startswith("CPU :")
    import llama_cpp

    gpu = checks["gpu"]  # what this very build says, and a status that follows from it
    assert gpu["details"]["gpu_offload"] is bool(llama_cpp.llama_supports_gpu_offload())
    # An RPC-enabled CPU build reports offload support (to remote workers), but no local GPU:
    # no GPU backend compiled in and no GPU device means CPU-only, whatever the offload flag says.
    local_gpu = bool(gpu["details"]["backends"]) or any(
        d.get("type") in ("gpu", "igpu") for d in gpu["details"]["devices"] or [])
    rpc_only = bool(llama_cpp.llama_supports_rpc()) and not local_gpu
    if gpu["details"]["gpu_offload"] and not rpc_only:
        assert gpu["status"] in (OK, WARN) and "GPU offload" in gpu["summary"]
    else:
        assert gpu["status"] == "info" and "CPU-only" in gpu["summary"] and "GGML_CUDA" in gpu["hint"]
    assert checks["store"]["status"] == OK and checks["store"]["details"]["path"] == str(store)
    assert checks["disk"]["details"]["free_bytes"] > 0
    hub = checks["hub"]
    assert hub["status"] == WARN
    assert hub["details"]["endpoint"] == endpoint and hub["details"]["reachable"] is False
    assert "gemma3:270m" in hub["summary"]  # why it is only a warning: the default model works offline


def test_text_output_is_plain_when_piped(store: Path) -> None:
    proc = run_doctor(GEMMA_MODELS=str(store), HF_HUB_OFFLINE="1")
    assert proc.returncode == 0, proc.stderr
    assert "\x1b[" not in proc.stdout
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("gemma-cli ")
    names = [ln.split()[1] for ln in lines[1:] if not ln.startswith(" ")]
    assert names == CHECKS
    assert any(ln.startswith("ok") and " llama.cpp " in ln for ln in lines)
    assert proc.stderr == ""


def test_offline_mode_does_not_contact_the_endpoint(store: Path) -> None:
    hits: list[str] = []
    with _server(hits) as endpoint:
        proc = run_doctor("--json", GEMMA_MODELS=str(store), HF_ENDPOINT=endpoint, HF_HUB_OFFLINE="1")
    assert proc.returncode == 0, proc.stderr
    hub = checks_of(proc)["hub"]
    assert hub["details"]["offline"] is True and "reachable" not in hub["details"]
    assert "offline mode" in hub["summary"]
    assert hits == []


class _Handler(http.server.BaseHTTPRequestHandler):
    hits: list[str]

    def do_HEAD(self) -> None:  # noqa: N802 - http.server's naming
        self.hits.append(self.command + " " + self.path)
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


class _server:
    def __init__(self, hits: list[str]) -> None:
        handler = type("H", (_Handler,), {"hits": hits})
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)

    def __enter__(self) -> str:
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def test_reachable_endpoint_is_ok_and_gets_a_head_request(store: Path) -> None:
    hits: list[str] = []
    with _server(hits) as endpoint:
        proc = run_doctor("--json", GEMMA_MODELS=str(store), HF_ENDPOINT=endpoint + "/")
    assert proc.returncode == 0, proc.stderr
    hub = checks_of(proc)["hub"]
    assert hub["status"] == OK and hub["details"]["reachable"] is True
    assert hub["details"]["endpoint"] == endpoint
    assert hits == ["HEAD /"]


def test_store_that_is_a_file_fails_with_a_hint(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    proc = run_doctor("--json", GEMMA_MODELS=str(blocker), HF_HUB_OFFLINE="1")
    assert proc.returncode == 1
    report = json.loads(proc.stdout)
    assert report["ok"] is False
    store = checks_of(proc)["store"]
    assert store["status"] == FAIL and "not a directory" in store["summary"]
    assert "GEMMA_MODELS" in store["hint"]
    assert proc.stderr.strip() == "Error: 1 check(s) failed: store; see the hints above"


def test_store_under_a_file_cannot_be_created(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    proc = run_doctor(GEMMA_MODELS=str(blocker / "models"), HF_HUB_OFFLINE="1")
    assert proc.returncode == 1
    assert "FAIL  store" in proc.stdout and "cannot be created" in proc.stdout
    assert "-> set GEMMA_MODELS" in proc.stdout


def _read_only_bind_works(path: Path) -> bool:
    probe = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                            f"mount --bind '{path}' '{path}' && mount -o remount,ro,bind '{path}'"],
                           capture_output=True, timeout=30) if shutil.which("unshare") else None
    return probe is not None and probe.returncode == 0


def test_read_only_store_fails(tmp_path: Path) -> None:
    """Permissions for a normal user; root writes through them, so root gets a read-only bind mount
    (in a private mount namespace), or else sysfs, where not even root can create a file."""
    ro = tmp_path / "ro"
    ro.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "GEMMA_"))}
    env.update(NO_COLOR="1", HF_HUB_OFFLINE="1")
    if os.geteuid() != 0:
        ro.chmod(0o555)
        try:
            proc = run_doctor("--json", GEMMA_MODELS=str(ro), HF_HUB_OFFLINE="1")
        finally:
            ro.chmod(0o755)
    elif _read_only_bind_works(ro):
        script = f"mount --bind '{ro}' '{ro}' && mount -o remount,ro,bind '{ro}' && exec \"$@\""
        proc = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh",
                               *GEMMA, "doctor", "--json"], capture_output=True, text=True, timeout=120,
                              env={**env, "GEMMA_MODELS": str(ro)})
    else:
        ro = Path("/sys/kernel")
        proc = run_doctor("--json", GEMMA_MODELS=str(ro), HF_HUB_OFFLINE="1")
    assert proc.returncode == 1, proc.stderr
    store = checks_of(proc)["store"]
    assert store["status"] == FAIL and f"{ro} is not writable" in store["summary"], store
    assert "GEMMA_MODELS" in store["hint"]


def test_model_fit_reports_sizes_and_kv_that_scales_with_ctx(store: Path, tiny_model: Path) -> None:
    small = run_doctor(str(tiny_model), "--json", "--ctx", "512", GEMMA_MODELS=str(store), HF_HUB_OFFLINE="1")
    large = run_doctor(str(tiny_model), "--json", "--ctx", "1024", GEMMA_MODELS=str(store), HF_HUB_OFFLINE="1")
    assert small.returncode == 0 and large.returncode == 0, small.stderr + large.stderr
    a, b = checks_of(small)["model"], checks_of(large)["model"]
    assert a["status"] == OK
    assert a["details"]["weights_bytes"] == tiny_model.stat().st_size
    assert a["details"]["kv_bytes"] > 0
    assert b["details"]["kv_bytes"] == 2 * a["details"]["kv_bytes"]
    assert a["details"]["needed_bytes"] < a["details"]["available_bytes"]


def test_model_too_large_for_memory_fails(tmp_path: Path, tiny_model: Path) -> None:
    huge = tmp_path / "huge.gguf"
    huge.write_bytes(tiny_model.read_bytes())
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    os.truncate(huge, 2 * ram)  # sparse: a valid header followed by "weights" twice the size of RAM
    if huge.stat().st_blocks * 512 > 64 << 20:
        pytest.skip("this filesystem does not create sparse files")
    proc = run_doctor(str(huge), "--json", GEMMA_MODELS=str(tmp_path / "store"), HF_HUB_OFFLINE="1")
    assert proc.returncode == 1
    model = checks_of(proc)["model"]
    assert model["status"] == FAIL and "does not fit" in model["summary"]
    assert model["details"]["weights_bytes"] == 2 * ram
    assert "--ctx" in model["hint"]
    assert "model" in proc.stderr


def test_missing_model_fails_and_names_it(tmp_path: Path) -> None:
    missing = tmp_path / "nope.gguf"
    proc = run_doctor(str(missing), GEMMA_MODELS=str(tmp_path / "store"), HF_HUB_OFFLINE="1")
    assert proc.returncode == 1
    assert "FAIL  model" in proc.stdout and str(missing) in proc.stdout


def test_bad_usage_is_exit_2(store: Path) -> None:
    proc = run_doctor("--ctx", "0", GEMMA_MODELS=str(store))
    assert proc.returncode == 2
    assert "--ctx must be positive" in proc.stderr and "Traceback" not in proc.stderr


def test_cpu_repack_is_off_by_default_and_the_opt_in_is_offered_where_safe(store: Path) -> None:
    proc = run_doctor("--json", GEMMA_MODELS=str(store), HF_HUB_OFFLINE="1", GEMMA_CPU_REPACK="")
    repack = checks_of(proc)["cpu-repack"]
    assert repack["details"]["cpu_repack"] is False and repack["details"]["source"] == "default"
    if repack["details"]["build_has_amx"]:  # never suggested where the AMX path would crash
        assert repack["status"] == OK and not repack["hint"]
    else:
        assert repack["status"] == INFO and "GEMMA_CPU_REPACK=1" in repack["hint"]


def test_cpu_repack_override_is_reported(store: Path) -> None:
    proc = run_doctor("--json", GEMMA_MODELS=str(store), HF_HUB_OFFLINE="1", GEMMA_CPU_REPACK="1")
    repack = checks_of(proc)["cpu-repack"]
    assert repack["details"]["cpu_repack"] is True and repack["details"]["source"] == "GEMMA_CPU_REPACK"
    assert repack["status"] == (WARN if repack["details"]["build_has_amx"] else OK)


@pytest.mark.skipif(not Path("/proc/cpuinfo").exists(), reason="needs /proc/cpuinfo")
def test_cpu_features_come_from_proc_cpuinfo() -> None:
    features = doctor.cpu_features()
    assert features is not None
    text = Path("/proc/cpuinfo").read_text()
    raw = set()
    for line in text.splitlines():
        if line.split(":")[0].strip() in ("flags", "Features"):
            raw = set(line.split(":", 1)[1].split())
            break
    for flag in ("avx2", "avx512f", "amx_tile", "fma"):
        assert (flag in raw) == (flag in features)
    assert ("pni" in raw) == ("sse3" in features)


def test_build_features_parse_every_backend_section() -> None:
    info = "CPU : SSE3 = 1 | AVX2 = 1 | AVX512 = 0 | CUDA : ARCHS = 890 | USE_GRAPHS = 1 | Metal : EMBED_LIBRARY = 1 |"
    parsed = doctor.build_features(info)
    assert parsed == {
        "CPU": {"SSE3": "1", "AVX2": "1", "AVX512": "0"},
        "CUDA": {"ARCHS": "890", "USE_GRAPHS": "1"},
        "Metal": {"EMBED_LIBRARY": "1"},
    }


def test_a_build_needing_instructions_the_cpu_lacks_is_a_failure() -> None:
    probe = {"system_info": "CPU : AVX2 = 1 | AVX512 = 1 | "}
    check = doctor.check_cpu({"avx", "avx2", "fma"}, probe)
    assert check.status == FAIL
    assert check.details["build_needs_missing"] == ["AVX512"]
    assert "GGML_NATIVE=OFF" in check.hint
    assert doctor.check_cpu({"avx2", "avx512f"}, probe).status == OK


def test_an_unused_avx512_gets_the_rebuild_command_that_keeps_rpc() -> None:
    portable = "CPU : SSE3 = 1 | AVX = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | "
    for rpc in (True, False):
        cpu = {"sse3", "ssse3", "avx", "avx2", "f16c", "fma", "avx512f"}
        check = doctor.check_cpu(cpu, {"system_info": portable, "rpc": rpc})
        assert check.status == INFO and "does not use avx512f" in check.summary
        assert "--no-cache-dir" in check.hint and "-DGGML_NATIVE=ON" in check.hint
        assert ("-DGGML_RPC=on" in check.hint) is rpc


def test_llama_probe_failure_is_reported_not_raised() -> None:
    check = doctor.check_llama({"error": "llama.cpp crashed the process on import (SIGILL)", "signal": "SIGILL"})
    assert check.status == FAIL and "GGML_NATIVE=OFF" in check.hint


def test_llama_crashing_on_import_is_reported_and_the_doctor_survives(tmp_path: Path, store: Path) -> None:
    """A llama.cpp built for a newer CPU dies with SIGILL on import; the probe child takes the hit."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(
        "import os, signal, sys\n"
        "if sys.argv[-1:] == ['--probe-llama']:\n"
        "    os.kill(os.getpid(), signal.SIGILL)\n"
    )
    proc = run_doctor("--json", GEMMA_MODELS=str(store), HF_HUB_OFFLINE="1", PYTHONPATH=str(hook))
    assert proc.returncode == 1
    checks = checks_of(proc)
    assert list(checks) == CHECKS
    llama = checks["llama.cpp"]
    assert llama["status"] == FAIL and "SIGILL" in llama["summary"]
    assert "GGML_NATIVE=OFF" in llama["hint"]
    assert checks["store"]["status"] == OK  # the other checks still ran
    assert "llama.cpp" in proc.stderr


@pytest.mark.parametrize("url, why", [("http://[::1", "Invalid IPv6 URL"), ("http://host:99999", "Port out of range"),
                                      ("http://a\x01b", "control characters")])
def test_a_malformed_hf_endpoint_is_a_failed_check_and_a_usage_error_for_pull(store: Path, url: str, why: str) -> None:
    """huggingface_hub cannot even import with such a URL: doctor reports it as its hub check, pull as one line."""
    from hub_server import assert_one_line_error, gemma_env, run_gemma

    proc = run_doctor("--json", GEMMA_MODELS=str(store), HF_ENDPOINT=url)
    hub = checks_of(proc)["hub"]
    assert proc.returncode == 1 and hub["status"] == FAIL and why in hub["summary"], proc.stderr
    assert "bug" not in proc.stderr
    pulled = run_gemma(gemma_env(store, url), "pull", "gemma4:e2b")
    assert_one_line_error(pulled, "HF_ENDPOINT", why, code=2)


@pytest.mark.parametrize("timeout", ["inf", "nan", "1e308", "0"])
def test_doctor_timeout_must_be_real_seconds(store: Path, timeout: str) -> None:
    from hub_server import assert_one_line_error

    assert_one_line_error(run_doctor("--timeout", timeout, GEMMA_MODELS=str(store)), "--timeout", code=2)


def test_an_os_error_from_the_environment_is_one_line_not_a_bug(tmp_path: Path) -> None:
    """GEMMA_MODELS under /proc (or a model file removed while it loads) is the machine's state, not a bug."""
    from hub_server import assert_one_line_error, gemma_env, run_gemma

    proc = run_gemma(gemma_env(Path("/proc/self/no-such-store")), "pull", "gemma3:270m")
    line = assert_one_line_error(proc, "/proc/self/no-such-store", "no such file")
    assert "bug" not in line


def test_disk_amounts_below_a_gib_read_in_mib() -> None:
    """A 300 KB volume read "0.0 GiB free of 0.0 GiB" (probe, session 18)."""
    from gemma_cli.doctor.storage import _amount

    assert _amount(300 << 10) == "0.3 MiB" and _amount(5 << 30) == "5.0 GiB" and _amount(0) == "0.0 MiB"
