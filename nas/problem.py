"""What a search optimises: scored candidates, the spec's objectives and constraints expanded over targets,
feasibility and the Pareto front. Pure Python (no torch, no Ray), so it is cheap to test exhaustively.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from nas.pareto import pareto_indices
from nas.space import ArchConfig
from nas.spec import Spec


@dataclass(frozen=True)
class CandidateResult:
    """One scored candidate, as a worker reports it."""

    arch: ArchConfig
    accuracy: float
    params: int
    flops: int
    latency_ms: dict[str, float]
    latency_flags: dict[str, str] = field(default_factory=dict)

    def value(self, metric: str, target: str = "") -> float:
        if metric == "latency":
            return self.latency_ms[target]
        return float(getattr(self, metric))


@dataclass(frozen=True)
class Problem:
    """Objectives and constraints of a spec, expanded over the search's targets."""

    objectives: tuple[tuple[str, str, bool], ...]  # (metric, target, maximise)
    constraints: tuple[tuple[str, str, float | None, float | None], ...]  # (metric, target, min, max)

    @classmethod
    def from_spec(cls, spec: Spec, targets: Sequence[str]) -> Problem:
        objectives = []
        for objective in spec.objectives:
            for target in (targets if objective.metric == "latency" else [""]):
                objectives.append((objective.metric, target, objective.direction == "maximize"))
        constraints = []
        for constraint in spec.constraints:
            metric = "latency" if constraint.metric == "latency_ms" else constraint.metric
            for target in (targets if metric == "latency" else [""]):
                constraints.append((metric, target, constraint.bound.min, constraint.bound.max))
        return cls(tuple(objectives), tuple(constraints))

    def violations(self, result: CandidateResult) -> list[float]:
        """Per constraint: <= 0 when satisfied, else how far it is broken."""
        out = []
        for metric, target, low, high in self.constraints:
            value = result.value(metric, target)
            if math.isnan(value):  # an unmeasurable value meets no bound
                out.append(math.inf)
                continue
            worst = -math.inf
            if high is not None:
                worst = max(worst, value - high)
            if low is not None:
                worst = max(worst, low - value)
            out.append(worst)
        return out

    def feasible(self, result: CandidateResult) -> bool:
        return all(v <= 0 for v in self.violations(result))

    def front(self, results: Sequence[CandidateResult], target: str) -> list[int]:
        """Indices of the feasible candidates on the Pareto front for one latency target."""
        objectives = [(m, t, up) for m, t, up in self.objectives if m != "latency" or t == target]
        if not any(m == "latency" for m, _, _ in objectives):
            objectives.append(("latency", target, False))
        feasible = [i for i, r in enumerate(results) if self.feasible(r)]
        points = [[results[i].value(m, t) for m, t, _ in objectives] for i in feasible]
        return [feasible[j] for j in pareto_indices(points, [up for _, _, up in objectives])]
