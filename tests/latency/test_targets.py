"""Targets as objects: the registry by provenance, the pixel6 fitted target's flags reaching the stored metric,
and `nas targets` / `nas latency` on the command line (in a workspace with its own latency_tables)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from nas.blocks import Block
from nas.errors import LatencyError
from nas.latency.fitted import FittedLatencyModel
from nas.latency.tables import write_table
from nas.latency.targets import (
    OUT_OF_RANGE,
    FittedTableModel,
    LatencyModel,
    MeasuredTableModel,
    Prediction,
    elasticvit_head,
    load_target,
    measured_form,
)
from nas.pipeline import candidate_metrics
from nas.search import CandidateScorer
from nas.space import SearchSpace
from nas.spec import parse_spec

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "latency_tables"
QUICKSTART = REPO / "search_spaces" / "quickstart.yaml"


def _space(path: Path, num_classes: int = 10) -> SearchSpace:
    spec = parse_spec(yaml.safe_load(path.read_text()), path.stem)
    return SearchSpace.from_spec(spec, in_channels=1, num_classes=num_classes)


@pytest.fixture(scope="module")
def pixel6() -> LatencyModel:
    return load_target("pixel6", SHIPPED)


class _Evaluator:
    """Stands in for the supernet evaluator: accuracy is not what these tests are about."""

    def val_accuracy(self, _arch: object) -> float:
        return 0.5


def test_registry_picks_the_model_by_provenance(pixel6: LatencyModel, tmp_path: Path) -> None:
    assert isinstance(pixel6, FittedTableModel) and pixel6.table["provenance"] == "fitted"
    table = json.loads((SHIPPED / "pixel6.json").read_text())
    write_table({**table, "target": "elsewhere"}, tmp_path / "other.json")
    with pytest.raises(LatencyError, match="the file is for target 'elsewhere', not 'other'"):
        load_target("other", tmp_path)
    with pytest.raises(LatencyError, match="--target: a target name must be"):
        load_target("../pixel6", tmp_path)


def test_pixel6_in_range_network_is_not_flagged(pixel6: LatencyModel) -> None:
    blocks = [Block("stem", 224, 3, 16, stride=2, kernel=3), Block("mbconv", 112, 16, 16, 1, 3, 1),
              Block("transds", 28, 48, 96, 2, 3, 6), Block("attn", 14, 96, 96, v_scale=2, head_dim=16),
              Block("ffn", 14, 96, 96, mlp_ratio=3), Block("head", 4, 160, 960, num_classes=1000)]
    prediction = pixel6.predict(blocks)
    assert prediction.flag == "" and 0 < prediction.ms < 100


def test_our_downsample_is_the_measured_one(pixel6: LatencyModel) -> None:
    """Our spaces give the transformer downsample kernel 3; nn-Meter's transds keys carry no kernel (fixed 3)."""
    ours = Block("transds", 28, 48, 96, stride=2, kernel=3, expand=6)
    assert measured_form(ours) == Block("transds", 28, 48, 96, stride=2, expand=6)
    ms, in_range = pixel6.predict_block(ours)
    assert in_range and (ms, in_range) == pixel6.predict_block(measured_form(ours))
    assert not pixel6.predict_block(Block("transds", 28, 48, 96, stride=2, kernel=5, expand=6))[1]


def test_out_of_range_blocks_are_flagged_not_refused(pixel6: LatencyModel) -> None:
    inside = [Block("attn", 14, 96, 96, v_scale=2, head_dim=16)]
    outside = inside + [Block("attn", 64, 96, 96, v_scale=2, head_dim=16)]  # tokens beyond any measured side
    assert pixel6.predict(inside).flag == ""
    flagged = pixel6.predict(outside)
    assert flagged.flag == OUT_OF_RANGE and flagged.ms > pixel6.predict(inside).ms


def test_our_head_is_mapped_to_the_measured_head(pixel6: LatencyModel) -> None:
    ours = Block("head", 7, 160, 960, num_classes=10)  # 1x1 conv 160 -> 960 = expand 6
    mapped = elasticvit_head(ours)
    assert mapped == Block("head", 7, 160, 1984, expand=6)
    model = FittedLatencyModel.from_dict(json.loads((SHIPPED / "pixel6.json").read_text())["model"])
    assert pixel6.predict_block(ours) == model.predict(mapped)
    assert elasticvit_head(mapped) == mapped  # an ElasticViT head is left alone


def test_the_flag_reaches_the_stored_latency_metric(pixel6: LatencyModel, tiny_spec_path: Path) -> None:
    """The tiny space deploys at 16 px, far below anything measured on the phone: every candidate's pixel6
    latency is predicted, flagged, and the flag is what the pipeline stores with the metric."""
    tiny = _space(tiny_spec_path)
    scorer = CandidateScorer(tiny, _Evaluator(), {"pixel6": pixel6})
    result = scorer.score(tiny.smallest())
    assert result.latency_ms["pixel6"] > 0 and result.latency_flags == {"pixel6": OUT_OF_RANGE}
    metric = next(m for m in candidate_metrics(result) if m.name == "latency_ms")
    assert (metric.target, metric.flag) == ("pixel6", OUT_OF_RANGE)


