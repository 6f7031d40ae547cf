"""The host latency harness and table files: measured, atomic, versioned, and honest about gaps."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from nas.blocks import Block
from nas.errors import LatencyError
from nas.latency.host import block_module, measure_block
from nas.latency.measure import measure_host_table
from nas.latency.tables import read_table
from nas.latency.targets import load_target
from nas.space import SearchSpace
from nas.spec import parse_spec

BLOCKS = [
    Block("stem", 16, 3, 8, 1, 3),
    Block("mbconv", 16, 8, 16, 2, 5, 3, True),
    Block("transds", 8, 16, 32, 1, 3, 4),
    Block("attn", 8, 32, 32, v_scale=2, head_dim=8),
    Block("ffn", 8, 32, 32, mlp_ratio=2),
    Block("head", 8, 32, 64, num_classes=10),
]


@pytest.fixture(scope="module")
def space(tiny_spec_path) -> SearchSpace:
    spec = parse_spec(yaml.safe_load(tiny_spec_path.read_text()), "tiny")
    return SearchSpace.from_spec(spec, in_channels=1, num_classes=10)


def test_every_block_kind_runs_and_is_timed() -> None:
    for block in BLOCKS:
        module, inputs = block_module(block)
        with torch.no_grad():
            out = module.eval()(inputs)
        assert out.numel() > 0
        median, spread = measure_block(block, threads=1)
        assert median > 0 and spread >= 0


def test_measure_writes_a_table_with_provenance_and_keeps_entries(tmp_path: Path, space: SearchSpace) -> None:
    path = tmp_path / "host.json"
    blocks = space.distinct_blocks()
    _, measured = measure_host_table(blocks[:5], path=path)
    assert measured == 5
    table = read_table(path)
    assert table["provenance"] == "measured" and table["target"] == "host" and table["threads"] == 1
    assert {"cpu", "runtime", "runtime_version", "date", "method"} <= set(table)
    before = dict(table["entries"])
    _, measured = measure_host_table(blocks, path=path)
    assert measured == len(blocks) - 5
    after = read_table(path)["entries"]
    assert all(after[key] == value for key, value in before.items())  # existing entries are kept
    model = load_target("host", tmp_path)
    arch = space.largest()
    prediction = model.predict(space.blocks(arch))
    assert prediction.ms == pytest.approx(sum(after[b.key()]["ms"] for b in space.blocks(arch)))
    assert prediction.flag == ""


def test_missing_blocks_say_how_to_measure(tmp_path: Path, space: SearchSpace) -> None:
    path = tmp_path / "host.json"
    measure_host_table(space.distinct_blocks()[:3], path=path)
    model = load_target("host", tmp_path)
    with pytest.raises(LatencyError, match=r"lacks \d+ of the space's \d+ blocks.*nas latency measure --target host"):
        model.check_covers(space.distinct_blocks())


def test_missing_target_lists_known_ones(tmp_path: Path) -> None:
    (tmp_path / "phone.json").write_text("{}")
    with pytest.raises(LatencyError, match="no latency table.*known targets: phone"):
        load_target("host", tmp_path)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"format_version": 1, "target": "host"', "corrupt or truncated"),
        ('{"format_version": 7}', "format_version: this nas reads version 1, but got 7"),
        ('{"format_version": 1, "target": "host"}', "missing field"),
        ("[1, 2]", "must be a JSON object"),
    ],
)
def test_bad_tables_are_refused(tmp_path: Path, content: str, message: str) -> None:
    (tmp_path / "host.json").write_text(content)
    with pytest.raises(LatencyError, match=message):
        load_target("host", tmp_path)


def test_failed_measurement_leaves_the_old_table(tmp_path: Path, space: SearchSpace, monkeypatch) -> None:
    path = tmp_path / "host.json"
    measure_host_table(space.distinct_blocks()[:2], path=path)
    original = path.read_text()

    def boom(*_args, **_kwargs):
        raise RuntimeError("interrupted")

    monkeypatch.setattr("nas.latency.host.measure_block", boom)
    with pytest.raises(RuntimeError):
        measure_host_table(space.distinct_blocks(), path=path)
    assert path.read_text() == original
    assert json.loads(original)["entries"]
    assert [p.name for p in tmp_path.iterdir()] == ["host.json"]
