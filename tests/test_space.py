from __future__ import annotations

import itertools
import json
import random
import re
import subprocess
import sys

import pytest
import yaml

from nas.blocks import Block
from nas.space import ArchConfig, SearchSpace, block_cost
from nas.spec import parse_spec


def _space(path) -> SearchSpace:
    spec = parse_spec(yaml.safe_load(path.read_text()), str(path))
    return SearchSpace.from_spec(spec, in_channels=1, num_classes=10)


def test_pure_python_without_torch() -> None:
    # The space (and the spec) must not import torch: search engines and `nas validate` stay light.
    code = "import sys, nas.space, nas.spec; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_seeded_sampling_is_reproducible(tiny_spec_path) -> None:
    space = _space(tiny_spec_path)
    first = [space.sample(random.Random(7)) for _ in range(3)]
    again = [space.sample(random.Random(7)) for _ in range(3)]
    assert first == again
    many = {space.sample(random.Random(i)).arch_hash() for i in range(50)}
    assert len(many) > 30


def test_encode_decode_and_dict_round_trip(tiny_spec_path) -> None:
    space = _space(tiny_spec_path)
    rng = random.Random(0)
    dims = space.dimensions()
    for _ in range(200):
        arch = space.sample(rng)
        vector = space.encode(arch)
        assert len(vector) == len(dims)
        assert all(0 <= v < len(choices) for v, (_, choices) in zip(vector, dims, strict=True))
        assert space.decode(vector) == arch
        assert ArchConfig.from_dict(json.loads(arch.canonical_json())) == arch
        space.validate_arch(arch)


def test_hash_is_stable_and_canonical(tiny_spec_path) -> None:
    space = _space(tiny_spec_path)
    arch = space.largest()
    data = arch.to_dict()
    shuffled = {k: data[k] for k in reversed(list(data))}
    assert ArchConfig.from_dict(shuffled).arch_hash() == arch.arch_hash()
    assert arch.arch_hash() != space.smallest().arch_hash()


def test_count_matches_enumeration(tiny_spec_path) -> None:
    space = _space(tiny_spec_path)
    seen = set()
    dims = space.dimensions()
    for vector in itertools.product(*[range(len(c)) for _, c in dims]):
        seen.add(space.decode(list(vector)).arch_hash())
    assert len(seen) == space.count()


def test_archs_outside_the_space_are_rejected(tiny_spec_path) -> None:
    space = _space(tiny_spec_path)
    data = space.largest().to_dict()
    data["stages"][0]["channels"] = 999
    with pytest.raises(ValueError, match=r"stages\[0\].channels 999"):
        space.validate_arch(ArchConfig.from_dict(data))


def test_every_arch_decomposes_into_the_space_blocks(tiny_spec_path) -> None:
    space = _space(tiny_spec_path)
    distinct = set(space.distinct_blocks())
    rng = random.Random(1)
    for _ in range(500):
        blocks = space.blocks(space.sample(rng))
        assert set(blocks) <= distinct
        assert blocks[0].kind == "stem" and blocks[-1].kind == "head"


def test_largest_has_most_params_and_flops(tiny_spec_path) -> None:
    space = _space(tiny_spec_path)
    rng = random.Random(2)
    big, small = space.largest(), space.smallest()
    for _ in range(100):
        arch = space.sample(rng)
        assert space.params(small) <= space.params(arch) <= space.params(big)
        assert space.flops(small) <= space.flops(arch) <= space.flops(big)


# ---- ElasticViT build options, key format 2 --------------------------------------------------------------

OPTIONS_SPACE = """
version: 1
space:
  resolution: [16, 24]
  stem: {channels: [8], stride: 2}
  stages:
    - {type: conv, depth: [1, 2], channels: [8, 16], expand: [1, 3], kernel: [3], stride: 2, shortcut: avgpool_conv}
    - {type: transformer, depth: [1, 1], channels: [16, 32], head_dim: 16, mlp_ratio: [2], v_scale: [2],
       downsample_expand: 6, downsample_se: true, shortcut: avgpool_conv, v_dwconv: true, rel_pos_bias: true,
       proj_act: true, qkv_bias: false}
  head: {expand: [4, 6], final_channels: [64, 96]}
data: {dataset: digits}
"""


def _options_space(text: str = OPTIONS_SPACE) -> SearchSpace:
    return SearchSpace.from_spec(parse_spec(yaml.safe_load(text), "options"), in_channels=3, num_classes=10)


def test_head_tied_to_the_last_width_and_final_layer_round_trip() -> None:
    space = _options_space()
    rng = random.Random(0)
    seen = set()
    for _ in range(300):
        arch = space.sample(rng)
        assert arch.head in (4 * arch.stages[-1].channels, 6 * arch.stages[-1].channels)
        assert arch.final in (64, 96) and arch.to_dict()["final"] == arch.final
        assert space.decode(space.encode(arch)) == arch
        assert ArchConfig.from_dict(json.loads(arch.canonical_json())) == arch
        space.validate_arch(arch)
        seen.add(arch.arch_hash())
    assert (space.largest().head, space.largest().final) == (6 * 32, 96)
    assert (space.smallest().head, space.smallest().final) == (4 * 16, 64)
    enumerated = {space.decode(list(v)).arch_hash()
                  for v in itertools.product(*[range(len(c)) for _, c in space.dimensions()])}
    assert len(enumerated) == space.count() and seen <= enumerated
    data = space.largest().to_dict()
    data["head"] = 6 * 16  # tied to a width the last stage does not have
    with pytest.raises(ValueError, match=r"head 96 \(head.expand \[4, 6\] x the last stage's 32\)"):
        space.validate_arch(ArchConfig.from_dict(data))
    data = space.largest().to_dict()
    del data["final"]
    with pytest.raises(ValueError, match="final 0"):
        space.validate_arch(ArchConfig.from_dict(data))


