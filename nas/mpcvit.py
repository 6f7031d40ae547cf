"""MPCViT's differentiable head search: which heads keep the costly attention, under a latency budget.

Every head of one arch mixes two attention kinds (`search.mpcvit.between`, the costlier first) with a
learnable weight w = sigmoid(logit): out = w first(A) v + (1 - w) second(A) v (`nas.ops.attention.attend_mixed`).
The supernet's weights stay frozen (the candidates are scored with the same shared weights as every other
candidate); only the logits train, on the distillation loss from the all-softmax subnet (KL on the logits plus
`feature_weight` x MSE on the token features, `nas.distill`) plus `penalty` x the expected cost: the sum over
heads of w x what the costlier kind adds to that head's latency on the target, over the arch's whole gap between
all-costlier and all-cheaper. A head's cost comes from the target's own table: the latency of its layer with
every head costlier, minus with every head cheaper, over the layer's heads.

Binarising for a budget b (a fraction of the gap): start from every head cheaper, then give the costlier kind to
heads in decreasing order of weight while the arch's latency stays within cheaper + b x gap. A sweep of budgets
gives a front of archs with heterogeneous attention, which the pipeline scores and stores like any candidate.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch

from nas.distill import distill_terms, softmax_teacher
from nas.evaluate import Evaluator, calibrate_batchnorm
from nas.latency.targets import LatencyModel
from nas.space import ArchConfig, SearchSpace, StageArch, TransformerLayer
from nas.spec import MPCViTSpec
from nas.supernet import Supernet

BATCH = 128


@dataclass(frozen=True)
class HeadSlot:
    """One head of the arch: transformer layer (stage, layer) and head index."""

    stage: int
    layer: int
    head: int


@dataclass(frozen=True)
class HeadSearchResult:
    archs: tuple[ArchConfig, ...]  # one per budget (repeats removed), cheapest first
    weights: dict[HeadSlot, float]  # each head's learned weight for the costlier kind
    head_cost_ms: dict[HeadSlot, float]  # what the costlier kind adds to that head's latency
    losses: tuple[float, ...]


def with_kinds(arch: ArchConfig, kinds: dict[HeadSlot, str], default: str) -> ArchConfig:
    """`arch` with each transformer head's kind from `kinds` (`default` where absent)."""
    stages = []
    for i, stage in enumerate(arch.stages):
        layers = []
        for j, layer in enumerate(stage.layers):
            if isinstance(layer, TransformerLayer):
                heads = len(layer.attention)
                layer = replace(layer, attention=tuple(kinds.get(HeadSlot(i, j, h), default) for h in range(heads)))
            layers.append(layer)
        stages.append(StageArch(stage.channels, tuple(layers)))
    return replace(arch, stages=tuple(stages))


def with_activation(arch: ArchConfig, act: str | None) -> ArchConfig:
    """`arch` with every FFN's activation `act` (None: unchanged)."""
    if act is None:
        return arch
    stages = tuple(StageArch(stage.channels, tuple(replace(layer, act=act) if isinstance(layer, TransformerLayer)
                                                   else layer for layer in stage.layers)) for stage in arch.stages)
    return replace(arch, stages=stages)


def head_slots(arch: ArchConfig) -> list[HeadSlot]:
    return [HeadSlot(i, j, h) for i, stage in enumerate(arch.stages) for j, layer in enumerate(stage.layers)
            if isinstance(layer, TransformerLayer) for h in range(len(layer.attention))]


def head_costs(arch: ArchConfig, space: SearchSpace, latency: LatencyModel, first: str,
               second: str) -> dict[HeadSlot, float]:
    """What the costlier kind adds to each head's latency: (layer all-first - layer all-second) / heads."""
    slots = head_slots(arch)
    base = latency.predict(space.blocks(with_kinds(arch, {}, second))).ms
    costs = {}
    for layer in sorted({(s.stage, s.layer) for s in slots}):
        heads = [s for s in slots if (s.stage, s.layer) == layer]
        ms = latency.predict(space.blocks(with_kinds(arch, {s: first for s in heads}, second))).ms
        costs.update({s: (ms - base) / len(heads) for s in heads})
    return costs


