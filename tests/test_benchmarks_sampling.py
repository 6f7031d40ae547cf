"""benchmarks/sampling.py: Spearman's rho, the exact McNemar test, the pooling of per-image correctness, the
gradient-conflict probe on the tiny space, the sampler panel and the report's keys (seconds; the benchmark
itself is not a test)."""

from __future__ import annotations

import math
import random
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import sampling  # noqa: E402
from nas.space import SearchSpace  # noqa: E402
from nas.spec import load_spec  # noqa: E402
from nas.supernet import Supernet  # noqa: E402

TINY = ROOT / "tests" / "specs" / "tiny.yaml"


pytestmark = pytest.mark.usefixtures("one_thread")


# ---- Spearman --------------------------------------------------------------------------------------------
def test_ranks_average_ties():
    assert sampling.ranks([10.0, 30.0, 20.0, 20.0]) == [1.0, 4.0, 2.5, 2.5]
    assert sampling.ranks([1.0, 1.0, 1.0]) == [2.0, 2.0, 2.0]


def test_spearman_known_values():
    assert sampling.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert sampling.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # by hand: ranks x (1, 2, 3), ranks y (1.5, 1.5, 3) -> r = 1.5 / sqrt(2 * 1.5)
    assert sampling.spearman([1, 2, 3], [5, 5, 9]) == pytest.approx(1.5 / math.sqrt(3.0))
    assert math.isnan(sampling.spearman([1, 1, 1], [1, 2, 3]))  # constant side: undefined, as scipy
    assert math.isnan(sampling.spearman([1], [2]))
    with pytest.raises(ValueError):
        sampling.spearman([1, 2], [1, 2, 3])


def test_spearman_matches_scipy_with_ties():
    stats = pytest.importorskip("scipy.stats")
    rng = random.Random(0)
    # the probe's shape: band distances (heavily tied) against cosines, plus ties on both sides
    distances = [j - i for i in range(8) for j in range(i + 1, 8)]
    cosines = [rng.uniform(-0.2, 0.6) for _ in distances]
    cases = [(distances, cosines), (distances, [round(c, 1) for c in cosines])]
    cases += [([rng.randint(0, 4) for _ in range(30)], [rng.randint(0, 6) for _ in range(30)]) for _ in range(5)]
    for x, y in cases:
        assert sampling.spearman(x, y) == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)


# ---- McNemar ---------------------------------------------------------------------------------------------
def test_mcnemar_exact_known_values():
    # b=10, c=2: 2 * (1 + 12 + 66) / 2**12 = 0.03857
    assert sampling.mcnemar_exact(10, 2) == pytest.approx(2 * 79 / 4096)
    assert round(sampling.mcnemar_exact(10, 2), 4) == 0.0386
    assert sampling.mcnemar_exact(2, 10) == sampling.mcnemar_exact(10, 2)
    assert sampling.mcnemar_exact(7, 7) == 1.0
    assert sampling.mcnemar_exact(0, 0) == 1.0
    assert sampling.mcnemar_exact(0, 5) == pytest.approx(2 / 32)
    assert sampling.mcnemar_exact(6, 5) == 1.0  # a two-sided p-value never exceeds 1
    with pytest.raises(ValueError):
        sampling.mcnemar_exact(-1, 3)


def test_mcnemar_exact_matches_scipy_binomtest():
    stats = pytest.importorskip("scipy.stats")
    for b, c in [(10, 2), (3, 9), (25, 40), (120, 95), (1500, 1380), (4, 0)]:
        expected = stats.binomtest(b, b + c, 0.5, alternative="two-sided").pvalue
        assert sampling.mcnemar_exact(b, c) == pytest.approx(expected, rel=1e-9)


# ---- pooling per-image correctness -----------------------------------------------------------------------
def test_pool_pairs_by_hand():
    # [seed][panel arch][image]; two seeds, two archs, three images
    baseline = [[[True, True, False], [False, False, True]],
                [[True, False, False], [True, True, True]]]
    other = [[[True, False, True], [True, False, True]],
             [[False, True, False], [True, True, False]]]
    # other right & baseline wrong (b): s0a0i2, s0a1i0, s1a0i1 -> 3; baseline right & other wrong (c):
    # s0a0i1, s1a0i0, s1a1i2 -> 3
    assert sampling.pool_pairs(baseline, other) == {"b": 3, "c": 3, "pairs": 12}
    assert sampling.pool_pairs(other, baseline) == {"b": 3, "c": 3, "pairs": 12}
    better = [[[True, True, True], [True, True, True]], [[True, True, True], [True, True, True]]]
    assert sampling.pool_pairs(baseline, better) == {"b": 5, "c": 0, "pairs": 12}
    with pytest.raises(ValueError):  # the images must pair up
        sampling.pool_pairs(baseline, [[[True, True], [True, True]], [[True, True], [True, True]]])


