"""The MPC cost decomposition of blocks (pure Python: no SPU needed)."""

from __future__ import annotations

import pytest

from nas.blocks import Block
from nas.mpc.pieces import Piece, pieces_of

ATTN = Block("attn", 7, 64, 64, v_scale=2, head_dim=16, attention="quad:1+relu_softmax:2+scaling:1")


def test_keys_round_trip_for_every_kind():
    pieces = [p for block in (ATTN, Block("ffn", 7, 64, 64, mlp_ratio=2, act="gelu"),
                              Block("stem", 28, 1, 16, 2, 3), Block("head", 7, 64, 64, num_classes=10, final=32))
              for p in pieces_of(block)]
    pieces.append(Piece("dwconv", side=7, channels=128))
    assert {p.kind for p in pieces} == {"block", "layernorm", "linear", "act", "attn_core", "dwconv"}
    for piece in pieces:
        assert Piece.from_key(piece.key()) == piece
    assert Piece("linear", tokens=49, cin=64, cout=128, bias=True).key() == "linear_49_64_128_b1"
    assert Piece.from_key("attn_core_relu_softmax_49_2_16_32_rb1") == Piece(
        "attn_core", name="relu_softmax", tokens=49, heads=2, head_dim=16, v_dim=32, rel_bias=True)


@pytest.mark.parametrize("key", [
    "", "linear", "linear_49_64_128", "linear_49_64_128_b2", "linear_49_64_128_1", "linear_049_64_128_b1",
    "linear_0_64_128_b1", "linear_49_64_x_b1", "linear_49_64_128_b1_7", "layernorm_49", "act_swish_49_64",
    "act__49_64", "attn_core_softmax_49_2_16_16", "attn_core_nope_49_2_16_16_rb0", "attn_core_softmax_50_2_16_16_rb1",
    "dwconv_7", "conv_7_64", "block:", "block:garbage", "block:attn_7_64_64_1_0_0_0_0_1_16_0",
])
def test_garbage_keys_are_refused_naming_the_key(key):
    with pytest.raises(ValueError, match="not a piece key") as info:
        Piece.from_key(key)
    assert repr(key) in str(info.value)


def test_fields_a_kind_does_not_have_are_refused():
    with pytest.raises(ValueError, match="no field cin"):
        Piece("layernorm", tokens=49, channels=64, cin=3)
    with pytest.raises(ValueError, match="positive integer"):
        Piece("dwconv", side=0, channels=64)


def test_attn_with_a_per_head_mix_has_one_core_per_kind():
    pieces = pieces_of(ATTN)
    assert [p.key() for p in pieces] == [
        "layernorm_49_64",
        "linear_49_64_128_b1",  # q and k: 2 x 4 heads x 16
        "linear_49_64_128_b1",  # v: 4 heads x (2 x 16)
        "attn_core_quad_49_1_16_32_rb0",
        "attn_core_relu_softmax_49_2_16_32_rb0",
        "attn_core_scaling_49_1_16_32_rb0",
        "linear_49_128_64_b1",
    ]
    assert sum(p.heads for p in pieces if p.kind == "attn_core") == 4


def test_attn_options_add_their_pieces():
    block = Block("attn", 7, 48, 48, v_scale=1, head_dim=16, attention="softmax", v_dwconv=True,
                  rel_pos_bias=True, proj_act=True, qkv_bias=False)
    assert [p.key() for p in pieces_of(block)] == [
        "layernorm_49_48", "linear_49_48_96_b0", "linear_49_48_48_b0", "dwconv_7_48",
        "attn_core_softmax_49_3_16_16_rb1", "act_hswish_49_48", "linear_49_48_48_b1",
    ]


@pytest.mark.parametrize("act", ["gelu", "relu", "hswish"])
def test_ffn_uses_its_activation(act):
    assert [p.key() for p in pieces_of(Block("ffn", 4, 32, 32, mlp_ratio=3, act=act))] == [
        "layernorm_16_32", "linear_16_32_96_b1", f"act_{act}_16_96", "linear_16_96_32_b1"]


@pytest.mark.parametrize("block", [
    Block("stem", 28, 1, 16, 2, 3),
    Block("mbconv", 14, 16, 24, 2, 3, 2, True, shortcut="avgpool_conv"),
    Block("transds", 14, 24, 48, 2, 3, 2, False, shortcut="avgpool_conv"),
    Block("head", 7, 48, 64, num_classes=10, final=32),
])
def test_conv_blocks_are_measured_whole(block):
    (piece,) = pieces_of(block)
    assert piece.key() == "block:" + block.key()
    assert piece.as_block() == block
