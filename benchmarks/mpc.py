"""Benchmark: MPC-friendly attention at an equal training budget (issue 9), on Fashion-MNIST.

    python benchmarks/mpc.py            # full: 54,000 training images, 3 epochs per training (25-33 min, 2 cores)
    python benchmarks/mpc.py --quick    # 3,600 training images, 1 epoch (1-2.5 min; checks the pipeline only)

Measured on 2 shared cores (AMD EPYC, torch 2.13 CPU): full mode 1,493 s of wall time (~2,500 CPU seconds: the
supernet ~530, eight trainings of 160-240 each, NSGA-II ~210, MPCViT ~155) at load average 2-4; quick 69-133 s.

Every network has the dims of `search_spaces/mpc_vit.yaml`'s largest arch (stem 24, one transformer stage of
64 channels, 3 layers of 4 heads of 16 on 7 x 7 = 49 tokens, MLP ratio 2, head 64); only the attention kind of
each head and the activation of each FFN differ. Latency is the private-inference latency the measured MPC
tables give (`latency_tables/mpc-wan.json`: 100 Mbit/s, 40 ms round trips; `mpc-lan.json`: 1 Gbit/s, 0.5 ms),
rounds and bytes are the protocol's counts from the same tables.

Variants, each trained for the same E epochs (`MODES`) on the same images, with the same recipe (AdamW lr 3e-3,
weight decay 0.05, one-cycle, label smoothing 0.1, batch 128, `nas.finetune.train_subnet`, seed 0 for the
initialisation and the data order), BatchNorm re-estimated on 2,000 training images, then scored on the test
split:

- all_softmax: softmax in every head, GELU FFNs: the standard ViT a user would pick; the baseline;
- all_relu_softmax, all_scaling, all_quad: the same network with every head of one MPC-friendly kind; the FFNs
  keep GELU, so that these rows differ from the baseline in the attention only;
- all_relu_softmax_relu: ReLU-softmax in every head and ReLU FFNs, the MPC-friendly network a user can pick by
  hand from the table without any search (on mpc-wan GELU costs 181 rounds per FFN, softmax 128 per layer);
- all_scaling_relu_distilled: the cheapest network of the space (scaling everywhere, ReLU FFNs), trained like
  the searched networks below (distilled from all_softmax): the control for what the search adds;
- searched_nsga2: a supernet over `SPACE` (the dims fixed; per head one of the four kinds, per FFN one of
  GELU / ReLU / hard-swish) is trained E epochs (sandwich: largest, one random, smallest per step, in-place
  distillation; `nas.train.train_supernet`), then searched with Optuna's NSGA-II on (validation accuracy with
  inherited weights, mpc-wan latency) (`nas.engines.BatchedStudy`, `nas.search.CandidateScorer`). The most
  accurate member of the front under `LATENCY_BAR` x all_softmax's mpc-wan latency is trained from a fresh
  initialisation for E epochs, distilled from the trained all_softmax network (KL on the logits with weight
  `DISTILL`, the rest on the labels, plus `FEATURE_WEIGHT` x MSE on the last stage's token features);
- searched_mpcvit: MPCViT's differentiable head search (`nas.mpcvit.search_heads`) on the same trained
  supernet, for each pair of `MPCVIT_PAIRS` and each FFN activation of `MPCVIT_FFN` (the head search chooses
  attention only; the FFN is the user's choice; a setting whose all-cheaper network already misses the bar is
  skipped), binarised at `MPCVIT_BUDGETS` and at the budget that just meets the latency bar. The most accurate
  (validation, inherited weights) of all those archs under the bar is trained like searched_nsga2.

The two searched networks are picked on validation accuracy only; `best_searched` is the one of the two with the
higher validation accuracy once trained. The issue's bar: a searched network within `ACCURACY_BAR_PTS` points of
all_softmax's test accuracy at less than `LATENCY_BAR` x its mpc-wan latency. Every variant gets an exact
McNemar test of its per-image test correctness against all_softmax's (b = images it gets right and all_softmax
wrong, c = the reverse). Note the budgets: the searched networks' own training equals the others', but the
supernet (E sandwich epochs, three subnets a step) and the search come on top.

Trainings run in `--workers` spawned processes (one thread each); jobs start as soon as what they need is done
(the supernet, then the searches; a searched student needs its search and the trained all_softmax teacher,
the distilled control the teacher only).

Last line: one JSON object with
- rounds, bytes: variant -> rounds and bytes of ONE attention layer (the pieces of one attn block of these
  dims in the mpc table; for a searched network the mean over its 3 layers, each layer in `variants`);
- attention_core: per attention kind, rounds and bytes of the attention core alone (scores, normalise, x V) of
  4 heads on 49 tokens; single_head: the same for one head (on 64 tokens, the issue's map, when the table has
  them, else on the most tokens it has);
- softmax_baseline and best_searched: test accuracy and mpc-wan ms; bar: the issue's bar, met or not and by how
  much; bar_per_variant: the same verdict for every other trained variant;
- table_vs_network_error_pct: the mpc-wan table's validation (table sums of pieces vs whole networks run in SPU);
- variants: per variant the arch, test and validation accuracy, mpc-wan / mpc-lan ms, network rounds, bytes
  and compute ms, per-layer attention costs, params, MACs, McNemar vs all_softmax, training seconds;
- nsga2 (candidates, front, pick), mpcvit (every binarised arch, the best per pair and FFN, pick), supernet,
  recipe, tables, timing (wall and CPU seconds per job), epochs, train / val / search_val / test image counts,
  wall_s and the machine.
"""

