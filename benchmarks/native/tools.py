"""Run llama.cpp's own tools (built by build.sh) on one prompt and read their figures.

Why subprocesses: the point is to measure llama.cpp's C++ loop exactly as its
users run it, with nothing of ours in between. Each run loads the model afresh
(not timed: both tools time decoding only).

What each figure means, so the comparison with gemma is like for like:
- `llama-speculative-simple` prints "decoded N tokens in T seconds": wall time of
  the whole decode loop (drafting, verification, sampling) after the prompt.
- `llama-completion` (plain decoding) prints llama.cpp's perf counters: "eval
  time = T ms / R runs", the time inside single-token decodes only, so its rate
  leaves out sampling and printing (slightly flattering native plain).
Both stop at end-of-generation, as gemma does; rates use the tokens generated.
Each also returns the text it generated: batched and one-token passes round
differently, so at a near-tie two greedy loops may go on to different texts,
and a rate is only comparable with the rate of the same text.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

VERSION = "0.3.36"
REPO = Path(__file__).resolve().parents[2]


def native_env() -> dict[str, str]:
    """This environment without what gemma-cli set for its own OpenMP threads: llama.cpp's tools run as their
    users run them (an earlier version inherited gemma's `OMP_WAIT_POLICY=passive` and halved both sides)."""
    try:
        from gemma_cli.engine.llama._lib import injected_env
    except ImportError:
        injected_env = {}
    return {k: v for k, v in os.environ.items() if k not in injected_env}


class NativeError(RuntimeError):
    """A native tool is missing, failed, or printed no figures."""


@dataclass(frozen=True)
class NativeConfig:
    """One llama.cpp configuration: `tool` is "completion" (plain) or "speculative"."""

    label: str
    tool: str
    args: tuple[str, ...] = ()

    @property
    def is_plain(self) -> bool:
        return self.tool == "completion"


def _map(kind: str, n: int, m: int) -> NativeConfig:
    flag = kind.replace("ngram-", "")
    return NativeConfig(f"{flag}-{n}/{m}", "speculative",
                        ("--spec-type", kind, f"--spec-{kind}-size-n", str(n), f"--spec-{kind}-size-m", str(m)))


PLAIN = NativeConfig("plain", "completion")
NGRAM_CONFIGS: tuple[NativeConfig, ...] = (
    NativeConfig("mod", "speculative", ("--spec-type", "ngram-mod")),  # its defaults: match 24, draft 48-64
    _map("ngram-map-k", 3, 16),
    _map("ngram-map-k", 4, 16),
    _map("ngram-simple", 3, 16),
    _map("ngram-simple", 4, 16),
)


@dataclass(frozen=True)
class NativeResult:
    tokens_per_s: float
    generated_tokens: int
    draft_proposed: int
    draft_accepted: int
    prompt_tokens: int | None
    wall_s: float  # the whole process, model load included
    extra: dict[str, float] = field(default_factory=dict)
    text: str = ""  # what it generated (stdout, the echoed prompt cut off): greedy texts differ at near-ties

    @property
    def acceptance_rate(self) -> float:
        return self.draft_accepted / self.draft_proposed if self.draft_proposed else 0.0


# What .ci/run's portable build (-DGGML_NATIVE=OFF, AVX2) reports; anything more was compiled for this CPU.
PORTABLE_FEATURES = frozenset({"SSE3", "SSSE3", "AVX", "AVX2", "F16C", "FMA", "BMI2", "LLAMAFILE", "OPENMP", "REPACK"})
_FEATURE = re.compile(r"\b([A-Z][A-Z0-9_]*) = 1\b")


def cpu_features(system_info: str) -> frozenset[str]:
    """The CPU features a llama.cpp build was compiled with, from its system_info line ("AVX2 = 1 | ...")."""
    cpu = system_info.split("CPU :", 1)[-1].split("\n", 1)[0]
    return frozenset(_FEATURE.findall(cpu))


def wheel_features() -> frozenset[str]:
    """The CPU features of the llama.cpp that gemma-cli loads (the installed llama-cpp-python)."""
    from gemma_cli.engine.llama import system_info

    return cpu_features(system_info())


def flavor(features: frozenset[str]) -> str:
    """build.sh's flavor for a build with these CPU features: "portable" as .ci/run builds, else "native"."""
    return "portable" if features <= PORTABLE_FEATURES else "native"


def wheel_flavor() -> str:
    """The installed wheel's flavor: build.sh builds the native tools to match it."""
    return flavor(wheel_features())


def bin_dir(explicit: str | Path | None = None, flavor: str | None = None) -> Path:
    """Where build.sh put the tools: --native-bin, else $GEMMA_NATIVE_DIR, else <repo>/.bench/native,
    in the build folder of the wheel's flavor (build-<version> or build-<version>-native)."""
    if explicit:
        return Path(explicit).expanduser()
    root = Path(os.environ.get("GEMMA_NATIVE_DIR") or REPO / ".bench" / "native")
    suffix = "-native" if (flavor or wheel_flavor()) == "native" else ""
    return root / f"build-{VERSION}{suffix}" / "bin"


def tools_features(bins: Path, model: Path, threads: int = 2) -> frozenset[str]:
    """The CPU features the native tools were compiled with: the system_info line llama-completion logs."""
    cmd = [str(bins / "llama-completion"), "-m", str(model), "-p", "a", "-n", "1", "-t", str(threads), "-no-cnv"]
    proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, errors="replace", timeout=300,
                          env=native_env())
    line = next((ln for ln in (proc.stdout + proc.stderr).splitlines() if "system_info:" in ln), "")
    if not line:
        raise NativeError(f"{bins / 'llama-completion'} printed no system_info (exit {proc.returncode})")
    return cpu_features(line)


