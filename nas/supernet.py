"""The elastic supernet: one set of full-size weights that every subnet of a space slices.

Elastic ops own the largest weights and slice them for the active arch (OFA's `dynamic_op` convention):
widths take the leading channels, kernels the centre of the largest kernel, attention the leading heads
and the leading value dims of each head, depth the leading layers. The supernet never samples:
`set_active(arch)` selects a subnet, `extract(arch)` copies its slices into the plain modules of
`nas.static_model`, whose output equals the supernet's for the same arch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from nas import static_model
from nas.space import ArchConfig, ConvLayer, SearchSpace, TransformerLayer, se_channels
from nas.spec import ConvStageSpec


def _center(weight: torch.Tensor, kernel: int) -> torch.Tensor:
    full = weight.shape[-1]
    start = (full - kernel) // 2
    return weight[..., start:start + kernel, start:start + kernel]


class ElasticConvBN(nn.Module):
    """Conv (no bias) + BatchNorm + optional hard-swish, elastic in channels and kernel."""

    def __init__(self, max_in: int, max_out: int, max_kernel: int, stride: int = 1, depthwise: bool = False,
                 act: bool = True):
        super().__init__()
        self.stride, self.depthwise, self.act = stride, depthwise, act
        self.conv = nn.Conv2d(max_in, max_out, max_kernel, stride, max_kernel // 2,
                              groups=max_out if depthwise else 1, bias=False)
        self.bn = nn.BatchNorm2d(max_out)
        self.active_out, self.active_kernel = max_out, max_kernel

    def _weight(self, cin: int) -> torch.Tensor:
        weight = self.conv.weight[: self.active_out] if self.depthwise else self.conv.weight[: self.active_out, :cin]
        return _center(weight, self.active_kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cin, out, bn = x.shape[1], self.active_out, self.bn
        groups = cin if self.depthwise else 1
        y = F.conv2d(x, self._weight(cin), None, self.stride, self.active_kernel // 2, 1, groups)
        y = F.batch_norm(y, bn.running_mean[:out], bn.running_var[:out], bn.weight[:out], bn.bias[:out],
                         self.training, bn.momentum if bn.momentum is not None else 0.0, bn.eps)
        return F.hardswish(y) if self.act else y

    def export_into(self, target: static_model.ConvBNAct) -> None:
        conv, bn = target[0], target[1]
        out = self.active_out
        conv.weight.copy_(self._weight(conv.in_channels))
        bn.weight.copy_(self.bn.weight[:out])
        bn.bias.copy_(self.bn.bias[:out])
        bn.running_mean.copy_(self.bn.running_mean[:out])
        bn.running_var.copy_(self.bn.running_var[:out])
        bn.num_batches_tracked.copy_(self.bn.num_batches_tracked)


class ElasticMBConv(nn.Module):
    def __init__(self, max_in: int, max_out: int, max_expand: int, max_kernel: int, stride: int, se: bool):
        super().__init__()
        hidden = max_in * max_expand
        self.expand_conv = ElasticConvBN(max_in, hidden, 1)
        self.depthwise = ElasticConvBN(hidden, hidden, max_kernel, stride, depthwise=True)
        self.se = se
        if se:
            mid = se_channels(hidden)
            self.se_reduce = nn.Conv2d(hidden, mid, 1)
            self.se_expand = nn.Conv2d(mid, hidden, 1)
        self.project = ElasticConvBN(hidden, max_out, 1, act=False)
        self.stride = stride
        self.active_expand = max_expand

    def set_active(self, cin: int, cout: int, expand: int, kernel: int) -> None:
        hidden = cin * expand
        self.active_expand = expand
        self.expand_conv.active_out = hidden
        self.depthwise.active_out, self.depthwise.active_kernel = hidden, kernel
        self.project.active_out = cout

    def _se_slices(self, hidden: int) -> tuple[torch.Tensor, ...]:
        mid = se_channels(hidden)
        return (self.se_reduce.weight[:mid, :hidden], self.se_reduce.bias[:mid],
                self.se_expand.weight[:hidden, :mid], self.se_expand.bias[:hidden])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.depthwise(self.expand_conv(x))
        if self.se:
            w1, b1, w2, b2 = self._se_slices(y.shape[1])
            scale = F.conv2d(torch.relu(F.conv2d(y.mean((2, 3), keepdim=True), w1, b1)), w2, b2)
            y = y * F.hardsigmoid(scale)
        y = self.project(y)
        return x + y if self.stride == 1 and x.shape[1] == y.shape[1] else y

    def export_into(self, target: static_model.MBConv) -> None:
        self.expand_conv.export_into(target.expand)
        self.depthwise.export_into(target.depthwise)
        if self.se:
            hidden = target.depthwise[0].out_channels
            for param, value in zip((target.se.reduce.weight, target.se.reduce.bias, target.se.expand.weight,
                                     target.se.expand.bias), self._se_slices(hidden), strict=True):
                param.copy_(value)
        self.project.export_into(target.project)


class ElasticAttention(nn.Module):
    """Attention elastic in width (number of heads at a fixed head dim) and value scale."""

    def __init__(self, max_channels: int, head_dim: int, max_v_scale: int):
        super().__init__()
        self.head_dim, self.max_heads = head_dim, max_channels // head_dim
        self.max_v_dim = max_v_scale * head_dim
        self.norm = nn.LayerNorm(max_channels)
        self.qk = nn.Linear(max_channels, 2 * self.max_heads * head_dim)
        self.v = nn.Linear(max_channels, self.max_heads * self.max_v_dim)
        self.proj = nn.Linear(self.max_heads * self.max_v_dim, max_channels)
        self.active_v_scale = max_v_scale

    def _slices(self, channels: int) -> dict[str, torch.Tensor]:
        hd, mh = self.head_dim, self.max_heads
        heads, v_dim = channels // hd, self.active_v_scale * hd
        return {
            "qk_w": self.qk.weight.view(2, mh, hd, -1)[:, :heads, :, :channels].reshape(2 * heads * hd, channels),
            "qk_b": self.qk.bias.view(2, mh, hd)[:, :heads].reshape(-1),
            "v_w": self.v.weight.view(mh, self.max_v_dim, -1)[:heads, :v_dim, :channels].reshape(-1, channels),
            "v_b": self.v.bias.view(mh, self.max_v_dim)[:heads, :v_dim].reshape(-1),
            "proj_w": self.proj.weight.view(-1, mh, self.max_v_dim)[:channels, :heads, :v_dim].reshape(channels, -1),
            "proj_b": self.proj.bias[:channels],
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, channels = x.shape
        heads, v_dim = channels // self.head_dim, self.active_v_scale * self.head_dim
        s = self._slices(channels)
        y = F.layer_norm(x, (channels,), self.norm.weight[:channels], self.norm.bias[:channels], self.norm.eps)
        q, k = F.linear(y, s["qk_w"], s["qk_b"]).view(batch, tokens, 2, heads, self.head_dim).permute(2, 0, 3, 1, 4)
        v = F.linear(y, s["v_w"], s["v_b"]).view(batch, tokens, heads, v_dim).transpose(1, 2)
        attn = torch.softmax((q @ k.transpose(-2, -1)) * self.head_dim**-0.5, dim=-1)
        out = (attn @ v).transpose(1, 2).reshape(batch, tokens, heads * v_dim)
        return x + F.linear(out, s["proj_w"], s["proj_b"])

    def export_into(self, target: static_model.Attention) -> None:
        channels = target.norm.normalized_shape[0]
        s = self._slices(channels)
        target.norm.weight.copy_(self.norm.weight[:channels])
        target.norm.bias.copy_(self.norm.bias[:channels])
        for linear, name in ((target.qk, "qk"), (target.v, "v"), (target.proj, "proj")):
            linear.weight.copy_(s[f"{name}_w"])
            linear.bias.copy_(s[f"{name}_b"])


class ElasticFeedForward(nn.Module):
    def __init__(self, max_channels: int, max_ratio: int):
        super().__init__()
        self.norm = nn.LayerNorm(max_channels)
        self.fc1 = nn.Linear(max_channels, max_channels * max_ratio)
        self.fc2 = nn.Linear(max_channels * max_ratio, max_channels)
        self.active_ratio = max_ratio

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channels = x.shape[-1]
        hidden = channels * self.active_ratio
        y = F.layer_norm(x, (channels,), self.norm.weight[:channels], self.norm.bias[:channels], self.norm.eps)
        y = F.hardswish(F.linear(y, self.fc1.weight[:hidden, :channels], self.fc1.bias[:hidden]))
        return x + F.linear(y, self.fc2.weight[:channels, :hidden], self.fc2.bias[:channels])

    def export_into(self, target: static_model.FeedForward) -> None:
        channels, hidden = target.fc1.in_features, target.fc1.out_features
        target.norm.weight.copy_(self.norm.weight[:channels])
        target.norm.bias.copy_(self.norm.bias[:channels])
        target.fc1.weight.copy_(self.fc1.weight[:hidden, :channels])
        target.fc1.bias.copy_(self.fc1.bias[:hidden])
        target.fc2.weight.copy_(self.fc2.weight[:channels, :hidden])
        target.fc2.bias.copy_(self.fc2.bias[:channels])


class Supernet(nn.Module):
    """All subnets of a `SearchSpace` in one module."""

    def __init__(self, space: SearchSpace):
        super().__init__()
        self.space = space
        spec = space.spec
        self.stem = ElasticConvBN(space.in_channels, max(spec.stem.channels), spec.stem.kernel, spec.stem.stride)
        cin = max(spec.stem.channels)
        self.stages = nn.ModuleList()
        for stage in spec.stages:
            cout = max(stage.channels)
            if isinstance(stage, ConvStageSpec):
                layers = nn.ModuleList(
                    ElasticMBConv(cin if j == 0 else cout, cout, max(stage.expand), max(stage.kernel),
                                  stage.stride if j == 0 else 1, stage.se)
                    for j in range(stage.depth.max)
                )
                self.stages.append(nn.ModuleDict({"layers": layers}))
            else:
                layers = nn.ModuleList(
                    nn.ModuleDict({"attn": ElasticAttention(cout, stage.head_dim, max(stage.v_scale)),
                                   "ffn": ElasticFeedForward(cout, max(stage.mlp_ratio))})
                    for _ in range(stage.depth.max)
                )
                downsample = ElasticMBConv(cin, cout, stage.downsample_expand, 3, stage.stride, False)
                self.stages.append(nn.ModuleDict({"downsample": downsample, "layers": layers}))
            cin = cout
        self.head_conv = ElasticConvBN(cin, max(spec.head.channels), 1)
        self.classifier = nn.Linear(max(spec.head.channels), space.num_classes)
        self.active: ArchConfig | None = None
        self.set_active(space.largest())

    def set_active(self, arch: ArchConfig) -> None:
        """Select the subnet `arch` for the following forward passes."""
        self.space.validate_arch(arch)
        self.active = arch
        self.stem.active_out = arch.stem
        cin = arch.stem
        for module, stage in zip(self.stages, arch.stages, strict=True):
            if "downsample" in module:
                module["downsample"].set_active(cin, stage.channels, module["downsample"].active_expand, 3)
                for block, layer in zip(module["layers"], stage.layers, strict=False):
                    assert isinstance(layer, TransformerLayer)
                    block["attn"].active_v_scale = layer.v_scale
                    block["ffn"].active_ratio = layer.mlp_ratio
            else:
                for j, (block, layer) in enumerate(zip(module["layers"], stage.layers, strict=False)):
                    assert isinstance(layer, ConvLayer)
                    block.set_active(cin if j == 0 else stage.channels, stage.channels, layer.expand, layer.kernel)
            cin = stage.channels
        self.head_conv.active_out = arch.head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        arch = self.active
        assert arch is not None
        if x.shape[-1] != arch.resolution or x.shape[-2] != arch.resolution:
            x = F.interpolate(x, size=(arch.resolution, arch.resolution), mode="bilinear", align_corners=False)
        x = self.stem(x)
        for module, stage in zip(self.stages, arch.stages, strict=True):
            if "downsample" in module:
                x = module["downsample"](x)
                batch, channels, height, width = x.shape
                tokens = x.flatten(2).transpose(1, 2)
                for block in module["layers"][: stage.depth]:
                    tokens = block["ffn"](block["attn"](tokens))
                x = tokens.transpose(1, 2).reshape(batch, channels, height, width)
            else:
                for block in module["layers"][: stage.depth]:
                    x = block(x)
        x = self.head_conv(x).mean((2, 3))
        return F.linear(x, self.classifier.weight[:, : arch.head], self.classifier.bias)

    @torch.no_grad()
    def extract(self, arch: ArchConfig) -> static_model.Network:
        """A plain `nn.Module` for `arch` holding copies of the supernet's weights."""
        self.set_active(arch)
        net = static_model.build(self.space.describe(arch))
        self.stem.export_into(net.stem)
        for module, target, stage in zip(self.stages, net.stages, arch.stages, strict=True):
            if "downsample" in module:
                module["downsample"].export_into(target.downsample)
                for block, layer in zip(module["layers"], target.layers, strict=False):
                    block["attn"].export_into(layer[0])
                    block["ffn"].export_into(layer[1])
            else:
                for block, layer in zip(module["layers"][: stage.depth], target, strict=True):
                    block.export_into(layer)
        self.head_conv.export_into(net.head.expand)
        net.head.classifier.weight.copy_(self.classifier.weight[:, : arch.head])
        net.head.classifier.bias.copy_(self.classifier.bias)
        net.train(self.training)
        return net
