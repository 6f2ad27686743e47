"""Plain vs speculative decoding, measured side by side in one process.

Why alternate: on a laptop or a shared VM the clock speed, the page cache and
other processes drift over minutes, so "all plain runs, then all speculative
runs" measures the drift as much as the drafter. Here every round runs plain
decoding and each speculative variant back to back on the same prompt with
the same loaded `Engine` (switching with `engine.set_draft`), and the speedup
is the median of the per-round ratios, reported with its min-max spread.

Runs are greedy by default; sampled runs use the same seed for both sides
of a round. Greedy, and sampled with deterministic drafts (n-gram), both
sides produce the same text up to near-ties in batched arithmetic (the
engine couples the target's draws to output positions); a drafter model
that samples its proposals gives the same distribution, not the same text.
Stop strings are disabled and the token budget fixed;
an end-of-generation token can still end a run early, so rates always use the
tokens actually generated. The wall clock on some VMs ticks in steps of
milliseconds: runs should last seconds, and `timing_reliable` says whether
they did.
"""

from __future__ import annotations

import resource
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Callable, Sequence

from gemma_cli.bench.workloads import Workload

if TYPE_CHECKING:  # pragma: no cover
    from gemma_cli.engine import DraftConfig, Engine, SamplingParams

#: A run is trusted when it lasts this long: some VMs' wall clock ticks in steps
#: of up to 50 ms (and switches between fine and coarse), so seconds are needed.
RELIABLE_SECONDS = 2.0


def _clock_tick(samples: int = 5) -> float:
    """The wall clock's typical step (1 µs or better on most machines, milliseconds on some VMs)."""
    steps: list[float] = []
    last = time.perf_counter()
    deadline = last + 0.5
    while len(steps) < samples:
        now = time.perf_counter()
        if now != last:
            steps.append(now - last)
            last = now
        if now > deadline:
            break
    return max(statistics.median(steps), 1e-7) if steps else 0.5


CLOCK_TICK = _clock_tick()


def peak_rss_bytes() -> int:
    """Peak resident memory of this process so far (ru_maxrss: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024


@dataclass(frozen=True)
class Variant:
    """One way of decoding: `plain` or a draft source with its maximum draft length."""

    label: str
    draft: "DraftConfig"

    @property
    def is_plain(self) -> bool:
        return self.draft.source == "none"


def plain_variant() -> Variant:
    from gemma_cli.engine import DraftConfig

    return Variant("plain", DraftConfig(source="none", tokens=1))


@dataclass(frozen=True)
class RunResult:
    """One generation's figures (rates over the tokens actually generated)."""

    generated_tokens: int
    decode_s: float  # wall time after the first token
    tokens_per_s: float
    ttft_s: float
    wall_s: float
    target_passes: int
    draft_proposed: int
    draft_accepted: int
    overhead_ms_per_step: float | None  # main-thread CPU outside llama_decode per target pass (engine's DecodeTimer; None: unmeasurable)
    stop_reason: str
    timing_reliable: bool
    tokens: tuple[int, ...] = field(repr=False, default=())

    @property
    def acceptance_rate(self) -> float:
        return self.draft_accepted / self.draft_proposed if self.draft_proposed else 0.0

    @property
    def tokens_per_pass(self) -> float:
        return self.generated_tokens / self.target_passes if self.target_passes else 0.0


