"""Benchmark: hand-designed networks trained from scratch, beside the quickstart's Pareto front.

    python benchmarks/baselines.py           # fresh quickstart run (`nas latency measure` + `nas search --target
                                             # host`) in a private workspace, then every baseline, 2 epochs
    python benchmarks/baselines.py --quick   # the 1.18 M-MAC CNN and the smallest MobileNetV2, 1 epoch on a 10k
                                             # subset; no front unless --job is given (<= 3 minutes)
    python benchmarks/baselines.py --job-store sqlite:///nas.db --job 3   # the front of an existing job instead
    python benchmarks/baselines.py --no-front                             # the baselines only

Baselines, all trained here from scratch with one recipe: AdamW (lr 3e-3, weight decay 0.05), one-cycle
schedule, label smoothing 0.1, batch 128, no augmentation, seed 0, one torch thread, channels-last memory format;
full mode 2 epochs on the training split of `DataSpec(dataset="fashion-mnist", val_fraction=0.1)` (the
quickstart's: 54,000 images, 6,000 held out for validation), quick mode 1 epoch on the 9,000 training images of a
seeded 10,000-image subset (`limit=10000`). Test accuracy is always on the 10,000 Fashion-MNIST test images.
- `cnn_*`: the plain CNN of issue 8: five 3x3 conv-BN-ReLU layers with strides 1, 2, 1, 2, 2, global average
  pool, linear; the widths of the issue's table (1.18 M, 1.73 M, 6.47 M MACs) and one in between.
- `mbv2_*`: a small MobileNetV2: a 3x3 stride-1 stem, inverted residuals (1x1 expand, 3x3 depthwise, linear 1x1
  project, ReLU6, residual when the shape allows) in stages (t, c, n, s) = (1, 16, 1, 1), (4, 24, 2, 2),
  (4, 32, 2, 2), (4, 64, 2, 2), a 1x1 conv to 128, pool, linear; channels scaled by a width multiplier.

MACs: `torch.utils.flop_counter.FlopCounterMode` on one 28 x 28 image, divided by 2: the multiply-accumulates of
convolutions (depthwise included), linear layers and matmuls, nothing for BatchNorm, activations, pooling or
additions, which is nas's convention (`SearchSpace.flops`; equal on every quickstart arch, see
tests/test_benchmarks_baselines.py). Front members are counted the same way on their exported model, and the
count is checked against the `flops` metric the store holds. Params: every parameter (BatchNorm's weight and bias,
not its running statistics), as `SearchSpace.params`.

Host latency at batch 1, one thread, torch eager under inference_mode, the thread's CPU clock, with the harness
of nas's host target (`nas.latency.host`), every network at the same input size, 28 px (the quickstart's training
resolution; its search predicts latency at `deploy.resolution`, reported as `predicted_latency_ms`, not comparable):
`host_ms` is `measure_networks`, baselines and front members in one session in the sequence schedule (100 rounds,
each network once per round in a fresh order, so each run starts from the cache state another network left: the
absolute figures depend on the session's company, the comparison is within the session); `host_warm_ms` is
`time_call`, each network alone, back to back (warm cache, as a model called in a loop). Medians.

A baseline is *reached* by the front when a front member has at most its MACs and a test accuracy at least its
accuracy minus 0.3 points; the front member's accuracy is `finetuned_test_accuracy` when the store has it (the
weights `nas export` ships), else `test_accuracy`.

Prints a markdown table, writes the plot (benchmarks/out/baselines.png by default; benchmarks/out/ is not
committed: copy it next to RESULTS.md to embed it), and ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import ROOT, machine, run_nas, workspace_env  # noqa: E402
from benchmarks.plot import Panel, Series, save_scatter  # noqa: E402
from nas.export import load_export  # noqa: E402  (an export loaded the way its README says)

REACH_MARGIN = 0.003  # 0.3 points of accuracy
HOST_RESOLUTION = 28
HOST_ROUNDS = 100  # interleaved rounds of the host timing (nas's tables use 30; networks here are ~1 ms)
IN_CHANNELS, NUM_CLASSES = 1, 10
RECIPE = {"optimizer": "AdamW", "lr": 3e-3, "weight_decay": 0.05, "schedule": "one-cycle", "label_smoothing": 0.1,
          "batch_size": 128, "augmentation": "none", "seed": 0}
DEFAULT_PLOT = ROOT / "benchmarks" / "out" / "baselines.png"


# ---- the hand-designed families ------------------------------------------------------------------------------

def _conv_bn(cin: int, cout: int, kernel: int, stride: int, groups: int = 1, act: type[nn.Module] | None = nn.ReLU
             ) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
                               nn.BatchNorm2d(cout)]
    if act is not None:
        layers.append(act())
    return nn.Sequential(*layers)


def plain_cnn(widths: Sequence[int], in_channels: int = IN_CHANNELS, num_classes: int = NUM_CLASSES) -> nn.Module:
    """Issue 8's CNN: 3x3 conv-BN-ReLU layers with strides 1, 2, 1, 2, 2, global average pool, linear."""
    strides = (1, 2, 1, 2, 2)
    if len(widths) != len(strides):
        raise ValueError(f"the plain CNN has {len(strides)} layers, got {len(widths)} widths")
    layers: list[nn.Module] = []
    cin = in_channels
    for width, stride in zip(widths, strides, strict=True):
        layers.append(_conv_bn(cin, width, 3, stride))
        cin = width
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, num_classes))


