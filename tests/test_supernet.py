"""Invariants of the elastic supernet: extracted subnets compute exactly what the supernet computes, and the
networks built are exactly the blocks the latency models price.

Every invariant runs on three spaces: the tiny digits space (every build option at its default),
`ELASTIC`, a small space with every ElasticViT option on (expand 1 without a 1x1 conv, avg-pool + conv
shortcuts, SE in the transformer downsample, depthwise conv on V, relative position bias over grids of two
sizes, hard-swish before the projection, no q/k/v bias, head width tied to the last stage, final layer), and
`MPC`, whose heads each choose one of every attention kind and whose FFNs choose every activation, in two
stages of different head counts (a layer with fewer heads than the most slices the leading heads).
"""

from __future__ import annotations

import math
import random

import pytest
import torch
import torch.nn.functional as F
import yaml
from torch.utils.flop_counter import FlopCounterMode

from nas import static_model
from nas.blocks import Block
from nas.ops import ATTENTION_KINDS, FFN_ACTIVATIONS, mix_name
from nas.space import ArchConfig, ConvLayer, SearchSpace, network_blocks
from nas.spec import parse_spec
from nas.supernet import ElasticConvBN, Supernet

_ATTN = ("v_dwconv: true, rel_pos_bias: true, proj_act: true, qkv_bias: false, downsample_se: true, "
         "shortcut: avgpool_conv")
ELASTIC = f"""
version: 1
name: elastic-options
space:
  resolution: [12, 20]       # token grids of side 2 and 3 in the transformer stages: the bias table is sliced
  stem: {{channels: [8, 16], stride: 2}}
  stages:
    - {{type: conv, depth: [1, 2], channels: [8, 16], expand: [1, 2], kernel: [3, 5], stride: 1,
       shortcut: avgpool_conv}}
    - {{type: conv, depth: [1, 2], channels: [16, 24], expand: [2, 3], kernel: [3, 5], stride: 2, se: true,
       shortcut: avgpool_conv}}
    - {{type: transformer, depth: [1, 2], channels: [16, 32], head_dim: 8, mlp_ratio: [2], v_scale: [1, 2],
       stride: 2, downsample_expand: 3, {_ATTN}}}
    - {{type: transformer, depth: [1, 2], channels: [32, 48], head_dim: 8, mlp_ratio: [2, 3], v_scale: [1, 2],
       stride: 1, downsample_expand: 1, {_ATTN}}}
  head: {{expand: [2, 3], final_channels: [24, 40]}}
data: {{dataset: digits}}
"""
MPC = f"""
version: 1
name: mpc-options
space:
  resolution: [8]
  stem: {{channels: [8, 16], stride: 1}}
  stages:
    - {{type: transformer, depth: [1, 2], channels: [16, 32], head_dim: 8, mlp_ratio: [2], v_scale: [1, 2],
       stride: 2, attention: [{", ".join(ATTENTION_KINDS)}], attention_per_head: true,
       ffn_act: [{", ".join(FFN_ACTIVATIONS)}]}}
    - {{type: transformer, depth: [1, 2], channels: [24, 48], head_dim: 8, mlp_ratio: [2, 3], v_scale: [1],
       stride: 1, attention: [softmax, scaling], ffn_act: [relu, gelu], {_ATTN}}}
  head: {{channels: [32]}}
data: {{dataset: digits}}
"""


pytestmark = pytest.mark.usefixtures("one_thread")


def elastic_space() -> SearchSpace:
    return SearchSpace.from_spec(parse_spec(yaml.safe_load(ELASTIC), "elastic"), in_channels=3, num_classes=7)


def mpc_space() -> SearchSpace:
    return SearchSpace.from_spec(parse_spec(yaml.safe_load(MPC), "mpc"), in_channels=3, num_classes=7)


@pytest.fixture(scope="module", params=["tiny", "elastic", "mpc"])
def space(request, tiny_spec_path) -> SearchSpace:
    if request.param == "elastic":
        return elastic_space()
    if request.param == "mpc":
        return mpc_space()
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
    width = arch.final or arch.head
    assert grad is not None
    assert grad[:, :width].abs().sum() > 0
    assert grad[:, width:].abs().sum() == 0