def test_mcnemar_report_against_the_baseline():
    baseline = [[[True, False, False, False]]]
    report = sampling.mcnemar_report({"uniform": baseline, "x": [[[True, True, True, False]]],
                                      "y": [[[False, False, False, False]]]})
    assert set(report) == {"x", "y"}
    assert report["x"] == {"b": 2, "c": 0, "pairs": 4, "p_value": 0.5, "accuracy_delta_pts": 50.0, "vs": "uniform"}
    assert report["y"]["b"] == 0 and report["y"]["c"] == 1 and report["y"]["accuracy_delta_pts"] == -25.0
    assert report["y"]["p_value"] == 1.0


def test_correctness_agrees_with_accuracy():
    from nas.evaluate import accuracy

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    images, labels = torch.randn(30, 1, 4, 4), torch.randint(0, 3, (30,))
    correct = sampling.correctness(model, images, labels, batch=7)
    assert len(correct) == 30 and all(isinstance(c, bool) for c in correct)
    assert sum(correct) / 30 == pytest.approx(accuracy(model, images, labels))


# ---- gradient-conflict probe -----------------------------------------------------------------------------
def test_gradient_cosine_shared_and_zero_filled():
    a = torch.tensor([1.0, 2.0, 0.0, 0.0], dtype=torch.float64)
    b = torch.tensor([1.0, 2.0, 3.0, 0.0], dtype=torch.float64)
    assert sampling.gradient_cosine(a, b) == pytest.approx(1.0)  # identical on the weights both use
    assert sampling.gradient_cosine(a, b, shared=False) == pytest.approx(5 / math.sqrt(5 * 14))
    assert sampling.gradient_cosine(a, -b) == pytest.approx(-1.0)
    assert math.isnan(sampling.gradient_cosine(a, torch.zeros(4, dtype=torch.float64)))


def test_grad_conflict_probe_on_the_tiny_space():
    space = SearchSpace.from_spec(load_spec(TINY), 1, 10)
    torch.manual_seed(0)
    model = Supernet(space)
    model.eval()
    images, labels = torch.randn(24, 1, 8, 8), torch.randint(0, 10, (24,))
    buffers = [b.clone() for b in model.buffers()]
    options = {"name": "complexity_aware", "bands": 4}
    result = sampling.grad_conflict(model, space, images, labels, batch=16, options=options, permutations=50)
    assert len(result["pairs"]) == 4 * 3 // 2 and len(result["band_mflops"]) == len(result["arch_mflops"]) == 4
    assert [p["bands"] for p in result["pairs"]] == [[0, 1], [0, 2], [0, 3], [1, 2], [1, 3], [2, 3]]
    for pair in result["pairs"]:
        assert pair["distance"] == pair["bands"][1] - pair["bands"][0]
        assert -1.0 <= pair["cosine"] <= 1.0 and -1.0 <= pair["cosine_zero_filled"] <= 1.0
    assert -1.0 <= result["spearman"] <= 1.0 and -1.0 <= result["spearman_zero_filled"] <= 1.0
    assert 0.0 < result["permutation_p"] <= 1.0 and result["images"] == 24
    for (low, high), mflops in zip(result["band_mflops"], result["arch_mflops"], strict=True):
        assert low - 1e-3 <= mflops <= high + 1e-3  # each arch sits in its band
    # no trace: buffers, mode and gradients as before; the same archs (seeded) give the same answer
    assert all(torch.equal(a, b) for a, b in zip(buffers, model.buffers(), strict=True))
    assert not model.training and all(p.grad is None for p in model.parameters())
    again = sampling.grad_conflict(model, space, images, labels, batch=16, options=options, permutations=50)
    assert again == result


def test_subnet_gradients_are_zero_outside_a_subnet():
    space = SearchSpace.from_spec(load_spec(TINY), 1, 10)
    torch.manual_seed(0)
    model = Supernet(space)
    images, labels = torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,))
    small, large = sampling.subnet_gradients(model, [space.smallest(), space.largest()], images, labels, 8)
    assert small.shape == large.shape == (sum(p.numel() for p in model.parameters()),)
    used_small, used_large = int((small != 0).sum()), int((large != 0).sum())
    assert 0 < used_small < used_large  # the smallest subnet uses fewer weights; the rest are zeros
    # its weights are slices of the largest's (up to the rare gradient that is exactly zero by chance)
    assert int(((small != 0) & (large != 0)).sum()) >= 0.99 * used_small


