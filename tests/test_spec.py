from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from nas.errors import SpecError
from nas.spec import MAX_ERROR_LINES, MAX_SEED, MAX_SPEC_BYTES, load_spec, parse_spec

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
        (("space", "stages", 3, "channels"), [48, 50], "multiple of head_dim (16)"),
        (("data", "val_fraction"), 1.5, "data.val_fraction: Input should be less than 1"),
        (("search", "engine"), "nsga3", "search.engine: Input should be"),
        (("search", "population"), 500, "search.population (500) must be <= search.candidates (60)"),
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


# ---- bounded input: every value has an upper bound, every file a size, every message a length ----------------
def _set(raw: dict, path: tuple, value: object) -> dict:
    node = raw
    for key in path[:-1]:
        node = node.setdefault(key, {}) if isinstance(key, str) else node[key]
    node[path[-1]] = value
    return raw


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        (("space", "stages", 0, "depth"), [1, 10000], "space.stages[0].depth.max: Input should be less than or equal "
                                                       "to 64 (got 10000)"),
        (("space", "resolution"), [28, 100000], "space.resolution[1]: Input should be less than or equal to 4096"),
        (("deploy", "resolution"), 5000, "deploy.resolution: Input should be less than or equal to 4096"),
        (("space", "stem", "channels"), [16, 20000], "space.stem.channels[1]: Input should be less than or equal to "
                                                     "16384"),
        (("space", "stages", 1, "channels"), [10**6], "space.stages[1].channels[0]: Input should be less than or "
                                                      "equal to 16384"),
        (("space", "head", "channels"), [10**9], "space.head.channels[0]: Input should be less than or equal to 16384"),
        (("space", "stages", 0, "expand"), [2, 65], "space.stages[0].expand[1]: Input should be less than or equal "
                                                    "to 64"),
        (("space", "stages", 3, "mlp_ratio"), [1000], "space.stages[3].mlp_ratio[0]: Input should be less than or "
                                                      "equal to 64"),
        (("space", "stages", 3, "v_scale"), [100], "space.stages[3].v_scale[0]: Input should be less than or equal "
                                                   "to 64"),
        (("space", "stages", 3, "head_dim"), 32768, "space.stages[3].head_dim: Input should be less than or equal to "
                                                    "16384"),
        (("train", "epochs"), 10**9, "train.epochs: Input should be less than or equal to 100000"),
        (("train", "warmup_steps"), 10**12, "train.warmup_steps: Input should be less than or equal to 1000000000"),
        (("train", "threads"), 5000, "train.threads: Input should be less than or equal to 1024"),
        (("train", "num_random"), 10**6, "train.num_random: Input should be less than or equal to 64"),
        (("data", "batch_size"), 10**7, "data.batch_size: Input should be less than or equal to 65536"),
        (("data", "limit"), 2**63, "data.limit: Input should be less than or equal to 2147483647"),
        (("search", "candidates"), 10**30, "search.candidates: Input should be less than or equal to 1000000"),
        (("search", "population"), 10**7, "search.population: Input should be less than or equal to 1000000"),
        (("search", "workers"), 4096, "search.workers: Input should be less than or equal to 1024"),
        (("search", "val_images"), 2**40, "search.val_images: Input should be less than or equal to 2147483647"),
        (("search", "seed"), -1, "search.seed: Input should be greater than or equal to 0 (got -1)"),
        (("train", "seed"), 2**32, "train.seed: Input should be less than or equal to 4294967295"),
        (("data", "seed"), -5, "data.seed: Input should be greater than or equal to 0"),
        (("train", "optimizer", "lr"), float("inf"), "train.optimizer.lr: Input should be a finite number"),
        (("constraints",), [{"params": {"max": float("nan")}}], "constraints[0].params.max: Input should be a finite "
                                                                "number"),
    ],
)
def test_values_beyond_their_upper_bound(path: tuple, value: object, expected: str) -> None:
    message = _error(_set(_quickstart(), path, value))
    assert expected in message and message.startswith("space.yaml: ")
    assert len(message.splitlines()) == 1


def test_bounds_are_inclusive() -> None:
    raw = _quickstart()
    for path, value in [(("space", "stages", 0, "depth"), [1, 64]), (("search", "seed"), MAX_SEED),
                        (("train", "seed"), 0), (("data", "seed"), MAX_SEED), (("search", "workers"), 1024),
                        (("space", "resolution"), [28, 4096]), (("train", "epochs"), 100_000)]:
        _set(raw, path, value)
    spec = parse_spec(raw, "space.yaml")
    assert spec.search.seed == MAX_SEED and spec.space.stages[0].depth.max == 64


def test_a_spec_file_that_is_not_utf8_text(tmp_path: Path) -> None:
    latin = tmp_path / "latin.yaml"
    latin.write_bytes("version: 1\nname: café\n".encode("latin-1"))
    with pytest.raises(SpecError, match=r"latin.yaml: not UTF-8 text \(byte 0xe9 at offset 20\); a spec is a YAML"):
        load_spec(latin)
    image = tmp_path / "image.yaml"
    image.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    with pytest.raises(SpecError, match=r"image.yaml: not UTF-8 text \(byte 0x89 at offset 0\)"):
        load_spec(image)
    nul = tmp_path / "nul.yaml"  # valid UTF-8, but control characters
    nul.write_bytes(b"version: 1\nname: \x00\x01\x02\n")
    with pytest.raises(SpecError, match=r"nul.yaml: malformed YAML: .*special characters are not allowed"):
        load_spec(nul)
    huge = tmp_path / "huge.yaml"
    huge.write_text("version: 1\n# " + "x" * MAX_SPEC_BYTES + "\n")
    with pytest.raises(SpecError, match=r"huge.yaml: larger than 1,000,000 bytes"):
        load_spec(huge)


