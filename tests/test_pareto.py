from __future__ import annotations

import random

from nas.pareto import dominates, hypervolume_2d, pareto_indices


def test_front_of_known_points() -> None:
    points = [(0.9, 10.0), (0.8, 5.0), (0.85, 12.0), (0.7, 4.0), (0.9, 10.0), (0.6, 4.5)]
    assert pareto_indices(points, [True, False]) == [0, 1, 3]


def test_front_members_are_not_dominated_and_others_are() -> None:
    rng = random.Random(0)
    points = [(rng.random(), rng.random()) for _ in range(200)]
    front = set(pareto_indices(points, [True, False]))
    as_min = [(-a, b) for a, b in points]
    for i, p in enumerate(as_min):
        dominated = any(dominates(q, p) for q in as_min)
        assert dominated == (i not in front)


def test_hypervolume_of_staircase() -> None:
    # (accuracy, latency) maximise / minimise, reference (0, 20): 0.9*(20-10) + 0.8*(10-5) = 13
    assert hypervolume_2d([(0.9, 10.0), (0.8, 5.0)], [True, False], (0.0, 20.0)) == 13.0
    # a dominated point adds nothing; a point beyond the reference is ignored
    assert hypervolume_2d([(0.9, 10.0), (0.8, 5.0), (0.7, 8.0), (0.95, 25.0)], [True, False], (0.0, 20.0)) == 13.0
    assert hypervolume_2d([], [True, False], (0.0, 20.0)) == 0.0