def binarise(arch: ArchConfig, space: SearchSpace, latency: LatencyModel, weights: dict[HeadSlot, float],
             first: str, second: str, budgets: Sequence[float]) -> list[ArchConfig]:
    """One arch per budget (see the module docstring), repeats removed, in budget order."""
    cheap = latency.predict(space.blocks(with_kinds(arch, {}, second))).ms
    dear = latency.predict(space.blocks(with_kinds(arch, {s: first for s in weights}, second))).ms
    order = sorted(weights, key=lambda s: (-weights[s], s.stage, s.layer, s.head))
    out: list[ArchConfig] = []
    for budget in budgets:
        limit = cheap + budget * (dear - cheap) + 1e-9
        chosen: dict[HeadSlot, str] = {}
        for slot in order:
            trial = {**chosen, slot: first}
            if latency.predict(space.blocks(with_kinds(arch, trial, second))).ms <= limit:
                chosen = trial
        found = with_kinds(arch, chosen, second)
        if found not in out:
            out.append(found)
    return out


def _attention_modules(supernet: Supernet, arch: ArchConfig) -> dict[tuple[int, int], torch.nn.Module]:
    modules = {}
    for i, (module, stage) in enumerate(zip(supernet.stages, arch.stages, strict=True)):
        if "downsample" in module:
            for j in range(stage.depth):
                modules[(i, j)] = module["layers"][j]["attn"]
    return modules


def search_heads(supernet: Supernet, evaluator: Evaluator, base: ArchConfig, spec: MPCViTSpec,
                 latency: LatencyModel, x_train: torch.Tensor, seed: int = 0,
                 log: Callable[[str], None] | None = None) -> HeadSearchResult:
    """Learn the head weights of `base` (its heads' own kinds are ignored; its FFN activations set to
    `spec.ffn_act` when given) and binarise them for each budget."""
    space = supernet.space
    first, second = spec.between
    arch = with_kinds(with_activation(base, spec.ffn_act), {}, first)
    slots = head_slots(arch)
    costs = head_costs(arch, space, latency, first, second)
    gap = sum(costs.values())
    scale = 1.0 / abs(gap) if gap else 0.0

    student = copy.deepcopy(supernet).requires_grad_(False)
    student.set_active(arch)
    calibrate_batchnorm(student, evaluator.calibration)
    student.eval()
    teacher = evaluator.subnet(softmax_teacher(arch, space)).eval().requires_grad_(False)
    modules = _attention_modules(student, arch)
    layers = sorted({(s.stage, s.layer) for s in slots})
    logits = {layer: torch.zeros(sum(1 for s in slots if (s.stage, s.layer) == layer), requires_grad=True)
              for layer in layers}
    cost = {layer: torch.tensor([costs[s] for s in slots if (s.stage, s.layer) == layer]) for layer in layers}
    optimizer = torch.optim.Adam(list(logits.values()), lr=spec.lr)
    rng = random.Random(seed)
    features = spec.feature_weight > 0
    losses = []
    for _ in range(spec.steps):
        index = torch.tensor(rng.sample(range(len(x_train)), min(BATCH, len(x_train))))
        images = x_train[index]
        expected = torch.zeros(())
        for layer in layers:
            weight = torch.sigmoid(logits[layer])
            modules[layer].active_mix = (first, second, weight)
            expected = expected + (weight * cost[layer]).sum()
        feats = student.forward_features(images)
        out = student.classify(feats)
        with torch.no_grad():
            teacher_feats = teacher.forward_features(images) if features else None
            soft = teacher.head(teacher_feats) if teacher_feats is not None else teacher(images)
        kl, mse = distill_terms(out, soft, feats if features else None, teacher_feats)
        loss = kl + spec.feature_weight * mse + spec.penalty * expected * scale
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    weights = {s: float(torch.sigmoid(logits[(s.stage, s.layer)].detach())[s.head]) for s in slots}
    archs = binarise(arch, space, latency, weights, first, second, spec.budgets)
    if log is not None:
        log(f"mpcvit: {len(slots)} heads, {spec.steps} steps (loss {losses[0]:.3f} -> {losses[-1]:.3f}); "
            f"{len(archs)} archs for budgets {', '.join(f'{b:g}' for b in spec.budgets)}")
    return HeadSearchResult(tuple(archs), weights, costs, tuple(losses))
