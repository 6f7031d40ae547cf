"""Contract and numerics of the attention kinds (`nas/ops/attn_*.py`), the FFN activations and the per-head
dispatch and mixing of `nas.ops.attention`, shared by the supernet and the static model."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import torch

import nas.ops
from nas import static_model
from nas.ops import ATTENTION_KINDS, FFN_ACTIVATIONS, activation, mix_counts, mix_name
from nas.ops import attention as ops

torch.manual_seed(0)
Q, K, V = torch.randn(2, 4, 6, 8), torch.randn(2, 4, 6, 8), torch.randn(2, 4, 6, 16)
SCALE = 8**-0.5
BIAS = torch.randn(1, 4, 6, 6)


def _scores(heads: slice = slice(None)) -> torch.Tensor:
    return (Q[:, heads] @ K[:, heads].transpose(-2, -1)) * SCALE + BIAS[:, heads]


EXPECTED = {  # each kind's weights, written out by hand from its paper
    "softmax": lambda s: torch.exp(s) / torch.exp(s).sum(-1, keepdim=True),
    "relu_softmax": lambda s: s.clamp_min(0) / (s.clamp_min(0).sum(-1, keepdim=True) + 1e-3),
    "scaling": lambda s: s / s.shape[-1],
    "quad": lambda s: (s + 5) ** 2 / ((s + 5) ** 2 + 0).sum(-1, keepdim=True).add(1e-3),
}


def test_every_attention_kind_is_one_module_with_normalise_and_a_test() -> None:
    """The registry is the folder: each `attn_<kind>.py` is a kind the spec accepts, the static model and the
    supernet compute and this test checks by hand; a new kind without an entry in EXPECTED fails here."""
    files = sorted(p.stem[len("attn_"):] for p in Path(nas.ops.__file__).parent.glob("attn_*.py"))
    assert list(ATTENTION_KINDS) == files
    assert set(static_model.ATTENTION_KINDS) == set(ATTENTION_KINDS) == set(EXPECTED)
    for kind in ATTENTION_KINDS:
        module = importlib.import_module(f"nas.ops.attn_{kind}")
        assert callable(module.normalise) and module.__doc__
    assert set(activation.ACTIVATIONS) == set(FFN_ACTIVATIONS)
    assert set(nas.ops.COST_ORDER) >= set(ATTENTION_KINDS) | set(FFN_ACTIVATIONS)


@pytest.mark.parametrize("kind", ATTENTION_KINDS)
def test_each_kind_computes_its_formula(kind: str) -> None:
    out = ops.attend(Q, K, V, SCALE, BIAS, (kind,), static_model.ATTENTION_KINDS)
    torch.testing.assert_close(out, EXPECTED[kind](_scores()) @ V, rtol=1e-5, atol=1e-5)


def test_relu_softmax_and_quad_rows_sum_to_about_one_and_scaling_is_linear() -> None:
    s = _scores()
    for kind in ("softmax", "relu_softmax", "quad"):
        rows = static_model.ATTENTION_KINDS[kind](s).sum(-1)
        assert torch.all((rows > 0.99) & (rows <= 1.0 + 1e-6)), kind  # eps: just below 1
    assert torch.all(static_model.ATTENTION_KINDS["relu_softmax"](-s.abs() - 1) == 0)  # no positive score: 0
    scaling = static_model.ATTENTION_KINDS["scaling"]
    torch.testing.assert_close(scaling(2 * s + 1), 2 * scaling(s) + scaling(torch.ones_like(s)))


def test_per_head_kinds_compute_each_head_with_its_own_kind() -> None:
    kinds = ("scaling", "softmax", "quad", "softmax")
    out = ops.attend(Q, K, V, SCALE, BIAS, kinds, static_model.ATTENTION_KINDS)
    for h, kind in enumerate(kinds):
        expected = EXPECTED[kind](_scores(slice(h, h + 1))) @ V[:, h:h + 1]
        torch.testing.assert_close(out[:, h:h + 1], expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="3 attention kinds for 4 heads"):
        ops.attend(Q, K, V, SCALE, BIAS, kinds[:3], static_model.ATTENTION_KINDS)


def test_mixing_interpolates_two_kinds_per_head_and_is_differentiable() -> None:
    first, second = static_model.ATTENTION_KINDS["softmax"], static_model.ATTENTION_KINDS["scaling"]
    weight = torch.tensor([1.0, 0.0, 0.3, 0.7], requires_grad=True)
    out = ops.attend_mixed(Q, K, V, SCALE, BIAS, first, second, weight)
    s = _scores()
    for h, w in enumerate(weight.tolist()):
        expected = (w * EXPECTED["softmax"](s[:, h]) + (1 - w) * EXPECTED["scaling"](s[:, h])) @ V[:, h]
        torch.testing.assert_close(out[:, h], expected, rtol=1e-5, atol=1e-5)
    out.square().sum().backward()
    assert weight.grad is not None and torch.all(weight.grad != 0)


def test_activations_by_name() -> None:
    x = torch.linspace(-4, 4, 17)
    torch.testing.assert_close(activation.get_activation("relu")(x), x.clamp_min(0))
    torch.testing.assert_close(activation.get_activation("hswish")(x), x * (x + 3).clamp(0, 6) / 6)
    torch.testing.assert_close(activation.get_activation("gelu")(x), x * 0.5 * (1 + torch.erf(x / 2**0.5)))
    with pytest.raises(ValueError, match="known: gelu, hswish, relu"):
        activation.get_activation("tanh")


def test_mix_names_count_heads_per_kind() -> None:
    assert mix_name(("softmax",)) == "softmax"
    assert mix_name(("scaling", "softmax", "scaling", "scaling")) == "scaling:3+softmax:1"
    assert mix_counts("scaling:3+softmax:1", 4) == {"scaling": 3, "softmax": 1}
    assert mix_counts("quad", 4) == {"quad": 4}
    for bad, rule in [("scaling:3+softmax:2", "add up to 5"), ("softmax:1+scaling:3", "name order"),
                      ("scaling:x+softmax:1", "kind:count"), ("cubic", "unknown attention kind 'cubic'"),
                      ("scaling:4", "two or more kinds")]:
        with pytest.raises(ValueError, match=rule):
            mix_counts(bad, 4)
