"""Supernet training: per step the sampler's subnets, distillation, AdamW + a schedule, checkpoints, diagnostics.

Each step trains the subnets the sampler returns, each with one forward and backward pass accumulating into
the shared weights, clips the gradients (`train.clip`: norm, value or adaptive), then takes one optimiser
step. What each subnet learns from follows `train.distill` (see `DistillSpec.roles`): labels (cross-entropy),
or the soft labels of a teacher (the step's largest subnet, the mean probabilities of its random subnets, or
an external model) through KL divergence or AlphaNet's adaptive alpha-divergence. Teachers run first, whatever
their place in the step. Every `sampler.rescore_every` steps the sampler may re-score archs on the step's batch
(`rescore_on_batch`; ElasticViT's performance bank).

A checkpoint is written after every epoch into `<run_dir>/checkpoints/` (weights, optimiser, schedule, the
sampler's state, the RNG states and the diagnostics so far), so `resume=True` continues a run exactly where its
last epoch ended. Checkpoints are written atomically (`nas.files.write_atomic`: a crash leaves the previous one
intact) and hold tensors and plain data only; they are loaded with `weights_only=True`, so a crafted file cannot
run code, and a damaged one is a one-line `NASError`. Per-epoch figures (mean cross-entropy, mean MFLOPs of the
trained subnets, throughput, and with `train.grad_cosine` the mean cosine similarity of consecutive steps'
gradients) go to `<run_dir>/metrics.json`.
"""

from __future__ import annotations

import json
import math
import pickle
import random
import re
import time
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from nas import static_model
from nas.augment import augment_batch, epoch_generator
from nas.data import Splits
from nas.errors import NASError
from nas.files import write_atomic
from nas.sampling import ArchSampler, make_sampler
from nas.space import ArchConfig, SearchSpace
from nas.spec import ClipSpec, DistillSpec, Spec
from nas.supernet import Supernet

CHECKPOINT_DIR = "checkpoints"
FINAL_NAME = "supernet.pt"
METRICS_NAME = "metrics.json"
ALPHA_IW_CLIP = 5.0  # AlphaNet's clip of the importance weights (p / q) ** alpha
AGC_EPS = 1e-3  # adaptive gradient clipping: the floor of a unit's weight norm (Brock et al. 2021)


@dataclass(frozen=True)
class TrainResult:
    checkpoint: Path
    epochs: int
    steps: int
    seconds: float
    last_loss: float
    #: Per epoch, the mean cosine similarity of consecutive steps' gradients (empty unless train.grad_cosine).
    grad_cosine: tuple[float, ...] = ()
    metrics: Path | None = None
    epoch_metrics: tuple[dict[str, Any], ...] = field(default=())


def make_optimizer(spec: Spec, model: torch.nn.Module) -> torch.optim.Optimizer:
    opt = spec.train.optimizer
    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": opt.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if opt.name == "sgd":
        return torch.optim.SGD(groups, lr=opt.lr, momentum=0.9, nesterov=True)
    # The fused kernel updates each tensor in one pass: on CPU it makes AdamW ~3x cheaper, which matters for a
    # supernet, whose optimiser touches the full-size weights whatever subnet was trained.
    return torch.optim.AdamW(groups, lr=opt.lr, fused=True)