from __future__ import annotations

import argparse
import copy
import json
import multiprocessing
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import machine  # noqa: E402
from benchmarks.sampling import correctness, mcnemar_exact  # noqa: E402
from nas import static_model  # noqa: E402
from nas.data import Splits, load  # noqa: E402
from nas.evaluate import accuracy, calibrate_batchnorm, make_evaluator  # noqa: E402
from nas.finetune import Recipe, train_subnet  # noqa: E402
from nas.latency.targets import LatencyModel, load_target  # noqa: E402
from nas.space import ArchConfig, SearchSpace, StageArch, TransformerLayer  # noqa: E402
from nas.spec import Spec, parse_spec  # noqa: E402

WAN, LAN = "mpc-wan", "mpc-lan"
BASELINE = "all_softmax"
KINDS = ("softmax", "relu_softmax", "scaling", "quad")
# Hand-set networks trained from scratch: name -> (attention kind of every head, activation of every FFN).
UNIFORM: dict[str, tuple[str, str]] = {
    "all_softmax": ("softmax", "gelu"),
    "all_relu_softmax": ("relu_softmax", "gelu"),
    "all_scaling": ("scaling", "gelu"),
    "all_quad": ("quad", "gelu"),
    "all_relu_softmax_relu": ("relu_softmax", "relu"),  # the hand-picked MPC-friendly network, no search
}
# Hand-set networks trained like the searched ones (distilled from the trained all_softmax): the control that
# tells the search's part from the distillation's.
HAND_STUDENTS: dict[str, tuple[str, str]] = {"all_scaling_relu_distilled": ("scaling", "relu")}
SEARCHED = ("searched_nsga2", "searched_mpcvit")
SEED = 0
LR = 3e-3
DISTILL = 0.5  # the KL term's weight for the searched students (the labels get 1 - DISTILL)
FEATURE_WEIGHT = 1.0  # the token-feature MSE's weight (MPCViT's search default, `MPCViTSpec.feature_weight`)
CALIBRATION_IMAGES = 2000  # BatchNorm re-estimation of every trained network
LATENCY_BAR = 0.5  # x all_softmax's mpc-wan latency
ACCURACY_BAR_PTS = 1.0  # points of test accuracy below all_softmax's
MPCVIT_PAIRS = (("softmax", "scaling"), ("relu_softmax", "scaling"))
MPCVIT_FFN = ("gelu", "hswish", "relu")
MPCVIT_BUDGETS = (0.0, 0.1, 0.25, 0.5, 0.75)

# The fixed-dims space: mpc_vit.yaml's largest dims, per head any of the four kinds, per FFN any activation.
SPACE: dict[str, Any] = {
    "resolution": [28],
    "stem": {"channels": [24], "stride": 2},
    "stages": [{"type": "transformer", "depth": [3, 3], "channels": [64], "head_dim": 16, "mlp_ratio": [2],
                "v_scale": [1], "stride": 2, "downsample_expand": 2, "shortcut": "avgpool_conv",
                "attention": ["softmax", "relu_softmax", "scaling", "quad"], "attention_per_head": True,
                "ffn_act": ["gelu", "relu", "hswish"]}],
    "head": {"channels": [64]},
}
SPEC: dict[str, Any] = {
    "version": 1,
    "name": "mpc_bench",
    "space": SPACE,
    "data": {"dataset": "fashion-mnist", "val_fraction": 0.1, "batch_size": 128},
    "train": {"epochs": 3, "sampler": "sandwich", "num_random": 1, "distill": "inplace",
              "optimizer": {"name": "adamw", "lr": LR}},
}
MODES: dict[str, dict[str, Any]] = {
    "full": {"limit": None, "epochs": 3, "candidates": 160, "population": 20, "val_images": 2000,
             "search_calibration": 1000, "mpcvit_steps": 200, "test_images": None},
    "quick": {"limit": 4000, "epochs": 1, "candidates": 16, "population": 8, "val_images": 400,
              "search_calibration": 500, "mpcvit_steps": 10, "test_images": 1000},
}


