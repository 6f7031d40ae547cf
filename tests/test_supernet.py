"""Invariants of the elastic supernet: extracted subnets compute exactly what the supernet computes."""

from __future__ import annotations

import random

import pytest
import torch
import yaml
from torch.utils.flop_counter import FlopCounterMode

from nas import static_model
from nas.space import SearchSpace
from nas.spec import parse_spec
from nas.supernet import Supernet


@pytest.fixture(scope="module")
def space(tiny_spec_path) -> SearchSpace:
    spec = parse_spec(yaml.safe_load(tiny_spec_path.read_text()), "tiny")
    return SearchSpace.from_spec(spec, in_channels=3, num_classes=7)


@pytest.fixture(scope="module")
def supernet(space: SearchSpace) -> Supernet:
    torch.manual_seed(0)
    net = Supernet(space)
    # Give BatchNorm non-trivial statistics and the weights a few updates, as training would.
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    rng = random.Random(0)
    net.train()
    for _ in range(5):
        net.set_active(space.sample(rng))
        loss = net(torch.randn(16, 3, 8, 8)).logsumexp(-1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()


def test_extracted_output_equals_supernet_output(space: SearchSpace, supernet: Supernet) -> None:
    rng = random.Random(1)
    x = torch.randn(8, 3, 8, 8)
    archs = [space.largest(), space.smallest()] + [space.sample(rng) for _ in range(30)]
    with torch.no_grad():
        for arch in archs:
            supernet.set_active(arch)
            expected = supernet(x)
            got = supernet.extract(arch).eval()(x)
            assert (expected - got).abs().max().item() < 1e-5, arch


def test_extract_copies_weights(space: SearchSpace, supernet: Supernet) -> None:
    arch = space.smallest()
    sub = supernet.extract(arch)
    with torch.no_grad():
        for p in sub.parameters():
            p.add_(1.0)
    supernet.set_active(arch)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert (supernet(x) - sub.eval()(x)).abs().max() > 1e-3


def test_params_and_flops_match_the_torch_module(space: SearchSpace, supernet: Supernet) -> None:
    rng = random.Random(3)
    for _ in range(15):
        arch = space.sample(rng)
        sub = supernet.extract(arch).eval()
        assert sum(p.numel() for p in sub.parameters()) == space.params(arch)
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            sub(torch.randn(1, 3, arch.resolution, arch.resolution))
        assert counter.get_total_flops() == 2 * space.flops(arch)


def test_static_model_builds_from_description_alone(space: SearchSpace) -> None:
    description = space.describe(space.largest())
    net = static_model.build(description)
    assert net(torch.randn(2, 3, 8, 8)).shape == (2, 7)
    with pytest.raises(ValueError, match="format_version"):
        static_model.build({**description, "format_version": 99})


def test_training_step_moves_only_active_slices(space: SearchSpace) -> None:
    torch.manual_seed(0)
    net = Supernet(space).train()
    arch = space.smallest()
    net.set_active(arch)
    net(torch.randn(4, 3, 8, 8)).sum().backward()
    grad = net.classifier.weight.grad
    assert grad is not None
    assert grad[:, : arch.head].abs().sum() > 0
    assert grad[:, arch.head:].abs().sum() == 0
