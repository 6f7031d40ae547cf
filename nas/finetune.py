"""Fine-tuning of chosen subnets: a stored candidate trained alone, starting from its inherited weights.

A subnet extracted from the supernet (`Supernet.extract`, BatchNorm calibrated as for its search accuracy)
trains for `epochs` on the training split with AdamW, a one-cycle schedule (warm-up over 30% of the steps from
lr/25 to lr, cosine annealing to ~0), label smoothing and `train.augment`; with `distill > 0` its loss is
`(1 - distill) * label loss + distill * KL(teacher || student)`, plus `feature_weight * MSE` between the
token features of student and teacher (MPCViT), the teacher being `teacher` (`nas.distill`: the supernet's
largest subnet, the student's all-softmax arch, or an external model). Its BatchNorm statistics are then
re-estimated exactly on the calibration images (clean, as at evaluation), and it is scored on the validation
images the search used and on the test split.

Results are kept beside the inherited ones: the weights (a state dict of the `nas.static_model` network, loadable
with `weights_only=True`) go atomically to `<job run dir>/finetuned/c<ID>.pt`, recorded as the store artifact
(`finetuned`, `<ID>`), and the candidate gains the metrics `finetuned_accuracy` (validation),
`finetuned_test_accuracy` and `finetune_epochs`. `nas export` then ships those weights (`finetuned_weights`).
Everything is seeded: the same candidate, recipe and seed give the same weights.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from tqdm import tqdm

from nas import static_model
from nas.augment import augment_batch, epoch_generator
from nas.distill import distill_terms, features_and_logits, softmax_teacher, teacher_model
from nas.errors import NASError
from nas.evaluate import Evaluator, accuracy, calibrate_batchnorm
from nas.files import exclusive_lock, write_atomic
from nas.space import ArchConfig
from nas.spec import ONECYCLE_WARMUP_FRACTION, AugmentSpec, FinetuneSpec, Spec
from nas.store import CandidateRecord, Metric, Store
from nas.train import _first_line, label_loss, load_weights_only, schedule_for

if TYPE_CHECKING:
    from nas.data import Splits
    from nas.pipeline import Context

FINETUNED_ARTIFACT = "finetuned"
FINETUNE_DIR = "finetuned"
CLIP_NORM = 5.0  # the supernet trainer's gradient clip
_AUGMENT_STREAM = 2  # the supernet's training draws stream 1 of `epoch_generator`


@dataclass(frozen=True)
class Recipe:
    """How a subnet is fine-tuned (see the module docstring)."""

    epochs: int
    lr: float
    weight_decay: float = 0.05
    label_smoothing: float = 0.1
    distill: float = 0.0
    teacher: str = "largest"  # nas.distill.TEACHERS
    feature_weight: float = 0.0
    checkpoint: str | None = None  # the external teacher
    augment: AugmentSpec | None = None
    batch_size: int = 128
    seed: int = 0
    warmup_fraction: float = ONECYCLE_WARMUP_FRACTION

    @classmethod
    def from_spec(cls, spec: Spec, epochs: int | None = None, lr: float | None = None,
                  label_smoothing: float | None = None, distill: float | None = None) -> Recipe:
        """The recipe of a job's spec: `search.finetune` (or its defaults), the training's optimiser settings,
        augmentation, batch size and the search seed; the keyword arguments override it."""
        tune = spec.search.finetune or FinetuneSpec()
        default = tune.epochs if isinstance(tune.epochs, int) else tune.epochs[-1]  # a list: the largest pick's
        return cls(epochs=epochs if epochs is not None else default,
                   lr=lr if lr is not None else (tune.lr or spec.train.optimizer.lr),
                   weight_decay=spec.train.optimizer.weight_decay,
                   label_smoothing=label_smoothing if label_smoothing is not None else tune.label_smoothing,
                   distill=distill if distill is not None else tune.distill, teacher=tune.teacher,
                   feature_weight=tune.feature_weight, checkpoint=tune.checkpoint,
                   augment=spec.train.augment, batch_size=spec.data.batch_size, seed=spec.search.seed)


@dataclass(frozen=True)
class FinetuneResult:
    candidate_id: int
    epochs: int
    val_accuracy: float
    test_accuracy: float
    inherited_accuracy: float | None
    inherited_test_accuracy: float | None
    weights: Path
    seconds: float
    epoch_losses: tuple[float, ...]

    def to_json(self) -> dict[str, object]:
        return {"candidate_id": self.candidate_id, "finetune_epochs": self.epochs,
                "finetuned_accuracy": self.val_accuracy, "finetuned_test_accuracy": self.test_accuracy,
                "accuracy": self.inherited_accuracy, "test_accuracy": self.inherited_test_accuracy,
                "weights": str(self.weights), "seconds": round(self.seconds, 3),
                "epoch_losses": list(self.epoch_losses)}


def train_subnet(model: nn.Module, images_all: torch.Tensor, labels_all: torch.Tensor, recipe: Recipe,
                 teacher: nn.Module | None = None, progress: bool = False, desc: str = "finetune") -> list[float]:
    """Train `model` in place for `recipe.epochs` on `images_all` / `labels_all` (the training split); returns
    each epoch's mean loss."""
    batch = min(recipe.batch_size, len(labels_all))
    if batch < 1:
        raise NASError("finetune: the training split is empty")
    steps_per_epoch = max(1, len(labels_all) // batch)
    model.to(memory_format=torch.channels_last)  # ~1.3x faster depthwise convolutions on CPU
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": recipe.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=recipe.lr, fused=True)
    schedule = schedule_for(optimizer, steps_per_epoch * recipe.epochs, "onecycle", 0, recipe.warmup_fraction)
    params = list(model.parameters())
    losses = []
    for epoch in range(recipe.epochs):
        model.train()
        order = torch.randperm(len(labels_all), generator=torch.Generator().manual_seed(recipe.seed + epoch))
        shifts = epoch_generator(recipe.seed, epoch, _AUGMENT_STREAM)
        total = 0.0
        bar = tqdm(range(steps_per_epoch), desc=f"{desc} epoch {epoch + 1}/{recipe.epochs}", disable=not progress,
                   leave=False, unit="step")
        for i in bar:
            idx = order[i * batch:(i + 1) * batch]
            images = augment_batch(images_all[idx], recipe.augment, shifts).contiguous(
                memory_format=torch.channels_last)
            labels = labels_all[idx]
            features = teacher is not None and recipe.feature_weight > 0
            feats, logits = features_and_logits(model, images, features)
            loss = label_loss(logits, labels, recipe.label_smoothing)
            if teacher is not None and _distils(recipe):
                with torch.no_grad():
                    teacher_feats, soft = features_and_logits(teacher, images, features)
                kl, mse = distill_terms(logits, soft, feats, teacher_feats)
                loss = (1.0 - recipe.distill) * loss + recipe.distill * kl + recipe.feature_weight * mse
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, CLIP_NORM)
            optimizer.step()
            schedule.step()
            total += loss.item()
            bar.set_postfix(loss=f"{loss.item():.3f}")
        losses.append(total / steps_per_epoch)
    model.to(memory_format=torch.contiguous_format)
    return losses