# ---- pure helpers ----------------------------------------------------------------------------------------
def bench_spec(mode: str) -> Spec:
    """`SPEC` with the mode's images and epochs."""
    raw = copy.deepcopy(SPEC)
    if MODES[mode]["limit"] is not None:
        raw["data"]["limit"] = MODES[mode]["limit"]
    raw["train"]["epochs"] = MODES[mode]["epochs"]
    return parse_spec(raw, "benchmarks/mpc.py SPEC")


def bench_space(spec: Spec, in_channels: int = 1, num_classes: int = 10) -> SearchSpace:
    return SearchSpace.from_spec(spec, in_channels, num_classes)


def uniform_arch(space: SearchSpace, kind: str, act: str = "gelu") -> ArchConfig:
    """The space's (only) dims with attention `kind` in every head and `act` in every FFN."""
    largest = space.largest()
    stages = []
    for stage, spec in zip(largest.stages, space.spec.stages, strict=True):
        heads = spec.heads(stage.channels)
        layers = tuple(TransformerLayer(layer.mlp_ratio, layer.v_scale, (kind,) * heads, act)
                       for layer in stage.layers if isinstance(layer, TransformerLayer))
        stages.append(StageArch(stage.channels, layers))
    arch = ArchConfig(largest.resolution, largest.stem, tuple(stages), largest.head, largest.final)
    space.validate_arch(arch)
    return arch


def pick_under_bar(rows: Sequence[dict[str, Any]], bar_ms: float) -> int | None:
    """Index of the most accurate row (`accuracy`) whose `mpc_wan_ms` is below `bar_ms` (ties: the faster,
    then the first); None when no row is below the bar."""
    under = [i for i, row in enumerate(rows) if row["mpc_wan_ms"] < bar_ms]
    if not under:
        return None
    return min(under, key=lambda i: (-rows[i]["accuracy"], rows[i]["mpc_wan_ms"], i))


def bar_budget(cheap_ms: float, dear_ms: float, bar_ms: float) -> float | None:
    """The MPCViT budget (a fraction of the gap from all-cheaper to all-costlier) whose latency limit lies just
    below `bar_ms`: 1 when even all-costlier is under the bar; None when all-cheaper is not under it."""
    if cheap_ms >= bar_ms:
        return None
    if dear_ms < bar_ms:
        return 1.0
    return (bar_ms * (1 - 1e-6) - cheap_ms) / (dear_ms - cheap_ms)


def head_counts(arch: ArchConfig) -> dict[str, int]:
    """Heads per attention kind over the whole network."""
    counts: dict[str, int] = {}
    for stage in arch.stages:
        for layer in stage.layers:
            if isinstance(layer, TransformerLayer):
                for kind in layer.attention:
                    counts[kind] = counts.get(kind, 0) + 1
    return dict(sorted(counts.items()))


def ffn_acts(arch: ArchConfig) -> list[str]:
    return [layer.act for stage in arch.stages for layer in stage.layers if isinstance(layer, TransformerLayer)]


def attention_layers(model: Any, space: SearchSpace, arch: ArchConfig) -> list[dict[str, Any]]:
    """Rounds, bytes and compute ms of each attention layer of `arch` (every piece of its attn block) in an MPC
    table model (`nas.latency.mpc.MPCTableModel`)."""
    out = []
    for block in space.blocks(arch):
        if block.kind == "attn":
            cost, _ = model.block_cost(block)
            out.append({"attention": block.attention, "rounds": cost.rounds, "bytes": cost.bytes,
                        "compute_ms": round(cost.compute_ms, 3)})
    return out


def attention_cores(model: Any, space: SearchSpace) -> dict[str, dict[str, Any]]:
    """Per attention kind, the table's entry for the attention core alone of one layer of these dims."""
    from nas.mpc.pieces import pieces_of

    out = {}
    for kind in KINDS:
        block = next(b for b in space.blocks(uniform_arch(space, kind)) if b.kind == "attn")
        for piece in pieces_of(block):
            if piece.kind == "attn_core":
                entry = model.entries[piece.key()]
                out[kind] = {"piece": piece.key(), "rounds": entry.rounds, "bytes": entry.bytes,
                             "compute_ms": round(entry.compute_ms, 3)}
    return out


