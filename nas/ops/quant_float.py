"""Low-precision floating-point fake quantization (torch only): bf16, fp8 (e4m3, e5m2), fp4 (e2m1) and any
other (exponent bits, mantissa bits) format with IEEE-style subnormals.

A value is rounded to the nearest number of the format, ties to even mantissa, then saturated at the format's
largest finite value (`max_normal`): what a quantizer that clips before casting does. NaN stays NaN; +-inf
saturate to +-max. The result is exact in float32 (every step is a power of two). Gradients pass straight
through inside the range and are zero where the value saturated.

Largest finite values: bf16 and e5m2 follow IEEE (the top exponent holds inf/NaN); e4m3 is OCP's `fn` variant
(no infinity; only the all-ones code is NaN: max 448); e2m1 has neither infinity nor NaN (max 6).
"""

from __future__ import annotations

import torch


def bias(exp_bits: int) -> int:
    return 2 ** (exp_bits - 1) - 1


def max_normal(exp_bits: int, man_bits: int) -> float:
    """The largest finite value of the format (see the module docstring for which codes are reserved)."""
    if (exp_bits, man_bits) == (4, 3):  # e4m3fn: the top exponent is usable, only mantissa 111 there is NaN
        return 448.0
    if exp_bits <= 2:  # e2m1 (and smaller): no reserved codes
        top = 2 ** exp_bits - 1
        return 2.0 ** (top - bias(exp_bits)) * (2 - 2.0 ** -man_bits)
    top = 2 ** exp_bits - 2  # IEEE: the all-ones exponent is inf/NaN
    return 2.0 ** (top - bias(exp_bits)) * (2 - 2.0 ** -man_bits)


def round_to_format(x: torch.Tensor, exp_bits: int, man_bits: int) -> torch.Tensor:
    """x (float32) rounded to the nearest value of the format, ties to even, saturated; NaN stays NaN."""
    x = x.float()
    limit = max_normal(exp_bits, man_bits)
    magnitude = x.abs().clamp(max=limit)  # +-inf and overflow saturate (NaN passes: clamp keeps it)
    min_exponent = 1 - bias(exp_bits)  # of the smallest normal; below it the step stays that of subnormals
    _, exponent = torch.frexp(magnitude.clamp(min=2.0 ** min_exponent))  # exact: m * 2^e, m in [0.5, 1)
    step = torch.exp2((exponent - 1 - man_bits).float())
    rounded = torch.round(magnitude / step) * step
    return torch.copysign(rounded.clamp(max=limit), x)


def fake_quantize(x: torch.Tensor, exp_bits: int, man_bits: int, scale: torch.Tensor | float = 1.0) -> torch.Tensor:
    """x / scale rounded to the format, times scale, with the clipped straight-through gradient."""
    scaled = x / scale
    quantized = round_to_format(scaled, exp_bits, man_bits).to(x.dtype) * scale
    inside = scaled.abs() <= max_normal(exp_bits, man_bits)
    return torch.where(inside, x + (quantized - x).detach(), quantized.detach())
