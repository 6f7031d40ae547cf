"""`Problem`: objectives and constraints expanded over targets, feasibility at the bounds, and the front."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from nas.errors import SpecError
from nas.problem import CandidateResult, Problem
from nas.space import ArchConfig
from nas.spec import Spec, parse_spec

ROOT = Path(__file__).resolve().parents[1]
ARCH = ArchConfig(28, 16, (), 256)


def _spec(**changes: object) -> Spec:
    raw = yaml.safe_load((ROOT / "search_spaces" / "quickstart.yaml").read_text())
    raw.update(changes)
    return parse_spec(raw, "q.yaml")


def _result(accuracy: float = 0.5, params: int = 1000, flops: int = 10_000, **latency: float) -> CandidateResult:
    return CandidateResult(ARCH, accuracy, params, flops, dict(latency or {"host": 5.0}))


def test_a_candidate_exactly_at_a_bound_is_feasible() -> None:
    problem = Problem((("accuracy", "", True),), (("params", "", 1000.0, 2000.0), ("latency", "host", None, 5.0)))
    assert problem.feasible(_result(params=2000, host=5.0))  # both upper bounds met with equality
    assert problem.feasible(_result(params=1000, host=5.0))  # the lower bound met with equality
    assert problem.violations(_result(params=2000, host=5.0)) == [0.0, 0.0]
    assert not problem.feasible(_result(params=2001, host=5.0))
    assert not problem.feasible(_result(params=2000, host=5.0001))


def test_min_bounds_count() -> None:
    problem = Problem((("accuracy", "", True),), (("accuracy", "", 0.8, None), ("flops", "", 5000.0, None)))
    assert problem.feasible(_result(accuracy=0.9, flops=6000))
    assert not problem.feasible(_result(accuracy=0.7, flops=6000))
    assert not problem.feasible(_result(accuracy=0.9, flops=4000))
    assert problem.violations(_result(accuracy=0.7, flops=4000)) == pytest.approx([0.1, 1000.0])


def test_front_excludes_an_infeasible_candidate_that_dominates_everything() -> None:
    problem = Problem((("accuracy", "", True), ("latency", "host", False)), (("params", "", None, 5000.0),))
    results = [_result(accuracy=0.6, params=4000, host=4.0), _result(accuracy=0.7, params=4500, host=6.0),
               _result(accuracy=0.99, params=9000, host=1.0),  # best on both objectives, but too many params
               _result(accuracy=0.5, params=4000, host=7.0)]  # dominated by the first
    assert sorted(problem.front(results, "host")) == [0, 1]


def test_front_on_one_target_ignores_the_others_latency() -> None:
    problem = Problem((("accuracy", "", True), ("latency", "a", False), ("latency", "b", False)), ())
    results = [_result(accuracy=0.6, a=1.0, b=9.0), _result(accuracy=0.6, a=2.0, b=1.0)]
    assert problem.front(results, "a") == [0]
    assert problem.front(results, "b") == [1]


def test_front_adds_the_targets_latency_when_no_objective_names_it() -> None:
    problem = Problem((("accuracy", "", True),), ())
    results = [_result(accuracy=0.6, host=1.0), _result(accuracy=0.7, host=2.0), _result(accuracy=0.5, host=3.0)]
    assert sorted(problem.front(results, "host")) == [0, 1]


def test_a_constraint_with_max_below_min_is_refused_by_the_spec() -> None:
    with pytest.raises(SpecError, match=r"q.yaml: constraints\[0\].params: max \(5.0\) must be >= min \(10.0\)"):
        _spec(constraints=[{"params": {"min": 10, "max": 5}}])


def test_latency_objectives_and_constraints_expand_over_every_target() -> None:
    spec = _spec(objectives=[{"maximize": "accuracy"}, {"minimize": "latency"}, {"minimize": "params"}],
                 constraints=[{"latency_ms": {"max": 40}}, {"params": {"min": 100, "max": 1e6}}])
    problem = Problem.from_spec(spec, ["host", "pixel6"])
    assert problem.objectives == (("accuracy", "", True), ("latency", "host", False), ("latency", "pixel6", False),
                                  ("params", "", False))
    assert problem.constraints == (("latency", "host", None, 40.0), ("latency", "pixel6", None, 40.0),
                                   ("params", "", 100.0, 1e6))
    fast_here_only = _result(params=1000, host=30.0, pixel6=50.0)
    assert problem.violations(fast_here_only) == [-10.0, 10.0, -900.0]
    assert not problem.feasible(fast_here_only)
    assert problem.feasible(_result(params=1000, host=30.0, pixel6=40.0))


def test_a_nan_metric_meets_no_bound() -> None:
    """max(-inf, nan) is -inf in Python: a NaN must not slip through as feasible."""
    from nas.problem import CandidateResult, Problem
    from nas.space import ArchConfig

    problem = Problem(objectives=(("accuracy", "", True),), constraints=(("latency", "host", None, 5.0),))
    arch = ArchConfig(8, 8, (), 8)
    result = CandidateResult(arch=arch, accuracy=0.5, params=1, flops=1, latency_ms={"host": float("nan")})
    assert problem.violations(result) == [float("inf")] and not problem.feasible(result)
