"""Measured quality: a policy's quality rules, and the evidence they are judged on.

A quality rule (on an intent or a role) asks for the cheapest model whose pass rate on a
named eval suite is at least ``min_pass_rate`` over at least ``min_cases`` cases. The
evidence is what the ledger holds for (suite, model): cases passed and cases judged, the
latest result of each eval case plus every live contract check (see ``rolegate eval``).
Pure: the engine reads the evidence from the ledger and hands it to the router.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from pydantic import Field

from rolegate.policy.strict import Strict


class QualityRule(Strict):
    """Route by measured quality on a suite instead of by capabilities alone."""

    suite: str = Field(
        min_length=1,
        max_length=128,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/@+\-]*$",
        description="The eval suite's name (its 'name:'); results stored by `rolegate eval`.",
    )
    min_pass_rate: float = Field(
        ge=0, le=1, description="Pass rate a model must have reached on the suite (0-1)."
    )
    min_cases: int = Field(
        default=20, ge=1, le=1_000_000, description="Judged cases needed before the rate counts."
    )
    max_age_days: float | None = Field(
        default=None, gt=0, description="Only results this recent count; default: all."
    )
    without_evidence: Literal["capability", "refuse"] = Field(
        default="capability",
        description="When no candidate has qualified: 'capability' routes by the capability "
        "rule (the cheapest sufficient model, or the role's own model) and says so; 'refuse' "
        "fails closed with QUALITY_UNPROVEN.",
    )
    live: bool = Field(
        default=False,
        description="Count run_role's contract checks (pass/fail of the role's "
        "output_contract) as evidence on this suite, between eval runs.",
    )


@dataclass(frozen=True, slots=True)
class Evidence:
    """What the ledger holds for one model on one suite."""

    suite: str
    model: str
    passed: int
    cases: int
    last_us: int  # the newest result, microseconds since the epoch

    @property
    def pass_rate(self) -> float:
        return self.passed / self.cases if self.cases else 0.0

    def interval(self) -> tuple[float, float]:
        return wilson(self.passed, self.cases)


#: (suite, model) -> evidence; a pair with no entry has none.
EvidenceBook = Mapping[tuple[str, str], Evidence]
NO_EVIDENCE: EvidenceBook = {}


def wilson(passed: int, cases: int, z: float = 1.959964) -> tuple[float, float]:
    """The Wilson score interval (95% by default) of a pass rate: honest at small n and at
    rates near 0 or 1, where the normal approximation is not."""
    if cases <= 0:
        return (0.0, 1.0)
    p = passed / cases
    denom = 1 + z * z / cases
    centre = (p + z * z / (2 * cases)) / denom
    half = z * math.sqrt(p * (1 - p) / cases + z * z / (4 * cases * cases)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))