def make_schedule(spec: Spec, optimizer: torch.optim.Optimizer, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    return schedule_for(optimizer, total_steps, spec.train.schedule, spec.train.warmup_steps,
                        spec.train.warmup_fraction)


ONECYCLE_DIV = 25.0  # one-cycle starts at lr / 25 ...
ONECYCLE_FINAL_DIV = 1e4  # ... and ends at lr / 25 / 1e4 (torch's OneCycleLR defaults)


def schedule_for(optimizer: torch.optim.Optimizer, total_steps: int, kind: str, warmup_steps: int,
                 warmup_fraction: float | None = None) -> torch.optim.lr_scheduler.LambdaLR:
    """The learning-rate factor per optimiser step (see TrainSpec): `cosine` and `constant` warm up linearly
    from lr/warmup to lr; `onecycle` warms up linearly from lr/25 to lr, then anneals by a cosine to lr/25e4.
    The warm-up lasts `warmup_fraction` of `total_steps` when given, else `warmup_steps` (never all steps)."""
    if kind not in ("cosine", "constant", "onecycle"):
        raise NASError(f"train.schedule: unknown schedule {kind!r} (known: constant, cosine, onecycle)")
    wanted = round(warmup_fraction * total_steps) if warmup_fraction is not None else warmup_steps
    warmup = min(wanted, max(total_steps - 1, 0))
    onecycle = kind == "onecycle"
    start = 1.0 / ONECYCLE_DIV
    end = start / ONECYCLE_FINAL_DIV if onecycle else 0.0
    # One-cycle reaches its floor on the last step; cosine keeps its historical end (0 one step after the last).
    decay_steps = max(1, total_steps - warmup - (1 if onecycle else 0))

    def factor(step: int) -> float:
        if step < warmup:
            return start + (1.0 - start) * step / warmup if onecycle else (step + 1) / warmup
        if kind == "constant":
            return 1.0
        progress = min((step - warmup) / decay_steps, 1.0)
        return end + (1.0 - end) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# ---- losses ----------------------------------------------------------------------------------------------
def label_loss(logits: torch.Tensor, labels: torch.Tensor, smoothing: float = 0.0) -> torch.Tensor:
    """Cross-entropy with the labels, smoothed: the target puts 1 - smoothing on the label and spreads
    `smoothing` evenly over all classes (`(1 - s) * CE + s * mean over classes of -log p`)."""
    return F.cross_entropy(logits, labels, label_smoothing=smoothing)


def distill_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """KL(teacher || student) on soft labels, the in-place distillation of OFA / BigNAS."""
    return F.kl_div(F.log_softmax(student_logits, -1), F.softmax(teacher_logits, -1), reduction="batchmean")


def _f_divergence(student_logits: torch.Tensor, teacher_logits: torch.Tensor, alpha: float,
                  clip: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample, the alpha-divergence D_alpha(p || q) of teacher p from student q, and a surrogate whose
    gradient is that divergence's gradient with respect to the student logits (AlphaNet, Wang et al. 2021)."""
    q = F.softmax(student_logits, -1).detach()
    p = F.softmax(teacher_logits, -1).detach()
    log_q = F.log_softmax(student_logits, -1)
    ratio = p / q.clamp_min(1e-12)
    if abs(alpha) < 1e-3:  # alpha -> 0: KL(q || p)
        ratio = ratio.clamp(0.0, clip)
        f, f_base, rho = -ratio.clamp_min(1e-12).log(), 0.0, ratio.clamp_min(1e-12).log() - 1.0
    elif abs(alpha - 1.0) < 1e-3:  # alpha -> 1: KL(p || q)
        f, f_base, rho = ratio * ratio.clamp_min(1e-12).log(), 0.0, ratio
    else:
        weight = ratio.pow(alpha).clamp(0.0, clip)
        f_base = 1.0 / alpha / (alpha - 1.0)
        f, rho = weight * f_base, weight / alpha + f_base
    divergence = (q * (f - f_base)).sum(-1)
    surrogate = -(q * rho * log_q).sum(-1)
    return divergence, surrogate


def alpha_divergence_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, alpha_min: float = -1.0,
                          alpha_max: float = 1.0, clip: float = ALPHA_IW_CLIP) -> torch.Tensor:
    """AlphaNet's adaptive alpha-divergence: per sample, the larger of D_alpha_min and D_alpha_max (so both
    over- and under-estimating the teacher's uncertainty are penalised). Returns a surrogate: its gradient
    is the divergence's, its value is not the divergence."""
    left, left_surrogate = _f_divergence(student_logits, teacher_logits, alpha_min, clip)
    right, right_surrogate = _f_divergence(student_logits, teacher_logits, alpha_max, clip)
    return torch.where(left > right, left_surrogate, right_surrogate).mean()


def student_loss(distill: DistillSpec, logits: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    if distill.loss == "alpha":
        return alpha_divergence_loss(logits, teacher, distill.alpha_min, distill.alpha_max)
    return distill_loss(logits, teacher)


def mean_probability_target(teacher_logits: Sequence[torch.Tensor]) -> torch.Tensor:
    """The soft target of several teachers (`random_mean`, ElasticViT's): the mean of their softmax
    probabilities, returned as log-probabilities so that it goes wherever teacher logits go (softmax(log p) = p
    since p sums to 1). One teacher: its logits as they are."""
    if len(teacher_logits) == 1:
        return teacher_logits[0]
    probabilities = torch.stack([F.softmax(t, -1) for t in teacher_logits]).mean(0)
    return probabilities.clamp_min(torch.finfo(probabilities.dtype).tiny).log()


# ---- gradient clipping -----------------------------------------------------------------------------------
def _unitwise_norm(x: torch.Tensor) -> torch.Tensor:
    """L2 norm per output unit (over every dimension but the first); a 0-d or 1-d tensor is one unit."""
    return torch.linalg.vector_norm(x) if x.ndim <= 1 else \
        torch.linalg.vector_norm(x, dim=tuple(range(1, x.ndim)), keepdim=True)


def adaptive_clip_(params: Iterable[torch.Tensor], factor: float, eps: float = AGC_EPS) -> None:
    """Adaptive gradient clipping (AGC, Brock et al. 2021), in place: a unit whose gradient norm exceeds
    `factor` x max(its weight norm, eps) is scaled down to that norm; other units are unchanged. In a supernet
    a unit's weight norm spans its full row (also the inputs the step's subnets did not use)."""
    with torch.no_grad():
        for p in params:
            if p.grad is None:
                continue
            limit = _unitwise_norm(p).clamp_min(eps) * factor
            p.grad.mul_((limit / _unitwise_norm(p.grad).clamp_min(1e-6)).clamp(max=1.0))


def clip_gradients(params: Sequence[torch.Tensor], clip: ClipSpec) -> None:
    """Clip the accumulated gradients as `train.clip` says (see ClipSpec)."""
    limit = clip.limit
    if clip.kind == "norm":
        torch.nn.utils.clip_grad_norm_(params, limit)
    elif clip.kind == "value":
        torch.nn.utils.clip_grad_value_(params, limit)
    elif clip.kind == "adaptive":
        adaptive_clip_(params, limit)  # type: ignore[arg-type]


# ---- external teacher ------------------------------------------------------------------------------------
class _Renormalised(nn.Module):
    """Maps inputs normalised with the training data's statistics to the teacher's normalisation."""

    def __init__(self, model: nn.Module, scale: torch.Tensor, shift: torch.Tensor):
        super().__init__()
        self.model = model
        self.register_buffer("scale", scale)
        self.register_buffer("shift", shift)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x * self.scale + self.shift)


def load_teacher(path: str | Path, splits: Splits) -> nn.Module:
    """An external teacher for distillation, in eval mode and frozen.

    Accepted: a folder written by `nas export` (`network.json` + `weights.pt`, built with
    `nas.static_model`; its `preprocess.json`, when present, maps our inputs to the normalisation the
    teacher was trained with); a TorchScript file (`torch.jit.save`, e.g. `model.torchscript.pt` of
    `nas export --format torchscript`); or a `torch.export` program saved as `.pt2` (exported in eval mode
    with a dynamic batch dimension). The last two get the inputs as the trainer normalises them. The
    teacher must map the training images to logits over the same classes.
    """
    path = Path(path)
    where = "train.distill.checkpoint"
    try:
        if path.is_dir():
            model: nn.Module = static_model.build(json.loads((path / "network.json").read_text()))
            model.load_state_dict(torch.load(path / "weights.pt", weights_only=True))
            preprocess = path / "preprocess.json"
            if preprocess.exists() and splits.mean and splits.std:
                theirs = json.loads(preprocess.read_text())
                mean_t, std_t = torch.tensor(theirs["mean"]), torch.tensor(theirs["std"])
                mean_d, std_d = torch.tensor(splits.mean), torch.tensor(splits.std)
                if mean_t.shape != mean_d.shape:
                    raise ValueError(f"the teacher takes {len(mean_t)} input channels, the data has {len(mean_d)}")
                if not (torch.allclose(mean_t, mean_d) and torch.allclose(std_t, std_d)):
                    model = _Renormalised(model, (std_d / std_t).view(1, -1, 1, 1),
                                          ((mean_d - mean_t) / std_t).view(1, -1, 1, 1))
        elif path.is_file() and path.suffix == ".pt2":
            model = torch.export.load(str(path)).module()
        elif path.is_file():
            with warnings.catch_warnings():  # TorchScript is deprecated upstream, but `nas export` writes it
                warnings.simplefilter("ignore", DeprecationWarning)
                model = torch.jit.load(str(path), map_location="cpu")
        else:
            raise FileNotFoundError("no such file or folder")
        if not isinstance(model, torch.fx.GraphModule):  # an exported program keeps the mode it was exported in
            model.eval()
        for param in model.parameters():
            param.requires_grad_(False)
        with torch.no_grad():
            logits = model(splits.x_train[:2])
    except NASError:
        raise
    except Exception as exc:  # any failure to load or run a user's file is a user error
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise NASError(f"{where}: cannot use teacher {path}: {reason}") from None
    if tuple(logits.shape) != (2, splits.num_classes):
        raise NASError(f"{where}: teacher {path} returns logits of shape {tuple(logits.shape)[1:]}, but the data "
                       f"has {splits.num_classes} classes")
    return model


# ---- gradient-conflict diagnostic ------------------------------------------------------------------------
class GradCosine:
    """Cosine similarity between consecutive steps' gradients on the weights both steps used.

    A weight counts as used by a step when its gradient is non-zero (the supernet slices its weights, so the
    weights outside a subnet's slices get exactly zero gradient). A step sharing no weight with the previous
    one yields None.
    """

    def __init__(self) -> None:
        self.previous: torch.Tensor | None = None

    def update(self, params: Iterable[torch.Tensor]) -> float | None:
        flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).detach().reshape(-1)
                          for p in params])
        previous, self.previous = self.previous, flat
        return None if previous is None else shared_cosine(flat, previous)


