"""Whole-network calibration and validation of measured tables: the machinery and its arithmetic.

The 95%-within-10% figure itself is a property of a quiet machine and belongs to `benchmarks/latency.py`
and the table; these tests check that the networks are the deployed ones, that calibration recovers known
terms, that the error figures are computed correctly, and that a failed validation changes nothing.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from nas.blocks import BLOCK_KINDS
from nas.errors import LatencyError
from nas.latency import host
from nas.latency.measure import measure_host_table
from nas.latency.tables import read_table, write_table
from nas.latency.targets import load_target
from nas.latency.validate import (
    LATER_SESSION,
    SAME_SESSION,
    build_network,
    calibration_networks,
    deploy_description,
    description_blocks,
    error_stats,
    fit_calibration,
    predict_from_sums,
    random_networks,
    sample_archs,
    validate_table,
)
from nas.space import SearchSpace
from nas.spec import parse_spec

SHIPPED_PIXEL6 = Path(__file__).resolve().parents[2] / "latency_tables" / "pixel6.json"


@pytest.fixture(scope="module")
def space(tiny_spec_path) -> SearchSpace:
    spec = parse_spec(yaml.safe_load(tiny_spec_path.read_text()), "tiny")
    return SearchSpace.from_spec(spec, in_channels=1, num_classes=10)


@pytest.fixture(scope="module")
def measured_dir(tmp_path_factory: pytest.TempPathFactory, space: SearchSpace) -> Path:
    """A host table of the tiny space, calibrated on 5 networks and validated on 6 in the same session."""
    folder = tmp_path_factory.mktemp("tables")
    calibration = calibration_networks([space], 5, spec_names=["tiny.yaml"])
    held_out = random_networks([space], 6, 2, ["tiny.yaml"], exclude={c["arch_hash"] for c in calibration})
    measure_host_table(space.distinct_blocks(), path=folder / "host.json", calibration=calibration,
                       validation=held_out, spec_names=["tiny.yaml"])
    return folder


def test_error_stats_by_hand() -> None:
    stats = error_stats([1.04, 0.91, 1.2, 2.0], [1.0, 1.0, 1.0, 2.0])
    assert stats["n"] == 4
    assert stats["within_5pct"] == 0.5  # +4% and 0%
    assert stats["within_10pct"] == 0.75  # and -9%
    assert stats["mean_abs_pct_err"] == pytest.approx((4 + 9 + 20 + 0) / 4)
    assert stats["max_abs_pct_err"] == pytest.approx(20)
    assert stats["mean_signed_pct_err"] == pytest.approx((4 - 9 + 20 + 0) / 4)
    assert error_stats([], []) == {"n": 0}


def test_calibration_recovers_known_terms() -> None:
    truth = {"overhead_ms": 0.4, "scale": {"stem": 1.3, "mbconv": 1.1, "transds": 1.2, "attn": 1.0,
                                           "ffn": 1.25, "head": 1.4}}
    gen = torch.Generator().manual_seed(0)
    sums = [{k: float(torch.rand(1, generator=gen)) * (8 if k in ("mbconv", "attn") else 1) for k in BLOCK_KINDS}
            for _ in range(40)]
    measured = [predict_from_sums(truth, s) for s in sums]
    fit = fit_calibration(sums, measured, ridge=1e-9)
    assert fit["overhead_ms"] == pytest.approx(0.4, abs=1e-3)
    for kind, value in truth["scale"].items():
        assert fit["scale"][kind] == pytest.approx(value, abs=1e-3)
    assert fit["in_sample"]["within_5pct"] == 1.0 and fit["n"] == 40
    # the ridge pulls every factor toward the common one
    strong = fit_calibration(sums, measured, ridge=1e6)
    assert max(strong["scale"].values()) - min(strong["scale"].values()) < 0.01
    with pytest.raises(LatencyError, match="at least 3 networks"):
        fit_calibration(sums[:2], measured[:2])


def test_calibration_terms_stay_physical() -> None:
    """No negative overhead or factor, even when the data would pull them below zero."""
    sums = [{k: (i + 1.0) if k == "attn" else 0.1 for k in BLOCK_KINDS} for i in range(6)]
    measured = [0.5 * s["attn"] - 0.2 for s in sums]
    fit = fit_calibration(sums, measured)
    assert fit["overhead_ms"] >= 0 and all(v >= 0 for v in fit["scale"].values())


def test_sampled_archs_are_distinct_bounded_and_exclude(space: SearchSpace) -> None:
    first = sample_archs([space], 20, seed=1)
    hashes = [arch.arch_hash() for _, arch in first]
    assert len(set(hashes)) == 20
    again = sample_archs([space], 20, seed=1)
    assert [a.arch_hash() for _, a in again] == hashes  # seeded
    other = sample_archs([space], 20, seed=2, exclude=set(hashes))
    assert not {a.arch_hash() for _, a in other} & set(hashes)
    tiny = SearchSpace(space.spec.model_copy(update={"stages": space.spec.stages[:1]}), 1, 10, 16)
    assert len(sample_archs([tiny], 500, seed=0)) == tiny.count() < 500  # never an endless loop


def test_networks_are_built_at_the_deploy_resolution(space: SearchSpace) -> None:
    arch = space.largest()
    description = deploy_description(space, arch)
    assert description["resolution"] == space.deploy_resolution_for(arch) == 16 != arch.resolution
    assert description_blocks(description) == space.blocks(arch)
    model, inputs = build_network(description)
    assert model.resolution == 16 and tuple(inputs.shape) == (1, 1, 16, 16)
    called = []
    handle = torch.nn.functional.interpolate
    torch.nn.functional.interpolate = lambda *a, **k: called.append(1) or handle(*a, **k)  # type: ignore[assignment]
    try:
        with torch.no_grad():
            assert model.eval()(inputs).shape == (1, 10)
    finally:
        torch.nn.functional.interpolate = handle  # type: ignore[assignment]
    assert not called  # the deployed network never resizes its input


def test_same_session_validation_is_stored_and_adds_up(measured_dir: Path) -> None:
    table = read_table(measured_dir / "host.json")
    validation = table["validation"]
    assert validation["protocol"] == SAME_SESSION and validation["n"] == 6
    calibration_hashes = {n["arch_hash"] for n in table["calibration"]["networks"]}
    assert not calibration_hashes & {n["arch_hash"] for n in validation["networks"]}
    model = load_target("host", measured_dir)
    predicted = [n["predicted_ms"] for n in validation["networks"]]
    measured = [n["measured_ms"] for n in validation["networks"]]
    assert error_stats(predicted, measured) == {k: validation[k] for k in error_stats(predicted, measured)}
    assert validation["plain_sum"]["n"] == 6 and validation["drift_pct"] is None
    assert model.headline()["within_10pct"] == validation["within_10pct"]


def test_later_session_validation(measured_dir: Path, space: SearchSpace, tmp_path: Path) -> None:
    path = tmp_path / "host.json"
    path.write_text((measured_dir / "host.json").read_text())
    validation = validate_table(path, [space], n=5, seed=7, spec_names=["tiny.yaml"])
    stored = read_table(path)["validation"]
    assert stored == json.loads(json.dumps(validation))
    assert validation["protocol"] == LATER_SESSION and validation["n"] == 5 and validation["seed"] == 7
    assert validation["runtime"] == "torch-eager" and validation["threads"] == 1
    assert validation["clock"] == "thread_cpu"
    table = read_table(path)
    assert not {n["arch_hash"] for n in table["calibration"]["networks"]} & {n["arch_hash"] for n in
                                                                            validation["networks"]}
    # every prediction is the table's, every figure follows from the stored pairs
    model = load_target("host", tmp_path)
    networks = random_networks([space], 5, 7, exclude={n["arch_hash"] for n in table["calibration"]["networks"]})
    for net, record in zip(networks, validation["networks"], strict=True):
        assert record["arch_hash"] == net["arch_hash"]
        assert record["predicted_ms"] == pytest.approx(model.predict(description_blocks(net["description"])).ms,
                                                       abs=1e-5)
    pairs = [(n["predicted_ms"], n["measured_ms"]) for n in validation["networks"]]
    expected = error_stats(*zip(*pairs, strict=True))
    assert expected == {k: validation[k] for k in expected}  # exactly: the figures are those of the stored pairs
    # drift: the calibration networks were re-timed; the adjusted figures divide it out
    assert isinstance(validation["drift_pct"], float)
    factor = 1 + validation["drift_pct"] / 100
    adjusted = error_stats([p for p, _ in pairs], [m / factor for _, m in pairs])
    assert adjusted == pytest.approx(validation["drift_adjusted"], rel=1e-9)  # up to the factor's round trip


def test_failed_validation_leaves_the_table(measured_dir: Path, space: SearchSpace, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "host.json"
    path.write_text((measured_dir / "host.json").read_text())
    before = path.read_text()

    def boom(*_args, **_kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(host, "time_interleaved", boom)
    with pytest.raises(KeyboardInterrupt):
        validate_table(path, [space], n=3)
    assert path.read_text() == before and [p.name for p in tmp_path.iterdir()] == ["host.json"]


def test_a_table_changed_meanwhile_is_not_overwritten(measured_dir: Path, space: SearchSpace, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "host.json"
    path.write_text((measured_dir / "host.json").read_text())
    real = host.measure_session

    def meanwhile(*args, **kwargs):
        out = real(*args, **kwargs)
        table = read_table(path)
        write_table({**table, "overhead_ms": table["overhead_ms"] + 1.0}, path)
        return out

    monkeypatch.setattr(host, "measure_session", meanwhile)
    with pytest.raises(LatencyError, match="changed while its networks were timed"):
        validate_table(path, [space], n=2)


def test_validation_refuses_what_it_cannot_validate(measured_dir: Path, space: SearchSpace, tmp_path: Path) -> None:
    write_table(json.loads(SHIPPED_PIXEL6.read_text()), tmp_path / "pixel6.json")
    with pytest.raises(LatencyError, match="only measured tables are validated on this machine"):
        validate_table(tmp_path / "pixel6.json", [space], n=2)
    partial = tmp_path / "host.json"
    measure_host_table(space.distinct_blocks()[:4], path=partial)
    with pytest.raises(LatencyError, match="nas latency measure --target host"):
        validate_table(partial, [space], n=2)
    with pytest.raises(LatencyError, match="--n: validate at least 1"):
        validate_table(measured_dir / "host.json", [space], n=0)
    table = read_table(measured_dir / "host.json")
    other_cpu = tmp_path / "other.json"
    write_table({**table, "target": "other", "cpu": "a different CPU"}, other_cpu)
    with pytest.raises(LatencyError, match="measured on 'a different CPU'"):
        validate_table(other_cpu, [space], n=2)


def test_onnxruntime_tables_validate_with_onnxruntime(space: SearchSpace, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    path = tmp_path / "host-onnxruntime.json"
    calibration = calibration_networks([space], 3)
    measure_host_table(space.distinct_blocks(), path=path, runtime="onnxruntime", calibration=calibration,
                       target="host-onnxruntime")
    table = read_table(path)
    assert table["runtime"] == "onnxruntime-cpu" and "onnxruntime" in table["runtime_version"]
    assert table["target"] == "host-onnxruntime"
    assert load_target("host-onnxruntime", tmp_path).predict(space.blocks(space.smallest())).ms > 0
    validation = validate_table(path, [space], n=3)
    assert validation["runtime"] == "onnxruntime-cpu" and validation["n"] == 3
    assert all(n["measured_ms"] > 0 for n in validation["networks"])