def single_head(model: Any) -> dict[str, Any] | None:
    """The table's attention cores of ONE head, per kind: on 64 tokens (the issue's 64 x 64 map) when the table
    has them, else on the most tokens it has; None without single-head cores."""
    from nas.mpc.pieces import Piece

    cores = [(Piece.from_key(key), entry) for key, entry in sorted(model.entries.items())
             if key.startswith("attn_core_")]
    single = [(piece, entry) for piece, entry in cores if piece.heads == 1]
    if not single:
        return None
    tokens = 64 if any(piece.tokens == 64 for piece, _ in single) else max(piece.tokens for piece, _ in single)
    return {"tokens": tokens, "cores": {piece.name: {"piece": piece.key(), "rounds": entry.rounds,
                                                     "bytes": entry.bytes, "compute_ms": round(entry.compute_ms, 3)}
                                        for piece, entry in single if piece.tokens == tokens}}


def table_error(model: LatencyModel) -> dict[str, Any] | None:
    """The table's own validation (sums of pieces vs whole networks in SPU), in percent; None if not validated."""
    validation = model.table.get("validation")
    if not validation:
        return None
    latency = validation.get("latency_err_pct") or {}
    return {"networks": validation.get("n"), "date": validation.get("date"),
            "latency_wan": latency.get("wan"), "latency_lan": latency.get("lan"),
            "rounds": validation.get("rounds_err_pct"), "bytes": validation.get("bytes_err_pct"),
            "compute": validation.get("compute_err_pct")}


def mcnemar_vs(baseline: Sequence[bool], other: Sequence[bool]) -> dict[str, Any]:
    """Exact McNemar of `other`'s per-image correctness against `baseline`'s (same images)."""
    if len(baseline) != len(other):
        raise ValueError(f"mcnemar_vs: {len(baseline)} vs {len(other)} images")
    b = sum(1 for x, y in zip(baseline, other, strict=True) if y and not x)
    c = sum(1 for x, y in zip(baseline, other, strict=True) if x and not y)
    return {"b": b, "c": c, "images": len(baseline), "p_value": float(f"{mcnemar_exact(b, c):.4g}"),
            "accuracy_delta_pts": round(100 * (b - c) / max(1, len(baseline)), 2)}


def judge_bar(baseline: dict[str, Any], searched: dict[str, Any] | None) -> dict[str, Any]:
    """The issue's bar for the best searched network against all_softmax (accuracies as fractions)."""
    out: dict[str, Any] = {"latency_ratio_max": LATENCY_BAR, "accuracy_drop_max_pts": ACCURACY_BAR_PTS,
                           "latency_bar_ms": round(LATENCY_BAR * baseline["mpc_wan_ms"], 3)}
    if searched is None:
        return {**out, "met": False, "reason": "no searched network under the latency bar"}
    drop = 100 * (baseline["accuracy"] - searched["accuracy"])
    ratio = searched["mpc_wan_ms"] / baseline["mpc_wan_ms"]
    accuracy_ok, latency_ok = drop <= ACCURACY_BAR_PTS, ratio < LATENCY_BAR
    return {**out, "accuracy_drop_pts": round(drop, 2), "latency_ratio": round(ratio, 4),
            "accuracy_met": accuracy_ok, "latency_met": latency_ok, "met": accuracy_ok and latency_ok,
            "short_by_pts": round(max(0.0, drop - ACCURACY_BAR_PTS), 2)}


def variant_row(space: SearchSpace, wan: Any, lan: LatencyModel, arch: ArchConfig) -> dict[str, Any]:
    """What the tables say about one network: latencies, rounds, bytes, compute and each attention layer."""
    blocks = space.blocks(arch)
    rounds, nbytes, compute_ms = wan.cost(blocks)
    layers = attention_layers(wan, space, arch)
    return {"arch": arch.to_dict(), "heads": head_counts(arch), "ffn": ffn_acts(arch),
            "mpc_wan_ms": round(wan.predict(blocks).ms, 3), "mpc_lan_ms": round(lan.predict(blocks).ms, 3),
            "network_rounds": rounds, "network_bytes": nbytes, "network_mb": round(nbytes / 1e6, 3),
            "compute_ms": round(compute_ms, 3), "attention_layers": layers,
            "layer_rounds": statistics.fmean(layer["rounds"] for layer in layers),
            "layer_bytes": statistics.fmean(layer["bytes"] for layer in layers),
            "params": space.params(arch), "macs": space.flops(arch)}