def shared_cosine(a: torch.Tensor, b: torch.Tensor) -> float | None:
    """Cosine similarity of two flattened gradients on the weights both used (both non-zero; the supernet's
    slicing leaves unused weights at exactly zero), in double precision; None when they share no weight."""
    shared = (a != 0) & (b != 0)
    if not bool(shared.any()):
        return None
    x, y = a[shared].double(), b[shared].double()
    return float((x @ y) / (x.norm() * y.norm()).clamp_min(1e-30))


# ---- the training loop -----------------------------------------------------------------------------------
def _latest_checkpoint(run_dir: Path) -> Path | None:
    found = sorted((run_dir / CHECKPOINT_DIR).glob("epoch_*.pt"), key=lambda p: int(p.stem.split("_")[1]))
    return found[-1] if found else None


def _save_atomic(state: dict[str, Any], path: Path) -> None:
    """`torch.save` to `path` through a unique, synced temporary file: a reader (or a resume after a crash)
    sees the previous checkpoint or the complete new one, and concurrent writers never share a temporary."""
    write_atomic(path, lambda f: torch.save(state, f))


def _write_json_atomic(payload: dict[str, Any], path: Path) -> None:
    write_atomic(path, lambda f: f.write(json.dumps(payload, indent=1).encode()))


def check_plain(value: Any, where: str) -> None:
    """Raise a NASError unless `value` is tensors and plain data (dicts, lists, tuples, str, numbers, None),
    the only things a checkpoint may hold: checkpoints are loaded with `weights_only=True`."""
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str | int):
                raise NASError(f"{where}: key {key!r} of type {type(key).__name__} cannot go into a checkpoint "
                               f"(tensors and plain data only)")
            check_plain(item, f"{where}[{key!r}]")
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            check_plain(item, f"{where}[{i}]")
    elif not isinstance(value, str | int | float | bool | torch.Tensor | None):
        raise NASError(f"{where}: a {type(value).__name__} cannot go into a checkpoint (tensors and plain data "
                       f"only: dicts, lists, strings, numbers, None); return plain data from state_dict()")


