"""ElasticViT's own space (`search_spaces/elasticvit.yaml`), its nine published models as presets, and
`nas arch`, which prices any arch without searching."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from torch.utils.flop_counter import FlopCounterMode

from nas import static_model
from nas.errors import NASError, SpecError
from nas.latency.fitted import nnmeter_key
from nas.latency.targets import load_target, measured_form
from nas.pricing import price, price_arch
from nas.space import ArchConfig, SearchSpace
from nas.spec import load_spec, parse_spec

ROOT = Path(__file__).resolve().parents[1]
ELASTICVIT = ROOT / "search_spaces" / "elasticvit.yaml"
SHIPPED_TABLES = ROOT / "latency_tables"
NAMES = ["T1", "T2", "S1", "S2", "M", "L1", "L1.5", "L2", "L3"]
# ElasticViT's own FLOPs count of each preset (Moonlit's `compute_flops` of models/model.py, cnn.py and
# transformer.py, evaluated on these archs), in millions. Ours counts every multiply-accumulate torch runs,
# ElasticViT's leaves some out (the 9 taps of the depthwise conv on V, the downsample's squeeze-excite, ...)
# and adds the softmax: the two agree within 4%.
ELASTICVIT_MFLOPS = {"T1": 62.9, "T2": 117.9, "S1": 217.6, "S2": 315.2, "M": 412.3, "L1": 517.1, "L1.5": 618.8,
                     "L2": 704.1, "L3": 815.4}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def spec():
    return load_spec(ELASTICVIT)


@pytest.fixture(scope="module")
def space(spec) -> SearchSpace:
    return SearchSpace.from_spec(spec, spec.data.channels, spec.data.classes)


@pytest.fixture(scope="module")
def pixel6():
    return load_target("pixel6", SHIPPED_TABLES)


def _preset(spec, name: str) -> ArchConfig:
    return ArchConfig.from_dict(spec.presets[name].arch_dict())


def test_the_elasticvit_space_and_its_presets(spec, space: SearchSpace) -> None:
    assert list(spec.presets) == NAMES
    assert (spec.data.channels, spec.data.classes) == (3, 1000) and spec.space.resolution == [128, 160, 176, 192,
                                                                                                224, 256]
    assert [s.type for s in spec.space.stages] == ["conv"] * 3 + ["transformer"] * 4
    for name in NAMES:
        arch = _preset(spec, name)
        space.validate_arch(arch)
        assert arch.head == 6 * arch.stages[-1].channels and arch.final == 1984
        assert arch.stem == arch.stages[0].channels  # ElasticViT ties them (the schema cannot say so yet)
    s1 = _preset(spec, "S1")  # spot-check one conversion against Moonlit's tuple
    assert s1.resolution == 192 and [s.channels for s in s1.stages] == [16, 24, 40, 64, 96, 192, 272]
    assert [s.depth for s in s1.stages] == [1, 3, 3, 2, 2, 2, 2]
    assert [layer.mlp_ratio for layer in s1.stages[6].layers] == [4, 4]


def test_presets_are_built_as_priced_and_counted_as_torch_counts(spec, space: SearchSpace) -> None:
    from test_supernet import built_blocks  # the module walk of tests/test_supernet.py

    for name in NAMES:
        arch = _preset(spec, name)
        net = static_model.build(space.describe(arch)).eval()
        assert built_blocks(net) == space.blocks(arch, arch.resolution), name
        assert sum(p.numel() for p in net.parameters()) == space.params(arch), name
        if name in ("T1", "S1"):
            with FlopCounterMode(display=False) as counter, torch.no_grad():
                net(torch.randn(1, 3, arch.resolution, arch.resolution))
            assert counter.get_total_flops() == 2 * space.flops(arch), name
        ours = space.flops(arch) / 1e6
        assert abs(ours / ELASTICVIT_MFLOPS[name] - 1) < 0.04, (name, ours)


def test_pixel6_prices_what_it_measured(spec, space: SearchSpace, pixel6) -> None:
    """Every block of every preset is a block nn-Meter measured on the Pixel 6 (its key form exists) and lies
    inside the fitted range: no prediction is flagged, and the published order is the latency order."""
    latencies = []
    for name in NAMES:
        arch = _preset(spec, name)
        blocks = space.blocks(arch)
        for block in blocks:
            nnmeter_key(measured_form(block))  # raises for a block the phone's key format cannot express
        prediction = pixel6.predict(blocks)
        assert prediction.flag == "", name
        latencies.append(prediction.ms)
    assert latencies == sorted(latencies) and 3 < latencies[0] < latencies[-1] < 80


def test_price_reports_params_flops_and_latency_per_target(spec, space: SearchSpace, pixel6, monkeypatch) -> None:
    monkeypatch.setenv("NAS_LATENCY_TABLES", str(SHIPPED_TABLES))
    result = price_arch(ELASTICVIT, ["pixel6"], preset="T1")
    arch = _preset(spec, "T1")
    assert result["preset"] == "T1" and result["arch"] == arch.to_dict() and result["arch_hash"] == arch.arch_hash()
    assert (result["params"], result["flops"]) == (space.params(arch), space.flops(arch))
    assert result["flags"] == {"pixel6": ""} and result["latency_ms"]["pixel6"] == pixel6.predict(space.blocks(arch)).ms
    assert result["out_of_range_blocks"] == {"pixel6": []}
    assert (result["resolution"], result["deploy_resolution"], result["in_channels"], result["num_classes"]) == \
        (128, 128, 3, 1000)
    inline = price_arch(ELASTICVIT, ["pixel6"], arch=json.dumps(arch.to_dict()))
    assert {**inline, "preset": "T1"} == result
    # A 1-channel 28 px space priced for the phone: flagged, and the blocks outside its fitted range named.
    quick = load_spec(ROOT / "search_spaces" / "quickstart.yaml")
    small = SearchSpace.from_spec(quick, 1, 10).smallest()
    priced = price(quick, small, ["pixel6"], 1, 10)
    blocks = SearchSpace.from_spec(quick, 1, 10).blocks(small)
    expected = [b.key() for b in blocks if not pixel6.predict_block(b)[1]]
    assert expected and blocks[0].key() in expected  # the stem: one input channel, the phone measured three
    assert priced["flags"] == {"pixel6": "out_of_range"} and priced["out_of_range_blocks"] == {"pixel6": expected}
    outside = arch.to_dict()
    outside["stages"][1]["channels"] = 56
    with pytest.raises(NASError, match=r"--arch: arch is not in the space: stages\[1\].channels 56"):
        price_arch(ELASTICVIT, [], arch=json.dumps(outside))
    with pytest.raises(NASError, match=r"--preset: the spec has no preset 'XL' \(known: T1, T2, S1"):
        price_arch(ELASTICVIT, [], preset="XL")
    with pytest.raises(NASError, match="--preset NAME .* or --arch JSON|FILE, not both"):
        price_arch(ELASTICVIT, [], preset="T1", arch="{}")
    with pytest.raises(NASError, match=r"--arch: stages.0.layers.0.expand: Input should be greater than 0"):
        bad = arch.to_dict()
        bad["stages"][0]["layers"][0]["expand"] = 0
        price_arch(ELASTICVIT, [], arch=json.dumps(bad))
    with pytest.raises(NASError, match="--arch: not valid JSON"):
        price_arch(ELASTICVIT, [], arch="{resolution: 128")
    with pytest.raises(NASError, match="--arch: neither JSON .* nor a readable file"):
        price_arch(ELASTICVIT, [], arch="no/such/arch.json")


def test_nas_arch_command(tmp_path: Path) -> None:
    """`nas arch SPEC --preset NAME --target T --json` prints one object; an arch file (an export's arch.json)
    works the same; a bad preset is one error line and exit code 2."""
    env = {"NAS_LATENCY_TABLES": str(SHIPPED_TABLES), "PATH": "/usr/bin:/bin"}

    def nas(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, str(ROOT / "cli.py"), *args], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=120)

    proc = nas("arch", str(ELASTICVIT), "--preset", "L1.5", "--target", "pixel6", "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert {"params", "flops", "latency_ms", "flags"} <= set(result) and result["flags"] == {"pixel6": ""}
    (tmp_path / "arch.json").write_text(json.dumps(result["arch"]))
    proc = nas("arch", str(ELASTICVIT), "--arch", "arch.json", "--target", "pixel6")
    assert proc.returncode == 0 and f"{result['params']:,} params" in proc.stdout and "pixel6: " in proc.stdout
    proc = nas("arch", str(ELASTICVIT), "--preset", "XL", "--json")
    assert proc.returncode == 2 and proc.stderr.startswith("error: --preset: the spec has no preset 'XL'")


TINY_WITH_PRESETS = """
version: 1
space:
  resolution: [8]
  stem: {channels: [8, 16], stride: 1}
  stages:
    - {type: conv, depth: [1, 2], channels: [8, 16], expand: [2, 3], kernel: [3], stride: 1}
    - {type: transformer, depth: [1, 2], channels: [16, 32], head_dim: 8, mlp_ratio: [2], v_scale: [1, 2]}
  head: {channels: [32, 64]}
data: {dataset: digits}
search: {candidates: 4, population: 2}
presets:
  small: {resolution: 8, stem: 8, head: 32, stages: [{channels: 8, layers: [{expand: 2, kernel: 3}]},
                                                     {channels: 16, layers: [{mlp_ratio: 2, v_scale: 1}]}]}
"""


def _raw() -> dict:
    return yaml.safe_load(TINY_WITH_PRESETS)


@pytest.mark.parametrize(("preset", "message"), [
    ({"stages": [{"channels": 12, "layers": [{"expand": 2, "kernel": 3}]},
                 {"channels": 16, "layers": [{"mlp_ratio": 2, "v_scale": 4}]}]},
     r"presets: odd: arch is not in the space: stages\[0\].channels 12, stages\[1\].layers\[0\]"),
    ({"head": 48}, "presets: odd: arch is not in the space: head 48"),
    ({"final": 96}, r"presets: odd: arch is not in the space: final 96 \(the head has no final layer\)"),
    ({"stages": [{"channels": 8, "layers": [{"expand": 2, "kernel": 3}]}]},
     "presets: odd: arch has 1 stages, the space has 2"),
    ({"stages": [{"channels": 8, "layers": [{"expand": 2}]}, {"channels": 16, "layers": [{"mlp_ratio": 2,
                                                                                          "v_scale": 1}]}]},
     r"presets.odd.stages\[0\].layers\[0\].kernel: required key is missing"),
    ({"colour": "red"}, "presets.odd.colour: unknown key 'colour'"),
])
def test_presets_are_validated_against_the_space(preset: dict, message: str) -> None:
    raw = _raw()
    raw["presets"]["odd"] = {**raw["presets"]["small"], **preset}
    with pytest.raises(SpecError, match=f"tiny: {message}"):
        parse_spec(raw, "tiny")


def test_preset_names_are_plain() -> None:
    raw = _raw()
    raw["presets"]["a/b"] = raw["presets"]["small"]
    with pytest.raises(SpecError, match=re.escape("tiny: presets.a/b.[key]: String should match pattern")):
        parse_spec(raw, "tiny")


def test_nas_validate_lists_the_presets(tmp_path: Path) -> None:
    (tmp_path / "spec.yaml").write_text(TINY_WITH_PRESETS)
    proc = subprocess.run([sys.executable, str(ROOT / "cli.py"), "validate", "spec.yaml"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "presets (members of the space): small" in proc.stdout


def test_declared_data_shape_is_checked_against_the_data() -> None:
    from nas.pipeline import load_context

    raw = _raw()
    raw["data"].update(channels=3, limit=200)
    with pytest.raises(NASError, match=r"data.channels: the spec declares 3, but the data has 1"):
        load_context(parse_spec(raw, "tiny"))
    raw["data"].update(channels=1, classes=10)
    spec = parse_spec(raw, "tiny")
    assert load_context(spec).space.in_channels == 1
    small = ArchConfig.from_dict(spec.presets["small"].arch_dict())
    priced = price(spec, small, [], 1, 10)
    assert priced["params"] == SearchSpace.from_spec(spec, 1, 10).params(small) and priced["latency_ms"] == {}
