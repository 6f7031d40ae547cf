"""Plain PyTorch modules for one subnet, built from a network description (see `SearchSpace.describe`).

This file depends on torch only (and on the op modules of `nas/ops`, which depend on torch only), so an export
can ship a copy of it beside the weights, with a copy of each op module beside it (`OP_FILES`), and the model
loads without the `nas` package or the supernet:

    import json, torch
    from model import build
    net = build(json.load(open("network.json")))
    net.load_state_dict(torch.load("weights.pt", weights_only=True))

Description formats: 3 (current) adds to format 2 each transformer layer's `attention` (a kind, or a list of
one kind per head; softmax when absent) and FFN `act` (hswish when absent); 2 names every block option per
stage (`shortcut`, `downsample_se`, `v_dwconv`, `rel_pos_bias`, `proj_act`, `qkv_bias`) and the head's `final`
width, and reads expand ratio 1 as a depthwise-separable block (no 1x1 expansion); 1 (exports written before)
has none of these options and a 1x1 expansion at every expand ratio, and is built exactly as it was then.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from types import ModuleType
from typing import Any

import torch
from torch import nn

FORMAT_VERSIONS = (1, 2, 3)
BASE_OP_MODULES = ("attention", "activation", "conv")  # nas/ops/<name>.py, shipped in an export as ops_<name>.py
_HERE = os.path.dirname(os.path.abspath(__file__))
_EXPORTED = os.path.isfile(os.path.join(_HERE, "ops_attention.py"))  # this file is a copy inside an export


def _attention_kind_names() -> tuple[str, ...]:
    """The attention kinds: one `attn_<kind>.py` module each (`ops_attn_<kind>.py` in an export)."""
    if _EXPORTED:
        return tuple(sorted(f[len("ops_attn_"):-3] for f in os.listdir(_HERE) if f.startswith("ops_attn_")
                            and f.endswith(".py")))
    return importlib.import_module("nas.ops").ATTENTION_KINDS


def _op_module(name: str) -> ModuleType:
    """`nas/ops/<name>.py`: its copy beside this file in an export (`ops_<name>.py`), else the package's."""
    copy = os.path.join(_HERE, f"ops_{name}.py")
    if _EXPORTED:
        spec = importlib.util.spec_from_file_location(f"{__name__}_ops_{name}", copy)
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot load {copy}")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    return importlib.import_module(f"nas.ops.{name}")


OP_MODULES = BASE_OP_MODULES + tuple(f"attn_{kind}" for kind in _attention_kind_names())
_OPS = {name: _op_module(name) for name in OP_MODULES}
attention_ops = _OPS["attention"]
activation_ops = _OPS["activation"]
conv_ops = _OPS["conv"]
ATTENTION_KINDS = {name[len("attn_"):]: module.normalise for name, module in _OPS.items() if name.startswith("attn_")}
OP_FILES = tuple(f"ops_{name}.py" for name in OP_MODULES)