def test_archs_without_a_final_layer_keep_their_dict_and_hash(tiny_spec_path) -> None:
    """Stored archs of spaces without the new head options read and hash as before (no `final` key)."""
    arch = _space(tiny_spec_path).largest()
    assert "final" not in arch.to_dict() and arch.final == 0
    assert arch.arch_hash() == ArchConfig.from_dict({**arch.to_dict()}).arch_hash()


def test_block_keys_are_format_1_for_default_blocks_and_format_2_otherwise(tiny_spec_path) -> None:
    # A block format 1 can express keeps its key string for string (tables written before read unchanged).
    assert Block("mbconv", 56, 16, 24, 2, 3, 3).key() == "mbconv_56_16_24_2_3_3_0_0_0_16_0"
    assert Block.from_key("attn_14_96_96_1_0_0_0_0_2_16_0") == Block("attn", 14, 96, 96, v_scale=2)
    block = Block("attn", 14, 96, 96, v_scale=2, v_dwconv=True, rel_pos_bias=True, proj_act=True, qkv_bias=False)
    assert block.key() == "attn_14_96_96_1_0_0_0_0_2_16_0~v_dwconv=1~rel_pos_bias=1~proj_act=1~qkv_bias=0"
    head = Block("head", 7, 320, 1920, num_classes=1000, final=1984)
    assert head.key().endswith("_1000~final=1984")
    down = Block("transds", 28, 48, 96, 2, 3, 6, True, shortcut="avgpool_conv")
    assert down.key().endswith("~shortcut=avgpool_conv")
    for space in (_space(tiny_spec_path), _options_space()):
        for b in space.distinct_blocks():
            assert Block.from_key(b.key()) == b
    for bad, why in [("attn_14_96_96_1_0_0_0_0_2_16_0~colour=1", "unknown or repeated field 'colour'"),
                     ("attn_14_96_96_1_0_0_0_0_2_16_0~v_dwconv=0", "v_dwconv holds its default"),
                     ("attn_14_96_96_1_0_0_0_0_2_16_0~v_dwconv=1~v_dwconv=1", "unknown or repeated"),
                     ("mbconv_56_16_24_2_3_3_0_0_0_16_0~shortcut=maxpool", "shortcut must be one of"),
                     ("head_7_320_1920_1_0_0_0_0_0_16_1000~final=big", "final must be an integer"),
                     ("mbconv_56_16_24_2_3_3_0_0_0_16", "format 1: kind_hw_cin"),
                     ("attn_14_96_96_1_0_0_2_0_2_16_0", "se must be 0 or 1")]:
        with pytest.raises(ValueError, match=re.escape(why)):
            Block.from_key(bad)


def test_blocks_of_the_options_space() -> None:
    """Expand 1 is depthwise-separable; shortcuts are named only where shapes change; params follow them."""
    space = _options_space()
    arch = ArchConfig.from_dict({"resolution": 24, "stem": 8, "head": 128, "final": 64, "stages": [
        {"channels": 8, "layers": [{"expand": 1, "kernel": 3}, {"expand": 3, "kernel": 3}]},
        {"channels": 32, "layers": [{"mlp_ratio": 2, "v_scale": 2}]}]})
    space.validate_arch(arch)
    stem, first, second, down, attn, ffn, head = space.blocks(arch, 24)
    assert first == Block("mbconv", 12, 8, 8, 2, 3, 1, shortcut="avgpool_conv", expand_conv=False)
    assert second == Block("mbconv", 6, 8, 8, 1, 3, 3)  # identity residual: no shortcut named
    assert down == Block("transds", 6, 8, 32, 2, 3, 6, True, shortcut="avgpool_conv")
    assert attn.rel_pos_bias and attn.hw == 3 and head.final == 64
    # the rel-pos table (5 x 5 offsets x 2 heads), the V depthwise conv (9 x 64), no q/k/v biases
    params, macs = block_cost(attn)
    plain = block_cost(Block("attn", 3, 32, 32, v_scale=2))
    assert params - plain[0] == 25 * 2 + 9 * 64 - (64 + 64) and macs - plain[1] == 9 * 9 * 64
    assert block_cost(first)[0] == 8 * 9 + 16 + 8 * 8 + 16  # depthwise + BN, project + BN, no shortcut conv
    assert block_cost(down)[0] - block_cost(Block("transds", 6, 8, 32, 2, 3, 6, True))[0] == 8 * 32


@pytest.mark.parametrize(("change", "message"), [
    ({"head": {"channels": [64], "expand": [6]}}, "space.head: the head's width is `channels: [...]` or `expand"),
    ({"head": {"final_channels": [64]}}, "space.head: the head's width is"),
    ({"head": {"expand": [6, 6]}}, "space.head.expand: choices must be distinct"),
    ({"stages": [{"type": "conv", "depth": 1, "channels": [8], "expand": [1], "kernel": [3],
                  "shortcut": "maxpool"}]}, "space.stages[0].shortcut: Input should be 'none' or 'avgpool_conv'"),
    ({"stages": [{"type": "transformer", "depth": 1, "channels": [16], "mlp_ratio": [2], "v_scale": [2],
                  "rel_pos_bias": "yes"}]}, "space.stages[0].rel_pos_bias: Input should be a valid boolean"),
])
def test_bad_build_options_are_refused(change, message) -> None:
    from nas.errors import SpecError

    raw = yaml.safe_load(OPTIONS_SPACE)
    raw["space"].update(change)
    with pytest.raises(SpecError, match=re.escape(f"options: {message}")):
        parse_spec(raw, "options")