def run_once(engine: "Engine", prompt: Sequence[int], max_tokens: int, sampling: "SamplingParams | None" = None) -> RunResult:
    """One generation (greedy unless `sampling` says otherwise) from a cold KV cache, so TTFT includes the prompt."""
    from gemma_cli.engine import DecodeTimer, SamplingParams

    engine.reset()
    timer = DecodeTimer()
    generation = engine.generate(list(prompt), max_tokens=max_tokens, sampling=sampling or SamplingParams(), stop=())
    with timer.installed():
        cpu0 = time.thread_time()
        for _ in generation:
            pass
        cpu = time.thread_time() - cpu0
    result = generation.result
    assert result is not None
    s = result.stats
    decode_s = max(s.wall_s - s.ttft_s, CLOCK_TICK)
    n = s.generated_tokens
    passes = max(s.target_passes, 1)
    return RunResult(
        generated_tokens=n,
        decode_s=decode_s,
        tokens_per_s=(n - 1) / decode_s if n > 1 else 0.0,
        ttft_s=s.ttft_s,
        wall_s=s.wall_s,
        target_passes=s.target_passes,
        draft_proposed=s.draft_proposed,
        draft_accepted=s.draft_accepted,
        # No decode timed (nothing was generated): say so rather than guess.
        overhead_ms_per_step=max(cpu - timer.inside, 0.0) / passes * 1000.0 if timer.calls else None,
        stop_reason=result.stop_reason.value,
        timing_reliable=decode_s >= max(RELIABLE_SECONDS, 100 * CLOCK_TICK),
        tokens=tuple(result.tokens),
    )


def _median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else 0.0


