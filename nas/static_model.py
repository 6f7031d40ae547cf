"""Plain PyTorch modules for one subnet, built from a network description (see `SearchSpace.describe`).

This file depends on torch only, so an export can ship a copy of it beside the weights and the model
loads without the `nas` package or the supernet:

    import json, torch
    from model import build
    net = build(json.load(open("network.json")))
    net.load_state_dict(torch.load("weights.pt", weights_only=True))
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round to the nearest multiple of `divisor`, never below it and never below 90% of `value`."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


class ConvBNAct(nn.Sequential):
    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, act: bool = True):
        super().__init__(
            nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
            nn.Hardswish() if act else nn.Identity(),
        )


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int, mid: int):
        super().__init__()
        self.reduce = nn.Conv2d(channels, mid, 1)
        self.expand = nn.Conv2d(mid, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = x.mean((2, 3), keepdim=True)
        scale = self.expand(torch.relu(self.reduce(scale)))
        return x * nn.functional.hardsigmoid(scale)


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand, kxk depthwise, optional squeeze-excite, 1x1 project."""

    def __init__(self, cin: int, cout: int, expand: int, kernel: int, stride: int, se: bool):
        super().__init__()
        hidden = cin * expand
        self.expand = ConvBNAct(cin, hidden, 1)
        self.depthwise = ConvBNAct(hidden, hidden, kernel, stride, groups=hidden)
        self.se = SqueezeExcite(hidden, make_divisible(hidden / 4)) if se else nn.Identity()
        self.project = ConvBNAct(hidden, cout, 1, act=False)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.project(self.se(self.depthwise(self.expand(x))))
        return x + out if self.residual else out


class Attention(nn.Module):
    """Pre-norm multi-head self-attention with a fixed head dim and value dim = v_scale x head dim."""

    def __init__(self, channels: int, head_dim: int, v_scale: int):
        super().__init__()
        self.heads = channels // head_dim
        self.head_dim = head_dim
        self.v_dim = v_scale * head_dim
        self.norm = nn.LayerNorm(channels)
        self.qk = nn.Linear(channels, 2 * self.heads * head_dim)
        self.v = nn.Linear(channels, self.heads * self.v_dim)
        self.proj = nn.Linear(self.heads * self.v_dim, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, _ = x.shape
        y = self.norm(x)
        q, k = self.qk(y).view(batch, tokens, 2, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        v = self.v(y).view(batch, tokens, self.heads, self.v_dim).transpose(1, 2)
        attn = torch.softmax((q @ k.transpose(-2, -1)) * self.head_dim**-0.5, dim=-1)
        out = (attn @ v).transpose(1, 2).reshape(batch, tokens, self.heads * self.v_dim)
        return x + self.proj(out)


class FeedForward(nn.Module):
    def __init__(self, channels: int, mlp_ratio: int):
        super().__init__()
        self.norm = nn.LayerNorm(channels)
        self.fc1 = nn.Linear(channels, channels * mlp_ratio)
        self.fc2 = nn.Linear(channels * mlp_ratio, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(nn.functional.hardswish(self.fc1(self.norm(x))))


class TransformerStage(nn.Module):
    """A downsampling MBConv, then attention + FFN layers over the flattened feature map."""

    def __init__(self, cin: int, stage: dict[str, Any]):
        super().__init__()
        cout = stage["channels"]
        self.downsample = MBConv(cin, cout, stage["downsample_expand"], 3, stage["stride"], False)
        self.layers = nn.ModuleList(
            nn.Sequential(Attention(cout, stage["head_dim"], layer["v_scale"]), FeedForward(cout, layer["mlp_ratio"]))
            for layer in stage["layers"]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)
        batch, channels, height, width = x.shape
        tokens = x.flatten(2).transpose(1, 2)
        for layer in self.layers:
            tokens = layer(tokens)
        return tokens.transpose(1, 2).reshape(batch, channels, height, width)


class Head(nn.Module):
    """1x1 expand + hard-swish, global average pool, linear classifier."""

    def __init__(self, cin: int, channels: int, num_classes: int):
        super().__init__()
        self.expand = ConvBNAct(cin, channels, 1)
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.expand(x).mean((2, 3)))


class Network(nn.Module):
    def __init__(self, network: dict[str, Any]):
        super().__init__()
        stem = network["stem"]
        self.resolution = network["resolution"]
        self.stem = ConvBNAct(network["in_channels"], stem["channels"], stem["kernel"], stem["stride"])
        cin = stem["channels"]
        stages: list[nn.Module] = []
        for stage in network["stages"]:
            if stage["type"] == "conv":
                layers = []
                for j, layer in enumerate(stage["layers"]):
                    stride = stage["stride"] if j == 0 else 1
                    layers.append(MBConv(cin, stage["channels"], layer["expand"], layer["kernel"], stride, stage["se"]))
                    cin = stage["channels"]
                stages.append(nn.Sequential(*layers))
            else:
                stages.append(TransformerStage(cin, stage))
                cin = stage["channels"]
        self.stages = nn.Sequential(*stages)
        self.head = Head(cin, network["head"]["channels"], network["num_classes"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.resolution or x.shape[-2] != self.resolution:
            x = nn.functional.interpolate(x, size=(self.resolution, self.resolution), mode="bilinear",
                                          align_corners=False)
        return self.head(self.stages(self.stem(x)))


def build(network: dict[str, Any]) -> Network:
    """A freshly initialised network for a description produced by `SearchSpace.describe`."""
    if network.get("format_version") != 1:
        raise ValueError(f"network description format_version must be 1, got {network.get('format_version')!r}")
    return Network(network)