def _divisible(value: float, divisor: int = 8) -> int:
    """MobileNet's channel rounding: the nearest multiple of `divisor`, never below 90% of `value`."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


class InvertedResidual(nn.Module):
    """MobileNetV2's block: 1x1 expand (none at t=1), 3x3 depthwise, linear 1x1 project, residual if same shape."""

    def __init__(self, cin: int, cout: int, expand: int, stride: int):
        super().__init__()
        hidden = cin * expand
        layers = [_conv_bn(cin, hidden, 1, 1, act=nn.ReLU6)] if expand != 1 else []
        layers += [_conv_bn(hidden, hidden, 3, stride, groups=hidden, act=nn.ReLU6),
                   _conv_bn(hidden, cout, 1, 1, act=None)]
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        return x + out if self.residual else out


# (expand t, channels c, repeats n, stride s) of each stage
MBV2_STAGES = ((1, 16, 1, 1), (4, 24, 2, 2), (4, 32, 2, 2), (4, 64, 2, 2))


def mobilenet_v2(alpha: float, stem: int = 16, head: int = 128,
                 stages: Sequence[tuple[int, int, int, int]] = MBV2_STAGES,
                 in_channels: int = IN_CHANNELS, num_classes: int = NUM_CLASSES) -> nn.Module:
    """A small MobileNetV2 for 28 px inputs (stride-1 stem, three stride-2 stages down to 4 x 4), width `alpha`."""
    cin = _divisible(stem * alpha)
    layers: list[nn.Module] = [_conv_bn(in_channels, cin, 3, 1, act=nn.ReLU6)]
    for t, c, n, s in stages:
        cout = _divisible(c * alpha)
        for i in range(n):
            layers.append(InvertedResidual(cin, cout, t, s if i == 0 else 1))
            cin = cout
    head_channels = _divisible(head * alpha) if alpha > 1 else head
    layers.append(_conv_bn(cin, head_channels, 1, 1, act=nn.ReLU6))
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(head_channels, num_classes))


@dataclass(frozen=True)
class Baseline:
    name: str
    family: str
    build: Callable[[], nn.Module]
    config: dict[str, Any] = field(default_factory=dict)


def _cnn(widths: tuple[int, ...]) -> Baseline:
    return Baseline("cnn_" + "-".join(map(str, widths)), "plain CNN", lambda: plain_cnn(widths),
                    {"widths": list(widths), "strides": [1, 2, 1, 2, 2]})