def summarise(mode: str, space: SearchSpace, wan: Any, lan: LatencyModel, trained: dict[str, dict[str, Any]],
              archs: dict[str, ArchConfig], nsga2: dict[str, Any] | None, mpcvit: dict[str, Any] | None,
              supernet: dict[str, Any] | None, extra: dict[str, Any]) -> dict[str, Any]:
    """The JSON report (see the module docstring). `trained`: per variant the training job's result (accuracy,
    val_accuracy, correct, train_s, ...); `archs`: per variant its arch (also for variants not trained)."""
    variants: dict[str, dict[str, Any]] = {}
    base_correct = trained[BASELINE]["correct"] if BASELINE in trained else None
    for name, arch in archs.items():
        row = variant_row(space, wan, lan, arch)
        job = trained.get(name)
        if job is not None:
            row.update(accuracy=round(job["accuracy"], 4), val_accuracy=round(job["val_accuracy"], 4),
                       distilled=job["distilled"], train_s=job["train_s"], train_cpu_s=job["train_cpu_s"],
                       epoch_losses=[round(loss, 4) for loss in job["losses"]])
            if base_correct is not None and name != BASELINE:
                row["mcnemar"] = mcnemar_vs(base_correct, job["correct"])
        variants[name] = row
    base = variants[BASELINE]
    baseline = {"accuracy": base.get("accuracy"), "mpc_wan_ms": base["mpc_wan_ms"], "mpc_lan_ms": base["mpc_lan_ms"]}
    done = [name for name in SEARCHED if name in variants and "accuracy" in variants[name]]
    best = max(done, key=lambda n: (variants[n]["val_accuracy"], -variants[n]["mpc_wan_ms"]), default=None)
    best_searched = None if best is None else {
        "variant": best, "accuracy": variants[best]["accuracy"], "val_accuracy": variants[best]["val_accuracy"],
        "mpc_wan_ms": variants[best]["mpc_wan_ms"], "mpc_lan_ms": variants[best]["mpc_lan_ms"]}
    per_variant = {name: judge_bar(baseline, {"accuracy": row["accuracy"], "mpc_wan_ms": row["mpc_wan_ms"]})
                   for name, row in variants.items() if name != BASELINE and "accuracy" in row}
    return {
        "benchmark": "mpc",
        "mode": mode,
        "rounds": {name: round(row["layer_rounds"], 1) for name, row in variants.items()},
        "bytes": {name: round(row["layer_bytes"]) for name, row in variants.items()},
        "attention_core": attention_cores(wan, space),
        "single_head": single_head(wan),
        "softmax_baseline": baseline,
        "best_searched": best_searched,
        "bar": judge_bar(baseline, best_searched) if baseline["accuracy"] is not None else None,
        "bar_per_variant": per_variant,
        "table_vs_network_error_pct": table_error(wan),
        "variants": variants,
        "nsga2": nsga2,
        "mpcvit": mpcvit,
        "supernet": supernet,
        "recipe": {"epochs": MODES[mode]["epochs"], "lr": LR, "schedule": "onecycle", "label_smoothing": 0.1,
                   "weight_decay": 0.05, "batch_size": SPEC["data"]["batch_size"], "seed": SEED,
                   "distill": DISTILL, "feature_weight": FEATURE_WEIGHT, "teacher": BASELINE,
                   "uniform": {name: list(choice) for name, choice in UNIFORM.items()},
                   "hand_students": {name: list(choice) for name, choice in HAND_STUDENTS.items()}},
        "tables": {WAN: str(wan.path), LAN: str(lan.path)},
        **extra,
        "machine": machine(),
    }


# ---- jobs run in worker processes ------------------------------------------------------------------------
_DATA: dict[str, Splits] = {}


def _init_worker() -> None:
    torch.set_num_threads(1)


def _setup(mode: str) -> tuple[Spec, Splits, SearchSpace]:
    spec = bench_spec(mode)
    if mode not in _DATA:
        _DATA[mode] = load(spec.data)
    splits = _DATA[mode]
    return spec, splits, bench_space(spec, splits.in_channels, splits.num_classes)


def _test_split(mode: str, splits: Splits) -> tuple[torch.Tensor, torch.Tensor]:
    count = MODES[mode]["test_images"]
    return (splits.x_test, splits.y_test) if count is None else (splits.x_test[:count], splits.y_test[:count])


class _Clock:
    def __init__(self) -> None:
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def lap(self) -> tuple[float, float]:
        return round(time.perf_counter() - self.wall, 1), round(time.process_time() - self.cpu, 1)