def _distils(recipe: Recipe) -> bool:
    return recipe.distill > 0 or recipe.feature_weight > 0


def finetune_subnet(evaluator: Evaluator, arch: ArchConfig, splits: Splits, recipe: Recipe,
                    teacher_arch: ArchConfig | None = None, progress: bool = False,
                    desc: str = "finetune") -> tuple[nn.Module, list[float]]:
    """`arch`'s subnet with inherited weights, fine-tuned by `recipe` and BatchNorm-calibrated, in eval mode, and
    each epoch's mean loss. With `recipe.distill` or `recipe.feature_weight`, the teacher is `teacher_arch`'s
    subnet when given, else `recipe.teacher` (`nas.distill.teacher_model`)."""
    model = evaluator.subnet(arch)
    teacher = None
    if _distils(recipe):
        teacher = (evaluator.subnet(teacher_arch).eval().requires_grad_(False) if teacher_arch is not None else
                   teacher_model(recipe.teacher, arch, evaluator, splits, recipe.checkpoint))
    losses = train_subnet(model, splits.x_train, splits.y_train, recipe, teacher, progress, desc)
    calibrate_batchnorm(model, evaluator.calibration)
    return model.eval(), losses


def weights_path(run_dir: Path, candidate_id: int) -> Path:
    return run_dir / FINETUNE_DIR / f"c{candidate_id}.pt"


def finetune_candidate(store: Store, record: CandidateRecord, ctx: Context, evaluator: Evaluator, run_dir: Path,
                       recipe: Recipe, progress: bool = False,
                       log: Callable[[str], None] | None = None) -> FinetuneResult:
    """Fine-tune a stored candidate, save its weights under `run_dir` and store its metrics and artifact."""
    started = time.perf_counter()
    arch = ArchConfig.from_dict(record.arch)
    model, losses = finetune_subnet(evaluator, arch, ctx.splits, recipe, progress=progress,
                                    desc=f"finetune c{record.candidate_id}")
    return _keep(store, record, ctx, evaluator, run_dir, recipe, model, losses, time.perf_counter() - started, log)


