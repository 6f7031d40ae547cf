"""Distillation for subnets trained alone (fine-tuning, MPCViT's head search): who teaches and the loss.

MPCViT distils its MPC-friendly students from the all-softmax network: KL on the logits plus MSE on the token
features (the last stage's output). Teachers here: `largest` (the space's largest subnet), `softmax` (the
student's own arch with softmax in every head: what the student would be without its cheaper attention) or
`external` (a trained model: an export folder or a TorchScript / torch.export file, `nas.train.load_teacher`).
The feature term needs a teacher whose features have the student's shape (`forward_features`); an external
model without them is refused when the term is asked for.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from nas.errors import NASError
from nas.space import ArchConfig, SearchSpace, StageArch, TransformerLayer
from nas.spec import TransformerStageSpec
from nas.train import distill_loss

if TYPE_CHECKING:
    from nas.data import Splits
    from nas.evaluate import Evaluator

TEACHERS = ("largest", "softmax", "external")


def softmax_teacher(arch: ArchConfig, space: SearchSpace) -> ArchConfig:
    """`arch` with softmax attention in every head (its FFN activations unchanged); NASError when a stage of
    the space does not offer softmax."""
    stages = []
    for i, (stage, spec) in enumerate(zip(arch.stages, space.spec.stages, strict=True)):
        if isinstance(spec, TransformerStageSpec):
            if "softmax" not in spec.attention:
                raise NASError(f"space.stages[{i}].attention: the all-softmax teacher needs softmax among the "
                               f"choices (got {', '.join(spec.attention)})")
            layers = tuple(replace(layer, attention=("softmax",) * len(layer.attention))
                           if isinstance(layer, TransformerLayer) else layer for layer in stage.layers)
            stage = StageArch(stage.channels, layers)
        stages.append(stage)
    return replace(arch, stages=tuple(stages))


def teacher_model(how: str, arch: ArchConfig, evaluator: Evaluator, splits: Splits | None = None,
                  checkpoint: str | None = None) -> nn.Module:
    """The frozen teacher of `arch`'s student (`how`: one of TEACHERS), in eval mode."""
    space = evaluator.supernet.space
    if how == "largest":
        model = evaluator.subnet(space.largest())
    elif how == "softmax":
        model = evaluator.subnet(softmax_teacher(arch, space))
    elif how == "external":
        from nas.train import load_teacher

        if checkpoint is None or splits is None:
            raise NASError("an external teacher needs its checkpoint and the data splits")
        model = load_teacher(checkpoint, splits)
    else:
        raise NASError(f"unknown teacher {how!r} (known: {', '.join(TEACHERS)})")
    return model.eval().requires_grad_(False)


def features_and_logits(model: nn.Module, images: torch.Tensor, features: bool) -> tuple[torch.Tensor | None,
                                                                                       torch.Tensor]:
    """(token features or None, logits) of a `nas.static_model` network or any classifier (features only when
    asked for; a model without `forward_features` cannot give them)."""
    if not features:
        return None, model(images)
    forward_features = getattr(model, "forward_features", None)
    head = getattr(model, "head", None)
    if forward_features is None or head is None:
        raise NASError("feature distillation needs a teacher with token features (a `nas` network: the largest "
                       "or all-softmax subnet, or an export folder); this teacher gives logits only")
    feats = forward_features(images)
    return feats, head(feats)


def distill_terms(student_logits: torch.Tensor, teacher_logits: torch.Tensor, student_features: torch.Tensor | None,
                  teacher_features: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(KL(teacher || student) on the logits, MSE between the token features; 0 without features)."""
    kl = distill_loss(student_logits, teacher_logits)
    if student_features is None or teacher_features is None:
        return kl, kl.new_zeros(())
    if student_features.shape != teacher_features.shape:
        raise NASError(f"feature distillation: the teacher's features are {tuple(teacher_features.shape[1:])}, the "
                       f"student's {tuple(student_features.shape[1:])}; use a teacher of the same widths or "
                       "feature_weight 0")
    return kl, F.mse_loss(student_features, teacher_features)