def _train_job(mode: str, name: str, arch_dict: dict[str, Any], teacher: dict[str, Any] | None) -> dict[str, Any]:
    """Train one network from a fresh initialisation (distilled from `teacher`, {arch, state}, when given),
    re-estimate its BatchNorm and score it on the validation and test images."""
    spec, splits, space = _setup(mode)
    arch = ArchConfig.from_dict(arch_dict)
    torch.manual_seed(SEED)
    model = static_model.build(space.describe(arch))
    teacher_model = None
    if teacher is not None:
        teacher_model = static_model.build(space.describe(ArchConfig.from_dict(teacher["arch"])))
        teacher_model.load_state_dict(teacher["state"])
        teacher_model.eval().requires_grad_(False)
    distils = teacher_model is not None
    recipe = Recipe(epochs=spec.train.epochs, lr=LR, distill=DISTILL if distils else 0.0,
                    feature_weight=FEATURE_WEIGHT if distils else 0.0, batch_size=spec.data.batch_size, seed=SEED)
    clock = _Clock()
    losses = train_subnet(model, splits.x_train, splits.y_train, recipe, teacher_model)
    train_s, train_cpu_s = clock.lap()
    calibrate_batchnorm(model, splits.x_train[:CALIBRATION_IMAGES])
    model.eval()
    x_test, y_test = _test_split(mode, splits)
    correct = correctness(model, x_test, y_test)
    result = {"kind": "train", "name": name, "arch": arch_dict, "distilled": distils, "losses": losses,
              "val_accuracy": accuracy(model, splits.x_val, splits.y_val), "accuracy": sum(correct) / len(correct),
              "correct": correct, "train_s": train_s, "train_cpu_s": train_cpu_s}
    if name == BASELINE:  # the students' teacher
        result["state"] = {key: value.detach().clone() for key, value in model.state_dict().items()}
    return result


def _supernet_job(mode: str, work: str) -> dict[str, Any]:
    from nas.train import train_supernet

    spec, splits, space = _setup(mode)
    clock = _Clock()
    result = train_supernet(spec, space, splits, Path(work) / "supernet", progress=False)
    train_s, train_cpu_s = clock.lap()
    return {"kind": "supernet", "checkpoint": str(result.checkpoint), "steps": result.steps,
            "epochs": list(result.epoch_metrics), "train_s": train_s, "train_cpu_s": train_cpu_s}


def _evaluator(mode: str, checkpoint: str) -> tuple[Any, Any, Splits, SearchSpace]:
    from nas.train import load_supernet

    _, splits, space = _setup(mode)
    supernet = load_supernet(space, Path(checkpoint))
    evaluator = make_evaluator(supernet, splits.x_train, splits.x_val, splits.y_val, MODES[mode]["val_images"],
                               MODES[mode]["search_calibration"])
    return supernet, evaluator, splits, space


def _nsga2_job(mode: str, checkpoint: str, bar_ms: float) -> dict[str, Any]:
    """NSGA-II on (validation accuracy, mpc-wan ms) over the supernet; the front and its pick under the bar."""
    from nas.engines import BatchedStudy, make_sampler
    from nas.problem import Problem
    from nas.search import CandidateScorer

    clock = _Clock()
    _, evaluator, _, space = _evaluator(mode, checkpoint)
    scorer = CandidateScorer(space, evaluator, {WAN: load_target(WAN)})
    problem = Problem(objectives=(("accuracy", "", True), ("latency", WAN, False)), constraints=())
    population = MODES[mode]["population"]
    study = BatchedStudy(space, problem, make_sampler("nsga2", SEED, population), population,
                         MODES[mode]["candidates"])
    while True:
        try:
            arch = study.next_arch()
        except StopIteration:
            break
        if arch is None:  # sequential: every handed-out arch is completed before the next is asked
            raise RuntimeError("nsga2: the study waits for results that were already given")
        study.complete(arch.arch_hash(), scorer.score(arch))
    results = list(study.finished_results())
    rows = [{"arch": r.arch.to_dict(), "accuracy": round(r.accuracy, 4), "mpc_wan_ms": round(r.latency_ms[WAN], 3),
             "heads": head_counts(r.arch), "ffn": ffn_acts(r.arch)} for r in results]
    front = sorted(problem.front(results, WAN), key=lambda i: rows[i]["mpc_wan_ms"])
    front_rows = [rows[i] for i in front]
    pick = pick_under_bar(front_rows, bar_ms)
    search_s, search_cpu_s = clock.lap()
    largest = space.largest().to_dict()
    return {"kind": "nsga2", "candidates": len(rows), "population": population, "front": front_rows,
            "pick": None if pick is None else front_rows[pick],
            "under_bar": sum(row["mpc_wan_ms"] < bar_ms for row in rows),
            "all_softmax_val_accuracy": next((row["accuracy"] for row in rows if row["arch"] == largest), None),
            "search_s": search_s, "search_cpu_s": search_cpu_s}


