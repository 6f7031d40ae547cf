"""Arch samplers for supernet training: which subnets each training step updates.

Lifecycle (the trainer's call order): `__init__(space, train_spec)`; per step `step(rng)` returns the
step's archs, the first one being the teacher when `distill` is on; after the step, `observe(arch, loss)`
for each arch (a no-op unless a sampler learns from losses); `state_dict()` / `load_state_dict()` for
checkpoints. All randomness comes from the `random.Random` the trainer passes in.
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

from nas.errors import NASError
from nas.space import ArchConfig, SearchSpace
from nas.spec import TrainSpec

_SAMPLERS: dict[str, type[ArchSampler]] = {}


def register_sampler(name: str) -> Callable[[type[ArchSampler]], type[ArchSampler]]:
    def wrap(cls: type[ArchSampler]) -> type[ArchSampler]:
        _SAMPLERS[name] = cls
        return cls

    return wrap


def make_sampler(space: SearchSpace, train: TrainSpec) -> ArchSampler:
    try:
        cls = _SAMPLERS[train.sampler]
    except KeyError:
        raise NASError(f"train.sampler: unknown sampler '{train.sampler}'; known: {', '.join(sorted(_SAMPLERS))}") \
            from None
    return cls(space, train)


class ArchSampler(ABC):
    """Chooses the subnets of each training step."""

    teacher_first: bool = False

    def __init__(self, space: SearchSpace, train: TrainSpec):
        self.space = space
        self.train = train

    @abstractmethod
    def step(self, rng: random.Random) -> list[ArchConfig]:
        """The archs to train in this step (the teacher first when `teacher_first`)."""

    def observe(self, arch: ArchConfig, loss: float) -> None:
        """Called with each arch's minibatch loss after the step."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` saved."""


@register_sampler("uniform")
class UniformSampler(ArchSampler):
    """One uniformly random subnet per step."""

    def step(self, rng: random.Random) -> list[ArchConfig]:
        return [self.space.sample(rng)]


@register_sampler("sandwich")
class SandwichSampler(ArchSampler):
    """The largest, `num_random` random and the smallest subnet per step; the largest teaches the others."""

    teacher_first = True

    def step(self, rng: random.Random) -> list[ArchConfig]:
        randoms = [self.space.sample(rng) for _ in range(self.train.num_random)]
        return [self.space.largest(), *randoms, self.space.smallest()]