def _laughs(levels: int, name: str = "name") -> str:
    lines = ["version: 1", 'a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, levels)]
    return "\n".join(lines + [f"{name}: *a{levels - 1}", ""])


def test_an_alias_bomb_is_refused_in_one_short_line(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(_laughs(9))  # 9^9 = 387 million strings once expanded
    assert bomb.stat().st_size < 700
    with pytest.raises(SpecError) as info:
        load_spec(bomb)
    assert str(info.value) == (f"{bomb}: the document expands to more than 100,000 values (YAML aliases multiply "
                               "them); a spec holds a few hundred")


def test_recursive_and_deeply_nested_documents(tmp_path: Path) -> None:
    recursive = tmp_path / "recursive.yaml"
    recursive.write_text("version: 1\nname: &a [*a]\n")
    with pytest.raises(SpecError, match="recursive.yaml: line 2: a YAML alias refers to a value that contains it"):
        load_spec(recursive)
    for depth, match in ((40, "nests 41 levels deep; a spec nests at most 32"), (5000, "nests too deep")):
        deep = tmp_path / f"deep{depth}.yaml"
        deep.write_text("version: 1\nname: " + "[" * depth + "]" * depth + "\n")
        with pytest.raises(SpecError, match=match):
            load_spec(deep)


def test_error_messages_quote_at_most_about_200_characters(tmp_path: Path) -> None:
    shared = tmp_path / "shared.yaml"  # under the expansion limit, but each bad value is thousands of strings long
    shared.write_text(_laughs(4) + "space: {resolution: *a3, stem: {channels: *a2}, stages: *a3, head: *a3}\n")
    with pytest.raises(SpecError) as info:
        load_spec(shared)
    lines = str(info.value).splitlines()
    assert len(lines) == MAX_ERROR_LINES + 1 and lines[-1] == f"{shared}: ... and 14 more errors"
    assert all(len(line) < len(str(shared)) + 300 for line in lines), max(lines, key=len)
    assert lines[0].startswith(f"{shared}: name: Input should be a valid string (got [[[['lol', 'lol'")
    assert lines[0].endswith("...)")
    raw = _quickstart()
    raw["x" * 5000] = 1
    raw["train"]["sampler"] = "y" * 5000
    raw["version"] = 1
    lines = _error(raw).splitlines()
    assert all(len(line) < 300 for line in lines), max(lines, key=len)
    assert any(line.startswith("space.yaml: train.sampler: unknown sampler 'yyyyy") for line in lines)
    assert any("unknown key 'xxxxx" in line for line in lines)
    raw = _quickstart()
    raw["version"] = "v" * 5000
    assert len(_error(raw)) < 300


def test_the_cli_refuses_bad_files_with_exit_code_2(workspace, tmp_path: Path) -> None:
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(bytes(range(256)))
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(_laughs(9))
    for path in (binary, bomb):
        proc = workspace.run("validate", str(path), check=False)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr
        assert len(proc.stderr.splitlines()) == 1 and proc.stderr.startswith(f"error: {path}: ")


def _mpc_vit() -> dict:
    return yaml.safe_load((Path(__file__).parents[1] / "search_spaces" / "mpc_vit.yaml").read_text())


@pytest.mark.parametrize("change, expected", [
    ({"attention": ["softmax", "cubic"]},
     "space.stages[0].attention: unknown attention kind 'cubic' (known: quad, relu_softmax, scaling, softmax)"),
    ({"ffn_act": ["tanh"]}, "space.stages[0].ffn_act: unknown activation 'tanh' (known: gelu, hswish, relu)"),
    ({"channels": [16, 32], "head_dim": 16},
     "space.stages[0]: attention_per_head: a per-head choice needs at least 2 heads, but channels 16 / head_dim 16"),
    ({"channels": [272], "head_dim": 16}, "at most 16 heads can be chosen per head"),
])
def test_bad_attention_choices_name_the_field(change: dict, expected: str) -> None:
    raw = _mpc_vit()
    raw["space"]["stages"][0].update(change)
    assert expected in _error(raw)


def test_attention_choices_are_kept_cheapest_first() -> None:
    stage = parse_spec(_mpc_vit(), "mpc_vit.yaml").space.stages[0]
    assert stage.attention == ["scaling", "quad", "relu_softmax", "softmax"]
    assert stage.ffn_act == ["relu", "hswish", "gelu"]


def test_a_preset_with_per_head_kinds_that_do_not_fit_its_heads() -> None:
    raw = _mpc_vit()
    layer = {"mlp_ratio": 2, "v_scale": 1, "attention": ["softmax", "scaling", "softmax"], "act": "relu"}
    raw["presets"] = {"mine": {"resolution": 28, "stem": 16, "head": 64,
                               "stages": [{"channels": 64, "layers": [layer, layer]}]}}
    assert "presets: mine: arch is not in the space: stages[0].layers[0].attention (one kind per head: 4 heads at " \
           "64 channels, got 3)" in _error(raw)
    layer["attention"] = ["softmax", "scaling", "softmax", "scaling"]
    parse_spec(raw, "mpc_vit.yaml")  # fits: 4 heads
    layer["attention"] = "softmax"
    assert "one kind per head" in _error(raw)
