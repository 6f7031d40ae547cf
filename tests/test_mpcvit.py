"""MPCViT's head search (`nas.mpcvit`) and MPC distillation (`nas.distill`), on a tiny per-head space with a
latency model whose cost per head is known."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import yaml

from nas.blocks import Block
from nas.distill import distill_terms, features_and_logits, softmax_teacher, teacher_model
from nas.errors import NASError
from nas.evaluate import Evaluator
from nas.latency.targets import LatencyModel
from nas.mpcvit import HeadSlot, binarise, head_costs, head_slots, search_heads, with_kinds
from nas.space import SearchSpace
from nas.spec import SpecError, parse_spec
from nas.supernet import Supernet

pytestmark = pytest.mark.usefixtures("one_thread")

SPEC = {
    "version": 1,
    "space": {"resolution": [8], "stem": {"channels": [8], "stride": 1},
              "stages": [{"type": "transformer", "depth": [2, 2], "channels": [16, 32], "head_dim": 8,
                          "mlp_ratio": [2], "v_scale": [1], "stride": 2,
                          "attention": ["softmax", "relu_softmax", "scaling"], "attention_per_head": True}],
              "head": {"channels": [16]}},
    "data": {"dataset": "digits"},
    "search": {"mpcvit": {"between": ["softmax", "scaling"], "steps": 6, "budgets": [0.0, 0.5, 1.0]}},
}
PER_HEAD_MS = {"softmax": 3.0, "relu_softmax": 2.0, "scaling": 0.5, "quad": 1.0}


class PerHeadCost(LatencyModel):
    """1 ms per block, plus PER_HEAD_MS per attention head by its kind."""

    def __init__(self) -> None:
        super().__init__("fake", {}, Path("fake.json"))

    def predict_block(self, block: Block) -> tuple[float, bool]:
        if block.kind != "attn":
            return 1.0, True
        return 1.0 + sum(PER_HEAD_MS[k] * n for k, n in block.attention_counts().items()), True


@pytest.fixture(scope="module")
def setup() -> tuple[SearchSpace, Supernet, Evaluator]:
    spec = parse_spec(SPEC, "mpcvit")
    space = SearchSpace.from_spec(spec, 1, 10)
    torch.manual_seed(0)
    supernet = Supernet(space).eval()
    images = torch.randn(64, 1, 8, 8)
    return space, supernet, Evaluator(supernet, images[:32], images[32:], torch.randint(0, 10, (32,)))


def test_head_costs_come_from_the_target(setup) -> None:
    space, _, _ = setup
    arch = space.largest()  # 2 layers of 4 heads
    costs = head_costs(arch, space, PerHeadCost(), "softmax", "scaling")
    assert len(costs) == 8 and all(c == pytest.approx(2.5) for c in costs.values())


def test_binarise_meets_each_budget_with_the_heaviest_heads_first(setup) -> None:
    space, _, _ = setup
    arch = space.largest()
    weights = {slot: w for slot, w in zip(head_slots(arch), [0.9, 0.1, 0.8, 0.2, 0.3, 0.7, 0.4, 0.6], strict=True)}
    model = PerHeadCost()
    low, half, high = binarise(arch, space, model, weights, "softmax", "scaling", [0.0, 0.5, 1.0])
    assert all(k == "scaling" for stage in low.stages for layer in stage.layers for k in layer.attention)
    assert all(k == "softmax" for stage in high.stages for layer in stage.layers for k in layer.attention)
    assert half.stages[0].layers[0].attention == ("softmax", "scaling", "softmax", "scaling")
    assert half.stages[0].layers[1].attention == ("scaling", "softmax", "scaling", "softmax")
    cheap, dear = (model.predict(space.blocks(a)).ms for a in (low, high))
    assert model.predict(space.blocks(half)).ms <= cheap + 0.5 * (dear - cheap)
    for found in (low, half, high):
        space.validate_arch(found)


def test_search_learns_weights_and_returns_members_of_the_space(setup) -> None:
    space, supernet, evaluator = setup
    spec = parse_spec(SPEC, "mpcvit").search.mpcvit
    before = {k: v.clone() for k, v in supernet.state_dict().items()}
    result = search_heads(supernet, evaluator, space.largest(), spec, PerHeadCost(), torch.randn(200, 1, 8, 8))
    assert len(result.losses) == 6 and set(result.weights) == set(head_slots(space.largest()))
    assert any(w != 0.5 for w in result.weights.values())  # the logits moved
    assert 2 <= len(result.archs) <= 3
    for arch in result.archs:
        space.validate_arch(arch)
    after = supernet.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # the shared weights are left alone
    assert all(m.active_mix is None for m in supernet.modules() if hasattr(m, "active_mix"))


def test_a_strong_penalty_pushes_every_head_to_the_cheaper_kind(setup) -> None:
    space, supernet, evaluator = setup
    spec = parse_spec(SPEC, "mpcvit").search.mpcvit.model_copy(update={"penalty": 50.0, "steps": 20, "lr": 0.2})
    result = search_heads(supernet, evaluator, space.largest(), spec, PerHeadCost(), torch.randn(200, 1, 8, 8))
    assert all(w < 0.2 for w in result.weights.values())


def test_softmax_teacher_and_feature_distillation(setup) -> None:
    space, supernet, evaluator = setup
    arch = with_kinds(space.largest(), {HeadSlot(0, 0, 0): "relu_softmax"}, "scaling")
    teacher_arch = softmax_teacher(arch, space)
    assert {k for s in teacher_arch.stages for layer in s.layers for k in layer.attention} == {"softmax"}
    teacher = teacher_model("softmax", arch, evaluator)
    student = evaluator.subnet(arch)
    x = torch.randn(4, 1, 8, 8)
    feats, logits = features_and_logits(student, x, True)
    t_feats, t_logits = features_and_logits(teacher, x, True)
    kl, mse = distill_terms(logits, t_logits, feats, t_feats)
    assert kl > 0 and mse > 0
    kl_same, mse_same = distill_terms(t_logits, t_logits, t_feats, t_feats)
    assert abs(float(kl_same)) < 1e-6 and float(mse_same) == 0
    with pytest.raises(NASError, match="features are"):
        distill_terms(logits, t_logits, feats, t_feats[:, :8])
    with pytest.raises(NASError, match="logits only"):
        features_and_logits(torch.nn.Flatten(), x, True)


@pytest.mark.parametrize("change, message", [
    ({"between": ["softmax", "cubic"]}, "unknown attention kind 'cubic'"),
    ({"between": ["scaling", "scaling"]}, "two different attention kinds"),
    ({"between": ["softmax", "quad"]}, "'quad' is not among space.stages[0].attention"),
    ({"arch": "mine"}, "neither `largest` nor a preset"),
    ({"ffn_act": "relu"}, "'relu' is not among space.stages[0].ffn_act (hswish)"),
])
def test_bad_mpcvit_settings_name_the_field(change, message) -> None:
    spec = yaml.safe_load(yaml.safe_dump(SPEC))
    spec["search"]["mpcvit"].update(change)
    with pytest.raises(SpecError, match=re.escape(message)):
        parse_spec(spec, "bad.yaml")


def test_the_head_search_needs_per_head_attention() -> None:
    spec = yaml.safe_load(yaml.safe_dump(SPEC))
    spec["space"]["stages"][0]["attention_per_head"] = False
    with pytest.raises(SpecError, match="needs `attention_per_head: true`"):
        parse_spec(spec, "bad.yaml")


def test_the_searched_archs_take_the_asked_activation(setup) -> None:
    space, supernet, evaluator = setup
    raw = yaml.safe_load(yaml.safe_dump(SPEC))
    raw["space"]["stages"][0]["ffn_act"] = ["relu", "hswish"]
    raw["search"]["mpcvit"].update(ffn_act="relu", steps=2)
    spec = parse_spec(raw, "mpcvit")
    relu_space = SearchSpace.from_spec(spec, 1, 10)
    torch.manual_seed(0)
    net = Supernet(relu_space).eval()
    images = torch.randn(64, 1, 8, 8)
    found = search_heads(net, Evaluator(net, images[:32], images[32:], torch.randint(0, 10, (32,))),
                         relu_space.largest(), spec.search.mpcvit, PerHeadCost(), images)
    assert {layer.act for arch in found.archs for s in arch.stages for layer in s.layers} == {"relu"}