def _input_shapes(net: torch.nn.Module, x: torch.Tensor) -> dict[torch.nn.Module, torch.Size]:
    """The shape of the input each module of `net` receives in a forward pass of `x`."""
    shapes: dict[torch.nn.Module, torch.Size] = {}

    def record(module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        shapes.setdefault(module, args[0].shape)

    hooks = [m.register_forward_pre_hook(record) for m in net.modules()]
    with torch.no_grad():
        net(x)
    for hook in hooks:
        hook.remove()
    return shapes


def built_blocks(net: static_model.Network) -> list[Block]:
    """The blocks a static network is made of, read off its modules (kinds, widths, kernels, strides, which
    optional parts exist) and off the input sizes they see in a forward pass: no description involved."""
    shapes = _input_shapes(net, torch.zeros(1, net.stem[0].in_channels, net.resolution, net.resolution))

    def conv_block(kind: str, m: static_model.MBConv) -> Block:
        _, cin, hw, _ = shapes[m]
        depthwise, project = m.depthwise[0], m.project[0]
        hidden, cout = depthwise.in_channels, project.out_channels
        if m.shortcut is not None:
            assert (m.shortcut.in_channels, m.shortcut.out_channels) == (cin, cout) and m.pool_shortcut
        return Block(kind, hw, cin, cout, depthwise.stride[0], depthwise.kernel_size[0], hidden // cin,
                     isinstance(m.se, static_model.SqueezeExcite),
                     shortcut="avgpool_conv" if m.pool_shortcut else "none",
                     expand_conv=isinstance(m.expand, static_model.ConvBNAct))

    stem = net.stem[0]
    blocks = [Block("stem", shapes[net.stem][-1], stem.in_channels, stem.out_channels, stem.stride[0],
                    stem.kernel_size[0])]
    for stage in net.stages:
        if isinstance(stage, static_model.TransformerStage):
            blocks.append(conv_block("transds", stage.downsample))
            for attn, ffn in stage.layers:
                side, width = math.isqrt(shapes[attn][1]), attn.norm.normalized_shape[0]
                assert side * side == shapes[attn][1] and (attn.rel_bias is None or attn.side == side)
                blocks.append(Block("attn", side, width, width, v_scale=attn.v_dim // attn.head_dim,
                                    head_dim=attn.head_dim, v_dwconv=attn.v_conv is not None,
                                    rel_pos_bias=attn.rel_bias is not None, proj_act=attn.proj_act,
                                    qkv_bias=attn.qk.bias is not None, attention=mix_name(attn.kinds)))
                blocks.append(Block("ffn", side, width, width, mlp_ratio=ffn.fc1.out_features // width,
                                    act=ffn.act_name))
        else:
            blocks += [conv_block("mbconv", layer) for layer in stage]
    head = net.head
    blocks.append(Block("head", shapes[head][-1], head.expand[0].in_channels, head.expand[0].out_channels,
                        num_classes=head.classifier.out_features,
                        final=head.final.out_features if head.final is not None else 0))
    return blocks


def test_the_blocks_built_are_the_blocks_priced(space: SearchSpace) -> None:
    """What the latency models price (`space.blocks`) is block for block what `static_model` builds (and so,
    by the extraction test above, what the supernet computes)."""
    rng = random.Random(4)
    for arch in [space.largest(), space.smallest()] + [space.sample(rng) for _ in range(25)]:
        net = static_model.build(space.describe(arch))
        assert built_blocks(net) == space.blocks(arch, arch.resolution), arch


def test_the_elastic_options_are_built() -> None:
    """The ElasticViT options are really in the blocks of the elastic space (so the test above compares them)."""
    space = elastic_space()
    blocks = space.blocks(space.largest(), 20)
    attn = [b for b in blocks if b.kind == "attn"]
    assert attn and all(b.v_dwconv and b.rel_pos_bias and b.proj_act and not b.qkv_bias for b in attn)
    assert all(b.se for b in blocks if b.kind == "transds")
    assert {b.shortcut for b in blocks if b.kind in ("mbconv", "transds") and (b.stride > 1 or b.cin != b.cout)} \
        == {"avgpool_conv"}
    head = blocks[-1]
    assert head.final == 40 and head.cout == 3 * 48
    smallest = space.blocks(space.smallest(), 12)
    assert smallest[1] == Block("mbconv", 6, 8, 8, 1, 3, 1, expand_conv=False)  # depthwise-separable
    assert smallest[-1].final == 24 and smallest[-1].cout == 2 * 32


def test_elastic_kernel_takes_the_centre_of_the_largest_kernel() -> None:
    """A 3x3 kernel of a stage with kernels {3, 5} is the centre of the stored 5x5 (OFA's and ElasticViT's
    convention), in the supernet's forward and in the extracted model; a top-left crop fails here."""
    torch.manual_seed(0)
    conv = ElasticConvBN(6, 6, 5, depthwise=True).eval()
    with torch.no_grad():
        conv.conv.weight.normal_()
        conv.bn.running_mean.normal_()
    conv.active_out, conv.active_kernel = 6, 3
    centre = conv.conv.weight[..., 1:4, 1:4]
    assert not torch.equal(centre, conv.conv.weight[..., :3, :3])
    x = torch.randn(2, 6, 7, 7)
    bn = conv.bn
    expected = F.hardswish(F.batch_norm(F.conv2d(x, centre, None, 1, 1, 1, 6), bn.running_mean, bn.running_var,
                                        bn.weight, bn.bias, False, 0.0, bn.eps))
    with torch.no_grad():
        assert torch.allclose(conv(x), expected, atol=1e-6)
        target = static_model.ConvBNAct(6, 6, 3, groups=6)
        conv.export_into(target)
    assert torch.equal(target[0].weight, centre)

    space = elastic_space()  # and inside a whole supernet: layer 0 of stage 1 at kernel 3
    supernet = Supernet(space)
    arch = space.largest()
    stage = arch.stages[1]
    arch = ArchConfig(arch.resolution, arch.stem, (arch.stages[0], type(stage)(stage.channels, (ConvLayer(3, 3),)),
                                                   *arch.stages[2:]), arch.head, arch.final)
    extracted = supernet.extract(arch)
    stored = supernet.stages[1]["layers"][0].depthwise.conv.weight
    hidden = extracted.stages[1][0].depthwise[0].out_channels
    assert torch.equal(extracted.stages[1][0].depthwise[0].weight, stored[:hidden, :, 1:4, 1:4])


def test_format_1_descriptions_build_the_network_they_described(space: SearchSpace) -> None:
    """An export written before description format 2 (no build options, a 1x1 expansion at every expand
    ratio) still builds, with its old blocks: its weights load, and it is priced with format-1 keys."""
    arch = space.largest()
    old = space.describe(arch)
    old["format_version"] = 1
    for stage in old["stages"]:
        for key in ("shortcut", "downsample_se", "v_dwconv", "rel_pos_bias", "proj_act", "qkv_bias"):
            stage.pop(key, None)
        for layer in stage["layers"]:
            layer.setdefault("expand", 1) if stage["type"] == "conv" else None
            layer.pop("attention", None)  # format 3 on
            layer.pop("act", None)
    old["head"] = {"channels": old["head"]["channels"]}
    net = static_model.build(old)
    blocks = network_blocks(old, arch.resolution)
    assert built_blocks(net) == blocks
    assert all("~" not in b.key() for b in blocks)  # format-1 keys, as the tables of those days hold
    assert all(b.expand_conv for b in blocks if b.kind in ("mbconv", "transds"))
    assert net(torch.randn(2, 3, 8, 8)).shape == (2, 7)


def test_an_export_needs_torch_only(tmp_path, space: SearchSpace) -> None:
    """`model.py` (a copy of static_model) and the op modules it loads from beside it (`ops_*.py`, the files
    `nas export` writes with it) build and run the network in a process where `nas` cannot be imported."""
    import json
    import shutil
    import subprocess
    import sys

    from nas.export import BASE_FILES

    assert set(static_model.OP_FILES) <= set(BASE_FILES)
    shutil.copyfile(static_model.__file__, tmp_path / "model.py")
    for name, source in static_model.op_files().items():
        shutil.copyfile(source, tmp_path / name)
    arch = space.largest()
    net = static_model.build(space.describe(arch)).eval()
    torch.save(net.state_dict(), tmp_path / "weights.pt")
    (tmp_path / "network.json").write_text(json.dumps(space.describe(arch)))
    x = torch.randn(2, 3, 8, 8)
    torch.save(x, tmp_path / "x.pt")
    code = ("import sys, json, torch; sys.modules['nas'] = None; sys.path.insert(0, '.')\n"
            "from model import build\n"
            "net = build(json.load(open('network.json'))); net.load_state_dict(torch.load('weights.pt'))\n"
            "assert not any(name.startswith('nas.') for name in sys.modules)\n"
            "torch.save(net.eval()(torch.load('x.pt')).detach(), 'y.pt')")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    with torch.no_grad():
        assert torch.allclose(torch.load(tmp_path / "y.pt"), net(x), atol=1e-6)
