from __future__ import annotations

import random
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from nas.data import load
from nas.errors import NASError
from nas.sampling import SandwichSampler, UniformSampler, make_sampler
from nas.space import SearchSpace
from nas.spec import parse_spec
from nas.train import train_supernet


def _spec(tiny_spec_path: Path, **train: object):
    raw = yaml.safe_load(tiny_spec_path.read_text())
    raw["train"].update(train)
    raw["data"]["limit"] = 400
    return parse_spec(raw, "tiny")


def test_sandwich_and_uniform_samplers(tiny_spec_path: Path) -> None:
    spec = _spec(tiny_spec_path, num_random=2)
    space = SearchSpace.from_spec(spec, 1, 10)
    sandwich = make_sampler(space, spec.train)
    assert isinstance(sandwich, SandwichSampler) and sandwich.teacher_first
    step = sandwich.step(random.Random(0))
    assert step[0] == space.largest() and step[-1] == space.smallest() and len(step) == 4
    uniform = make_sampler(space, _spec(tiny_spec_path, sampler="uniform").train)
    assert isinstance(uniform, UniformSampler) and len(uniform.step(random.Random(0))) == 1


def test_unknown_sampler_lists_known_ones(tiny_spec_path: Path) -> None:
    spec = _spec(tiny_spec_path)
    space = SearchSpace.from_spec(spec, 1, 10)
    with pytest.raises(NASError, match="known: sandwich, uniform"):
        make_sampler(space, spec.train.model_copy(update={"sampler": "nope"}))


def test_training_lowers_loss_and_resume_is_exact(tiny_spec_path: Path, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    spec = _spec(tiny_spec_path, epochs=2)
    splits = load(spec.data)
    space = SearchSpace.from_spec(spec, splits.in_channels, splits.num_classes)

    straight = train_supernet(spec, space, splits, tmp_path / "straight", progress=False)
    first = torch.load(straight.checkpoint)["model"]

    # A run that died after its first epoch left only that epoch's checkpoint: resume from it.
    crashed = tmp_path / "resumed" / "checkpoints"
    crashed.mkdir(parents=True)
    shutil.copy(tmp_path / "straight" / "checkpoints" / "epoch_1.pt", crashed / "epoch_1.pt")
    resumed = train_supernet(spec, space, splits, tmp_path / "resumed", resume=True, progress=False)
    second = torch.load(resumed.checkpoint)["model"]

    assert resumed.steps == straight.steps
    assert sorted(first) == sorted(second)
    for name in first:
        assert torch.equal(first[name], second[name]), name
    assert (tmp_path / "straight" / "checkpoints" / "epoch_1.pt").exists()
    assert (tmp_path / "straight" / "checkpoints" / "epoch_2.pt").exists()


def test_resume_without_checkpoint_is_an_error(tiny_spec_path: Path, tmp_path: Path) -> None:
    spec = _spec(tiny_spec_path)
    splits = load(spec.data)
    space = SearchSpace.from_spec(spec, splits.in_channels, splits.num_classes)
    with pytest.raises(NASError, match="no checkpoint"):
        train_supernet(spec, space, splits, tmp_path, resume=True, progress=False)
