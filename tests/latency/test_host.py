"""The host latency harness and table files: measured, atomic, versioned, and honest about gaps."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from nas import static_model
from nas.blocks import Block
from nas.errors import LatencyError
from nas.latency import host
from nas.latency.host import block_module, make_runner, measure_block, time_interleaved
from nas.latency.measure import measure_host_table
from nas.latency.tables import read_table, write_table
from nas.latency.targets import MeasuredTableModel, load_target
from nas.latency.validate import calibration_networks, description_blocks, error_stats
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


def test_token_blocks_get_the_networks_layout() -> None:
    """Attention and FFN are timed on the channel-major view TransformerStage hands them, not on a copy."""
    stage = static_model.TransformerStage(16, {"channels": 32, "downsample_expand": 4, "stride": 1, "head_dim": 8,
                                               "layers": [{"mlp_ratio": 2, "v_scale": 2}]}).eval()
    seen: list[torch.Tensor] = []
    stage.layers[0][0].register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    with torch.no_grad():
        stage(torch.randn(1, 16, 8, 8))
    _, tokens = block_module(Block("attn", 8, 32, 32, v_scale=2, head_dim=8))
    assert tokens.shape == seen[0].shape and tokens.stride() == seen[0].stride()
    assert not tokens.is_contiguous()
    _, tokens = block_module(Block("ffn", 8, 32, 32, mlp_ratio=2))
    assert tokens.stride() == seen[0].stride()


def test_burst_schedule_interleaves_rounds_and_counts_samples() -> None:
    calls: list[str] = []
    runners = [lambda: calls.append("a"), lambda: calls.append("b")]
    rounds: list[int] = []
    timings = time_interleaved(runners, "wall", "burst", rounds=3, repeats=6, warmup=2, min_seconds=0.0,
                               on_round=lambda: rounds.append(1))
    assert [t.samples for t in timings] == [6, 6]
    assert len(rounds) == 3
    # round 1: a x (2 warm-up + 2), b x 4; rounds 2-3: (1 warm-up + 2) each
    assert "".join(calls) == "aaaabbbb" + "aaabbb" + "aaabbb"
    assert all(t.ms >= 0 and t.spread_ms >= 0 for t in timings)


def test_sequence_schedule_runs_each_once_per_round_in_fresh_orders() -> None:
    calls: list[str] = []
    runners = [lambda name=name: calls.append(name) for name in "abcde"]
    timings = time_interleaved(runners, "thread_cpu", "sequence", rounds=8, warmup=1)
    assert [t.samples for t in timings] == [8] * 5
    assert "".join(calls[:5]) == "abcde"  # the warm-up, in order
    passes = ["".join(calls[5 + 5 * i:10 + 5 * i]) for i in range(8)]
    assert all(sorted(p) == list("abcde") for p in passes)
    assert len(set(passes)) > 1  # the order is drawn afresh each round
    assert calls == (calls[:5] + [c for p in passes for c in p])
    with pytest.raises(LatencyError, match="schedule must be one of"):
        time_interleaved(runners, "wall", "random")


def test_each_runtime_has_its_schedule() -> None:
    assert host.SCHEDULES == {"torch": "sequence", "onnxruntime": "burst"}
    assert host.provenance(1, "torch")["schedule"] == "sequence"
    assert host.session_rounds("torch") == host.ROUNDS["sequence"]


def test_clock_and_allocator_are_recorded() -> None:
    assert host.clock_for(1) == "thread_cpu" and host.clock_for(2) == "wall"
    note = host.pin_allocator()
    assert note == host.pin_allocator()  # idempotent
    info = host.provenance(1)
    assert info["clock"] == "thread_cpu" and info["allocator"] == note and info["runtime"] == "torch-eager"
    with pytest.raises(LatencyError, match="--runtime: must be one of torch, onnxruntime"):
        host.check_runtime("tensorrt")


def test_onnxruntime_runs_the_same_computation() -> None:
    pytest.importorskip("onnxruntime")
    for block in BLOCKS:
        module, inputs = block_module(block)
        module.eval()
        runner = make_runner(module, inputs, "onnxruntime", threads=1)
        with torch.no_grad():
            expected = module(inputs).numpy()
        runner()  # io-bound output: read it back through a fresh session run
        import onnxruntime as ort

        session = ort.InferenceSession(host.onnx_bytes(module, inputs), providers=["CPUExecutionProvider"])
        got = session.run(None, {"input": inputs.contiguous().numpy()})[0]
        assert got.shape == expected.shape
        assert abs(got - expected).max() < 1e-4
    median, spread = measure_block(BLOCKS[3], threads=1, runtime="onnxruntime")
    assert median > 0 and spread >= 0


def test_measure_writes_a_table_with_provenance_and_keeps_entries(tmp_path: Path, space: SearchSpace) -> None:
    path = tmp_path / "host.json"
    blocks = space.distinct_blocks()
    _, measured = measure_host_table(blocks[:5], path=path)
    assert measured == 5
    table = read_table(path)
    assert table["provenance"] == "measured" and table["target"] == "host" and table["threads"] == 1
    assert {"cpu", "runtime", "runtime_version", "date", "method", "clock", "allocator"} <= set(table)
    assert table["validation"] is None and "calibration" not in table
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


def test_calibration_is_fitted_stored_and_used(tmp_path: Path, space: SearchSpace) -> None:
    path = tmp_path / "host.json"
    networks = calibration_networks([space], 5, spec_names=["tiny.yaml"])
    measure_host_table(space.distinct_blocks(), path=path, calibration=networks)
    table = read_table(path)
    fit = table["calibration"]
    assert fit["n"] == 5 and len(fit["networks"]) == 5 and table["overhead_ms"] == fit["overhead_ms"] >= 0
    assert {n["arch_hash"] for n in fit["networks"]} == {n["arch_hash"] for n in networks}
    assert all(n["measured_ms"] > 0 and n["description"]["resolution"] == 16 for n in fit["networks"])
    assert set(fit["scale"]) == {"stem", "mbconv", "transds", "attn", "ffn", "head"}
    model = load_target("host", tmp_path)
    assert isinstance(model, MeasuredTableModel)
    blocks = space.blocks(space.smallest())
    expected = fit["overhead_ms"] + sum(fit["scale"][b.kind] * table["entries"][b.key()]["ms"] for b in blocks)
    assert model.predict(blocks).ms == pytest.approx(expected)
    # the in-sample figures follow from the stored networks and the fitted terms
    predicted = [model.predict(description_blocks(n["description"])).ms for n in fit["networks"]]
    recomputed = error_stats(predicted, [n["measured_ms"] for n in fit["networks"]])
    assert recomputed == pytest.approx(fit["in_sample"], rel=1e-3, abs=1e-4)


def test_missing_blocks_say_how_to_measure(tmp_path: Path, space: SearchSpace) -> None:
    path = tmp_path / "host.json"
    measure_host_table(space.distinct_blocks()[:3], path=path)
    model = load_target("host", tmp_path)
    with pytest.raises(LatencyError, match=r"lacks \d+ of the space's \d+ blocks.*nas latency measure --target host"):
        model.check_covers(space.distinct_blocks())
    with pytest.raises(LatencyError, match="no entry for block"):
        model.predict(space.blocks(space.largest()))


def test_a_resolution_the_table_lacks_is_named(tmp_path: Path, space: SearchSpace) -> None:
    path = tmp_path / "host.json"
    measure_host_table(space.distinct_blocks(), path=path)
    other = SearchSpace(space.spec, 1, 10, deploy_resolution=24)
    with pytest.raises(LatencyError, match=r"no blocks at input resolution 24 \(it covers 16\)"):
        load_target("host", tmp_path).check_covers(other.distinct_blocks(), hint=" --spec other.yaml")


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
        ('{"format_version": 1, "target": "host", "device": "d", "runtime": "r", "threads": 0, "date": "x", '
         '"method": "m", "provenance": "guessed"}', r"threads: must be an integer >= 1, got 0; provenance: must "),
        ('{"format_version": 1, "target": "host", "device": "d", "runtime": "r", "threads": 1, "date": "x", '
         '"method": "m", "provenance": "measured", "entries": {"k": {"ms": -1}}}', r"entries\.k\.ms: must be a "),
        ('{"format_version": 1, "target": "host", "device": "d", "runtime": "r", "threads": 1, "date": "x", '
         '"method": "m", "provenance": "fitted"}', "model: a fitted table needs a `model` object"),
    ],
)
def test_bad_tables_are_refused(tmp_path: Path, content: str, message: str) -> None:
    (tmp_path / "host.json").write_text(content)
    with pytest.raises(LatencyError, match=message) as info:
        load_target("host", tmp_path)
    assert "\n" not in str(info.value)


def test_failed_measurement_leaves_the_old_table(tmp_path: Path, space: SearchSpace, monkeypatch) -> None:
    path = tmp_path / "host.json"
    measure_host_table(space.distinct_blocks()[:2], path=path)
    original = path.read_text()

    def boom(*_args, **_kwargs):
        raise RuntimeError("interrupted")

    monkeypatch.setattr("nas.latency.host.time_interleaved", boom)
    with pytest.raises(RuntimeError):
        measure_host_table(space.distinct_blocks(), path=path)
    assert path.read_text() == original
    assert json.loads(original)["entries"]
    assert [p.name for p in tmp_path.iterdir()] == ["host.json"]


def test_measure_never_overwrites_a_fitted_or_imported_table(tmp_path: Path, space: SearchSpace) -> None:
    shipped = Path(__file__).resolve().parents[2] / "latency_tables" / "pixel6.json"
    path = tmp_path / "pixel6.json"
    write_table(json.loads(shipped.read_text()), path)
    before = path.read_text()
    with pytest.raises(LatencyError, match="is a fitted table, not one measured here"):
        measure_host_table(space.distinct_blocks()[:2], path=path, target="pixel6")
    assert path.read_text() == before


def test_another_runtime_or_thread_count_remeasures_everything(tmp_path: Path, space: SearchSpace) -> None:
    path = tmp_path / "host.json"
    blocks = space.distinct_blocks()[:3]
    measure_host_table(blocks, path=path)
    _, measured = measure_host_table(blocks, path=path, threads=2)
    assert measured == 3 and read_table(path)["threads"] == 2 and read_table(path)["clock"] == "wall"


def test_an_unreadable_table_is_replaced_only_with_refresh(tmp_path: Path, space: SearchSpace) -> None:
    path = tmp_path / "host.json"
    path.write_text('{"format_version": 2, "target": "host"}')
    with pytest.raises(LatencyError, match="format_version.*pass --refresh to measure a new table in its place"):
        measure_host_table(space.distinct_blocks()[:2], path=path)
    assert path.read_text() == '{"format_version": 2, "target": "host"}'
    path.write_text('{"format_version": 1, "target": "ho')  # truncated
    measure_host_table(space.distinct_blocks()[:2], path=path, refresh=True)
    assert len(read_table(path)["entries"]) == 2
