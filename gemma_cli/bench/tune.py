"""`gemma bench --tune`: find the draft settings that pay on this machine, per workload class.

The best maximum draft length depends on the hardware (how much a batched
verification pass costs over a single-token one) and on the text (how long the
accepted runs are). Both are measured here rather than guessed: every
candidate (draft source x maximum length) runs alternately with plain decoding
and the one with the highest median speedup is recorded in the model's
manifest, where `run` and `chat` pick it up as their default.

The best candidate is recorded even when it does not beat plain decoding: the
engine's adaptive controller already pauses drafting when it stops paying, so
the recorded length is only an upper bound on what it tries. A result from runs
too short to time (under 2 s) is not recorded unless asked (`--force`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

from gemma_cli.bench.harness import Progress, Variant, WorkloadReport, compare
from gemma_cli.bench.workloads import FILE_CLASS, Workload
from gemma_cli.errors import UsageError
from gemma_cli.pair import ModelPair

if TYPE_CHECKING:  # pragma: no cover
    from gemma_cli.engine import Engine, SamplingParams

DEFAULT_SWEEP = (2, 3, 4, 6, 8)


@dataclass(frozen=True)
class TuneChoice:
    """The winner for one workload class and how much it beat plain decoding by."""

    workload: str
    kind: str
    draft_source: str
    draft_tokens: int
    speedup: float
    report: WorkloadReport | None = None  # None for the combined `default` choice
    reliable: bool = True  # every timed run lasted long enough (harness.RELIABLE_SECONDS)
    recorded: bool = False  # written into the manifest by `record`

    def as_dict(self) -> dict[str, object]:
        return {
            "workload": self.workload,
            "kind": self.kind,
            "draft_source": self.draft_source,
            "draft_tokens": self.draft_tokens,
            "speedup": self.speedup,
            "beats_plain": self.speedup > 1.0,
            "timing_reliable": self.reliable,
            "recorded": self.recorded,
        }


def report_reliable(report: WorkloadReport) -> bool:
    """Did every run of the workload (plain and speculative) last long enough to time?"""
    return all(r.timing_reliable for v in [report.plain, *report.variants] for r in v.runs)


def available_sources(pair: ModelPair, requested: str = "auto") -> list[str]:
    """Draft sources the pair can use: n-gram always, plus its drafter model when it has one."""
    own = [pair.draft_source] if pair.drafter is not None and pair.draft_source in ("model", "mtp") else []
    if requested == "auto":
        return own + ["ngram"]
    if requested == "none":
        raise UsageError("--tune compares draft sources; --draft none leaves nothing to tune")
    if requested in ("model", "mtp") and requested not in own:
        raise UsageError(f"{pair.name} has no {requested} drafter to tune; use --draft ngram or auto")
    return [requested]


def candidates(pair: ModelPair, sources: Sequence[str], lengths: Sequence[int]) -> list[Variant]:
    """Every (source, maximum draft length) pair to measure."""
    from gemma_cli.engine import DraftConfig

    out = []
    for source in sources:
        model_path = pair.drafter if source in ("model", "mtp") else None
        for k in lengths:
            out.append(Variant(f"{source} k<={k}", DraftConfig(source=source, tokens=k, model_path=model_path).validate()))
    return out


def tune_workload(
    engine: "Engine",
    workload: Workload,
    variants: Sequence[Variant],
    *,
    runs: int,
    max_tokens: int,
    progress: Progress | None = None,
    sampling: "SamplingParams | None" = None,
) -> TuneChoice:
    """Measure every candidate against plain decoding; the highest median speedup wins."""
    report = compare(engine, workload, variants, runs=runs, max_tokens=max_tokens, progress=progress, sampling=sampling)
    # Ties go to the shorter draft: the same speed for less wasted work.
    best = max(report.variants, key=lambda v: (round(v.speedup, 3), -v.draft_tokens))
    return TuneChoice(workload.name, workload.kind, best.source, best.draft_tokens, best.speedup, report,
                      reliable=report_reliable(report))


def overall_default(choices: Sequence[TuneChoice]) -> TuneChoice | None:
    """The candidate with the best geometric-mean speedup over the tuned built-in workloads.

    `run` and `chat` cannot know what class a prompt is, so they use the
    `default` entry: without it, tuning only the built-ins would change nothing
    for them. A prompt file is tuned as `default` directly and wins over this.
    """
    reports = [c.report for c in choices if c.report is not None]
    if not reports or any(c.kind == FILE_CLASS for c in choices):
        return None
    variants = reports[0].variants

    def gmean(i: int) -> float:
        return math.exp(sum(math.log(max(r.variants[i].speedup, 1e-9)) for r in reports) / len(reports))

    best = max(range(len(variants)), key=lambda i: (round(gmean(i), 3), -variants[i].draft_tokens))
    return TuneChoice("all", FILE_CLASS, variants[best].source, variants[best].draft_tokens, gmean(best),
                      reliable=all(report_reliable(r) for r in reports))


def record(pair: ModelPair, choices: Sequence[TuneChoice], *, force: bool = False) -> list[TuneChoice]:
    """Write the winners into the model's manifest (the store owns the file format).

    A choice whose runs were too short to time reliably is not recorded (run
    and chat would otherwise pick up noise as their default) unless `force`.
    Returns the choices with `recorded` set.
    """
    from dataclasses import replace

    from gemma_cli.registry.manage import record_tuned

    out = []
    for choice in choices:
        keep = choice.reliable or force
        if keep:
            record_tuned(pair.name, choice.kind, choice.draft_tokens, choice.draft_source)
        out.append(replace(choice, recorded=keep))
    return out


def check_tunable(pair: ModelPair) -> None:
    """Tuning results live in a manifest: a bare .gguf path has none."""
    if pair.target.name == pair.name and pair.name.endswith(".gguf"):
        raise UsageError(
            f"--tune records results in the model's manifest, and {pair.name} is a bare file; "
            "add it to the store first (gemma create NAME --target FILE) and tune NAME"
        )
