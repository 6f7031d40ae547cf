"""Pareto fronts and hypervolume, pure Python.

Points are tuples of objective values; `directions` says per objective whether it is maximised. Internally
everything is turned into minimisation.
"""

from __future__ import annotations

from collections.abc import Sequence


def _as_min(point: Sequence[float], maximize: Sequence[bool]) -> tuple[float, ...]:
    return tuple(-v if up else v for v, up in zip(point, maximize, strict=True))


def dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    """True when `a` is no worse than `b` everywhere and better somewhere (minimisation)."""
    return all(x <= y for x, y in zip(a, b, strict=True)) and any(x < y for x, y in zip(a, b, strict=True))


def pareto_indices(points: Sequence[Sequence[float]], maximize: Sequence[bool]) -> list[int]:
    """Indices of the non-dominated points (the first of exact duplicates only)."""
    converted = [_as_min(p, maximize) for p in points]
    front = []
    for i, p in enumerate(converted):
        dominated = any(dominates(q, p) or (q == p and j < i) for j, q in enumerate(converted) if j != i)
        if not dominated:
            front.append(i)
    return front


def hypervolume_2d(points: Sequence[Sequence[float]], maximize: Sequence[bool], reference: Sequence[float]) -> float:
    """Area dominated by `points` and bounded by `reference` (two objectives)."""
    if len(maximize) != 2:
        raise ValueError("hypervolume_2d needs exactly two objectives")
    ref = _as_min(reference, maximize)
    pts = [_as_min(p, maximize) for p in points]
    pts = [p for p in pts if p[0] < ref[0] and p[1] < ref[1]]
    front = sorted(pts[i] for i in pareto_indices(pts, [False, False]))
    area, prev_y = 0.0, ref[1]
    for x, y in front:  # x ascending, so y descending along a front
        area += (ref[0] - x) * (prev_y - y)
        prev_y = y
    return area