# ---- the panel and the report ----------------------------------------------------------------------------
def test_every_sampler_trains_four_subnets_per_step():
    for name, overrides in sampling.SAMPLERS.items():
        train = sampling.bench_spec("quick", overrides, seed=2).train
        assert len(train.slots) == 4, name
        assert train.seed == 2
    bands = sampling.bench_spec("quick", sampling.SAMPLERS["complexity_aware"]).train.sampler
    assert bands.band_kind == "bands" and bands.min_arch == "band" and bands.performance_options is None
    banked = sampling.bench_spec("quick", sampling.SAMPLERS["complexity_performance_aware"]).train.sampler
    assert banked.band_kind == "bands" and banked.performance_options is not None
    assert banked.performance_options.rescore_every > 0


def test_jobs_cover_every_sampler_and_seed_longest_first():
    jobs = sampling.jobs_for("full", "/tmp/work")
    supernets = {(job[2], job[3]) for job in jobs if job[0] == "supernet"}
    assert supernets == {(name, seed) for name in sampling.SAMPLERS for seed in sampling.MODES["full"]["seeds"]}
    assert sorted(job[2] for job in jobs if job[0] == "scratch") == list(sampling.SCRATCH_PANEL)
    assert {job[2] for job in jobs[:6]} == {"complexity_aware", "complexity_performance_aware"}  # the costliest
    assert jobs[-1] == ("scratch", "full", 0)
    assert len(sampling.jobs_for("quick", "/tmp/work")) == len(sampling.SAMPLERS) + len(sampling.SCRATCH_PANEL)


def _fake_results(seeds: tuple[int, ...]) -> list[dict]:
    """Supernet and scratch results shaped as the jobs return them (5 panel archs, 4 validation images)."""
    rng = random.Random(1)
    probe = {"spearman": -0.5, "spearman_zero_filled": -0.7, "permutation_p": 0.04, "band_mflops": [[1, 2]],
             "arch_mflops": [1.5], "images": 8, "pairs": []}
    results = []
    for name in sampling.SAMPLERS:
        for seed in seeds:
            correct = [[rng.random() < 0.5 for _ in range(4)] for _ in range(5)]
            results.append({"kind": "supernet", "name": name, "seed": seed, "correct": correct,
                            "panel": [sum(c) / 4 for c in correct], "grad_cosine": (0.2, 0.1),
                            "subnet_mflops": 2.0, "hypervolume": 0.25 + seed / 100, "train_s": 10.0,
                            "timing": {"train_s": 10.0, "train_cpu_s": 9.0 + seed}, "steps": 28,
                            "probe": {**probe, "spearman": -0.1 * seed}})
    results += [{"kind": "scratch", "index": i, "accuracy": 0.8, "train_s": 1.0, "timing": {"train_s": 1.0}}
                for i in sampling.SCRATCH_PANEL]
    return results


@pytest.mark.parametrize("mode", ["quick", "full"])
def test_summary_keys_and_means_over_seeds(mode):
    seeds = sampling.MODES[mode]["seeds"]
    results = _fake_results(seeds)
    overhead = {"overhead_ratio": 1.05, "per_arch": []}
    summary = sampling.summarise(mode, results, overhead, [0.5, 1.0, 2.0, 3.0, 8.0], 4, 12.0)
    for key in ("overhead_ratio", "panel_accuracy", "grad_cosine", "hypervolume", "scratch_gap", "machine",
                "panel_accuracy_by_seed", "panel_mean_by_seed", "panel_mean", "mcnemar", "grad_conflict_spearman",
                "grad_conflict", "grad_conflict_spearman_by_sampler"):
        assert key in summary, key
    runs = {(r["name"], r["seed"]): r for r in results if r["kind"] == "supernet"}
    for name in sampling.SAMPLERS:
        assert len(summary["panel_accuracy_by_seed"][name]) == len(seeds)
        for i, value in enumerate(summary["panel_accuracy"][name]):
            assert value == pytest.approx(sum(runs[name, s]["panel"][i] for s in seeds) / len(seeds), abs=1e-4)
        assert (summary["panel_mean"][name]["sd"] is None) == (len(seeds) == 1)
    assert set(summary["mcnemar"]) == set(sampling.SAMPLERS) - {"uniform"}
    pairs = 5 * 4 * len(seeds)
    assert all(test["pairs"] == pairs for test in summary["mcnemar"].values())
    assert summary["grad_conflict_spearman"] == 0.0 and summary["grad_conflict"]["sampler"] == "uniform"
    assert summary["grad_cosine"]["uniform"] == pytest.approx(0.15)
    assert summary["hypervolume_by_seed"]["uniform"] == {"0": 0.25} and summary["hypervolume"]["uniform"] == 0.25
    assert summary["timing"]["uniform"]["train_cpu_s"] == pytest.approx(9.0 + sum(seeds) / len(seeds))
