"""What every doctor check returns: a `Check`, gathered into a `Report`."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from gemma_cli.errors import GemmaError

OK, WARN, FAIL, INFO = "ok", "warn", "fail", "info"
GIB = 1 << 30


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

