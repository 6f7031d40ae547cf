"""benchmarks/mpc.py: the fixed-dims space and its uniform archs, picking under the latency bar, the MPCViT budget
at the bar, the bar's verdict, the McNemar counts and the report's keys, on an in-memory MPC table with made-up
costs (seconds; the benchmark itself is not a test)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import mpc  # noqa: E402
from nas.latency.mpc import PROFILES, MPCTableModel  # noqa: E402
from nas.mpc.pieces import pieces_of  # noqa: E402
from nas.space import SearchSpace, TransformerLayer  # noqa: E402
from nas.spec import load_spec  # noqa: E402

# Made-up (rounds, bytes per element) per attention kind and activation: only the order matters here.
CORE = {"softmax": (40, 30), "relu_softmax": (20, 12), "quad": (12, 8), "scaling": (2, 2)}
ACT = {"gelu": (30, 20), "hswish": (10, 6), "relu": (6, 4)}


def fake_table(space: SearchSpace, profile: str) -> MPCTableModel:
    entries = {}
    for block in space.distinct_blocks():
        for piece in pieces_of(block):
            if piece.kind == "attn_core":
                (rounds, per), count = CORE[piece.name], piece.heads * piece.tokens**2
            elif piece.kind == "act":
                (rounds, per), count = ACT[piece.name], piece.tokens * piece.channels
            else:
                rounds, per, count = 4, 2, 1000
            entries[piece.key()] = {"rounds": rounds, "bytes": per * count, "compute_ms": 1.0}
    validation = {"n": 10, "date": "2026-11-29", "latency_err_pct": {"wan": {"mean_abs": 1.5, "max_abs": 3.0}},
                  "rounds_err_pct": {"mean_abs": 0.0}, "bytes_err_pct": {"mean_abs": 0.1},
                  "compute_err_pct": {"mean_abs": 4.0}}
    table = {"profile": PROFILES[profile].to_dict(), "entries": entries, "validation": validation}
    return MPCTableModel(f"mpc-{profile}", table, Path(f"mpc-{profile}.json"))


@pytest.fixture(scope="module")
def space() -> SearchSpace:
    return mpc.bench_space(mpc.bench_spec("quick"))


def test_modes_and_spec(space):
    quick, full = mpc.bench_spec("quick"), mpc.bench_spec("full")
    assert quick.data.limit == mpc.MODES["quick"]["limit"] and quick.train.epochs == mpc.MODES["quick"]["epochs"]
    assert full.data.limit is None and full.train.epochs == mpc.MODES["full"]["epochs"]
    assert quick.space == full.space and quick.train.sampler.name == "sandwich"
    # only the attention of each head and the FFN activation vary: 4 kinds x 12 heads, 3 activations x 3 FFNs
    assert space.count() == 4**12 * 3**3
    varying = [name for name, choices in space.dimensions() if len(choices) > 1]
    assert all(name.endswith((".attention", ".act")) for name in varying) and len(varying) == 15


def test_uniform_archs_have_the_largest_dims_of_mpc_vit(space):
    mpc_vit = SearchSpace.from_spec(load_spec(ROOT / "search_spaces" / "mpc_vit.yaml"), 1, 10)
    largest = mpc_vit.largest()
    assert mpc.uniform_arch(space, "softmax") == largest == space.largest()  # softmax and gelu cost the most
    assert mpc.UNIFORM[mpc.BASELINE] == ("softmax", "gelu")
    for name, (kind, act) in mpc.UNIFORM.items():
        arch = mpc.uniform_arch(space, kind, act)
        mpc_vit.validate_arch(arch)
        assert (arch.stem, arch.head, arch.stages[0].channels, arch.stages[0].depth) == (24, 64, 64, 3), name
        layers = arch.stages[0].layers
        assert all(isinstance(layer, TransformerLayer) and layer.attention == (kind,) * 4 and layer.act == act
                   for layer in layers)
        assert mpc.head_counts(arch) == {kind: 12} and mpc.ffn_acts(arch) == [act] * 3
    assert mpc.ffn_acts(mpc.uniform_arch(space, "scaling")) == ["gelu"] * 3
    # the distilled control is the space's cheapest network
    assert mpc.uniform_arch(space, *mpc.HAND_STUDENTS["all_scaling_relu_distilled"]) == space.smallest()


def test_pick_under_bar():
    rows = [{"accuracy": 0.90, "mpc_wan_ms": 100.0}, {"accuracy": 0.85, "mpc_wan_ms": 49.0},
            {"accuracy": 0.88, "mpc_wan_ms": 50.0}, {"accuracy": 0.85, "mpc_wan_ms": 40.0},
            {"accuracy": 0.80, "mpc_wan_ms": 30.0}]
    assert mpc.pick_under_bar(rows, 50.0) == 3  # 0.88 sits at the bar, not under it; 0.85 tie -> the faster
    assert mpc.pick_under_bar(rows, 50.1) == 2
    assert mpc.pick_under_bar(rows, 1000.0) == 0
    assert mpc.pick_under_bar(rows, 30.0) is None
    assert mpc.pick_under_bar([], 10.0) is None


def test_bar_budget():
    budget = mpc.bar_budget(60.0, 160.0, 100.0)
    assert budget == pytest.approx(0.4, abs=1e-5) and 60.0 + budget * 100.0 + 1e-9 < 100.0  # binarise adds 1e-9 ms
    assert mpc.bar_budget(60.0, 160.0, 50.0) is None  # even all-cheaper is over the bar
    assert mpc.bar_budget(60.0, 160.0, 60.0) is None  # ... or at it
    assert mpc.bar_budget(60.0, 160.0, 200.0) == 1.0  # all-costlier is under it
    assert mpc.bar_budget(60.0, 60.0, 100.0) == 1.0


def test_judge_bar():
    base = {"accuracy": 0.90, "mpc_wan_ms": 1000.0}
    met = mpc.judge_bar(base, {"accuracy": 0.8905, "mpc_wan_ms": 499.0})
    assert met["met"] and met["accuracy_drop_pts"] == pytest.approx(0.95) and met["latency_bar_ms"] == 500.0
    slow = mpc.judge_bar(base, {"accuracy": 0.91, "mpc_wan_ms": 500.0})
    assert not slow["met"] and slow["accuracy_met"] and not slow["latency_met"]
    short = mpc.judge_bar(base, {"accuracy": 0.875, "mpc_wan_ms": 300.0})
    assert not short["met"] and short["short_by_pts"] == pytest.approx(1.5)
    assert mpc.judge_bar(base, None) == {**mpc.judge_bar(base, None), "met": False}


def test_mcnemar_vs():
    base = [True, True, False, False, True]
    other = [True, False, True, True, True]
    test = mpc.mcnemar_vs(base, other)
    assert (test["b"], test["c"], test["images"]) == (2, 1, 5)
    assert test["accuracy_delta_pts"] == pytest.approx(20.0) and test["p_value"] == 1.0
    with pytest.raises(ValueError):
        mpc.mcnemar_vs(base, other[:3])


def test_attention_costs_come_from_the_table(space):
    wan = fake_table(space, "wan")
    arch = mpc.uniform_arch(space, "softmax")
    layers = mpc.attention_layers(wan, space, arch)
    assert len(layers) == 3 and {layer["attention"] for layer in layers} == {"softmax"}
    attn = next(b for b in space.blocks(arch) if b.kind == "attn")
    assert layers[0]["rounds"] == sum(wan.entries[p.key()].rounds for p in pieces_of(attn))
    cores = mpc.attention_cores(wan, space)
    assert list(cores) == list(mpc.KINDS)
    assert cores["softmax"]["bytes"] == 30 * 4 * 49**2 and cores["scaling"]["rounds"] == 2
    single = mpc.single_head(wan)  # no 64-token cores in this space's table: its 49-token ones
    assert single["tokens"] == 49 and set(single["cores"]) == set(mpc.KINDS)
    assert single["cores"]["softmax"]["bytes"] == 30 * 49**2
    assert mpc.table_error(wan)["latency_wan"]["mean_abs"] == 1.5


def test_summary_keys_and_json(space):
    wan, lan = fake_table(space, "wan"), fake_table(space, "lan")
    archs = {name: mpc.uniform_arch(space, *choice) for name, choice in mpc.UNIFORM.items()}
    archs["searched_nsga2"] = mpc.uniform_arch(space, "scaling", "relu")
    base = [True] * 8 + [False] * 2

    def job(correct, val, distilled=False):
        return {"accuracy": sum(correct) / len(correct), "val_accuracy": val, "correct": correct,
                "distilled": distilled, "train_s": 1.0, "train_cpu_s": 1.0, "losses": [1.0]}

    trained = {"all_softmax": job(base, 0.8), "all_scaling": job([True] * 7 + [False] * 3, 0.7),
               "searched_nsga2": job([True] * 8 + [False] * 2, 0.79, True)}
    summary = mpc.summarise("quick", space, wan, lan, trained, archs, None, None, None, {"wall_s": 1.0})
    for key in ("rounds", "bytes", "softmax_baseline", "best_searched", "table_vs_network_error_pct", "variants",
                "bar", "attention_core", "machine"):
        assert key in summary, key
    assert set(summary["rounds"]) == set(archs) and set(summary["bytes"]) == set(archs)
    assert summary["rounds"]["all_softmax"] > summary["rounds"]["all_relu_softmax"] > summary["rounds"]["all_scaling"]
    assert set(summary["softmax_baseline"]) >= {"accuracy", "mpc_wan_ms"}
    best = summary["best_searched"]
    assert best["variant"] == "searched_nsga2" and set(best) >= {"accuracy", "mpc_wan_ms"}
    assert best["mpc_wan_ms"] < summary["softmax_baseline"]["mpc_wan_ms"]
    assert summary["variants"]["searched_nsga2"]["mcnemar"]["b"] == 0
    assert "accuracy" not in summary["variants"]["all_quad"]  # not trained: its table figures only
    assert summary["bar"]["accuracy_drop_pts"] == 0.0
    json.loads(json.dumps(summary))  # one JSON line
