"""The decision: every measured (row, batch size, mode) is a candidate; only parity-passing rows may win; the
strategy picks among them. Pure functions over a bench report, so the rule is tested without running a model."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from ppdeploy.errors import DeployError, one_line

STRATEGIES = ("throughput", "latency", "latency-budget=MS")
ELIGIBLE = ("pass", "reference")  # parity verdicts that may be deployed (the reference is Paddle itself)


@dataclass(frozen=True)
class Strategy:
    """``throughput``: most images/s. ``latency``: lowest p99 at batch 1, one request at a time.
    ``latency-budget``: most images/s whose p99 (latency mode) or mean in-flight time (throughput mode) fits
    ``budget_ms``."""

    name: str
    budget_ms: float | None = None

    def __str__(self) -> str:
        return f"{self.name}={self.budget_ms:g}" if self.budget_ms is not None else self.name


@dataclass(frozen=True)
class Candidate:
    """One way to deploy: a row of the bench (backend/target/variant) at a batch size in a mode, with its parity
    verdict and what was measured."""

    label: str
    profile: str
    parity: str  # pass, fail, error, not checked, reference, skipped
    batch_size: int
    mode: str  # latency or throughput
    images_per_s: float
    latency_ms: float  # latency mode: p99 of one call; throughput mode: mean time a batch spends in flight
    requests: int = 1

    @property
    def eligible(self) -> bool:
        return self.parity in ELIGIBLE and math.isfinite(self.images_per_s)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "eligible": self.eligible}


def parse_strategy(text: str) -> Strategy:
    """``throughput``, ``latency`` or ``latency-budget=MS`` (MS > 0)."""
    name, _, value = text.strip().partition("=")
    if name in ("throughput", "latency") and not value:
        return Strategy(name)
    if name == "latency-budget":
        try:
            budget = float(value)
        except ValueError:
            budget = -1.0
        if budget > 0:
            return Strategy(name, budget)
    raise DeployError(one_line(f"--strategy '{text}'", "unknown", "choose one of: " + ", ".join(STRATEGIES)))


def candidates(report: Any) -> list[Candidate]:
    """Every measured cell of a ``BenchReport``, in latency mode and (where measured) throughput mode."""
    found = []
    for info in report.backends:
        if info.status != "ok":
            continue
        verdict = info.parity_status
        for row in (r for r in report.results if r.backend == info.label):
            found.append(Candidate(info.label, info.profile, verdict, row.batch_size, "latency", row.images_per_s,
                                   row.p99))
            streamed = report.streamed(info.label, row.batch_size)
            if streamed is not None:
                found.append(Candidate(info.label, info.profile, verdict, row.batch_size, "throughput",
                                       streamed.images_per_s, streamed.mean_latency_ms, streamed.requests))
    return found


def choose(found: list[Candidate], strategy: Strategy) -> Candidate | None:
    """The winner among the eligible candidates (parity passed, or the reference itself); ``None`` if none fits.

    A candidate that failed parity never wins, however fast. Ties go to higher images/s, then lower latency.
    """
    eligible = [c for c in found if c.eligible]
    if strategy.name == "latency":
        eligible = [c for c in eligible if c.batch_size == 1 and c.mode == "latency"]
        return min(eligible, key=lambda c: (c.latency_ms, -c.images_per_s), default=None)
    if strategy.name == "latency-budget":
        eligible = [c for c in eligible if c.latency_ms <= strategy.budget_ms]
    return max(eligible, key=lambda c: (c.images_per_s, -c.latency_ms), default=None)