def attention_kinds(kinds: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """`kinds` checked against the known attention kinds (ValueError listing them)."""
    unknown = [kind for kind in kinds if kind not in ATTENTION_KINDS]
    if unknown:
        raise ValueError(f"unknown attention kind {unknown[0]!r} (known: {', '.join(sorted(ATTENTION_KINDS))})")
    return tuple(kinds)


def op_files() -> dict[str, str]:
    """The op modules an export ships beside `model.py`: export file name -> path of the source."""
    return {f"ops_{name}.py": os.path.abspath(module.__file__ or "") for name, module in _OPS.items()}


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round to the nearest multiple of `divisor`, never below it and never below 90% of `value`."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def conv_out(side: int, stride: int) -> int:
    """Side of a `same`-padded conv's output."""
    return (side - 1) // stride + 1


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
        return conv_ops.squeeze_excite(x, self.reduce.weight, self.reduce.bias, self.expand.weight, self.expand.bias)


class MBConv(nn.Module):
    """Inverted residual: [1x1 expand], kxk depthwise, optional squeeze-excite, 1x1 project.

    An identity residual when stride 1 and widths match; otherwise, with `shortcut="avgpool_conv"`
    (ElasticViT), the input average-pooled by the stride plus a 1x1 conv where the widths differ, and with
    `shortcut="none"` no residual. `expand_conv=False` (only at expand 1) leaves out the 1x1 expansion."""

    def __init__(self, cin: int, cout: int, expand: int, kernel: int, stride: int, se: bool,
                 shortcut: str = "none", expand_conv: bool = True):
        super().__init__()
        if not expand_conv and expand != 1:
            raise ValueError(f"only expand ratio 1 can go without a 1x1 expansion, got {expand}")
        if shortcut not in ("none", "avgpool_conv"):
            raise ValueError(f"shortcut must be none or avgpool_conv, got {shortcut!r}")
        hidden = cin * expand
        self.expand = ConvBNAct(cin, hidden, 1) if expand_conv else nn.Identity()
        self.depthwise = ConvBNAct(hidden, hidden, kernel, stride, groups=hidden)
        self.se = SqueezeExcite(hidden, make_divisible(hidden / 4)) if se else nn.Identity()
        self.project = ConvBNAct(hidden, cout, 1, act=False)
        self.stride = stride
        self.residual = stride == 1 and cin == cout
        self.pool_shortcut = not self.residual and shortcut == "avgpool_conv"
        self.shortcut = nn.Conv2d(cin, cout, 1, bias=False) if self.pool_shortcut and cin != cout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.project(self.se(self.depthwise(self.expand(x))))
        if self.residual:
            return x + out
        if self.pool_shortcut:
            weight = self.shortcut.weight if self.shortcut is not None else None
            return out + conv_ops.pool_shortcut(x, self.stride, weight)
        return out


class Attention(nn.Module):
    """Pre-norm multi-head self-attention with a fixed head dim and value dim = v_scale x head dim, over a
    `side` x `side` token grid.

    Options (ElasticViT's attention has all but `qkv_bias`): `v_dwconv`, a 3x3 depthwise conv (no bias) on V
    over the grid; `rel_pos_bias`, a learned bias per head and relative offset ((2 side - 1)^2 x heads);
    `proj_act`, hard-swish before the output projection; `qkv_bias`, biases on the q, k and v projections.
    `kinds` names the attention kind (`ATTENTION_KINDS`) of every head, or one for all of them."""

    def __init__(self, channels: int, head_dim: int, v_scale: int, side: int = 0, v_dwconv: bool = False,
                 rel_pos_bias: bool = False, proj_act: bool = False, qkv_bias: bool = True,
                 kinds: tuple[str, ...] = ("softmax",)):
        super().__init__()
        self.heads = channels // head_dim
        self.head_dim = head_dim
        self.v_dim = v_scale * head_dim
        self.side = side
        self.proj_act = proj_act
        self.kinds = attention_kinds(kinds)
        if len(self.kinds) not in (1, self.heads):
            raise ValueError(f"{len(self.kinds)} attention kinds for a layer of {self.heads} heads")
        width = self.heads * self.v_dim
        self.norm = nn.LayerNorm(channels)
        self.qk = nn.Linear(channels, 2 * self.heads * head_dim, bias=qkv_bias)
        self.v = nn.Linear(channels, width, bias=qkv_bias)
        self.v_conv = nn.Conv2d(width, width, 3, padding=1, groups=width, bias=False) if v_dwconv else None
        self.rel_bias: nn.Parameter | None = None
        if rel_pos_bias:
            if side < 1:
                raise ValueError("a relative position bias needs the token grid's side")
            self.rel_bias = nn.Parameter(torch.zeros((2 * side - 1) ** 2, self.heads))
            nn.init.trunc_normal_(self.rel_bias, std=0.02)
            self.register_buffer("rel_index", attention_ops.relative_position_index(side, side), persistent=False)
        self.proj = nn.Linear(width, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, _ = x.shape
        y = self.norm(x)
        q, k = self.qk(y).view(batch, tokens, 2, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        v = self.v(y)
        if self.v_conv is not None:
            v = attention_ops.depthwise_tokens(v, self.v_conv.weight, self.side)
        v = v.view(batch, tokens, self.heads, self.v_dim).transpose(1, 2)
        bias = None
        if self.rel_bias is not None:
            bias = attention_ops.relative_bias(self.rel_bias, self.rel_index, self.heads)
        out = attention_ops.attend(q, k, v, self.head_dim**-0.5, bias, self.kinds, ATTENTION_KINDS)
        out = out.transpose(1, 2).reshape(batch, tokens, self.heads * self.v_dim)
        if self.proj_act:
            out = nn.functional.hardswish(out)
        return x + self.proj(out)


class FeedForward(nn.Module):
    """Pre-norm MLP: layer norm, linear to `mlp_ratio` x the width, the activation `act`, linear back."""

    def __init__(self, channels: int, mlp_ratio: int, act: str = "hswish"):
        super().__init__()
        self.norm = nn.LayerNorm(channels)
        self.fc1 = nn.Linear(channels, channels * mlp_ratio)
        self.fc2 = nn.Linear(channels * mlp_ratio, channels)
        self.act_name = act
        self.act = activation_ops.get_activation(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(self.act(self.fc1(self.norm(x))))


ATTENTION_OPTIONS = {"v_dwconv": False, "rel_pos_bias": False, "proj_act": False, "qkv_bias": True}


def _conv_options(stage: dict[str, Any], expand: int, version: int) -> dict[str, Any]:
    """The MBConv options of a stage's layer with `expand`, as the description format reads them (an option
    a stage leaves out holds its default)."""
    if version == 1:
        return {"shortcut": "none", "expand_conv": True}
    return {"shortcut": stage.get("shortcut", "none"), "expand_conv": expand > 1}


def _layer_kinds(layer: dict[str, Any]) -> tuple[str, ...]:
    """`nas.ops.layer_kinds`, repeated here: an export's copy of this file cannot import `nas`."""
    attention = layer.get("attention", "softmax")
    return (attention,) if isinstance(attention, str) else tuple(attention)


class TransformerStage(nn.Module):
    """A downsampling MBConv, then attention + FFN layers over the flattened feature map, whose input side
    (before the downsample) is `side` (needed by a relative position bias only)."""

    def __init__(self, cin: int, stage: dict[str, Any], side: int = 0, version: int = 2):
        super().__init__()
        cout, expand = stage["channels"], stage["downsample_expand"]
        se = stage.get("downsample_se", False) if version > 1 else False
        self.downsample = MBConv(cin, cout, expand, 3, stage["stride"], se, **_conv_options(stage, expand, version))
        side = conv_out(side, stage["stride"])
        options = {} if version == 1 else {key: stage.get(key, default) for key, default in ATTENTION_OPTIONS.items()}
        self.layers = nn.ModuleList(
            nn.Sequential(Attention(cout, stage["head_dim"], layer["v_scale"], side, kinds=_layer_kinds(layer),
                                    **options),
                          FeedForward(cout, layer["mlp_ratio"], layer.get("act", "hswish")))
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
    """1x1 expand + hard-swish, global average pool, [linear to `final` + hard-swish], linear classifier."""

    def __init__(self, cin: int, channels: int, num_classes: int, final: int = 0):
        super().__init__()
        self.expand = ConvBNAct(cin, channels, 1)
        self.final = nn.Linear(channels, final) if final else None
        self.classifier = nn.Linear(final or channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.expand(x).mean((2, 3))
        if self.final is not None:
            y = nn.functional.hardswish(self.final(y))
        return self.classifier(y)


class Network(nn.Module):
    def __init__(self, network: dict[str, Any]):
        super().__init__()
        version = network["format_version"]
        stem = network["stem"]
        self.resolution = network["resolution"]
        self.stem = ConvBNAct(network["in_channels"], stem["channels"], stem["kernel"], stem["stride"])
        side = conv_out(self.resolution, stem["stride"])
        cin = stem["channels"]
        stages: list[nn.Module] = []
        for stage in network["stages"]:
            if stage["type"] == "conv":
                layers = []
                for j, layer in enumerate(stage["layers"]):
                    stride = stage["stride"] if j == 0 else 1
                    layers.append(MBConv(cin, stage["channels"], layer["expand"], layer["kernel"], stride,
                                         stage["se"], **_conv_options(stage, layer["expand"], version)))
                    cin = stage["channels"]
                stages.append(nn.Sequential(*layers))
                side = conv_out(side, stage["stride"]) if stage["layers"] else side
            else:
                stages.append(TransformerStage(cin, stage, side, version))
                side, cin = conv_out(side, stage["stride"]), stage["channels"]
        self.stages = nn.Sequential(*stages)
        head = network["head"]
        self.head = Head(cin, head["channels"], network["num_classes"], head.get("final", 0) if version > 1 else 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last stage's output (B x C x H x W): the token features distillation compares."""
        if x.shape[-1] != self.resolution or x.shape[-2] != self.resolution:
            x = nn.functional.interpolate(x, size=(self.resolution, self.resolution), mode="bilinear",
                                          align_corners=False)
        return self.stages(self.stem(x))


def build(network: dict[str, Any]) -> Network:
    """A freshly initialised network for a description produced by `SearchSpace.describe`."""
    if network.get("format_version") not in FORMAT_VERSIONS:
        raise ValueError(f"network description format_version must be one of {FORMAT_VERSIONS}, got "
                         f"{network.get('format_version')!r}")
    return Network(network)