def test_quickstart_on_pixel6(pixel6: LatencyModel) -> None:
    """The README's quickstart searches on pixel6 at its deploy resolution (224 px)."""
    quick = _space(QUICKSTART)
    pixel6.check_covers(quick.distinct_blocks())
    small, large = (pixel6.predict(quick.blocks(a)) for a in (quick.smallest(), quick.largest()))
    assert 0 < small.ms < large.ms


def test_a_prediction_costs_microseconds(pixel6: LatencyModel, tmp_path: Path) -> None:
    import random
    import time

    quick = _space(QUICKSTART)
    entries = {b.key(): {"ms": 1.0} for b in quick.distinct_blocks()}
    table = {"format_version": 1, "target": "host", "device": "d", "runtime": "torch-eager", "threads": 1,
             "date": "2026-01-01", "method": "m", "provenance": "measured", "entries": entries}
    measured = MeasuredTableModel("host", table, tmp_path / "host.json")
    archs = [quick.sample(random.Random(i)) for i in range(200)]
    for model in (measured, pixel6):
        started = time.perf_counter()
        for arch in archs:
            assert isinstance(model.predict(quick.blocks(arch)), Prediction)
        per_arch_us = (time.perf_counter() - started) / len(archs) * 1e6
        assert per_arch_us < 2000, (type(model).__name__, per_arch_us)


def test_summary_carries_provenance_and_validation(pixel6: LatencyModel) -> None:
    info = pixel6.summary()
    assert info["provenance"] == "fitted" and info["target"] == "pixel6"
    headline = info["headline"]
    assert headline["heldout_within_10pct"] >= 0.97 and headline["heldout_blocks"] > 2000
    assert headline["network_within_10pct"] >= 0.95 and headline["networks"] == 200
    assert info["validation"]["heldout"]["per_kind"].keys() >= {"stem", "mbconv", "transds", "attn", "ffn", "head"}


# the command line ------------------------------------------------------------------------------------------


def _error_line(proc) -> str:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.strip().splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def test_cli_measure_validate_and_list(workspace, tiny_spec_path: Path) -> None:
    shutil.copy(SHIPPED / "pixel6.json", workspace.path / "latency_tables" / "pixel6.json")
    out = workspace.run_json("latency", "measure", "--target", "host", "--spec", str(tiny_spec_path),
                             "--calibration", "4", "--validate", "4", "--no-progress")
    assert out["measured"] > 0 and out["calibration_networks"] == 4 and out["validation"]["n"] == 4
    result = workspace.run_json("latency", "validate", "--target", "host", "--spec", str(tiny_spec_path),
                                "--n", "3", "--no-progress")
    assert result["n"] == 3 and "within_10pct" in result and "drift_pct" in result
    listed = {t["target"]: t for t in workspace.run_json("targets")}
    assert listed["host"]["provenance"] == "measured" and listed["host"]["headline"]["networks"] == 3
    assert listed["pixel6"]["provenance"] == "fitted"
    assert listed["pixel6"]["headline"]["heldout_within_10pct"] >= 0.97
    text = workspace.run("targets").stdout
    assert "host: measured" in text and "validated (later session) on 3 networks" in text
    assert "pixel6: fitted" in text and "held-out blocks within +-10%" in text


def test_cli_latency_errors_are_one_line(workspace, tiny_spec_path: Path) -> None:
    tables = workspace.path / "latency_tables"
    shutil.copy(SHIPPED / "pixel6.json", tables / "pixel6.json")
    spec = ("--spec", str(tiny_spec_path), "--no-progress")
    line = _error_line(workspace.run("latency", "validate", "--target", "host", *spec, check=False))
    assert "no latency table" in line and "nas latency measure --target host" in line
    line = _error_line(workspace.run("latency", "validate", "--target", "pixel6", *spec, check=False))
    assert "only measured tables are validated" in line
    before = (tables / "pixel6.json").read_text()
    line = _error_line(workspace.run("latency", "measure", "--target", "pixel6", *spec, check=False))
    assert "is a fitted table" in line and (tables / "pixel6.json").read_text() == before
    (tables / "host.json").write_text('{"format_version": 1, "target": "ho')
    listing = workspace.run("targets", check=False)
    assert "corrupt or truncated" in _error_line(listing) and "pixel6: fitted" in listing.stdout
    (tables / "host.json").write_text('{"format_version": 2}')
    line = _error_line(workspace.run("latency", "validate", "--target", "host", *spec, check=False))
    assert "format_version: this nas reads version 1, but got 2" in line
    (tables / "host.json").unlink()
    line = _error_line(workspace.run("search", str(tiny_spec_path), "--target", "host", "--no-progress",
                                     check=False))
    assert "nas latency measure --target host" in line