def _keep(store: Store, record: CandidateRecord, ctx: Context, evaluator: Evaluator, run_dir: Path, recipe: Recipe,
          model: nn.Module, losses: Sequence[float], seconds: float,
          log: Callable[[str], None] | None) -> FinetuneResult:
    """Score a fine-tuned, calibrated subnet on the validation and test images, save its weights and store them
    with its metrics (together, under a lock)."""
    val = accuracy(model, evaluator.x_val, evaluator.y_val)
    test = accuracy(model, ctx.splits.x_test, ctx.splits.y_test)
    path = weights_path(run_dir, record.candidate_id).resolve()
    state = {name: tensor.detach().clone().contiguous() for name, tensor in model.state_dict().items()}
    # One fine-tuning of a candidate lands at a time: its weights file and its metrics always belong together.
    with exclusive_lock(path.with_suffix(".lock")):
        write_atomic(path, lambda f: torch.save(state, f))
        store.add_metrics(record.candidate_id, [Metric("finetuned_accuracy", val),
                                                Metric("finetuned_test_accuracy", test),
                                                Metric("finetune_epochs", float(recipe.epochs))])
        store.put_artifact(FINETUNED_ARTIFACT, str(record.candidate_id), str(path))
    result = FinetuneResult(record.candidate_id, recipe.epochs, val, test, record.metric("accuracy"),
                            record.metric("test_accuracy"), path, seconds, tuple(losses))
    if log is not None:
        log(f"fine-tuned candidate {record.candidate_id} for {recipe.epochs} epoch(s) in {result.seconds:.0f} s: "
            f"validation accuracy {_pct(result.inherited_accuracy)} -> {_pct(val)}, "
            f"test {_pct(result.inherited_test_accuracy)} -> {_pct(test)}")
    return result


# ---- several subnets at once: one process per core, one thread each ---------------------------------------
_WORKER_DATA: dict[str, Any] = {}


def _init_worker(x_train: torch.Tensor, y_train: torch.Tensor) -> None:
    torch.set_num_threads(1)
    _WORKER_DATA.update(x=x_train, y=y_train)


#: (description, inherited state, teacher description or None, teacher state or None, recipe)
_Job = tuple[dict[str, Any], dict[str, torch.Tensor], dict[str, Any] | None, dict[str, torch.Tensor] | None, Recipe]


def _train_in_worker(job: _Job) -> tuple[dict[str, torch.Tensor], list[float], float]:
    """Train one subnet (its description and inherited weights) in a worker: its state dict, epoch losses and
    seconds."""
    description, state, teacher_description, teacher_state, recipe = job
    started = time.perf_counter()
    model = static_model.build(description)
    model.load_state_dict(state)
    teacher = None
    if teacher_description is not None and teacher_state is not None:
        teacher = static_model.build(teacher_description)
        teacher.load_state_dict(teacher_state)
        teacher.eval().requires_grad_(False)
    losses = train_subnet(model, _WORKER_DATA["x"], _WORKER_DATA["y"], recipe, teacher)
    return model.state_dict(), losses, time.perf_counter() - started


def _train_parallel(evaluator: Evaluator, archs: Sequence[ArchConfig], splits: Splits, recipes: Sequence[Recipe],
                    workers: int) -> list[tuple[nn.Module, list[float], float]]:
    """Fine-tune `archs` in `workers` spawned processes (one thread each: two single-threaded trainings use
    a 2-core machine ~1.7x better than one two-threaded after the other); each subnet calibrated, in eval
    mode, with its epoch losses and training seconds, in the order of `archs`."""
    space = evaluator.supernet.space

    def teacher_of(arch: ArchConfig, recipe: Recipe) -> tuple[dict[str, Any] | None, dict[str, torch.Tensor] | None]:
        if not _distils(recipe):
            return None, None
        teacher = space.largest() if recipe.teacher == "largest" else softmax_teacher(arch, space)
        return space.describe(teacher), evaluator.subnet(teacher).state_dict()

    # The costliest first (longest-processing-time order), so the last to start is a short one.
    order = sorted(range(len(archs)), key=lambda i: (-space.flops(archs[i]) * recipes[i].epochs, i))
    jobs = [(space.describe(archs[i]), evaluator.subnet(archs[i]).state_dict(), *teacher_of(archs[i], recipes[i]),
             recipes[i]) for i in order]
    context = multiprocessing.get_context("spawn")  # never fork a process whose OpenMP pool is running
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker,
                             initargs=(splits.x_train, splits.y_train)) as pool:
        done = dict(zip(order, pool.map(_train_in_worker, jobs), strict=True))
    trained = [done[i] for i in range(len(archs))]
    out = []
    for arch, (state, losses, seconds) in zip(archs, trained, strict=True):
        model = static_model.build(space.describe(arch))
        model.load_state_dict(state)
        calibrate_batchnorm(model, evaluator.calibration)
        out.append((model.eval(), losses, seconds))
    return out


