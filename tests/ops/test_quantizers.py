"""Each numeric format's fake quantizer against an independent reference: torch's own bfloat16 and float8
dtypes (round to nearest even), and exhaustive grids for int4/int8 and fp4 built here value by value;
zeros, subnormals, infinities, NaN and values beyond the range included, and the straight-through gradient."""

from __future__ import annotations

import itertools

import pytest
import torch

from nas.ops import NUMERIC_FORMATS, quant_float, quant_int

FLOAT_DTYPES = {"bf16": torch.bfloat16, "fp8_e4m3": torch.float8_e4m3fn, "fp8_e5m2": torch.float8_e5m2}


def _specials(limit: float, smallest: float) -> torch.Tensor:
    return torch.tensor([0.0, -0.0, smallest, smallest / 2, smallest * 1.5, -smallest * 0.75, 1.0, -1.0, limit,
                         -limit, limit * 0.999, 1e-30, -1e-30])


def test_every_format_has_a_family_and_a_quantizer() -> None:
    assert set(NUMERIC_FORMATS) == {"fp32", "bf16", "fp8_e4m3", "fp8_e5m2", "fp4_e2m1", "int8", "int4"}
    for name, (family, bits, exp_bits, man_bits) in NUMERIC_FORMATS.items():
        assert family in ("none", "int", "float")
        if family == "float":
            assert bits == 1 + exp_bits + man_bits, name


@pytest.mark.parametrize("name", sorted(FLOAT_DTYPES))
def test_float_formats_round_like_torchs_dtypes(name: str) -> None:
    _, _, exp_bits, man_bits = NUMERIC_FORMATS[name]
    dtype = FLOAT_DTYPES[name]
    limit = quant_float.max_normal(exp_bits, man_bits)
    assert limit == torch.finfo(dtype).max
    smallest = 2.0 ** (1 - quant_float.bias(exp_bits) - man_bits)  # smallest subnormal
    generator = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(20000, generator=generator) * scale for scale in (1e-3, 1.0, 30.0, limit / 8)]
                  + [_specials(limit, smallest)])
    x = x[x.abs() <= limit]
    expected = x.to(dtype).float()
    torch.testing.assert_close(quant_float.round_to_format(x, exp_bits, man_bits), expected, rtol=0, atol=0)


@pytest.mark.parametrize("name", sorted(NUMERIC_FORMATS))
def test_specials_and_saturation(name: str) -> None:
    family, bits, exp_bits, man_bits = NUMERIC_FORMATS[name]
    if family == "none":
        return
    beyond = 3.4e38 if exp_bits == 8 else 1e30  # past bf16's largest value, still finite in float32
    x = torch.tensor([float("nan"), float("inf"), float("-inf"), beyond, -beyond, 0.0, -0.0])
    if family == "float":
        out = quant_float.round_to_format(x, exp_bits, man_bits)
        top = quant_float.max_normal(exp_bits, man_bits)
    else:
        out = quant_int.fake_quantize(x, bits, torch.tensor(1.0))
        top = float(quant_int.levels(bits))
    assert torch.isnan(out[0])
    assert out[1:].tolist() == [top, -top, top, -top, 0.0, 0.0]
    assert torch.signbit(out[-1]) or family == "int"  # -0 keeps its sign in a float format


def _fp4_values() -> list[float]:
    """Every e2m1 value from its bit patterns: sign, 2 exponent bits (bias 1), 1 mantissa bit."""
    values = []
    for sign, exponent, mantissa in itertools.product((1, -1), range(4), range(2)):
        magnitude = (mantissa / 2) * 2.0 ** 0 if exponent == 0 else (1 + mantissa / 2) * 2.0 ** (exponent - 1)
        values.append(sign * magnitude)
    return values


def test_fp4_exhaustively_against_its_grid() -> None:
    grid = sorted(set(_fp4_values()))
    assert [v for v in grid if v >= 0] == [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]
    codes = {v: i for i, v in enumerate([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])}  # even code = even mantissa
    x = torch.arange(-8.0, 8.0 + 1e-9, 1 / 64)
    out = quant_float.round_to_format(x, 2, 1)
    for value, got in zip(x.tolist(), out.tolist(), strict=True):
        clipped = max(-6.0, min(6.0, value))
        distance = min(abs(clipped - g) for g in grid)
        nearest = [g for g in grid if abs(abs(clipped - g) - distance) < 1e-12]
        if len(nearest) == 2:  # a tie: the one whose code (magnitude index) is even
            nearest = [g for g in nearest if codes[abs(g)] % 2 == 0]
        assert got == nearest[0] or (got == 0 and nearest[0] == 0), (value, got, nearest)


@pytest.mark.parametrize("bits", [4, 8])
def test_integers_exhaustively_against_their_grid(bits: int) -> None:
    top = 2 ** (bits - 1) - 1
    quarters = list(range(-(top + 3) * 4, (top + 3) * 4 + 1))  # quarter steps of the grid: ties included
    x = torch.tensor(quarters, dtype=torch.float32) / 4 * 0.25  # exact in float32 (a power-of-two scale)
    out = quant_int.fake_quantize(x, bits, torch.tensor(0.25))
    for quarter, got in zip(quarters, out.tolist(), strict=True):
        nearest = round(quarter / 4)  # Python rounds half to even, on exact quarters
        assert got == max(-top, min(top, nearest)) * 0.25, (quarter, got)


def test_channel_and_tensor_scales() -> None:
    weight = torch.tensor([[0.5, -2.0], [0.0, 0.0], [1.0, 0.25]])
    scale = quant_int.channel_scale(weight, 8)
    torch.testing.assert_close(scale.flatten(), torch.tensor([2.0 / 127, 1.0, 1.0 / 127]))
    assert quant_int.fake_quantize(weight, 8, scale)[0, 1] == -2.0  # the channel's largest value is exact
    assert float(quant_int.tensor_scale(6.35, 8)) == pytest.approx(0.05)
    assert float(quant_int.tensor_scale(0.0, 4)) == 1.0


@pytest.mark.parametrize("name", ["int8", "int4", "fp8_e4m3", "fp4_e2m1", "bf16"])
def test_straight_through_gradient_is_one_inside_and_zero_where_saturated(name: str) -> None:
    family, bits, exp_bits, man_bits = NUMERIC_FORMATS[name]
    x = torch.tensor([0.3, -1.1, 2.0, 1e6, -1e6], requires_grad=True)
    if family == "int":
        out = quant_int.fake_quantize(x, bits, torch.tensor(2.5 / quant_int.levels(bits)))
    else:
        out = quant_float.fake_quantize(x, exp_bits, man_bits, 2.5 / quant_float.max_normal(exp_bits, man_bits))
    out.sum().backward()
    assert x.grad is not None
    assert x.grad.tolist() == [1.0, 1.0, 1.0, 0.0, 0.0]  # |x| <= 2.5 passes, 1e6 saturated
