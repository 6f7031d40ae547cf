"""The elastic supernet: one set of full-size weights that every subnet of a space slices.

Elastic ops own the largest weights and slice them for the active arch (OFA's `dynamic_op` convention):
widths take the leading channels, kernels the centre of the largest kernel, attention the leading heads
and the leading value dims of each head, depth the leading layers, a relative position bias table the
offsets a smaller token grid can address. The supernet never samples: `set_active(arch)` selects a subnet,
`extract(arch)` copies its slices into the plain modules of `nas.static_model`, whose output equals the
supernet's for the same arch. The op formulas both use live in `nas.ops`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from nas import static_model
from nas.ops import attention as attention_ops
from nas.ops import conv as conv_ops
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
    """Inverted residual elastic in widths, expand ratio and kernel. Expand ratio 1 skips the 1x1 expansion
    (depthwise-separable); `shortcut="avgpool_conv"` adds ElasticViT's shortcut where the stride or the width
    changes (see `static_model.MBConv`)."""

    def __init__(self, max_in: int, max_out: int, max_expand: int, max_kernel: int, stride: int, se: bool,
                 shortcut: str = "none"):
        super().__init__()
        hidden = max_in * max_expand
        self.expand_conv = ElasticConvBN(max_in, hidden, 1) if max_expand > 1 else None
        self.depthwise = ElasticConvBN(hidden, hidden, max_kernel, stride, depthwise=True)
        self.se = se
        if se:
            mid = se_channels(hidden)
            self.se_reduce = nn.Conv2d(hidden, mid, 1)
            self.se_expand = nn.Conv2d(mid, hidden, 1)
        self.project = ElasticConvBN(hidden, max_out, 1, act=False)
        self.stride = stride
        self.shortcut = shortcut
        self.shortcut_conv = nn.Conv2d(max_in, max_out, 1, bias=False) if shortcut == "avgpool_conv" else None
        self.active_expand = max_expand

    def set_active(self, cin: int, cout: int, expand: int, kernel: int) -> None:
        hidden = cin * expand
        self.active_expand = expand
        if self.expand_conv is not None:
            self.expand_conv.active_out = hidden
        self.depthwise.active_out, self.depthwise.active_kernel = hidden, kernel
        self.project.active_out = cout

    def _se_slices(self, hidden: int) -> tuple[torch.Tensor, ...]:
        mid = se_channels(hidden)
        return (self.se_reduce.weight[:mid, :hidden], self.se_reduce.bias[:mid],
                self.se_expand.weight[:hidden, :mid], self.se_expand.bias[:hidden])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x if self.active_expand == 1 or self.expand_conv is None else self.expand_conv(x)
        y = self.depthwise(y)
        if self.se:
            y = conv_ops.squeeze_excite(y, *self._se_slices(y.shape[1]))
        y = self.project(y)
        cin, cout = x.shape[1], y.shape[1]
        if self.stride == 1 and cin == cout:
            return x + y
        if self.shortcut_conv is not None:
            weight = self.shortcut_conv.weight[:cout, :cin] if cin != cout else None
            return y + conv_ops.pool_shortcut(x, self.stride, weight)
        return y

    def export_into(self, target: static_model.MBConv) -> None:
        if isinstance(target.expand, static_model.ConvBNAct):
            assert self.expand_conv is not None
            self.expand_conv.export_into(target.expand)
        self.depthwise.export_into(target.depthwise)
        if self.se:
            hidden = target.depthwise[0].out_channels
            for param, value in zip((target.se.reduce.weight, target.se.reduce.bias, target.se.expand.weight,
                                     target.se.expand.bias), self._se_slices(hidden), strict=True):
                param.copy_(value)
        self.project.export_into(target.project)
        if target.shortcut is not None:
            assert self.shortcut_conv is not None
            target.shortcut.weight.copy_(self.shortcut_conv.weight[: target.shortcut.out_channels,
                                                                   : target.shortcut.in_channels])


class ElasticAttention(nn.Module):
    """Attention elastic in width (number of heads at a fixed head dim) and value scale, with the options of
    `static_model.Attention`. The relative position bias table covers a grid of side `max_side` (the largest
    the space's resolutions give this stage); a smaller grid uses the offsets it can address."""

    def __init__(self, max_channels: int, head_dim: int, max_v_scale: int, max_side: int = 0,
                 v_dwconv: bool = False, rel_pos_bias: bool = False, proj_act: bool = False, qkv_bias: bool = True):
        super().__init__()
        self.head_dim, self.max_heads = head_dim, max_channels // head_dim
        self.max_v_dim = max_v_scale * head_dim
        self.max_side, self.proj_act = max_side, proj_act
        self.active_kinds: tuple[str, ...] = ("softmax",)
        self.active_mix: tuple[str, str, torch.Tensor] | None = None  # MPCViT's relaxed choice (`nas.mpcvit`)
        width = self.max_heads * self.max_v_dim
        self.norm = nn.LayerNorm(max_channels)
        self.qk = nn.Linear(max_channels, 2 * self.max_heads * head_dim, bias=qkv_bias)
        self.v = nn.Linear(max_channels, width, bias=qkv_bias)
        self.v_conv = nn.Conv2d(width, width, 3, padding=1, groups=width, bias=False) if v_dwconv else None
        self.rel_bias: nn.Parameter | None = None
        if rel_pos_bias:
            self.rel_bias = nn.Parameter(torch.zeros((2 * max_side - 1) ** 2, self.max_heads))
            nn.init.trunc_normal_(self.rel_bias, std=0.02)
        self.proj = nn.Linear(width, max_channels)
        self.active_v_scale = max_v_scale
        self._index: dict[int, torch.Tensor] = {}

    def _slices(self, channels: int) -> dict[str, torch.Tensor | None]:
        hd, mh = self.head_dim, self.max_heads
        heads, v_dim = channels // hd, self.active_v_scale * hd
        qk_b, v_b = self.qk.bias, self.v.bias
        return {
            "qk_w": self.qk.weight.view(2, mh, hd, -1)[:, :heads, :, :channels].reshape(2 * heads * hd, channels),
            "qk_b": None if qk_b is None else qk_b.view(2, mh, hd)[:, :heads].reshape(-1),
            "v_w": self.v.weight.view(mh, self.max_v_dim, -1)[:heads, :v_dim, :channels].reshape(-1, channels),
            "v_b": None if v_b is None else v_b.view(mh, self.max_v_dim)[:heads, :v_dim].reshape(-1),
            "v_conv": None if self.v_conv is None else
            self.v_conv.weight.view(mh, self.max_v_dim, 1, 3, 3)[:heads, :v_dim].reshape(-1, 1, 3, 3),
            "proj_w": self.proj.weight.view(-1, mh, self.max_v_dim)[:channels, :heads, :v_dim].reshape(channels, -1),
            "proj_b": self.proj.bias[:channels],
        }

    def _bias(self, side: int, heads: int) -> torch.Tensor | None:
        if self.rel_bias is None:
            return None
        if side not in self._index:
            self._index[side] = attention_ops.relative_position_index(side, self.max_side)
        return attention_ops.relative_bias(self.rel_bias, self._index[side].to(self.rel_bias.device), heads)

    def forward(self, x: torch.Tensor, side: int) -> torch.Tensor:
        batch, tokens, channels = x.shape
        heads, v_dim = channels // self.head_dim, self.active_v_scale * self.head_dim
        s = self._slices(channels)
        y = F.layer_norm(x, (channels,), self.norm.weight[:channels], self.norm.bias[:channels], self.norm.eps)
        q, k = F.linear(y, s["qk_w"], s["qk_b"]).view(batch, tokens, 2, heads, self.head_dim).permute(2, 0, 3, 1, 4)
        v = F.linear(y, s["v_w"], s["v_b"])
        if s["v_conv"] is not None:
            v = attention_ops.depthwise_tokens(v, s["v_conv"], side)
        v = v.view(batch, tokens, heads, v_dim).transpose(1, 2)
        bias, scale = self._bias(side, heads), self.head_dim**-0.5
        if self.active_mix is not None:
            first, second, weight = self.active_mix
            out = attention_ops.attend_mixed(q, k, v, scale, bias, static_model.ATTENTION_KINDS[first],
                                             static_model.ATTENTION_KINDS[second], weight[:heads])
        else:
            out = attention_ops.attend(q, k, v, scale, bias, self.active_kinds, static_model.ATTENTION_KINDS)
        out = out.transpose(1, 2).reshape(batch, tokens, heads * v_dim)
        if self.proj_act:
            out = F.hardswish(out)
        return x + F.linear(out, s["proj_w"], s["proj_b"])

    def export_into(self, target: static_model.Attention) -> None:
        channels = target.norm.normalized_shape[0]
        s = self._slices(channels)
        target.norm.weight.copy_(self.norm.weight[:channels])
        target.norm.bias.copy_(self.norm.bias[:channels])
        for linear, name in ((target.qk, "qk"), (target.v, "v"), (target.proj, "proj")):
            linear.weight.copy_(s[f"{name}_w"])  # type: ignore[arg-type]
            if linear.bias is not None:
                linear.bias.copy_(s[f"{name}_b"])  # type: ignore[arg-type]
        if target.v_conv is not None:
            target.v_conv.weight.copy_(s["v_conv"])  # type: ignore[arg-type]
        if target.rel_bias is not None:
            assert self.rel_bias is not None
            rows = attention_ops.relative_table_rows(target.side, self.max_side)
            target.rel_bias.copy_(self.rel_bias[rows, : target.heads])


class ElasticFeedForward(nn.Module):
    def __init__(self, max_channels: int, max_ratio: int):
        super().__init__()
        self.norm = nn.LayerNorm(max_channels)
        self.fc1 = nn.Linear(max_channels, max_channels * max_ratio)
        self.fc2 = nn.Linear(max_channels * max_ratio, max_channels)
        self.active_ratio = max_ratio
        self.active_act = static_model.activation_ops.get_activation("hswish")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channels = x.shape[-1]
        hidden = channels * self.active_ratio
        y = F.layer_norm(x, (channels,), self.norm.weight[:channels], self.norm.bias[:channels], self.norm.eps)
        y = self.active_act(F.linear(y, self.fc1.weight[:hidden, :channels], self.fc1.bias[:hidden]))
        return x + F.linear(y, self.fc2.weight[:channels, :hidden], self.fc2.bias[:channels])

    def export_into(self, target: static_model.FeedForward) -> None:
        channels, hidden = target.fc1.in_features, target.fc1.out_features
        target.norm.weight.copy_(self.norm.weight[:channels])
        target.norm.bias.copy_(self.norm.bias[:channels])
        target.fc1.weight.copy_(self.fc1.weight[:hidden, :channels])
        target.fc1.bias.copy_(self.fc1.bias[:hidden])
        target.fc2.weight.copy_(self.fc2.weight[:channels, :hidden])
        target.fc2.bias.copy_(self.fc2.bias[:channels])


def _side(side: int, stride: int) -> int:
    return (side - 1) // stride + 1


class Supernet(nn.Module):
    """All subnets of a `SearchSpace` in one module."""

    def __init__(self, space: SearchSpace):
        super().__init__()
        self.space = space
        spec = space.spec
        self.stem = ElasticConvBN(space.in_channels, max(spec.stem.channels), spec.stem.kernel, spec.stem.stride)
        cin = max(spec.stem.channels)
        side = _side(max(spec.resolution), spec.stem.stride)  # the largest feature map side at each stage
        self.stages = nn.ModuleList()
        for stage in spec.stages:
            cout = max(stage.channels)
            if isinstance(stage, ConvStageSpec):
                layers = nn.ModuleList(
                    ElasticMBConv(cin if j == 0 else cout, cout, max(stage.expand), max(stage.kernel),
                                  stage.stride if j == 0 else 1, stage.se, stage.shortcut)
                    for j in range(stage.depth.max)
                )
                self.stages.append(nn.ModuleDict({"layers": layers}))
            else:
                side_out = _side(side, stage.stride)
                layers = nn.ModuleList(
                    nn.ModuleDict({"attn": ElasticAttention(cout, stage.head_dim, max(stage.v_scale), side_out,
                                                            stage.v_dwconv, stage.rel_pos_bias, stage.proj_act,
                                                            stage.qkv_bias),
                                   "ffn": ElasticFeedForward(cout, max(stage.mlp_ratio))})
                    for _ in range(stage.depth.max)
                )
                downsample = ElasticMBConv(cin, cout, stage.downsample_expand, 3, stage.stride, stage.downsample_se,
                                           stage.shortcut)
                self.stages.append(nn.ModuleDict({"downsample": downsample, "layers": layers}))
            side = _side(side, stage.stride)
            cin = cout
        head_width = max(space.head_widths(cin))
        self.head_conv = ElasticConvBN(cin, head_width, 1)
        final = max(spec.head.final_channels, default=0)
        self.head_final = nn.Linear(head_width, final) if final else None
        self.classifier = nn.Linear(final or head_width, space.num_classes)
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
                    block["attn"].active_kinds = layer.attention
                    block["ffn"].active_ratio = layer.mlp_ratio
                    block["ffn"].active_act = static_model.activation_ops.get_activation(layer.act)
            else:
                for j, (block, layer) in enumerate(zip(module["layers"], stage.layers, strict=False)):
                    assert isinstance(layer, ConvLayer)
                    block.set_active(cin if j == 0 else stage.channels, stage.channels, layer.expand, layer.kernel)
            cin = stage.channels
        self.head_conv.active_out = arch.head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classify(self.forward_features(x))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last stage's output (B x C x H x W) of the active subnet: the token features distillation
        compares (`nas.distill`)."""
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
                    tokens = block["ffn"](block["attn"](tokens, height))
                x = tokens.transpose(1, 2).reshape(batch, channels, height, width)
            else:
                for block in module["layers"][: stage.depth]:
                    x = block(x)
        return x

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """The head on features from `forward_features`."""
        arch = self.active
        assert arch is not None
        x = self.head_conv(x).mean((2, 3))
        if self.head_final is not None:
            x = F.hardswish(F.linear(x, self.head_final.weight[: arch.final, : arch.head],
                                     self.head_final.bias[: arch.final]))
            return F.linear(x, self.classifier.weight[:, : arch.final], self.classifier.bias)
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
        width = arch.final or arch.head
        if self.head_final is not None and net.head.final is not None:
            net.head.final.weight.copy_(self.head_final.weight[: arch.final, : arch.head])
            net.head.final.bias.copy_(self.head_final.bias[: arch.final])
        net.head.classifier.weight.copy_(self.classifier.weight[:, :width])
        net.head.classifier.bias.copy_(self.classifier.bias)
        net.train(self.training)
        return net