def check_tools(bins: Path) -> None:
    for tool in ("llama-speculative-simple", "llama-completion"):
        if not (bins / tool).is_file():
            raise NativeError(f"{bins / tool} not found; build it with benchmarks/native/build.sh "
                              f"(it builds the {wheel_flavor()} flavor, as the installed wheel), or pass --native-bin")


_DECODED = re.compile(r"decoded\s+(\d+) tokens in\s+([\d.]+) seconds")
_ENCODED = re.compile(r"encoded\s+(\d+) tokens in")
_DRAFTED = re.compile(r"n_drafted\s*=\s*(\d+)")
_ACCEPT = re.compile(r"n_accept\s*=\s*(\d+)")
_EVAL = re.compile(r"(?<!prompt )eval time =\s*([\d.]+) ms /\s*(\d+) runs")
_PROMPT_EVAL = re.compile(r"prompt eval time =\s*([\d.]+) ms /\s*(\d+) tokens")


def parse_speculative(text: str) -> tuple[float, int, int, int, int | None]:
    """(tok/s, generated, drafted, accepted, prompt tokens) from llama-speculative-simple's log."""
    dec, drafted, accepted = _DECODED.search(text), _DRAFTED.search(text), _ACCEPT.search(text)
    if not (dec and drafted and accepted):
        raise NativeError("llama-speculative-simple printed no decode summary")
    n, secs = int(dec[1]), float(dec[2])
    enc = _ENCODED.search(text)
    # the prompt's last token is decoded in the loop, so the encode count is one short
    return (n / secs if secs > 0 else 0.0), n, int(drafted[1]), int(accepted[1]), (int(enc[1]) if enc else None)


def parse_completion(text: str) -> tuple[float, int, int | None]:
    """(tok/s, generated, prompt tokens) from llama-completion's perf counters (last report wins)."""
    evals = _EVAL.findall(text)
    if not evals:
        raise NativeError("llama-completion printed no eval timings")
    ms, runs = float(evals[-1][0]), int(evals[-1][1])
    prompts = _PROMPT_EVAL.findall(text)
    return (runs / (ms / 1000.0) if ms > 0 else 0.0), runs + 1, (int(prompts[-1][1]) if prompts else None)


def run(
    bins: Path,
    config: NativeConfig,
    model: Path,
    prompt_file: Path,
    *,
    tokens: int,
    threads: int,
    n_ctx: int = 4096,
    extra_args: tuple[str, ...] = (),
    timeout: float = 600.0,
) -> NativeResult:
    """One greedy generation of up to `tokens` tokens with `config`."""
    common = ["-m", str(model), "-f", str(prompt_file), "-n", str(tokens), "-t", str(threads), "-tb", str(threads),
              "-c", str(n_ctx), "-b", str(n_ctx), "--temp", "0", "--seed", "1"]
    if config.is_plain:
        cmd = [str(bins / "llama-completion"), *common, "-no-cnv", "--no-display-prompt", *config.args, *extra_args]
    else:
        cmd = [str(bins / "llama-speculative-simple"), *common, *config.args, *extra_args]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, errors="replace", timeout=timeout,
                              env=native_env())
    except subprocess.TimeoutExpired:
        raise NativeError(f"{config.label}: timed out after {timeout:.0f}s") from None
    wall = time.perf_counter() - t0
    log = proc.stdout + "\n" + proc.stderr
    if proc.returncode != 0:
        tail = " | ".join(line for line in proc.stderr.strip().splitlines()[-3:])
        raise NativeError(f"{config.label}: {Path(cmd[0]).name} exited with {proc.returncode}: {tail}")
    text = generated_text(proc.stdout, prompt_file.read_text(encoding="utf-8", errors="replace"))
    if config.is_plain:
        rate, n, prompt_n = parse_completion(log)
        return NativeResult(rate, n, 0, 0, prompt_n, wall, text=text)
    rate, n, drafted, accepted, enc = parse_speculative(log)
    return NativeResult(rate, n, drafted, accepted, None if enc is None else enc, wall, text=text)


def generated_text(stdout: str, prompt: str) -> str:
    """stdout without the prompt `llama-speculative-simple` echoes first (`llama-completion` runs with
    --no-display-prompt, so there is none to cut)."""
    if stdout.startswith(prompt):
        return stdout[len(prompt) :]
    tail = prompt[-64:]
    at = stdout.find(tail, max(0, len(prompt) - len(tail) - 64)) if tail else -1  # the echo's end, not an earlier repeat
    return stdout[at + len(tail) :] if at >= 0 else stdout


def llama_bench_tg(bins: Path, model: Path, *, tokens: int, threads: int, repetitions: int = 3) -> float:
    """`llama-bench -p 0 -n tokens`: plain decoding's ceiling with no prompt and no sampling (tok/s)."""
    cmd = [str(bins / "llama-bench"), "-m", str(model), "-p", "0", "-n", str(tokens), "-t", str(threads),
           "-r", str(repetitions), "-o", "csv"]
    proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, errors="replace", timeout=600,
                          env=native_env())
    if proc.returncode != 0:
        raise NativeError(f"llama-bench exited with {proc.returncode}: {proc.stderr.strip().splitlines()[-1:]}")
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    header = [h.strip('"') for h in lines[0].split(",")]
    row = [v.strip('"') for v in lines[-1].split(",")]
    return float(row[header.index("avg_ts")])
