"""Symmetric integer fake quantization (torch only): int8, int4 and any other width.

q = clamp(round(x / scale), -(2^(b-1) - 1), 2^(b-1) - 1) * scale, rounding half to even (torch.round). Weights
take a scale per output channel (`channel_scale`), activations one per tensor from a calibrated range
(`tensor_scale`). Gradients pass straight through inside the representable range and are zero where the value
saturated (the clipped straight-through estimator). NaN stays NaN; +-inf saturate.
"""

from __future__ import annotations

import torch


def levels(bits: int) -> int:
    """The largest code of a symmetric `bits`-bit integer (127 for int8, 7 for int4)."""
    if bits < 2:
        raise ValueError(f"a symmetric integer format needs at least 2 bits, got {bits}")
    return 2 ** (bits - 1) - 1


def channel_scale(weight: torch.Tensor, bits: int) -> torch.Tensor:
    """Per output channel (dim 0): max |w| / levels, shaped to broadcast against `weight` (never 0)."""
    amax = weight.detach().abs().reshape(weight.shape[0], -1).amax(dim=1)
    scale = torch.where(amax > 0, amax / levels(bits), torch.ones_like(amax))
    return scale.reshape(-1, *([1] * (weight.dim() - 1)))


def tensor_scale(amax: float | torch.Tensor, bits: int) -> torch.Tensor:
    """One scale for a tensor whose calibrated range is [-amax, amax] (never 0)."""
    amax = torch.as_tensor(amax, dtype=torch.float32)
    return torch.where(amax > 0, amax / levels(bits), torch.ones_like(amax))


def fake_quantize(x: torch.Tensor, bits: int, scale: torch.Tensor) -> torch.Tensor:
    """x rounded to the `bits`-bit symmetric grid of `scale` (see the module docstring)."""
    top = levels(bits)
    codes = torch.clamp(torch.round(x / scale), -top, top)
    quantized = codes * scale
    inside = (x / scale).abs() <= top + 0.5
    return torch.where(inside, x + (quantized - x).detach(), quantized.detach())
