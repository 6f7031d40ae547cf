"""`nas latency import`: a device's nn-Meter LUT becomes a target with exact look-ups where a block was measured
and a flagged fitted fallback where not. Tables are written to temporary folders only."""

from __future__ import annotations

import itertools
import json
import math
import subprocess
from pathlib import Path

import pytest

from nas.blocks import Block
from nas.errors import LatencyError
from nas.latency.fit_pixel6 import FORBIDDEN_IN_TABLE
from nas.latency.fitted import block_features, nnmeter_key
from nas.latency.importer import import_table
from nas.latency.tables import read_table
from nas.latency.targets import ESTIMATED, OUT_OF_RANGE, ImportedTableModel, load_target

REPO = Path(__file__).resolve().parents[2]
PIXEL6_DATA = REPO.parent / "shared" / "latency_data" / "pixel6_lut_ln_v3.json"


def synthetic_lut() -> dict[str, float]:
    """nn-Meter keys of a small grid of every kind, with latencies from a known positive cost model."""
    blocks = [Block("stem", r, 3, c, stride=2, kernel=3) for r in (160, 192, 224) for c in (16, 24)]
    blocks += [Block("mbconv", hw, ci, co, stride=s, kernel=k, expand=e, se=se) for hw, ci, co, s, k, e, se in
               itertools.product((28, 56), (16, 24), (16, 32), (1, 2), (3, 5), (3, 6), (False, True))]
    blocks += [Block("transds", hw, ci, co, stride=s, expand=e) for hw, ci, co, s, e in
               itertools.product((14, 28), (48, 96), (96, 160), (1, 2), (4, 6))]
    blocks += [Block("attn", hw, c, c, v_scale=v) for hw, c, v in itertools.product((7, 14), (64, 128), (2, 4))]
    blocks += [Block("ffn", hw, c, c, mlp_ratio=r) for hw, c, r in itertools.product((7, 14), (64, 128), (2, 4))]
    blocks += [Block("head", hw, c, 1984, expand=6) for hw in (3, 4) for c in (160, 240)]
    return {nnmeter_key(b): round(0.01 + 0.05 * float(block_features(b)[1:].sum()) * (1 + 0.01 * math.sin(i)), 6)
            for i, b in enumerate(blocks)}


@pytest.fixture
def lut(tmp_path: Path) -> Path:
    path = tmp_path / "phone_lut.json"
    path.write_text(json.dumps(synthetic_lut()))
    return path


def test_import_gives_exact_lookups_and_a_flagged_fallback(lut: Path, tmp_path: Path) -> None:
    folder = tmp_path / "tables"
    path, info = import_table(lut, "phone", directory=folder)
    assert path == folder / "phone.json" and info["entries"] == len(synthetic_lut())
    table = read_table(path)
    assert table["provenance"] == "imported" and table["target"] == "phone"
    assert table["source"]["format"] == "nnmeter-lut" and len(table["source"]["sha256"]) == 64
    assert table["validation"]["entries_per_kind"]["mbconv"] == 128 and "heldout" in table["validation"]
    model = load_target("phone", folder)
    assert isinstance(model, ImportedTableModel)
    measured = Block("attn", 14, 64, 64, v_scale=2)
    assert model.predict([measured]).ms == synthetic_lut()[nnmeter_key(measured)]
    assert model.predict([measured]).flag == ""
    unmeasured = Block("attn", 14, 96, 96, v_scale=3)  # inside the fitted range, but no entry
    estimate = model.predict([measured, unmeasured])
    assert estimate.flag == ESTIMATED and estimate.ms > model.predict([measured]).ms
    far = Block("attn", 56, 64, 64, v_scale=2)  # beyond every measured side
    assert model.predict([measured, unmeasured, far]).flag == OUT_OF_RANGE
    assert model.summary()["headline"]["exact_entries"] == len(synthetic_lut())


def test_our_blocks_are_looked_up_in_the_measured_form(lut: Path, tmp_path: Path) -> None:
    """Our head (1x1 conv to C = 6 x cin) is the LUT's mbpool head; our downsample's kernel 3 is implied."""
    import_table(lut, "phone", directory=tmp_path)
    model = load_target("phone", tmp_path)
    head = Block("head", 4, 160, 960, num_classes=10)
    assert model.predict([head]).ms == synthetic_lut()[nnmeter_key(Block("head", 4, 160, 1984, expand=6))]
    assert model.predict([head]).flag == ""
    ours = Block("transds", 14, 48, 96, stride=2, kernel=3, expand=4)
    assert model.predict([ours]).ms == synthetic_lut()[nnmeter_key(Block("transds", 14, 48, 96, 2, expand=4))]
    assert model.predict([ours]).flag == ""


def test_a_shipped_or_existing_name_needs_force(lut: Path, tmp_path: Path) -> None:
    folder = tmp_path / "tables"
    for name in ("pixel6", "host"):
        with pytest.raises(LatencyError, match=f"{name!r} is a target nas ships.*--force"):
            import_table(lut, name, directory=folder)
    assert not folder.exists() or list(folder.iterdir()) == []
    import_table(lut, "phone", directory=folder)
    with pytest.raises(LatencyError, match="already exists.*--force"):
        import_table(lut, "phone", directory=folder)
    import_table(lut, "phone", directory=folder, force=True)
    path, _ = import_table(lut, "pixel6", directory=folder, force=True)
    assert read_table(path)["provenance"] == "imported"