def _pct(value: float | None) -> str:
    return "?" if value is None else f"{100 * value:.2f}%"


def finetuned_weights(store: Store, record: CandidateRecord) -> Path | None:
    """The fine-tuned weights of a candidate, when it was fine-tuned and the file is still there."""
    if record.metric("finetuned_accuracy") is None:
        return None
    found = store.find_artifact(FINETUNED_ARTIFACT, str(record.candidate_id))
    return Path(found) if found and Path(found).is_file() else None


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    """Fine-tuned weights (a state dict of tensors, loaded with `weights_only=True`, so a crafted file cannot run
    code); a missing or damaged file is a one-line NASError."""
    try:
        state = load_weights_only(path)
    except FileNotFoundError:
        reason = "no such file"
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError, ... on unusable files
        reason = f"the file is corrupt, truncated or holds more than tensors ({_first_line(exc)})"
    else:
        if isinstance(state, dict) and state and all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                     for k, v in state.items()):
            return state
        reason = "not a state dict of tensors"
    raise NASError(f"{path}: cannot load the fine-tuned weights: {reason}; fine-tune the candidate again with "
                   f"`nas finetune`")


def pick_members(records: Sequence[CandidateRecord], top: int, pick: str) -> list[CandidateRecord]:
    """`search.finetune.pick` over front members: `spread` takes `top` evenly spaced by MACs (ties by id; the
    smallest and the largest always), `accuracy` the `top` most accurate by validation accuracy (then id)."""
    if pick == "accuracy":
        return sorted(records, key=lambda r: (-(r.metric("accuracy") or 0.0), r.candidate_id))[:top]
    by_macs = sorted(records, key=lambda r: (r.metric("flops") or 0.0, r.candidate_id))
    if top >= len(by_macs):
        return by_macs
    if top == 1:
        return pick_members(records, 1, "accuracy")
    last = len(by_macs) - 1
    return [by_macs[i] for i in sorted({round(k * last / (top - 1)) for k in range(top)})]


def finetune_front(store: Store, ctx: Context, evaluator: Evaluator, candidate_ids: Sequence[int], run_dir: Path,
                   log: Callable[[str], None] | None = None, workers: int | None = None) -> list[FinetuneResult]:
    """`search.finetune`: fine-tune `top` of `candidate_ids` (the members of all the job's fronts) chosen by
    `pick` (see `pick_members`), on `workers` processes at once (default: `search.workers`, at most one per
    core). A candidate already fine-tuned for as many epochs whose weights are still there is kept as it is, so a
    resumed job does not fine-tune twice."""
    tune = ctx.spec.search.finetune
    if tune is None or not candidate_ids:
        return []
    records = [store.candidate(cid) for cid in candidate_ids]
    picked = pick_members(records, tune.top, tune.pick)
    by_macs = sorted(picked, key=lambda r: (r.metric("flops") or 0.0, r.candidate_id))
    base = Recipe.from_spec(ctx.spec)
    recipes = {r.candidate_id: replace(base, epochs=tune.epochs_for(by_macs.index(r), len(by_macs))) for r in picked}
    todo = [r for r in picked if not (r.metric("finetune_epochs") == float(recipes[r.candidate_id].epochs)
                                      and finetuned_weights(store, r))]
    workers = min(workers or ctx.spec.search.workers, os.cpu_count() or 1, len(todo))
    if workers <= 1 or base.teacher == "external":  # an external teacher is loaded in this process only
        return [finetune_candidate(store, r, ctx, evaluator, run_dir, recipes[r.candidate_id], log=log) for r in todo]
    if log is not None:
        epochs = ", ".join(f"c{r.candidate_id}: {recipes[r.candidate_id].epochs}" for r in todo)
        log(f"fine-tuning {len(todo)} candidates on {workers} processes (epochs {epochs})")
    trained = _train_parallel(evaluator, [ArchConfig.from_dict(r.arch) for r in todo], ctx.splits,
                              [recipes[r.candidate_id] for r in todo], workers)
    return [_keep(store, record, ctx, evaluator, run_dir, recipes[record.candidate_id], model, losses, seconds, log)
            for record, (model, losses, seconds) in zip(todo, trained, strict=True)]