def _mbv2(alpha: float) -> Baseline:
    return Baseline(f"mbv2_x{alpha:g}", "MobileNetV2", lambda: mobilenet_v2(alpha), {"width_multiplier": alpha})


BASELINES = (
    _cnn((8, 16, 16, 32, 48)),  # issue 8: 1.18 M MACs, 22.7 k params
    _cnn((12, 16, 24, 32, 64)),  # issue 8: 1.73 M, 31.6 k
    _cnn((16, 24, 32, 48, 64)),  # in between
    _cnn((24, 32, 48, 64, 96)),  # issue 8: 6.47 M, 105 k
    _mbv2(0.35),
    _mbv2(0.5),
    _mbv2(1.0),
)
QUICK_BASELINES = ("cnn_8-16-16-32-48", "mbv2_x0.35")


# ---- counting, training, timing ------------------------------------------------------------------------------

def count_macs(model: nn.Module, resolution: int = HOST_RESOLUTION, in_channels: int = IN_CHANNELS) -> int:
    """Multiply-accumulates of one forward pass on one image (FlopCounterMode's FLOPs / 2; nas's convention)."""
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        model(torch.zeros(1, in_channels, resolution, resolution))
    model.train(was_training)
    return counter.get_total_flops() // 2


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch: int = 500) -> float:
    model.eval()
    correct = 0
    with torch.inference_mode():
        for start in range(0, len(labels), batch):
            correct += int((model(images[start:start + batch]).argmax(-1) == labels[start:start + batch]).sum())
    return correct / max(1, len(labels))