@pytest.mark.parametrize(("content", "message"), [
    ("not json at all", "not a JSON file"),
    ("[1, 2, 3]", "must be a JSON object of key -> milliseconds"),
    ('{"conv_28_16_16_3_1_relu_3_se": 1.0}', "malformed nn-Meter conv key"),
    ('{"format_version": 1, "target": "host"}', "unknown nn-Meter block key 'format_version'"),
    ('{"transattn_14_64_hard_swish_2_ln": -1}', "latency must be a positive number"),
    ("{}", "no block entries"),
])
def test_a_file_in_the_wrong_format_is_one_line_and_changes_nothing(lut: Path, tmp_path: Path, content: str,
                                                                   message: str) -> None:
    import_table(lut, "phone", directory=tmp_path)
    before = (tmp_path / "phone.json").read_text()
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    with pytest.raises(LatencyError, match=message) as info:
        import_table(bad, "phone", directory=tmp_path, force=True)
    assert "\n" not in str(info.value)
    assert (tmp_path / "phone.json").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.json", "phone.json", "phone_lut.json"]


def test_bad_names_and_formats(lut: Path, tmp_path: Path) -> None:
    with pytest.raises(LatencyError, match="a target name must be"):
        import_table(lut, "../escape", directory=tmp_path)
    with pytest.raises(LatencyError, match="--format: must be one of nnmeter-lut"):
        import_table(lut, "phone", fmt="tflite-benchmark", directory=tmp_path)
    with pytest.raises(LatencyError, match="not found"):
        import_table(tmp_path / "absent.json", "phone", directory=tmp_path)


@pytest.mark.skipif(not PIXEL6_DATA.is_file(), reason=f"nn-Meter measurements not found at {PIXEL6_DATA}")
def test_importing_the_real_pixel6_lut(tmp_path: Path) -> None:
    raw = json.loads(PIXEL6_DATA.read_text())
    import_table(PIXEL6_DATA, "pixel6-lut", directory=tmp_path)
    model = load_target("pixel6-lut", tmp_path)
    from nas.latency.fitted import parse_nnmeter_key

    for key in list(raw)[::997]:
        prediction = model.predict([parse_nnmeter_key(key)])
        assert prediction.flag == "" and prediction.ms == raw[key]
    held = model.summary()["headline"]
    assert held["exact_entries"] == len(raw) and held["fallback_heldout_within_10pct"] >= 0.97


def test_cli_import_and_list(workspace, lut: Path) -> None:
    out = workspace.run_json("latency", "import", str(lut), "--format", "nnmeter-lut", "--target", "phone")
    assert out["entries"] == len(synthetic_lut()) and out["target"] == "phone"
    listed = {t["target"]: t for t in workspace.run_json("targets")}
    assert listed["phone"]["provenance"] == "imported" and listed["phone"]["entries"] == len(synthetic_lut())
    assert "phone: imported" in workspace.run("targets").stdout
    again = workspace.run("latency", "import", str(lut), "--format", "nnmeter-lut", "--target", "phone", check=False)
    assert again.returncode == 2 and "Traceback" not in again.stderr
    assert again.stderr.strip().splitlines()[-1].startswith("error: --target: a table for 'phone' already exists")
    bad = workspace.path / "bad.json"
    bad.write_text("{\"conv\": 1")
    proc = workspace.run("latency", "import", str(bad), "--format", "nnmeter-lut", "--target", "phone", "--force",
                         check=False)
    assert proc.returncode == 2 and "not a JSON file" in proc.stderr and "Traceback" not in proc.stderr
    assert read_table(workspace.path / "latency_tables" / "phone.json")["provenance"] == "imported"


def _shipped_tables() -> list[Path]:
    """The tables the repository ships: git-tracked ones (a local, ignored host.json is not shipped)."""
    listed = subprocess.run(["git", "ls-files", "latency_tables"], cwd=REPO, capture_output=True, text=True)
    if listed.returncode != 0:
        return sorted((REPO / "latency_tables").glob("*"))
    return [REPO / line for line in listed.stdout.splitlines()]


def test_the_repository_tables_hold_no_measured_keys() -> None:
    """No nn-Meter key text in a shipped table. An MPC table's entries are our own measured pieces (a conv
    block's piece key is `block:` + our block key, whose kind may share a name with nn-Meter's, e.g. transds):
    every key must be one, and the rest of the table is checked like any other."""
    from nas.mpc.pieces import Piece

    shipped = _shipped_tables()
    assert shipped
    for path in shipped:
        data = json.loads(path.read_text())
        if data.get("cost_model") == "mpc":
            for key in data.pop("entries"):
                Piece.from_key(key)  # raises on anything that is not one of our pieces
        text = json.dumps(data)
        assert not [s for s in FORBIDDEN_IN_TABLE if s in text], path