def _mpcvit_job(mode: str, checkpoint: str, bar_ms: float) -> dict[str, Any]:
    """MPCViT's head search for every pair and FFN activation; every binarised arch scored; the pick."""
    from nas.mpcvit import search_heads, with_kinds
    from nas.spec import MPCViTSpec

    clock = _Clock()
    supernet, evaluator, splits, space = _evaluator(mode, checkpoint)
    wan = load_target(WAN)
    rows: list[dict[str, Any]] = []
    runs = []
    for act in MPCVIT_FFN:
        base = uniform_arch(space, "softmax", act)
        for first, second in MPCVIT_PAIRS:
            cheap = wan.predict(space.blocks(with_kinds(base, {}, second))).ms
            dear = wan.predict(space.blocks(with_kinds(base, {}, first))).ms
            setting = f"{first}/{second}, ffn {act}"
            if cheap >= bar_ms:  # even every head cheaper misses the bar: no arch of this setting can meet it
                runs.append({"setting": setting, "skipped": f"all {second} with {act} FFNs is {cheap:.0f} ms, over "
                                                            f"the bar ({bar_ms:.0f} ms)",
                             "all_second_ms": round(cheap, 3), "all_first_ms": round(dear, 3)})
                continue
            at_bar = bar_budget(cheap, dear, bar_ms)
            budgets = sorted({*MPCVIT_BUDGETS, *([] if at_bar is None else [at_bar])})
            spec = MPCViTSpec(between=[first, second], steps=MODES[mode]["mpcvit_steps"], budgets=budgets)
            started = time.perf_counter()
            found = search_heads(supernet, evaluator, base, spec, wan, splits.x_train, SEED)
            for arch in found.archs:
                ms = wan.predict(space.blocks(arch)).ms
                rows.append({"setting": setting, "pair": [first, second], "ffn_act": act, "arch": arch.to_dict(),
                             "accuracy": round(evaluator.val_accuracy(arch), 4), "mpc_wan_ms": round(ms, 3),
                             "gap_fraction": round((ms - cheap) / (dear - cheap), 4) if dear > cheap else None,
                             "heads": head_counts(arch)})
            runs.append({"setting": setting, "budgets": budgets, "all_second_ms": round(cheap, 3),
                         "all_first_ms": round(dear, 3), "loss_first": round(found.losses[0], 4),
                         "loss_last": round(found.losses[-1], 4), "archs": len(found.archs),
                         "seconds": round(time.perf_counter() - started, 1)})
    best = {}
    for run in runs:
        if "skipped" in run:
            continue
        mine = [r for r in rows if r["setting"] == run["setting"]]
        index = pick_under_bar(mine, bar_ms)
        best[run["setting"]] = None if index is None else {key: mine[index][key] for key in
                                                           ("accuracy", "mpc_wan_ms", "heads")}
    pick = pick_under_bar(rows, bar_ms)
    search_s, search_cpu_s = clock.lap()
    return {"kind": "mpcvit", "runs": runs, "archs": rows, "best_under_bar": best,
            "pick": None if pick is None else rows[pick], "search_s": search_s, "search_cpu_s": search_cpu_s}


def _run(job: tuple[Any, ...]) -> dict[str, Any]:
    kind, *args = job
    return {"train": _train_job, "supernet": _supernet_job, "nsga2": _nsga2_job, "mpcvit": _mpcvit_job}[kind](*args)


# ---- the driver ------------------------------------------------------------------------------------------
PRIORITY = {"supernet": 0, BASELINE: 1, "nsga2": 2, "mpcvit": 3, "searched_nsga2": 4, "searched_mpcvit": 4,
            **{name: 5 for name in HAND_STUDENTS}}


def _label(job: tuple[Any, ...]) -> str:
    return job[2] if job[0] == "train" else job[0]