def rng_state(rng: random.Random) -> dict[str, Any]:
    """`rng`'s state as plain data (a checkpoint loads with `weights_only=True`); `set_rng_state` restores it."""
    version, internal, gauss_next = rng.getstate()
    return {"version": version, "internal": list(internal), "gauss_next": gauss_next}


def set_rng_state(rng: random.Random, state: Any) -> None:
    """Restore what `rng_state` saved (or a `getstate()` tuple of older checkpoints), exactly."""
    if isinstance(state, dict):
        state = (state["version"], state["internal"], state["gauss_next"])
    version, internal, gauss_next = state
    rng.setstate((int(version), tuple(int(v) for v in internal), None if gauss_next is None else float(gauss_next)))


def _first_line(exc: BaseException) -> str:
    """The first sentence of an exception's message (torch's run to paragraphs), else its type."""
    text = str(exc).strip().splitlines()[0].split(". ")[0].rstrip(".") if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def load_weights_only(path: Path) -> Any:
    """`torch.load` with `weights_only=True` on the CPU (tensors and plain data only, so a crafted file cannot run
    code), without torch's warning about the pickle protocol of files it refuses anyway."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.load(path, map_location="cpu", weights_only=True)


def load_checkpoint(path: Path, what: str, hint: str) -> dict[str, Any]:
    """A checkpoint written by this module, loaded with `load_weights_only`; any failure is one NASError line
    naming the file, the reason and `hint`."""
    try:
        state = load_weights_only(path)
    except FileNotFoundError:
        reason = "no such file"
    except pickle.UnpicklingError as exc:
        if "weights only load failed" in str(exc).lower():
            found = re.search(r"GLOBAL (\S+)", str(exc))
            named = f" ({found.group(1)})" if found else ""
            reason = (f"it holds pickled Python objects{named} beyond tensors and plain data; refused, since "
                      f"loading them could run arbitrary code")
        else:
            reason = f"the file is corrupt or truncated ({_first_line(exc)})"
    except Exception as exc:  # torch raises RuntimeError, EOFError, KeyError, ... on damaged files
        reason = f"the file is corrupt or truncated ({_first_line(exc)})"
    else:
        if isinstance(state, dict) and isinstance(state.get("model"), dict):
            return state
        reason = "not a nas checkpoint (no model weights in it)"
    raise NASError(f"{path}: cannot load {what}: {reason}; {hint}")


def step_roles(sampler: ArchSampler, distill: DistillSpec, count: int) -> tuple[str, ...]:
    """What each of a step's `count` archs learns from (`label`, `teacher`, `student`; see DistillSpec.roles).

    Samplers that do not declare their slots are read the classic way: the first arch is the largest when
    `teacher_first`, the others are random."""
    slots: Sequence[str] = sampler.slots if len(sampler.slots) == count else (
        ("max", *("random",) * (count - 1)) if sampler.teacher_first else ("random",) * count)
    return distill.roles(slots)


def _backward_step(model: Supernet, archs: Sequence[ArchConfig], roles: Sequence[str], images: torch.Tensor,
                   labels: torch.Tensor, distill: DistillSpec, teacher_model: nn.Module | None,
                   smoothing: float = 0.0) -> list[float]:
    """Forward and backward every arch of a step, accumulating gradients; returns each arch's cross-entropy
    (plain, whatever `smoothing`: the label smoothing of the losses learned from labels).

    Teachers and label-learners run first, so the students' soft labels exist when they are needed: the
    external teacher's logits, else the step's teachers' detached logits (several: `mean_probability_target`)."""
    target: torch.Tensor | None = None
    if teacher_model is not None:
        with torch.no_grad():
            target = teacher_model(images).float()
    taught: list[torch.Tensor] = []
    ce = [0.0] * len(archs)
    for j in sorted(range(len(archs)), key=lambda k: roles[k] == "student"):
        model.set_active(archs[j])
        logits = model(images)
        if roles[j] == "student":
            if target is None and taught:
                target = mean_probability_target(taught)
            loss = student_loss(distill, logits, target) if target is not None else label_loss(logits, labels,
                                                                                                  smoothing)
            ce[j] = F.cross_entropy(logits.detach(), labels).item()
        else:
            loss = label_loss(logits, labels, smoothing)
            ce[j] = loss.item() if not smoothing else F.cross_entropy(logits.detach(), labels).item()
            if roles[j] == "teacher":
                taught.append(logits.detach())
        loss.backward()
    return ce


