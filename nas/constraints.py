"""Constraints no architecture can meet, refused before any training, and why a search found nothing feasible.

Params and FLOPs grow with every choice of a space (depth, width, expand ratio, kernel, MLP ratio, value
scale, resolution) and with the data's input channels and classes, so the smallest arch of a space is the
least any candidate reaches and the largest the most. `check_feasible` refuses a bound beyond that reach and
`check_size` a space too small for the search's budget (both for `nas validate` and before every search);
`explain_empty_front` says in one line why a search's front came out empty. Pure Python: no torch, no data.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from nas.errors import SpecError
from nas.problem import CandidateResult, Problem
from nas.space import SearchSpace
from nas.spec import DataSpec, Spec

# (input channels, classes) of the data sets whose shape is known without loading them.
KNOWN_SHAPES: dict[str, tuple[int, int]] = {"fashion-mnist": (1, 10), "digits": (1, 10)}
# The least any data set can have: bounds computed with it hold for every data set.
LEAST_SHAPE = (1, 1)
# A space larger than 10^MAX_SPACE_DIGITS architectures is refused: no search samples a noticeable part of it,
# and its count would not print (Python refuses to print integers of more than 4300 digits).
MAX_SPACE_DIGITS = 1000


def data_shape(data: DataSpec) -> tuple[int, int] | None:
    """(input channels, classes) of a data set known without loading it, else None."""
    return KNOWN_SHAPES.get(data.dataset)


def check_size(spec: Spec, count: int, source: str) -> None:
    """Refuse a space of `count` architectures with fewer than `search.candidates` of them, or more than
    10^MAX_SPACE_DIGITS."""
    if count >= 10**MAX_SPACE_DIGITS:
        digits = int(count.bit_length() * math.log10(2))
        raise SpecError(f"{source}: space: it holds about 10^{digits} architectures, more than the 10^"
                        f"{MAX_SPACE_DIGITS} this nas accepts; narrow the depth ranges or the choices")
    if count < spec.search.candidates:
        plural = "s" if count != 1 else ""
        raise SpecError(f"{source}: search.candidates: the space holds {count:,} architecture{plural}, fewer than "
                        f"search.candidates ({spec.search.candidates:,}); lower search.candidates or widen the space")


def _reach(spec: Spec, shape: tuple[int, int], metric: str, largest: bool) -> int:
    space = SearchSpace(spec.space, shape[0], shape[1], spec.deploy.resolution)
    arch = space.largest() if largest else space.smallest()
    return space.params(arch) if metric == "params" else space.flops(arch)


def _shape_text(spec: Spec, shape: tuple[int, int], known: bool) -> str:
    channels = f"{shape[0]} input channel{'s' if shape[0] != 1 else ''}"
    classes = f"{shape[1]} class{'es' if shape[1] != 1 else ''}"
    if known:
        return f"with {spec.data.dataset}'s {channels} and {classes}"
    return f"with {channels} and {classes}, the least any data set has"


def check_feasible(spec: Spec, source: str, shape: tuple[int, int] | None = None) -> None:
    """Refuse (SpecError naming `source` and the constraint) a constraint that no architecture of the space can
    meet: a `params`/`flops` `max` below the smallest arch or `min` above the largest, an accuracy bound
    outside 0..1, a negative latency `max`.

    `shape` is the data's (input channels, classes); by default that of a known data set (`KNOWN_SHAPES`).
    For other data sets a `max` is checked at `LEAST_SHAPE` (sound for every data set) and a `min` is not
    checked (the largest arch grows without end with the data's channels and classes). FLOPs are
    `SearchSpace.flops`: multiply-accumulates at the arch's training resolution, as the search scores them.
    """
    known = shape if shape is not None else data_shape(spec.data)
    for i, constraint in enumerate(spec.constraints):
        metric, bound = constraint.metric, constraint.bound
        where = f"{source}: constraints[{i}].{metric}"
        if metric in ("params", "flops"):
            if bound.max is not None:
                least = known or LEAST_SHAPE
                smallest = _reach(spec, least, metric, largest=False)
                if smallest > bound.max:
                    raise SpecError(f"{where}.max: no architecture of the space has at most {bound.max:,.0f} {metric}: "
                                    f"the smallest has {smallest:,} ({_shape_text(spec, least, known is not None)})")
            if bound.min is not None and known is not None:
                largest = _reach(spec, known, metric, largest=True)
                if largest < bound.min:
                    raise SpecError(f"{where}.min: no architecture of the space has at least {bound.min:,.0f} "
                                    f"{metric}: the largest has {largest:,} ({_shape_text(spec, known, True)})")
        elif metric == "accuracy":
            if bound.min is not None and bound.min > 1:
                raise SpecError(f"{where}.min: accuracy is a fraction (0..1), so no architecture reaches {bound.min:g}")
            if bound.max is not None and bound.max < 0:
                raise SpecError(f"{where}.max: accuracy is a fraction (0..1), so no architecture has {bound.max:g}")
        elif metric == "latency_ms" and bound.max is not None and bound.max < 0:
            raise SpecError(f"{where}.max: latencies are not negative, so no architecture meets {bound.max:g} ms")


# ---- empty fronts --------------------------------------------------------------------------------------------
def _name(metric: str) -> str:
    return "latency_ms" if metric == "latency" else metric


def _describe(metric: str, target: str, low: float | None, high: float | None) -> str:
    name = _name(metric)
    if low is not None and high is not None:
        text = f"{low:g} <= {name} <= {high:g}"
    elif high is not None:
        text = f"{name} <= {high:g}"
    else:
        text = f"{name} >= {low:g}"
    return f"{text} on {target}" if target else text


def _value_text(metric: str, value: float) -> str:
    if metric in ("params", "flops"):
        return f"{value:,.0f}"
    return f"{value:.4g} ms" if metric == "latency" else f"{value:.4g}"


def explain_empty_front(problem: Problem, results: Sequence[CandidateResult]) -> str:
    """One line on why no candidate of `results` is feasible: each constraint every candidate broke, with the
    best value any candidate reached ("every candidate broke latency_ms <= 1 on host: the best reached 3.2 ms");
    when each constraint was met by some candidate but none met all at once, how many met each. Empty when
    some candidate is feasible (nothing to explain)."""
    if not results:
        return "the search scored no candidates"
    violations = [problem.violations(r) for r in results]
    if any(all(v <= 0 for v in row) for row in violations):
        return ""
    cut, kept = [], []
    for j, (metric, target, low, high) in enumerate(problem.constraints):
        column = [row[j] for row in violations]
        met = sum(1 for v in column if v <= 0)
        text = _describe(metric, target, low, high)
        if met:
            kept.append(f"{text} kept {met} of {len(results)}")
            continue
        finite = [i for i, v in enumerate(column) if math.isfinite(v)]
        if not finite:
            cut.append(f"every candidate broke {text}: none had a finite value")
            continue
        best = results[min(finite, key=lambda i: column[i])].value(metric, target)
        cut.append(f"every candidate broke {text}: the best reached {_value_text(metric, best)}")
    if cut:
        return "; ".join(cut)
    return f"no candidate met every constraint at once ({'; '.join(kept)})"