def run_jobs(mode: str, workers: int, bar_ms: float, archs: dict[str, ArchConfig], work: str,
             log: Any) -> dict[str, dict[str, Any]]:
    """Every job of the benchmark, each started as soon as what it needs is done; results by label."""
    ready: list[tuple[Any, ...]] = [("supernet", mode, work)]
    ready += [("train", mode, name, archs[name].to_dict(), None) for name in UNIFORM]
    results: dict[str, dict[str, Any]] = {}
    running: dict[Future, tuple[Any, ...]] = {}
    started = time.perf_counter()
    context = multiprocessing.get_context("spawn")  # no fork of a process whose OpenMP pool is running
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker) as pool:
        while ready or running:
            ready.sort(key=lambda job: PRIORITY.get(_label(job), 9))
            while ready and len(running) < workers:
                job = ready.pop(0)
                running[pool.submit(_run, job)] = job
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                job = running.pop(future)
                label = _label(job)
                results[label] = future.result()
                log(f"  done: {label} ({time.perf_counter() - started:.0f} s in)")
                if label == "supernet":
                    checkpoint = results[label]["checkpoint"]
                    ready += [("nsga2", mode, checkpoint, bar_ms), ("mpcvit", mode, checkpoint, bar_ms)]
                if label == BASELINE:
                    teacher = {"arch": archs[BASELINE].to_dict(), "state": results[BASELINE]["state"]}
                    ready += [("train", mode, name, archs[name].to_dict(), teacher) for name in HAND_STUDENTS]
                for search, student in (("nsga2", "searched_nsga2"), ("mpcvit", "searched_mpcvit")):
                    if label in (search, BASELINE) and search in results and BASELINE in results:
                        pick = results[search]["pick"]
                        if pick is None:
                            log(f"  {search}: no arch under the latency bar ({bar_ms:.1f} ms); {student} not trained")
                            continue
                        archs[student] = ArchConfig.from_dict(pick["arch"])
                        teacher = {"arch": archs[BASELINE].to_dict(), "state": results[BASELINE]["state"]}
                        ready.append(("train", mode, student, pick["arch"], teacher))
    return results


def print_table(summary: dict[str, Any]) -> None:
    """A human-readable table on stderr (the JSON line on stdout is for scripts)."""
    out = sys.stderr
    print("\n| variant | test acc % | vs all_softmax (pts, McNemar p) | mpc-wan ms | mpc-lan ms | rounds | MB | "
          "attn layer rounds / MB |", file=out)
    print("| --- | --- | --- | --- | --- | --- | --- | --- |", file=out)
    for name, row in summary["variants"].items():
        acc = "-" if "accuracy" not in row else f"{100 * row['accuracy']:.2f}"
        test = row.get("mcnemar")
        versus = "-" if test is None else f"{test['accuracy_delta_pts']:+.2f} (p {test['p_value']:.3g})"
        print(f"| {name} | {acc} | {versus} | {row['mpc_wan_ms']:.0f} | {row['mpc_lan_ms']:.0f} | "
              f"{row['network_rounds']} | {row['network_mb']:.1f} | {row['layer_rounds']:.0f} / "
              f"{row['layer_bytes'] / 1e6:.2f} |", file=out)
    print(f"bar: {summary['bar']}", file=out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a smaller run (at most 3 minutes)")
    parser.add_argument("--workers", type=int, default=2, help="training processes, one thread each (default 2)")
    args = parser.parse_args()
    mode = "quick" if args.quick else "full"
    started = time.perf_counter()
    torch.set_num_threads(1)

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    spec = bench_spec(mode)
    splits = load(spec.data)
    space = bench_space(spec, splits.in_channels, splits.num_classes)
    wan, lan = load_target(WAN), load_target(LAN)
    for model in (wan, lan):
        model.check_covers(space.distinct_blocks())
    archs: dict[str, ArchConfig] = {name: uniform_arch(space, *choice)
                                    for name, choice in {**UNIFORM, **HAND_STUDENTS}.items()}
    bar_ms = LATENCY_BAR * wan.predict(space.blocks(archs[BASELINE])).ms
    log(f"mpc benchmark ({mode}): {spec.train.epochs} epoch(s), {len(splits.y_train)} training images; "
        f"all_softmax {bar_ms / LATENCY_BAR:.1f} ms on {WAN}, bar {bar_ms:.1f} ms")
    with tempfile.TemporaryDirectory(prefix="nas-bench-mpc-") as work:
        results = run_jobs(mode, args.workers, bar_ms, archs, work, log)
    trained = {label: r for label, r in results.items() if r["kind"] == "train"}
    timing = {label: {k: v for k, v in r.items() if k.endswith("_s")} for label, r in results.items()}
    supernet = results.get("supernet")
    extra = {"timing": timing, "epochs": spec.train.epochs, "train_images": len(splits.y_train),
             "val_images": len(splits.y_val), "search_val_images": min(MODES[mode]["val_images"], len(splits.y_val)),
             "test_images": len(trained[BASELINE]["correct"]), "wall_s": round(time.perf_counter() - started, 1)}
    summary = summarise(mode, space, wan, lan, trained, archs,
                        {k: v for k, v in results["nsga2"].items() if k != "kind"} if "nsga2" in results else None,
                        {k: v for k, v in results["mpcvit"].items() if k != "kind"} if "mpcvit" in results else None,
                        None if supernet is None else {k: v for k, v in supernet.items()
                                                       if k not in ("kind", "checkpoint")}, extra)
    print_table(summary)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