def rescore_on_batch(model: Supernet, sampler: ArchSampler, images: torch.Tensor, labels: torch.Tensor) -> None:
    """`sampler.rescore(evaluate_loss)`, where evaluate_loss(arch) is the arch's cross-entropy on this batch
    with the current weights, under no_grad, BatchNorm on batch statistics as in training. The BatchNorm
    running statistics are restored afterwards: re-scoring leaves no trace in the model."""
    saved = [buffer.clone() for buffer in model.buffers()]

    def evaluate_loss(arch: ArchConfig) -> float:
        model.set_active(arch)
        with torch.no_grad():
            return F.cross_entropy(model(images), labels).item()

    try:
        sampler.rescore(evaluate_loss)
    finally:
        with torch.no_grad():
            for buffer, value in zip(model.buffers(), saved, strict=True):
                buffer.copy_(value)


def train_supernet(spec: Spec, space: SearchSpace, splits: Splits, run_dir: Path, resume: bool = False,
                   progress: bool = True) -> TrainResult:
    """Train a supernet for `spec` on `splits`; writes epoch checkpoints, `<run_dir>/metrics.json` and
    `<run_dir>/supernet.pt`."""
    if spec.train.threads:
        torch.set_num_threads(spec.train.threads)
    torch.manual_seed(spec.train.seed)
    # channels-last makes depthwise convolutions ~1.3x faster to train on CPU; results are unchanged.
    model = Supernet(space).to(memory_format=torch.channels_last)
    sampler = make_sampler(space, spec.train)
    distill = spec.train.distill
    teacher_model = load_teacher(distill.checkpoint, splits) if distill.teacher == "external" else None
    batch = spec.data.batch_size
    steps_per_epoch = max(1, len(splits.y_train) // batch)
    total_steps = steps_per_epoch * spec.train.epochs
    optimizer = make_optimizer(spec, model)
    schedule = make_schedule(spec, optimizer, total_steps)
    rng = random.Random(spec.train.seed)
    cosine = GradCosine() if spec.train.grad_cosine else None
    history: list[dict[str, Any]] = []
    start_epoch, step = 0, 0
    if resume:
        latest = _latest_checkpoint(run_dir)
        if latest is None:
            raise NASError(f"{run_dir}: --resume found no checkpoint in {run_dir / CHECKPOINT_DIR}")
        hint = "delete it to resume from the epoch before, or train from scratch with --retrain"
        state = load_checkpoint(latest, "the checkpoint to resume from", hint)
        try:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            schedule.load_state_dict(state["schedule"])
            sampler.load_state_dict(state["sampler"])
            set_rng_state(rng, state["rng"])
            torch.set_rng_state(state["torch_rng"])
            start_epoch, step = int(state["epoch"]), int(state["step"])
        except NASError:
            raise
        except Exception as exc:  # a checkpoint of another space or version: say so, in one line
            raise NASError(f"{latest}: cannot resume from this checkpoint: it does not fit this run "
                           f"({_first_line(exc)}); {hint}") from None
        history = list(state.get("metrics", []))
        if cosine is not None:
            cosine.previous = state.get("grad_previous")
    started = time.perf_counter()
    last_loss = float("nan")
    params = list(model.parameters())
    model.train()
    for epoch in range(start_epoch, spec.train.epochs):
        sampler.on_epoch_start(epoch)
        epoch_started = time.perf_counter()
        order = torch.randperm(len(splits.y_train), generator=torch.Generator().manual_seed(spec.train.seed + epoch))
        shifts = epoch_generator(spec.train.seed, epoch)  # per epoch, so a resumed run augments alike
        bar = tqdm(range(steps_per_epoch), desc=f"train epoch {epoch + 1}/{spec.train.epochs}", disable=not progress,
                   leave=False, unit="step")
        loss_sum, flops_sum, subnet_images, cosines = 0.0, 0.0, 0, []
        for i in bar:
            idx = order[i * batch:(i + 1) * batch]
            images = augment_batch(splits.x_train[idx], spec.train.augment, shifts)
            images = images.contiguous(memory_format=torch.channels_last)
            labels = splits.y_train[idx]
            optimizer.zero_grad(set_to_none=True)
            archs = sampler.step(rng)
            if sampler.rescore_every and step % sampler.rescore_every == 0:
                rescore_on_batch(model, sampler, images, labels)
            roles = step_roles(sampler, distill, len(archs))
            ce = _backward_step(model, archs, roles, images, labels, distill, teacher_model,
                                spec.train.label_smoothing)
            if cosine is not None:
                value = cosine.update(params)
                if value is not None:
                    cosines.append(value)
            clip_gradients(params, spec.train.gradient_clip)
            optimizer.step()
            schedule.step()
            step += 1
            for arch, value in zip(archs, ce, strict=True):
                sampler.observe(arch, value)
            last_loss = ce[0]
            loss_sum += sum(ce) / len(ce)
            flops_sum += sum(space.flops(arch) for arch in archs) / len(archs)
            subnet_images += len(archs) * len(idx)
            bar.set_postfix(loss=f"{last_loss:.3f}")
        seconds = time.perf_counter() - epoch_started
        record: dict[str, Any] = {"epoch": epoch + 1, "steps": steps_per_epoch,
                                  "mean_loss": loss_sum / steps_per_epoch,
                                  "mean_subnet_mflops": round(flops_sum / steps_per_epoch / 1e6, 4),
                                  "seconds": round(seconds, 3),
                                  "subnet_images_per_s": round(subnet_images / max(seconds, 1e-9), 1)}
        if cosine is not None:
            record["grad_cosine"] = sum(cosines) / len(cosines) if cosines else float("nan")
        history.append(record)
        _write_json_atomic({"epochs": history}, run_dir / METRICS_NAME)
        sampler_state = sampler.state_dict()
        check_plain(sampler_state, f"train.sampler: {type(sampler).__name__}.state_dict()")
        _save_atomic({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                      "schedule": schedule.state_dict(), "sampler": sampler_state, "rng": rng_state(rng),
                      "torch_rng": torch.get_rng_state(), "epoch": epoch + 1, "step": step, "metrics": history,
                      "grad_previous": cosine.previous if cosine is not None else None},
                     run_dir / CHECKPOINT_DIR / f"epoch_{epoch + 1}.pt")
    final = run_dir / FINAL_NAME
    _save_atomic({"model": model.state_dict(), "spec": spec.to_dict(), "in_channels": space.in_channels,
                  "num_classes": space.num_classes}, final)
    grad_cosines = tuple(r["grad_cosine"] for r in history if "grad_cosine" in r)
    return TrainResult(final, spec.train.epochs, step, time.perf_counter() - started, last_loss, grad_cosines,
                       run_dir / METRICS_NAME if history else None, tuple(history))


def load_supernet(space: SearchSpace, checkpoint: Path) -> Supernet:
    """A supernet for `space` with the weights of a finished training run (tensors only: `load_checkpoint`)."""
    hint = "train it again with `nas train SPEC --retrain`"
    state = load_checkpoint(checkpoint, "the trained supernet", hint)
    model = Supernet(space)
    try:
        model.load_state_dict(state["model"])
    except Exception as exc:
        raise NASError(f"{checkpoint}: cannot load the trained supernet: its weights do not fit this spec's space "
                       f"({_first_line(exc)}); {hint}") from None
    return model.eval()
