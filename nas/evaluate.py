"""Accuracy of an arch with inherited weights.

A subnet is extracted from the supernet, its BatchNorm statistics are re-estimated on a fixed slice of the
training set (the supernet's running statistics mix every subnet, OFA's observation), and it is scored on
the validation split (search) or the test split (Pareto members only). Extraction and calibration are
deterministic, so the exported model reproduces the stored accuracies exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from nas.space import ArchConfig
from nas.supernet import Supernet

CALIBRATION_IMAGES = 2000
CALIBRATION_BATCH = 250


@torch.no_grad()
def calibrate_batchnorm(model: nn.Module, images: torch.Tensor, batch: int = CALIBRATION_BATCH) -> None:
    """Replace running BatchNorm statistics by their exact average over `images`."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average over the calibration batches
    model.train()
    for start in range(0, len(images), batch):
        model(images[start:start + batch])
    for norm in norms:
        norm.momentum = 0.1
    model.eval()


@torch.no_grad()
def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch: int = 250) -> float:
    """Top-1 accuracy; batches of a few hundred keep activations in cache (2.5x faster than 1000 on CPU)."""
    model.eval()
    correct = 0
    for start in range(0, len(labels), batch):
        logits = model(images[start:start + batch])
        correct += int((logits.argmax(-1) == labels[start:start + batch]).sum())
    return correct / max(1, len(labels))


@dataclass
class Evaluator:
    """Scores archs of one trained supernet; cheap to ship to a worker once."""

    supernet: Supernet
    calibration: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor

    def subnet(self, arch: ArchConfig) -> nn.Module:
        """The extracted subnet with calibrated BatchNorm, ready for inference or export."""
        model = self.supernet.extract(arch)
        calibrate_batchnorm(model, self.calibration)
        return model

    def val_accuracy(self, arch: ArchConfig) -> float:
        return accuracy(self.subnet(arch), self.x_val, self.y_val)


def make_evaluator(supernet: Supernet, x_train: torch.Tensor, x_val: torch.Tensor, y_val: torch.Tensor,
                   val_images: int | None = None, calibration_images: int = CALIBRATION_IMAGES) -> Evaluator:
    """An evaluator using the first `calibration_images` training images for calibration (`search.
    calibration_images`) and (a prefix of) the validation split (`search.val_images`)."""
    limit = len(y_val) if val_images is None else min(val_images, len(y_val))
    return Evaluator(supernet.eval(), x_train[:calibration_images].clone(), x_val[:limit].clone(),
                     y_val[:limit].clone())
