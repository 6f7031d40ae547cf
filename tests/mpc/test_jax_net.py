"""The jax networks equal the torch `static_model` ones: plaintext within float error, SPU within fixed point.

The archs come from a space built here with every option the jax side mirrors: an MBConv stage with
squeeze-excite and the avgpool_conv shortcut on an odd side (padded pool), expand 1 (no 1x1 expansion);
a transformer stage with per-head attention over all four kinds, all three FFN activations, v_dwconv,
rel_pos_bias, proj_act, no q/k/v bias, a squeeze-excite downsample whose shortcut is a bare 1x1 conv; a second
transformer stage with one kind per layer and default options; a head with a final layer. The last arch is
described in format 1 (the oldest exports), which leaves all those options out. Passing a torch
state dict also checks `jax_net.param_shapes` (hence `random_params`) against it: the worker refuses any
missing, extra or reshaped entry.
"""

from __future__ import annotations

import dataclasses
import random

import numpy as np
import pytest
import torch

from nas import static_model
from nas.mpc import runner
from nas.ops import ATTENTION_KINDS, FFN_ACTIVATIONS
from nas.space import SearchSpace
from nas.spec import parse_spec

pytestmark = pytest.mark.usefixtures("spu", "one_thread")

PLAIN_TOLERANCE = 1e-4
# SPU computes in fixed point (FM64: 18 fraction bits) with approximate exp, reciprocal, rsqrt and erf. Its
# logits for these archs differ from torch's by 1.6e-4 to 1.0e-3 (measured; logits up to ~2), the plaintext
# jax ones by under 1e-6. A wrong op moves them by ~0.1 (a transposed relative position index: 0.14).
SPU_TOLERANCE = 5e-3
SPACE = {
    "version": 1,
    "name": "mpc_test",
    "space": {
        "resolution": [14],
        "stem": {"channels": [8, 16], "stride": 2},
        "stages": [
            {"type": "conv", "depth": [1, 2], "channels": [16, 24], "expand": [1, 2], "kernel": [3, 5], "stride": 2,
             "se": True, "shortcut": "avgpool_conv"},
            {"type": "transformer", "depth": [1, 2], "channels": [32], "head_dim": 8, "mlp_ratio": [1, 2],
             "v_scale": [1, 2], "stride": 1, "downsample_expand": 2, "downsample_se": True,
             "shortcut": "avgpool_conv", "v_dwconv": True, "rel_pos_bias": True, "proj_act": True,
             "qkv_bias": False, "attention": list(ATTENTION_KINDS), "attention_per_head": True,
             "ffn_act": list(FFN_ACTIVATIONS)},
            {"type": "transformer", "depth": [1, 1], "channels": [32, 48], "head_dim": 16, "mlp_ratio": [2],
             "v_scale": [1], "stride": 2, "downsample_expand": 2, "attention": ["softmax", "quad"],
             "ffn_act": ["hswish", "gelu"]},
        ],
        "head": {"channels": [32], "final_channels": [24]},
    },
    "data": {"dataset": "digits"},
}


def _archs(space: SearchSpace) -> list:
    """Random archs, each with its first attention layer forced to a different order of all four kinds and
    a different activation, so every kind and activation is covered whatever the sampler draws."""
    kinds = sorted(ATTENTION_KINDS)
    archs = []
    for i in range(3):
        arch = space.sample(random.Random(i))
        stage = arch.stages[1]
        first = dataclasses.replace(stage.layers[0], attention=tuple(kinds[i:] + kinds[:i])[::-1],
                                    act=FFN_ACTIVATIONS[i])
        stages = list(arch.stages)
        stages[1] = dataclasses.replace(stage, layers=(first, *stage.layers[1:]))
        arch = dataclasses.replace(arch, stages=tuple(stages))
        space.validate_arch(arch)
        archs.append(arch)
    return archs


def _randomised(description: dict, seed: int) -> torch.nn.Module:
    """The torch model with non-trivial BatchNorm statistics, norm scales and relative position biases."""
    torch.manual_seed(seed)
    model = static_model.build(description)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if name.endswith("running_var"):
                tensor.uniform_(0.5, 1.5)
            elif name.endswith("running_mean") or (name.endswith("bias") and tensor.dim() == 1):
                tensor.normal_(0.0, 0.2)
            elif name.endswith("rel_bias"):
                tensor.normal_(0.0, 0.5)
            elif tensor.dim() == 1 and tensor.is_floating_point():  # norm scales
                tensor.uniform_(0.5, 1.5)
            elif tensor.dim() > 1:  # variance-preserving, so that every op shows in the logits
                tensor.normal_(0.0, tensor[0].numel() ** -0.5)
    return model.eval()


@pytest.fixture(scope="module")
def runs() -> list[tuple[np.ndarray, dict]]:
    space = SearchSpace.from_spec(parse_spec(SPACE, "test"), 1, 10)
    items, expected = [], []
    for i, arch in enumerate(_archs(space)):
        description = space.describe(arch)
        if i == 2:  # read as format 1: no attention options, no final layer, a 1x1 expansion at expand 1
            description = dict(description, format_version=1)
        model = _randomised(description, i)
        images = np.random.default_rng(i).standard_normal((2, 1, 14, 14)).astype(np.float32)
        with torch.no_grad():
            expected.append(model(torch.from_numpy(images)).numpy())
        params = {name: value.numpy() for name, value in model.state_dict().items()}
        items.append((description, params, images))
    return list(zip(expected, runner.run_networks(items), strict=True))


def test_the_archs_cover_every_kind_activation_and_option():
    space = SearchSpace.from_spec(parse_spec(SPACE, "test"), 1, 10)
    layers = [layer for arch in _archs(space) for stage in arch.stages[1:] for layer in stage.layers]
    assert {kind for layer in layers for kind in layer.attention} == set(ATTENTION_KINDS)
    assert {layer.act for layer in layers} == set(FFN_ACTIVATIONS)
    assert all(len(set(arch.stages[1].layers[0].attention)) == 4 for arch in _archs(space))


def test_jax_plaintext_equals_torch(runs):
    for expected, result in runs:
        assert result["plain"].shape == expected.shape == (2, 10)
        assert np.abs(expected).max() > 0.5  # logits of a size that makes the comparison mean something
        np.testing.assert_allclose(result["plain"], expected, rtol=0, atol=PLAIN_TOLERANCE)


def test_spu_output_equals_torch_within_fixed_point_error(runs):
    for expected, result in runs:
        np.testing.assert_allclose(result["spu"], expected, rtol=0, atol=SPU_TOLERANCE)
        assert result["cost"].rounds > 0 and result["cost"].bytes > 0
