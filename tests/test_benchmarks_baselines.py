"""benchmarks/baselines.py: its MAC count follows nas's convention, its families match issue 8's table, the reach
rule, training and plotting run (seconds; the benchmark itself is not a test)."""

from __future__ import annotations

import json
import random
import shutil
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import baselines  # noqa: E402
from benchmarks.plot import Panel, Series, _pillow  # noqa: E402
from nas import static_model  # noqa: E402
from nas.space import SearchSpace  # noqa: E402
from nas.spec import load_spec  # noqa: E402


def _quickstart_space() -> SearchSpace:
    return SearchSpace.from_spec(load_spec(ROOT / "search_spaces" / "quickstart.yaml"), 1, 10)


def test_macs_and_params_follow_nas_convention():
    space = _quickstart_space()
    rng = random.Random(0)
    for arch in [space.smallest(), space.largest(), space.sample(rng)]:
        net = static_model.build(space.describe(arch))
        assert baselines.count_macs(net, arch.resolution) == space.flops(arch)
        assert baselines.count_params(net) == space.params(arch)


@pytest.mark.parametrize(("widths", "macs", "params"), [
    ((8, 16, 16, 32, 48), 1_181_280, 22_690),  # issue 8: 1.18 M MACs, 22.7 k params
    ((12, 16, 24, 32, 64), 1_734_976, 31_582),  # 1.73 M, 31.6 k
    ((24, 32, 48, 64, 96), 6_474_048, 105_394),  # 6.47 M, 105 k
])
def test_plain_cnn_matches_the_issue_table(widths, macs, params):
    net = baselines.plain_cnn(widths)
    assert baselines.count_macs(net) == macs
    assert baselines.count_params(net) == params
    # by hand: 3x3 convs at 28, 14, 14, 7, 4 px, plus the classifier
    sides, cin, by_hand = (28, 14, 14, 7, 4), 1, 10 * widths[-1]
    for side, width in zip(sides, widths, strict=True):
        by_hand += side * side * 9 * cin * width
        cin = width
    assert by_hand == macs


def test_every_baseline_runs_and_is_counted():
    names = [b.name for b in baselines.BASELINES]
    assert len(set(names)) == len(names) and set(baselines.QUICK_BASELINES) <= set(names)
    families = {b.family for b in baselines.BASELINES}
    assert families == {"plain CNN", "MobileNetV2"}
    for b in baselines.BASELINES:
        net = b.build().eval()
        assert net(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
        assert 0.5e6 < baselines.count_macs(net) < 10e6


def test_mobilenet_v2_residuals_only_where_shapes_allow():
    net = baselines.mobilenet_v2(0.5)
    blocks = [m for m in net.modules() if isinstance(m, baselines.InvertedResidual)]
    assert len(blocks) == sum(n for _, _, n, _ in baselines.MBV2_STAGES)
    # stride 1 and the same width: the t=1 block after the 8-wide stem, and the second block of each stage
    assert [b.residual for b in blocks] == [True, False, True, False, True, False, True]


def test_reach_rule():
    base = {"macs": 1_000_000, "test_accuracy": 0.889}
    front = [{"name": "c1", "macs": 1_000_000, "deploy_accuracy": 0.886},  # exactly 0.3 points below: reaches
             {"name": "c2", "macs": 900_000, "deploy_accuracy": 0.8859}]  # fewer MACs, just too inaccurate
    assert baselines.reached_by(base, front) == "c1"
    assert baselines.reached_by(base, front[1:]) is None
    assert baselines.reached_by({**base, "macs": 999_999}, front) is None  # more MACs than the baseline
    assert baselines.reached_by(base, [{"name": "c3", "macs": 1, "deploy_accuracy": None}]) is None


def test_train_and_evaluate_on_a_few_images():
    torch.manual_seed(0)
    images, labels = torch.randn(64, 1, 28, 28), torch.randint(0, 10, (64,))
    net = baselines.plain_cnn((8, 8, 8, 8, 8))
    before = [p.detach().clone() for p in net.parameters()]
    seconds = baselines.train_from_scratch(net, images, labels, epochs=1)
    assert seconds >= 0 and any(not torch.equal(a, p) for a, p in zip(before, net.parameters(), strict=True))
    assert 0.0 <= baselines.evaluate(net, images, labels) <= 1.0


def test_load_exported_reads_an_export_folder(tmp_path):
    space = _quickstart_space()
    arch = space.smallest()
    network = space.describe(arch)
    model = static_model.build(network).eval()
    shutil.copyfile(static_model.__file__, tmp_path / "model.py")
    (tmp_path / "network.json").write_text(json.dumps(network))
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    loaded = baselines.load_export(tmp_path)
    x = torch.randn(1, 1, arch.resolution, arch.resolution)
    with torch.inference_mode():
        assert torch.equal(loaded(x), model(x))


def test_markdown_and_pillow_plot(tmp_path):
    rows = [{"name": "cnn_a", "family": "plain CNN", "macs": 1_181_280, "params": 22_690, "epochs": 1,
             "train_images": 9000, "train_s": 5.0, "test_accuracy": 0.72, "host_ms": 0.3, "host_warm_ms": 0.25,
             "reached_by": None}]
    front = [{"name": "c7", "macs": 935_904, "params": 32_530, "test_accuracy": 0.7, "finetuned_test_accuracy": 0.74,
              "host_ms": 0.9}]
    table = baselines.markdown(rows, front)
    assert "| cnn_a (plain CNN) | 1.18 M | 22.7 k |" in table and "| 0.300 / 0.250 |" in table
    assert "| front c7 | 0.94 M | 32.5 k |" in table and "| 74.00% | 0.900 |" in table
    path = tmp_path / "plot.png"
    panels = [Panel("MACs (millions)", "test accuracy (%)", log_x=True), Panel("ms", "test accuracy (%)")]
    _pillow(path, "title", panels, [Series("cnn", [[(1.18, 72.0), (1.73, 74.0)], [(0.3, 72.0), (0.4, 74.0)]]),
                                    Series("front", [[(0.94, 70.0)], [(0.9, 70.0)]], "#d62728", "D", labels=["c7"])])
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