def _median_or_none(values: Sequence[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return _median(known) if known else None


@dataclass
class VariantReport:
    """All runs of one variant on one workload, and its ratios to the paired plain runs."""

    label: str
    source: str
    draft_tokens: int
    runs: list[RunResult] = field(default_factory=list)
    ratios: list[float] = field(default_factory=list)  # per round: this tok/s / plain tok/s
    same_output: list[bool] = field(default_factory=list)  # per round: tokens equal plain's

    @property
    def tokens_per_s(self) -> float:
        return _median([r.tokens_per_s for r in self.runs])

    @property
    def speedup(self) -> float:
        return _median(self.ratios) if self.ratios else 1.0

    @property
    def acceptance_rate(self) -> float:
        proposed = sum(r.draft_proposed for r in self.runs)
        return sum(r.draft_accepted for r in self.runs) / proposed if proposed else 0.0

    @property
    def tokens_per_pass(self) -> float:
        passes = sum(r.target_passes for r in self.runs)
        return sum(r.generated_tokens for r in self.runs) / passes if passes else 0.0

    @property
    def mean_accepted_length(self) -> float:
        """Draft tokens accepted per target pass (tokens per pass minus the target's own)."""
        passes = sum(r.target_passes for r in self.runs)
        return sum(r.draft_accepted for r in self.runs) / passes if passes else 0.0

    def as_dict(self) -> dict[str, object]:
        ratios = self.ratios
        return {
            "label": self.label,
            "draft_source": self.source,
            "draft_tokens": self.draft_tokens,
            "tokens_per_s": self.tokens_per_s,
            "tokens_per_s_runs": [r.tokens_per_s for r in self.runs],
            "speedup": self.speedup,
            "speedup_min": min(ratios) if ratios else 1.0,
            "speedup_max": max(ratios) if ratios else 1.0,
            "ratios": list(ratios),
            "acceptance_rate": self.acceptance_rate,
            "tokens_per_pass": self.tokens_per_pass,
            "mean_accepted_length": self.mean_accepted_length,
            "draft_proposed": sum(r.draft_proposed for r in self.runs),
            "draft_accepted": sum(r.draft_accepted for r in self.runs),
            "target_passes": sum(r.target_passes for r in self.runs),
            "generated_tokens": sum(r.generated_tokens for r in self.runs),
            "ttft_s": _median([r.ttft_s for r in self.runs]),
            "overhead_ms_per_step": _median_or_none([r.overhead_ms_per_step for r in self.runs]),
            "stop_reasons": sorted({r.stop_reason for r in self.runs}),
            "timing_reliable": all(r.timing_reliable for r in self.runs),
            "same_output_as_plain": all(self.same_output) if self.same_output else True,
            "runs": [{k: v for k, v in asdict(r).items() if k != "tokens"} for r in self.runs],
        }


@dataclass
class WorkloadReport:
    workload: str
    kind: str
    prompt_tokens: int
    max_tokens: int
    plain: VariantReport
    variants: list[VariantReport]
    peak_rss_bytes: int = 0

    def as_dict(self) -> dict[str, object]:
        return {
            "workload": self.workload,
            "kind": self.kind,
            "prompt_tokens": self.prompt_tokens,
            "max_tokens": self.max_tokens,
            "rounds": len(self.plain.runs),
            "peak_rss_bytes": self.peak_rss_bytes,
            "plain": self.plain.as_dict(),
            "speculative": [v.as_dict() for v in self.variants],
        }


Progress = Callable[[str], None]


def prompt_tokens(engine: "Engine", workload: Workload) -> list[int]:
    """The workload exactly as `gemma run` would send it (chat template, or raw for base models)."""
    return engine.prompt_tokens(workload.prompt)


def compare(
    engine: "Engine",
    workload: Workload,
    variants: Sequence[Variant],
    *,
    runs: int = 3,
    max_tokens: int = 256,
    warmup: bool = True,
    progress: Progress | None = None,
    sampling: "SamplingParams | None" = None,
) -> WorkloadReport:
    """Alternate plain decoding with each variant for `runs` rounds on one workload.

    The order within a round flips every round (plain first, then last), so a
    steady drift of the machine's speed biases no side. Sampled rounds use
    seed r in round r for every side.
    """
    if runs < 1:
        raise ValueError("runs must be >= 1")
    tokens = prompt_tokens(engine, workload)
    plain = plain_variant()
    plain_report = VariantReport(plain.label, "none", 0)
    reports = [VariantReport(v.label, v.draft.source, v.draft.tokens) for v in variants]
    if warmup:  # page in the weights and size llama.cpp's buffers before timing anything
        engine.set_draft(plain.draft)
        run_once(engine, tokens, min(16, max_tokens))
    for r in range(runs):
        order: list[tuple[Variant, VariantReport]] = [(plain, plain_report)] + list(zip(variants, reports, strict=True))
        if r % 2:
            order.reverse()
        results: dict[str, RunResult] = {}
        params = replace(sampling, seed=r) if sampling is not None and not sampling.greedy else None
        for variant, report in order:
            engine.set_draft(variant.draft)
            res = run_once(engine, tokens, max_tokens, params)
            report.runs.append(res)
            results[variant.label] = res
            if progress:
                progress(f"{workload.name} round {r + 1}/{runs}: {variant.label} {res.tokens_per_s:.1f} tok/s")
        base = results[plain.label]
        for variant, report in zip(variants, reports, strict=True):
            res = results[variant.label]
            report.ratios.append(res.tokens_per_s / base.tokens_per_s if base.tokens_per_s > 0 else 0.0)
            n = min(len(res.tokens), len(base.tokens))
            report.same_output.append(res.tokens[:n] == base.tokens[:n])
    engine.set_draft(plain.draft)
    return WorkloadReport(workload.name, workload.kind, len(tokens), max_tokens, plain_report, reports, peak_rss_bytes())


def machine_description(threads: int | None) -> dict[str, object]:
    """What the figures were measured on (reported with every table)."""
    import os
    import platform
    from pathlib import Path

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "logical_cpus": os.cpu_count(),
        "threads": threads,
        "system": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        # Other busy processes make llama.cpp's spinning threads collapse: say so with the figures.
        "load_average_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }


def busy_warning(machine: dict[str, object]) -> str | None:
    """A line to print when other processes compete for the cores (figures become noise).

    The benchmark's own threads account for up to one unit of load per CPU;
    anything a full unit beyond that is someone else.
    """
    load, cpus = machine.get("load_average_1m"), machine.get("logical_cpus")
    if isinstance(load, float) and isinstance(cpus, int) and load > cpus + 1.0:
        return f"the machine was busy (load average {load:.1f} on {cpus} CPUs): timings are unreliable; rerun when it is idle"
    return None


def bench(
    engine: "Engine",
    workloads: Sequence[Workload],
    variants_for: Callable[[Workload], Sequence[Variant]],
    *,
    runs: int,
    max_tokens: int,
    progress: Progress | None = None,
    sampling: "SamplingParams | None" = None,
) -> list[WorkloadReport]:
    """`compare` every workload against its variants (which may depend on its tuning class)."""
    return [
        compare(engine, w, variants_for(w), runs=runs, max_tokens=max_tokens, progress=progress, sampling=sampling)
        for w in workloads
    ]
