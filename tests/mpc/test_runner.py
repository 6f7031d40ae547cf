"""Measuring MPC costs through the SPU worker: pieces, whole networks, and the errors a user can meet."""

from __future__ import annotations

import pytest

from nas.blocks import Block
from nas.errors import LatencyError
from nas.mpc import runner
from nas.mpc.pieces import Piece, pieces_of
from nas.space import network_blocks

# A tiny network: 8 x 8 input, one transformer layer of two heads of different kinds with every attention
# option, a head with a final layer.
NETWORK = {
    "format_version": 3, "in_channels": 1, "num_classes": 4, "resolution": 8,
    "stem": {"channels": 8, "stride": 2, "kernel": 3},
    "stages": [{"type": "transformer", "stride": 2, "channels": 16, "head_dim": 8, "downsample_expand": 2,
                "downsample_se": True, "shortcut": "avgpool_conv", "v_dwconv": True, "rel_pos_bias": True,
                "proj_act": True, "qkv_bias": False,
                "layers": [{"mlp_ratio": 2, "v_scale": 1, "attention": ["quad", "softmax"], "act": "relu"}]}],
    "head": {"channels": 16, "final": 8},
}
CORES = [Piece("attn_core", name=kind, tokens=64, heads=1, head_dim=16, v_dim=16)
         for kind in ("softmax", "relu_softmax", "scaling", "quad")]


@pytest.fixture(scope="module")
def measured(spu) -> dict[str, runner.MPCCost]:
    network_pieces = [p for block in network_blocks(NETWORK, 8) for p in pieces_of(block)]
    calls = []
    costs = runner.measure_pieces(CORES + network_pieces, progress=lambda done, total: calls.append((done, total)))
    assert calls[-1] == (len(costs), len(costs))  # one progress call per distinct piece
    return costs


def test_every_piece_costs_rounds_and_bytes(measured):
    assert len(measured) > len(CORES)
    for key, cost in measured.items():
        assert Piece.from_key(key)
        assert cost.rounds > 0 and cost.bytes > 0 and cost.compute_ms > 0, key


def test_softmax_costs_more_rounds_than_the_mpc_friendly_kinds(measured):
    rounds = {piece.name: measured[piece.key()].rounds for piece in CORES}
    assert rounds["softmax"] > rounds["relu_softmax"] > rounds["scaling"]
    assert rounds["softmax"] > rounds["quad"] > rounds["scaling"]


def test_a_repeated_measurement_gives_the_same_rounds_and_bytes(measured):
    again = runner.measure_pieces(CORES[:2])
    for piece in CORES[:2]:
        first, second = measured[piece.key()], again[piece.key()]
        assert (first.rounds, first.bytes) == (second.rounds, second.bytes)


def test_a_network_costs_the_sum_of_its_pieces(measured):
    (cost,) = runner.measure_networks([NETWORK])
    pieces = [p for block in network_blocks(NETWORK, 8) for p in pieces_of(block)]
    assert cost.rounds == sum(measured[p.key()].rounds for p in pieces)
    assert cost.bytes == sum(measured[p.key()].bytes for p in pieces)


def test_a_missing_interpreter_is_one_line(monkeypatch, tmp_path):
    monkeypatch.setenv("NAS_SPU_PYTHON", str(tmp_path / "no-python"))
    assert not runner.spu_available()
    with pytest.raises(LatencyError) as info:
        runner.measure_pieces(CORES[:1])
    assert "\n" not in str(info.value) and "setup_mpc.sh" in str(info.value)


def test_a_failing_worker_reports_its_last_line(monkeypatch, tmp_path):
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\necho 'Traceback (most recent call last):' >&2\necho 'RuntimeError: boom' >&2\nexit 3\n")
    fake.chmod(0o755)
    monkeypatch.setenv("NAS_SPU_PYTHON", str(fake))
    with pytest.raises(LatencyError) as info:
        runner.measure_pieces(CORES[:1])
    assert str(info.value) == "the SPU worker failed: RuntimeError: boom"


def test_piece_keys_are_checked_before_any_run():
    with pytest.raises(ValueError, match="not a piece key"):
        runner.measure_pieces(["linear_1_2"])
    with pytest.raises(ValueError, match="decompose"):
        Piece("block", block=Block("ffn", 4, 16, 16, mlp_ratio=2).key())