def train_from_scratch(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, epochs: int,
                       seed: int = RECIPE["seed"]) -> float:
    """The recipe of `RECIPE`; returns the training wall time in seconds. Trains in channels-last memory format
    (1.5-2x faster on this CPU for depthwise convolutions, same arithmetic) and hands the model back in the default
    format, the layout nas's harness times the front members in."""
    batch = RECIPE["batch_size"]
    model.to(memory_format=torch.channels_last)
    steps = epochs * math.ceil(len(labels) / batch)
    optimizer = torch.optim.AdamW(model.parameters(), lr=RECIPE["lr"], weight_decay=RECIPE["weight_decay"])
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=RECIPE["lr"], total_steps=steps)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=RECIPE["label_smoothing"])
    generator = torch.Generator().manual_seed(seed)
    started = time.perf_counter()
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(labels), generator=generator)
        for start in range(0, len(order), batch):
            index = order[start:start + batch]
            loss = loss_fn(model(images[index].contiguous(memory_format=torch.channels_last)), labels[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    seconds = time.perf_counter() - started
    model.to(memory_format=torch.contiguous_format)
    return seconds


def time_host(models: Sequence[nn.Module], resolution: int = HOST_RESOLUTION, rounds: int = HOST_ROUNDS
              ) -> list[dict[str, float]]:
    """Each model at batch 1, one thread, with nas's host harness, at `resolution`:

    `host_ms`: `measure_networks` (how nas times whole networks for the host target: the sequence schedule, every
    network once per round in a fresh order, so each run starts from the cache state another network left; all
    models in one session); `host_warm_ms`: `time_call`, each model alone, back to back (a warm cache, as a model
    called in a loop). Medians in ms, with the inter-quartile spreads.
    """
    from nas.latency.host import clock_for, make_runner, measure_networks, pin_allocator, time_call, torch_threads

    networks = [(m.eval(), torch.randn(1, IN_CHANNELS, resolution, resolution)) for m in models]
    cold = measure_networks(networks, threads=1, rounds=rounds)
    pin_allocator()
    with torch_threads(1):
        warm = [time_call(make_runner(m, x, "torch", 1), clock_for(1), repeats=rounds, min_seconds=0.2)
                for m, x in networks]
    return [{"host_ms": round(c.ms, 4), "host_spread_ms": round(c.spread_ms, 4), "host_warm_ms": round(w[0], 4),
             "host_warm_spread_ms": round(w[1], 4)} for c, w in zip(cold, warm, strict=True)]


def reached_by(baseline: dict[str, Any], front: Sequence[dict[str, Any]]) -> str | None:
    """The front member with the fewest MACs that reaches `baseline` (MACs <=, accuracy >= baseline's - 0.3 pt)."""
    hits = [f for f in front if f["macs"] <= baseline["macs"] and f.get("deploy_accuracy") is not None
            and f["deploy_accuracy"] >= baseline["test_accuracy"] - REACH_MARGIN - 1e-12]
    return min(hits, key=lambda f: (f["macs"], f["name"]))["name"] if hits else None


# ---- the front -----------------------------------------------------------------------------------------------

def export_test_images(folder: Path) -> torch.Tensor:
    """The Fashion-MNIST test images preprocessed as the export's preprocess.json says."""
    from nas.data import FASHION_MNIST_DIR, read_idx

    pre = json.loads((folder / "preprocess.json").read_text())
    root = Path(os.environ.get("NAS_FASHION_MNIST") or FASHION_MNIST_DIR)
    raw = torch.from_numpy(read_idx(root / "t10k-images-idx3-ubyte.gz").copy()).float()[:, None]
    mean = torch.tensor(pre["mean"]).view(1, -1, 1, 1)
    std = torch.tensor(pre["std"]).view(1, -1, 1, 1)
    return (raw * pre.get("scale", 1 / 255) - mean) / std


def _metric(record: dict[str, Any], name: str) -> float | None:
    for m in record.get("metrics", []):
        if m["name"] == name and not m.get("target"):
            return m["value"]
    return record.get(name)


def read_front(store_url: str, job_id: int, target: str | None, cwd: Path, env: dict[str, str],
               scratch: Path, log: Callable[[str], None]) -> tuple[list[dict[str, Any]], list[nn.Module], dict]:
    """The job's Pareto front on `target` (default: its first target) through the `nas` CLI, each member's export
    loaded (exported now with `nas export` when the job's folder has none). Returns (rows, models, source)."""
    jobs, _ = run_nas(["jobs", "--store", store_url], cwd, env)
    job = next((j for j in jobs if j["job_id"] == job_id), None)
    if job is None:
        raise SystemExit(f"job {job_id} is not in {store_url}")
    target = target or job["targets"][0]
    records, _ = run_nas(["pareto", str(job_id), "--target", target, "--store", store_url], cwd, env)
    run_dir = Path(job["run_dir"]) if Path(job["run_dir"]).is_absolute() else cwd / job["run_dir"]
    from nas.data import FASHION_MNIST_DIR, read_idx

    root = Path(os.environ.get("NAS_FASHION_MNIST") or FASHION_MNIST_DIR)
    test_labels = torch.from_numpy(read_idx(root / "t10k-labels-idx1-ubyte.gz").astype("int64"))
    rows, models = [], []
    for r in records:
        cid = r["candidate_id"]
        folder = run_dir / "exports" / f"c{cid}"
        if not (folder / "network.json").exists():
            folder = scratch / f"c{cid}"
            log(f"exporting c{cid} (no export in {run_dir / 'exports'})")
            run_nas(["export", str(cid), "--out", str(folder), "--store", store_url], cwd, env)
        log(f"c{cid}: loading and testing {folder}")
        model = load_export(folder)
        network = json.loads((folder / "network.json").read_text())
        resolution = network.get("resolution", HOST_RESOLUTION)
        macs = count_macs(model, resolution, network.get("in_channels", IN_CHANNELS))
        test, tuned = _metric(r, "test_accuracy"), _metric(r, "finetuned_test_accuracy")
        row = {
            "name": f"c{cid}", "candidate_id": cid, "macs": macs, "macs_stored": r.get("flops"),
            "params": count_params(model), "params_stored": r.get("params"), "resolution": resolution,
            "test_accuracy": test, "finetuned_test_accuracy": tuned,
            "deploy_accuracy": tuned if tuned is not None else test,
            "export_test_accuracy": round(evaluate(model, export_test_images(folder), test_labels), 4)
            if (network.get("in_channels"), network.get("num_classes")) == (IN_CHANNELS, NUM_CLASSES) else None,
            "val_accuracy": r.get("accuracy"), "predicted_latency_ms": r.get("latency_ms", {}),
            "flags": r.get("flags", {}),
        }
        if row["macs_stored"] is not None and int(row["macs_stored"]) != macs:
            log(f"warning: c{cid}: counted {macs} MACs, the store says {int(row['macs_stored'])}")
        rows.append(row)
        models.append(model)
    source = {"store": store_url, "job": job_id, "target": target, "status": job["status"],
              "spec": job.get("name"), "members": len(rows)}
    return rows, models, source


def fresh_quickstart(work: Path, spec_path: Path, target: str, log: Callable[[str], None]) -> tuple[str, int, dict]:
    """`nas latency measure` (host) and `nas search SPEC --target TARGET` in the private workspace `work`."""
    env = workspace_env(work)
    spec = work / "quickstart.yaml"
    spec.write_text(spec_path.read_text())
    timings: dict[str, float] = {}
    if target == "host":
        log("measuring this machine's host latency table (nas latency measure --target host)")
        _, timings["latency_measure_s"] = run_nas(["latency", "measure", "--target", "host", "--spec", str(spec),
                                                   "--no-progress"], work, env)
    log(f"running the quickstart: nas search {spec_path.name} --target {target}")
    result, timings["search_s"] = run_nas(["search", str(spec), "--target", target, "--no-progress"], work, env)
    assert isinstance(result, dict)
    return env["NAS_STORE"], int(result["job_id"]), {k: round(v, 1) for k, v in timings.items()}


# ---- output ----------------------------------------------------------------------------------------------------

def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def _ms(row: dict[str, Any]) -> str:
    warm = row.get("host_warm_ms")
    return f"{row['host_ms']:.3f}" + (f" / {warm:.3f}" if warm is not None else "")


def markdown(baselines: list[dict[str, Any]], front: list[dict[str, Any]]) -> str:
    lines = ["| model | MACs | params | training | test accuracy | fine-tuned | host ms (28 px): session / warm "
             "| reached by |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for b in sorted(baselines, key=lambda b: (b["family"], b["macs"])):
        lines.append(f"| {b['name']} ({b['family']}) | {b['macs'] / 1e6:.2f} M | {b['params'] / 1e3:.1f} k | "
                     f"{b['epochs']} ep x {b['train_images']:,} img, {b['train_s']:.0f} s | {_pct(b['test_accuracy'])} "
                     f"| - | {_ms(b)} | {b['reached_by'] or '-'} |")
    for f in sorted(front, key=lambda f: f["macs"]):
        lines.append(f"| front {f['name']} | {f['macs'] / 1e6:.2f} M | {f['params'] / 1e3:.1f} k | supernet + search "
                     f"| {_pct(f['test_accuracy'])} | {_pct(f['finetuned_test_accuracy'])} | {_ms(f)} | |")
    return "\n".join(lines)


def plot(path: Path, baselines: list[dict[str, Any]], front: list[dict[str, Any]], title: str) -> str:
    panels = [Panel("MACs (millions)", "test accuracy (%)", log_x=True),
              Panel(f"host latency (ms, batch 1, 1 thread, {HOST_RESOLUTION} px)", "test accuracy (%)", log_x=True)]

    def pts(rows: list[dict[str, Any]], key: str = "test_accuracy") -> list[list[tuple[float, float]]]:
        rows = [r for r in rows if r.get(key) is not None]
        return [[(r["macs"] / 1e6, 100 * r[key]) for r in rows], [(r["host_ms"], 100 * r[key]) for r in rows]]

    series = []
    for family, color, marker in (("plain CNN", "#1f77b4", "s"), ("MobileNetV2", "#2ca02c", "^")):
        rows = sorted((b for b in baselines if b["family"] == family), key=lambda b: b["macs"])
        if rows:
            series.append(Series(f"{family} (from scratch)", pts(rows), color, marker))
    if front:
        series.append(Series("front (inherited weights)", pts(front), "#d62728", "o", line=False, filled=False,
                             labels=[f["name"] for f in front]))
        tuned = [f for f in front if f["finetuned_test_accuracy"] is not None]
        if tuned:
            series.append(Series("front (fine-tuned)", pts(tuned, "finetuned_test_accuracy"), "#d62728", "D",
                                 line=False))
    return save_scatter(path, title, panels, series)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="two baselines, 1 epoch on 10k images (<= 3 minutes)")
    parser.add_argument("--job-store", help="read the front of an existing job from this store URL (with --job)")
    parser.add_argument("--job", type=int, help="the job whose Pareto front to compare (with --job-store)")
    parser.add_argument("--front-target", help="the target whose front to read (default: host for a fresh run, "
                        "else the job's first target)")
    parser.add_argument("--no-front", action="store_true", help="the baselines only")
    parser.add_argument("--spec", type=Path, default=ROOT / "search_spaces" / "quickstart.yaml",
                        help="the spec of the fresh run (full mode)")
    parser.add_argument("--workdir", type=Path, help="keep the fresh run's workspace here (default: a temp folder)")
    parser.add_argument("--epochs", type=int, help="training epochs of the baselines (default: 2, quick: 1)")
    parser.add_argument("--only", action="append", help="train only this baseline (repeatable)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for training (default 1: on a shared "
                        "2-core machine two threads ran a training step up to 18x slower)")
    parser.add_argument("--plot", type=Path, default=DEFAULT_PLOT, help=f"the plot (default: {DEFAULT_PLOT})")
    args = parser.parse_args()
    if (args.job is None) != (args.job_store is None):
        parser.error("--job and --job-store go together")

    started = time.perf_counter()
    torch.set_num_threads(args.threads)

    def log(message: str) -> None:
        print(f"[baselines {time.perf_counter() - started:5.0f} s] {message}", file=sys.stderr, flush=True)

    epochs = args.epochs or (1 if args.quick else 2)
    names = args.only or (list(QUICK_BASELINES) if args.quick else [b.name for b in BASELINES])
    unknown = sorted(set(names) - {b.name for b in BASELINES})
    if unknown:
        parser.error(f"unknown baseline(s) {', '.join(unknown)}; known: {', '.join(b.name for b in BASELINES)}")

    # The front first (a fresh run is the long part, and nothing else shares the cores with it).
    front: list[dict[str, Any]] = []
    front_models: list[nn.Module] = []
    source: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="nas-bench-baselines-") as tmp:
        try:
            if args.job is not None:
                front, front_models, source = read_front(args.job_store, args.job, args.front_target, Path.cwd(),
                                                         dict(os.environ), Path(tmp) / "exports", log)
            elif args.no_front:
                source = {"note": "skipped (--no-front)"}
            elif args.quick:
                source = {"note": "skipped in quick mode (a tiny quickstart run alone takes > 3 minutes on 2 "
                                  "cores); pass --job-store URL --job ID to read an existing job's front"}
            else:
                work = args.workdir.resolve() if args.workdir else Path(tmp) / "work"
                work.mkdir(parents=True, exist_ok=True)
                target = args.front_target or "host"
                store_url, job_id, run_timings = fresh_quickstart(work, args.spec, target, log)
                front, front_models, source = read_front(store_url, job_id, target, work, workspace_env(work),
                                                         Path(tmp) / "exports", log)
                source.update(run_timings, fresh_run=str(args.spec.relative_to(ROOT) if args.spec.is_relative_to(ROOT)
                                                     else args.spec), workspace=str(work) if args.workdir else None)
        except SystemExit as exc:  # a failed run: the baselines alone, said so
            log(f"no front: {exc}")
            front, front_models, source = [], [], {"note": f"front not available: {exc}"}

    from nas.data import load
    from nas.spec import DataSpec

    data = DataSpec(dataset="fashion-mnist", val_fraction=0.1, limit=10000 if args.quick else None)
    splits = load(data)
    log(f"data: {len(splits.y_train):,} training images, {len(splits.y_test):,} test images; "
        f"{torch.get_num_threads()} torch thread(s) for training and evaluation")
    rows: list[dict[str, Any]] = []
    models: list[nn.Module] = []
    for baseline in (b for b in BASELINES if b.name in names):
        torch.manual_seed(RECIPE["seed"])
        model = baseline.build()
        macs, params = count_macs(model), count_params(model)
        train_s = train_from_scratch(model, splits.x_train, splits.y_train, epochs)
        test = evaluate(model, splits.x_test, splits.y_test)
        log(f"{baseline.name}: {macs / 1e6:.2f} M MACs, {params / 1e3:.1f} k params, {train_s:.0f} s, test {test:.4f}")
        rows.append({"name": baseline.name, "family": baseline.family, **baseline.config, "macs": macs,
                     "params": params, "test_accuracy": round(test, 4), "val_accuracy":
                     round(evaluate(model, splits.x_val, splits.y_val), 4), "epochs": epochs,
                     "train_images": len(splits.y_train), "train_s": round(train_s, 1)})
        models.append(model)

    log(f"timing {len(models) + len(front_models)} networks at {HOST_RESOLUTION} px (batch 1, 1 thread)")
    for row, timing in zip(rows + front, time_host(models + front_models), strict=True):
        row.update(timing)
    for row in rows:
        row["reached_by"] = reached_by(row, front)
    mode = "quick" if args.quick else "full"
    vs = f"the {source['spec']} front (job {source['job']}, {source['target']})" if front else "no front"
    backend = plot(args.plot, rows, front, f"Fashion-MNIST test accuracy: hand-designed networks, {epochs} epoch(s) "
                   f"from scratch on {len(splits.y_train):,} images, vs {vs} ({mode} mode)")
    log(f"plot: {args.plot} ({backend})")

    print(markdown(rows, front))
    print()
    summary = {
        "benchmark": "baselines",
        "mode": mode,
        "front": front,
        "baselines": rows,
        "dominated_baselines": sum(r["reached_by"] is not None for r in rows),
        "baselines_count": len(rows),
        "reach_rule": "front member with MACs <= baseline's and accuracy >= baseline's - 0.3 points (front accuracy: "
                      "finetuned_test_accuracy when stored, else test_accuracy)",
        "front_source": source,
        "recipe": {**RECIPE, "epochs": epochs, "train_images": len(splits.y_train), "test_images":
                   len(splits.y_test), "data": data.model_dump(mode="json", exclude_defaults=True),
                   "threads": torch.get_num_threads()},
        "host_latency": {"resolution": HOST_RESOLUTION, "batch": 1, "threads": 1, "runtime": "torch eager",
                         "host_ms": f"nas.latency.host.measure_networks: all networks in one session, sequence "
                                    f"schedule ({HOST_ROUNDS} rounds), thread CPU clock, median",
                         "host_warm_ms": "nas.latency.host.time_call: each network alone, back to back, median"},
        "macs": "FlopCounterMode / 2 at the network's resolution: conv, linear and matmul multiply-accumulates",
        "plot": str(args.plot),
        "wall_s": round(time.perf_counter() - started, 1),
        "machine": machine(),
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
