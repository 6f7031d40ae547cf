"""Refusing what no architecture can meet (at validate, before any training), and explaining an empty front."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml

from nas.constraints import LEAST_SHAPE, MAX_SPACE_DIGITS, check_feasible, check_size, explain_empty_front
from nas.errors import SpecError
from nas.pipeline import validate
from nas.problem import CandidateResult, Problem
from nas.space import ArchConfig, SearchSpace
from nas.spec import Spec, parse_spec

TINY = Path(__file__).resolve().parent / "specs" / "tiny.yaml"
ARCH = ArchConfig(8, 8, (), 32)


def _raw(**changes: object) -> dict:
    raw = yaml.safe_load(TINY.read_text())
    raw.update(changes)
    return raw


def _spec(**changes: object) -> Spec:
    return parse_spec(_raw(**changes), "tiny.yaml")


def _reach(spec: Spec, metric: str, largest: bool, shape: tuple[int, int] = (1, 10)) -> int:
    space = SearchSpace.from_spec(spec, *shape)
    arch = space.largest() if largest else space.smallest()
    return getattr(space, metric)(arch)


def _write(tmp_path: Path, raw: dict) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize("metric", ["params", "flops"])
def test_a_max_below_the_smallest_arch_is_refused_by_validate(tmp_path: Path, metric: str) -> None:
    smallest = _reach(_spec(), metric, largest=False)  # digits: 1 input channel, 10 classes
    path = _write(tmp_path, _raw(constraints=[{"latency_ms": {"max": 1000}}, {metric: {"max": smallest - 1}}]))
    with pytest.raises(SpecError) as info:
        validate(path)
    assert str(info.value) == (
        f"{path}: constraints[1].{metric}.max: no architecture of the space has at most {smallest - 1:,} {metric}: "
        f"the smallest has {smallest:,} (with digits's 1 input channel and 10 classes)")
    # exactly the smallest is feasible: the smallest arch meets it
    spec, count = validate(_write(tmp_path, _raw(constraints=[{metric: {"max": smallest}}])))
    assert count == SearchSpace.from_spec(spec, 1, 10).count()


@pytest.mark.parametrize("metric", ["params", "flops"])
def test_a_min_above_the_largest_arch_is_refused(metric: str) -> None:
    largest = _reach(_spec(), metric, largest=True)
    with pytest.raises(SpecError, match=rf"tiny.yaml: constraints\[0\].{metric}.min: no architecture of the space "
                                        rf"has at least {largest + 1:,} {metric}: the largest has {largest:,} "):
        check_feasible(_spec(constraints=[{metric: {"min": largest + 1}}]), "tiny.yaml")
    check_feasible(_spec(constraints=[{metric: {"min": largest}}]), "tiny.yaml")


def test_the_smallest_arch_is_the_least_any_arch_of_the_space_reaches() -> None:
    """params/flops grow with every choice: sampled archs never go below the smallest or above the largest."""
    import random

    space = SearchSpace.from_spec(_spec(), 1, 10)
    rng = random.Random(0)
    for metric in ("params", "flops"):
        low, high = (getattr(space, metric)(a) for a in (space.smallest(), space.largest()))
        values = [getattr(space, metric)(space.sample(rng)) for _ in range(300)]
        assert low <= min(values) and max(values) <= high


def test_data_sets_of_unknown_shape_are_bounded_soundly(tmp_path: Path) -> None:
    """Without loading the data, a max is checked at 1 channel and 1 class (sound for any data); a min is not."""
    data = {"dataset": "arrays", "path": str(tmp_path / "data.npz")}
    least = _reach(_spec(), "params", largest=False, shape=LEAST_SHAPE)
    with pytest.raises(SpecError, match=f"the smallest has {least:,} \\(with 1 input channel and 1 class, the least"):
        check_feasible(_spec(data=data, constraints=[{"params": {"max": least - 1}}]), "tiny.yaml")
    check_feasible(_spec(data=data, constraints=[{"params": {"min": 10**12}}]), "tiny.yaml")
    # the caller that loaded the data passes its real shape
    with pytest.raises(SpecError, match="params.min: no architecture"):
        check_feasible(_spec(data=data, constraints=[{"params": {"min": 10**12}}]), "tiny.yaml", shape=(3, 100))


def test_accuracy_and_latency_bounds_out_of_reach() -> None:
    with pytest.raises(SpecError, match=r"constraints\[0\].accuracy.min: accuracy is a fraction \(0..1\)"):
        check_feasible(_spec(constraints=[{"accuracy": {"min": 1.5}}]), "tiny.yaml")
    with pytest.raises(SpecError, match=r"constraints\[0\].latency_ms.max: latencies are not negative"):
        check_feasible(_spec(constraints=[{"latency_ms": {"max": -1}}]), "tiny.yaml")
    check_feasible(_spec(constraints=[{"accuracy": {"min": 1.0}}, {"latency_ms": {"max": 0}}]), "tiny.yaml")


def test_a_space_smaller_than_the_search_budget_is_refused(tmp_path: Path) -> None:
    raw = _raw(search={"engine": "random", "candidates": 100})
    raw["space"] = {"resolution": [8], "stem": {"channels": [8], "stride": 1},
                    "stages": [{"type": "conv", "depth": [1, 2], "channels": [8, 16], "expand": [2], "kernel": [3]}],
                    "head": {"channels": [32]}}
    with pytest.raises(SpecError) as info:
        validate(_write(tmp_path, raw))
    assert str(info.value).endswith("spec.yaml: search.candidates: the space holds 4 architectures, fewer than "
                                    "search.candidates (100); lower search.candidates or widen the space")
    raw["search"]["candidates"] = 4
    assert validate(_write(tmp_path, raw))[1] == 4


def test_the_count_of_a_huge_space_is_exact_fast_and_refused_beyond_the_limit(tmp_path: Path) -> None:
    stage = {"type": "transformer", "depth": [1, 64], "channels": [64, 128], "head_dim": 16,
             "mlp_ratio": list(range(1, 65)), "v_scale": list(range(1, 65)), "stride": 1}
    raw = _raw()
    raw["space"]["stages"] = [stage] * 5
    spec = parse_spec(raw, "big.yaml")
    start = time.perf_counter()
    count = SearchSpace.from_spec(spec, 1, 10).count()
    assert time.perf_counter() - start < 1.0
    per_stage = 2 * sum(4096**d for d in range(1, 65))
    assert count == 1 * 2 * 2 * per_stage**5  # resolution x stem x head x stages, exactly
    with pytest.raises(SpecError, match=r"big.yaml: space: it holds about 10\^1158 architectures"):
        check_size(spec, count, "big.yaml")
    raw["space"]["stages"] = [stage] * 4  # about 10^926: accepted
    smaller = parse_spec(raw, "big.yaml")
    check_size(smaller, SearchSpace.from_spec(smaller, 1, 10).count(), "big.yaml")
    raw["space"]["stages"] = [stage] * 20  # about 10^4600: would not even print
    with pytest.raises(SpecError, match=rf"spec.yaml: space: it holds about 10\^46\d\d architectures, more than the "
                                        rf"10\^{MAX_SPACE_DIGITS} this nas accepts"):
        validate(_write(tmp_path, raw))


def test_count_limit_boundary() -> None:
    spec = _spec()
    check_size(spec, 10**MAX_SPACE_DIGITS - 1, "s.yaml")
    with pytest.raises(SpecError, match="space: it holds about"):
        check_size(spec, 10 ** (MAX_SPACE_DIGITS + 1), "s.yaml")


# ---- empty fronts -------------------------------------------------------------------------------------------
def _result(accuracy: float = 0.5, params: int = 1000, **latency: float) -> CandidateResult:
    return CandidateResult(ARCH, accuracy, params, 10_000, dict(latency))


def test_every_candidate_broke_one_constraint() -> None:
    problem = Problem((("accuracy", "", True),), (("latency", "host", None, 1.0), ("params", "", None, 5000.0)))
    results = [_result(host=3.2), _result(host=4.0), _result(host=7.5)]
    assert problem.front(results, "host") == []
    assert explain_empty_front(problem, results) == (
        "every candidate broke latency_ms <= 1 on host: the best reached 3.2 ms")


def test_several_constraints_cut_everything_and_min_bounds() -> None:
    problem = Problem((), (("accuracy", "", 0.9, None), ("params", "", 2000.0, 8000.0), ("latency", "a", None, 50.0)))
    results = [_result(accuracy=0.85, params=1000, a=5.0), _result(accuracy=0.8, params=9500, a=5.0)]
    assert explain_empty_front(problem, results) == (
        "every candidate broke accuracy >= 0.9: the best reached 0.85; "
        "every candidate broke 2000 <= params <= 8000: the best reached 1,000")


def test_constraints_met_one_at_a_time_but_never_together() -> None:
    problem = Problem((), (("latency", "a", None, 5.0), ("latency", "b", None, 5.0)))
    results = [_result(a=1.0, b=9.0), _result(a=9.0, b=1.0), _result(a=9.0, b=9.0)]
    assert explain_empty_front(problem, results) == (
        "no candidate met every constraint at once "
        "(latency_ms <= 5 on a kept 1 of 3; latency_ms <= 5 on b kept 1 of 3)")


def test_nothing_to_explain() -> None:
    problem = Problem((), (("latency", "host", None, 5.0),))
    assert explain_empty_front(problem, [_result(host=9.0), _result(host=5.0)]) == ""
    assert explain_empty_front(problem, []) == "the search scored no candidates"
