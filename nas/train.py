"""Supernet training: per step the sampler's subnets, in-place distillation from the teacher, AdamW + cosine.

A checkpoint is written after every epoch into `<run_dir>/checkpoints/` (weights, optimiser, schedule, the
sampler's state and the RNG states), so `resume=True` continues a run exactly where its last epoch ended.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm

from nas.data import Splits
from nas.errors import NASError
from nas.sampling import make_sampler
from nas.space import SearchSpace
from nas.spec import Spec
from nas.supernet import Supernet

CHECKPOINT_DIR = "checkpoints"
FINAL_NAME = "supernet.pt"


@dataclass(frozen=True)
class TrainResult:
    checkpoint: Path
    epochs: int
    steps: int
    seconds: float
    last_loss: float


def make_optimizer(spec: Spec, model: torch.nn.Module) -> torch.optim.Optimizer:
    opt = spec.train.optimizer
    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": opt.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if opt.name == "sgd":
        return torch.optim.SGD(groups, lr=opt.lr, momentum=0.9, nesterov=True)
    return torch.optim.AdamW(groups, lr=opt.lr)


def make_schedule(spec: Spec, optimizer: torch.optim.Optimizer, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    warmup = min(spec.train.warmup_steps, max(total_steps - 1, 0))
    cosine = spec.train.schedule == "cosine"

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if not cosine:
            return 1.0
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def distill_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """KL(teacher || student) on soft labels, the in-place distillation of OFA / BigNAS."""
    return F.kl_div(F.log_softmax(student_logits, -1), F.softmax(teacher_logits, -1), reduction="batchmean")


def _latest_checkpoint(run_dir: Path) -> Path | None:
    found = sorted((run_dir / CHECKPOINT_DIR).glob("epoch_*.pt"), key=lambda p: int(p.stem.split("_")[1]))
    return found[-1] if found else None


def _save_atomic(state: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def train_supernet(spec: Spec, space: SearchSpace, splits: Splits, run_dir: Path, resume: bool = False,
                   progress: bool = True) -> TrainResult:
    """Train a supernet for `spec` on `splits`; writes epoch checkpoints and `<run_dir>/supernet.pt`."""
    if spec.train.threads:
        torch.set_num_threads(spec.train.threads)
    torch.manual_seed(spec.train.seed)
    # channels-last makes depthwise convolutions ~1.3x faster to train on CPU; results are unchanged.
    model = Supernet(space).to(memory_format=torch.channels_last)
    sampler = make_sampler(space, spec.train)
    batch = spec.data.batch_size
    steps_per_epoch = max(1, len(splits.y_train) // batch)
    total_steps = steps_per_epoch * spec.train.epochs
    optimizer = make_optimizer(spec, model)
    schedule = make_schedule(spec, optimizer, total_steps)
    rng = random.Random(spec.train.seed)
    start_epoch, step = 0, 0
    if resume:
        latest = _latest_checkpoint(run_dir)
        if latest is None:
            raise NASError(f"{run_dir}: --resume found no checkpoint in {run_dir / CHECKPOINT_DIR}")
        state = torch.load(latest, weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        sampler.load_state_dict(state["sampler"])
        rng.setstate(state["rng"])
        torch.set_rng_state(state["torch_rng"])
        start_epoch, step = state["epoch"], state["step"]
    started = time.perf_counter()
    distill = spec.train.distill == "inplace" and sampler.teacher_first
    last_loss = float("nan")
    model.train()
    for epoch in range(start_epoch, spec.train.epochs):
        order = torch.randperm(len(splits.y_train), generator=torch.Generator().manual_seed(spec.train.seed + epoch))
        bar = tqdm(range(steps_per_epoch), desc=f"train epoch {epoch + 1}/{spec.train.epochs}", disable=not progress,
                   leave=False, unit="step")
        for i in bar:
            idx = order[i * batch:(i + 1) * batch]
            images = splits.x_train[idx].contiguous(memory_format=torch.channels_last)
            labels = splits.y_train[idx]
            optimizer.zero_grad(set_to_none=True)
            teacher: torch.Tensor | None = None
            losses = []
            for arch in sampler.step(rng):
                model.set_active(arch)
                logits = model(images)
                if distill and teacher is not None:
                    loss = distill_loss(logits, teacher)
                else:
                    loss = F.cross_entropy(logits, labels)
                    if distill:
                        teacher = logits.detach()
                loss.backward()
                losses.append((arch, loss.item()))
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            optimizer.step()
            schedule.step()
            step += 1
            for arch, value in losses:
                sampler.observe(arch, value)
            last_loss = losses[0][1]
            bar.set_postfix(loss=f"{last_loss:.3f}")
        _save_atomic({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                      "schedule": schedule.state_dict(), "sampler": sampler.state_dict(), "rng": rng.getstate(),
                      "torch_rng": torch.get_rng_state(), "epoch": epoch + 1, "step": step},
                     run_dir / CHECKPOINT_DIR / f"epoch_{epoch + 1}.pt")
    final = run_dir / FINAL_NAME
    _save_atomic({"model": model.state_dict(), "spec": spec.to_dict(), "in_channels": space.in_channels,
                  "num_classes": space.num_classes}, final)
    return TrainResult(final, spec.train.epochs, step, time.perf_counter() - started, last_loss)


def load_supernet(space: SearchSpace, checkpoint: Path) -> Supernet:
    """A supernet for `space` with the weights of a finished training run."""
    try:
        state = torch.load(checkpoint, weights_only=False)
    except (OSError, RuntimeError) as exc:
        raise NASError(f"{checkpoint}: cannot load supernet checkpoint: {exc}") from None
    model = Supernet(space)
    model.load_state_dict(state["model"])
    return model.eval()
