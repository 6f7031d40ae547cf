from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from nas.errors import SpecError
from nas.spec import load_spec, parse_spec

ROOT = Path(__file__).resolve().parents[1]


def _quickstart() -> dict:
    return yaml.safe_load((ROOT / "search_spaces" / "quickstart.yaml").read_text())


def _error(raw: object) -> str:
    with pytest.raises(SpecError) as info:
        parse_spec(raw, "space.yaml")
    return str(info.value)


def test_shipped_specs_validate() -> None:
    for path in sorted((ROOT / "search_spaces").glob("*.yaml")):
        spec = load_spec(path)
        assert spec.name
        assert spec.space.stages


def test_round_trip_keeps_hash() -> None:
    spec = parse_spec(_quickstart(), "q.yaml")
    again = parse_spec(spec.to_dict(), "again")
    assert again == spec
    assert again.spec_hash() == spec.spec_hash()


def test_inverted_depth_names_file_field_and_rule() -> None:
    raw = _quickstart()
    raw["space"]["stages"][2]["depth"] = [4, 2]
    assert _error(raw) == "space.yaml: space.stages[2].depth: max (2) must be >= min (4)"


def test_misspelt_key_suggests_the_right_one() -> None:
    raw = _quickstart()
    raw["space"]["stages"][0]["kernal"] = raw["space"]["stages"][0].pop("kernel")
    message = _error(raw)
    assert "space.stages[0].kernal: unknown key 'kernal'; did you mean 'kernel'?" in message
    assert "space.stages[0].kernel: required key is missing" in message


def test_unknown_top_level_section() -> None:
    raw = _quickstart()
    raw["serach"] = {"engine": "nsga2"}
    assert "serach: unknown key 'serach'; did you mean 'search'?" in _error(raw)


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        (("space", "resolution"), [], "space.resolution: List should have at least 1 item"),
        (("space", "stem", "channels"), ["16"], "space.stem.channels[0]: Input should be a valid integer"),
        (("space", "stages", 0, "expand"), [3, 3], "choices must be distinct"),
        (("space", "stages", 2, "channels"), [48, 50], "multiple of head_dim (16)"),
        (("data", "val_fraction"), 1.5, "data.val_fraction: Input should be less than 1"),
        (("search", "engine"), "nsga3", "search.engine: Input should be"),
        (("search", "population"), 500, "search.population (500) must be <= search.candidates (200)"),
        (("data", "dataset"), "folder", "dataset 'folder' needs a `path`"),
    ],
)
def test_bad_values(path: tuple, value: object, expected: str) -> None:
    raw = _quickstart()
    node = raw
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    message = _error(raw)
    assert expected in message
    assert message.startswith("space.yaml: ")


def test_objective_needs_exactly_one_direction() -> None:
    raw = _quickstart()
    raw["objectives"] = [{"maximize": "accuracy", "minimize": "latency"}]
    assert "exactly one of" in _error(raw)


def test_wrong_version_and_non_mapping() -> None:
    raw = _quickstart()
    raw["version"] = 2
    assert _error(raw) == "space.yaml: version: this nas reads spec version 1, but got 2"
    assert "a spec must be a mapping" in _error([1, 2])


def test_malformed_yaml_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nspace: {stem: [1, 2\n")
    with pytest.raises(SpecError, match=r"bad.yaml: line \d+, column \d+: malformed YAML"):
        load_spec(bad)
    with pytest.raises(SpecError, match="nope.yaml: file not found"):
        load_spec(tmp_path / "nope.yaml")


def test_every_error_is_one_line_per_rule() -> None:
    raw = _quickstart()
    raw["space"]["stages"][0]["depth"] = [3, 1]
    raw["data"]["batch_sise"] = 3
    lines = _error(raw).splitlines()
    assert len(lines) == 2
    assert all(line.startswith("space.yaml: ") for line in lines)
