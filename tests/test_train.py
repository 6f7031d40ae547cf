from __future__ import annotations

import io
import json
import os
import random
import shlex
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

import nas.train
from nas import static_model
from nas.data import load
from nas.errors import NASError
from nas.sampling import _SAMPLERS, ArchSampler, SandwichSampler, UniformSampler, make_sampler, register_sampler
from nas.space import SearchSpace
from nas.spec import parse_spec
from nas.supernet import Supernet
from nas.train import (
    GradCosine,
    alpha_divergence_loss,
    distill_loss,
    load_checkpoint,
    load_supernet,
    load_teacher,
    rng_state,
    set_rng_state,
    train_supernet,
)


def _spec(tiny_spec_path: Path, **train: object):
    raw = yaml.safe_load(tiny_spec_path.read_text())
    raw["train"].update(train)
    raw["data"]["limit"] = 400
    return parse_spec(raw, "tiny")


def test_sandwich_and_uniform_samplers(tiny_spec_path: Path) -> None:
    spec = _spec(tiny_spec_path, num_random=2)
    space = SearchSpace.from_spec(spec, 1, 10)
    sandwich = make_sampler(space, spec.train)
    assert isinstance(sandwich, SandwichSampler) and sandwich.teacher_first
    step = sandwich.step(random.Random(0))
    assert step[0] == space.largest() and step[-1] == space.smallest() and len(step) == 4
    uniform = make_sampler(space, _spec(tiny_spec_path, sampler="uniform").train)
    assert isinstance(uniform, UniformSampler) and len(uniform.step(random.Random(0))) == 1


def test_unknown_sampler_lists_known_ones(tiny_spec_path: Path) -> None:
    spec = _spec(tiny_spec_path)
    space = SearchSpace.from_spec(spec, 1, 10)
    with pytest.raises(NASError, match="known: complexity_aware, sandwich, uniform"):
        make_sampler(space, spec.train.model_copy(update={"sampler": "nope"}))


def test_training_lowers_loss_and_resume_is_exact(tiny_spec_path: Path, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    spec = _spec(tiny_spec_path, epochs=2)
    splits = load(spec.data)
    space = SearchSpace.from_spec(spec, splits.in_channels, splits.num_classes)

    straight = train_supernet(spec, space, splits, tmp_path / "straight", progress=False)
    first = torch.load(straight.checkpoint, weights_only=True)["model"]

    # A run that died after its first epoch left only that epoch's checkpoint: resume from it.
    crashed = tmp_path / "resumed" / "checkpoints"
    crashed.mkdir(parents=True)
    shutil.copy(tmp_path / "straight" / "checkpoints" / "epoch_1.pt", crashed / "epoch_1.pt")
    resumed = train_supernet(spec, space, splits, tmp_path / "resumed", resume=True, progress=False)
    second = torch.load(resumed.checkpoint, weights_only=True)["model"]

    assert resumed.steps == straight.steps
    # The resumed run continues the learning curve: its history spans both epochs, the loss falls across the
    # resume, and every epoch's figures are the uninterrupted run's.
    losses = [epoch["mean_loss"] for epoch in resumed.epoch_metrics]
    assert len(losses) == 2 and losses[1] < losses[0]
    assert losses == [epoch["mean_loss"] for epoch in straight.epoch_metrics]
    assert sorted(first) == sorted(second)
    for name in first:
        assert torch.equal(first[name], second[name]), name
    assert (tmp_path / "straight" / "checkpoints" / "epoch_1.pt").exists()
    assert (tmp_path / "straight" / "checkpoints" / "epoch_2.pt").exists()


def test_resume_without_checkpoint_is_an_error(tiny_spec_path: Path, tmp_path: Path) -> None:
    spec = _spec(tiny_spec_path)
    splits = load(spec.data)
    space = SearchSpace.from_spec(spec, splits.in_channels, splits.num_classes)
    with pytest.raises(NASError, match="no checkpoint"):
        train_supernet(spec, space, splits, tmp_path, resume=True, progress=False)


# ---- sampler lifecycle, resume with a learning sampler, distillation, diagnostics -------------------------
PERFORMANCE_SAMPLER = {"name": "complexity_aware", "buckets": 3, "estimate_samples": 300,
                       "step": ["random", "random", "min"],
                       "performance": {"bank_size": 2, "candidates": 2,
                                       "probability": {"start": 0.5, "step": 0.25, "every_epochs": 1}}}


def test_learning_sampler_resumes_exactly(tiny_spec_path: Path, tmp_path: Path) -> None:
    """Kill after epoch 1, resume: the same samples follow (same weights, banks, bucket, gradient cosines)."""
    torch.set_num_threads(1)
    spec = _spec(tiny_spec_path, epochs=3, sampler=PERFORMANCE_SAMPLER, grad_cosine=True,
                 distill={"teacher": "random_mean", "loss": "alpha"})
    splits = load(spec.data)
    space = SearchSpace.from_spec(spec, splits.in_channels, splits.num_classes)
    straight = train_supernet(spec, space, splits, tmp_path / "straight", progress=False)
    crashed = tmp_path / "resumed" / "checkpoints"
    crashed.mkdir(parents=True)
    shutil.copy(tmp_path / "straight" / "checkpoints" / "epoch_1.pt", crashed / "epoch_1.pt")
    resumed = train_supernet(spec, space, splits, tmp_path / "resumed", resume=True, progress=False)

    a = torch.load(tmp_path / "straight" / "checkpoints" / "epoch_3.pt", weights_only=True)
    b = torch.load(tmp_path / "resumed" / "checkpoints" / "epoch_3.pt", weights_only=True)
    assert a["sampler"] == b["sampler"] and a["rng"] == b["rng"]
    assert sum(len(bank) for bank in a["sampler"]["banks"]) > 0 and a["sampler"]["epoch"] == 2
    for name in a["model"]:
        assert torch.equal(a["model"][name], b["model"][name]), name
    assert straight.grad_cosine == resumed.grad_cosine and len(straight.grad_cosine) == 3
    assert all(-1.0 <= c <= 1.0 for c in straight.grad_cosine)
    metrics = json.loads((tmp_path / "resumed" / "metrics.json").read_text())
    assert [e["grad_cosine"] for e in metrics["epochs"]] == list(straight.grad_cosine)
    low, high = space.flops(space.smallest()) / 1e6, space.flops(space.largest()) / 1e6
    assert all(low < e["mean_subnet_mflops"] < high for e in metrics["epochs"])
    assert resumed.metrics == tmp_path / "resumed" / "metrics.json"


class _Recorder(ArchSampler):
    """A sampler outside the slot family: one random arch, with every lifecycle call recorded."""

    calls: list[tuple[str, int]] = []

    def step(self, rng: random.Random) -> list:
        self.calls.append(("step", 0))
        return [self.space.sample(rng)]

    def on_epoch_start(self, epoch: int) -> None:
        self.calls.append(("epoch", epoch))


def test_epoch_hook_runs_before_each_epoch_and_on_resume(tiny_spec_path: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(nas.train, "make_sampler", _Recorder)
    _Recorder.calls = []
    spec = _spec(tiny_spec_path, epochs=2)
    splits = load(spec.data)
    space = SearchSpace.from_spec(spec, splits.in_channels, splits.num_classes)
    train_supernet(spec, space, splits, tmp_path, progress=False)
    steps = max(1, len(splits.y_train) // spec.data.batch_size)
    assert _Recorder.calls == [("epoch", 0), *[("step", 0)] * steps, ("epoch", 1), *[("step", 0)] * steps]
    (tmp_path / "checkpoints" / "epoch_2.pt").unlink()
    _Recorder.calls = []
    train_supernet(spec, space, splits, tmp_path, resume=True, progress=False)
    assert _Recorder.calls == [("epoch", 1), *[("step", 0)] * steps]


def test_registered_sampler_is_found_by_name(tiny_spec_path: Path) -> None:
    register_sampler("_recorder")(_Recorder)
    try:
        spec = _spec(tiny_spec_path)
        space = SearchSpace.from_spec(spec, 1, 10)
        assert isinstance(make_sampler(space, spec.train.model_copy(update={"sampler": "_recorder"})), _Recorder)
    finally:
        _SAMPLERS.pop("_recorder", None)


class _Spy:
    """Records what the trainer's supernet computes and what each student learns from."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch):
        self.outputs: list[tuple[object, torch.Tensor]] = []
        self.targets: list[torch.Tensor] = []
        spy = self

        class RecordingSupernet(Supernet):
            def forward(self, x: torch.Tensor) -> torch.Tensor:
                out = super().forward(x)
                spy.outputs.append((self.active, out.detach().clone()))
                return out

        original = nas.train.student_loss

        def recording_loss(distill, logits, target):  # type: ignore[no-untyped-def]
            spy.targets.append(target.clone())
            return original(distill, logits, target)

        monkeypatch.setattr(nas.train, "Supernet", RecordingSupernet)
        monkeypatch.setattr(nas.train, "student_loss", recording_loss)


def test_random_mean_teacher_is_the_mean_of_the_random_subnets(tiny_spec_path: Path, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    spy = _Spy(monkeypatch)
    spec = _spec(tiny_spec_path, epochs=1, sampler={"name": "uniform", "step": ["min", "random", "random"]},
                 distill={"teacher": "random_mean"})
    splits = load(spec.data)
    space = SearchSpace.from_spec(spec, splits.in_channels, splits.num_classes)
    result = train_supernet(spec, space, splits, tmp_path, progress=False)
    assert len(spy.targets) == result.steps and len(spy.outputs) == 3 * result.steps
    for step in range(result.steps):
        (a1, o1), (a2, o2), (a3, _) = spy.outputs[3 * step:3 * step + 3]
        assert a3 == space.smallest()  # the student runs after its teachers, although it is listed first
        # ElasticViT averages the teachers' probabilities, not their logits
        assert torch.allclose(F.softmax(spy.targets[step], -1), (F.softmax(o1, -1) + F.softmax(o2, -1)) / 2,
                              atol=1e-6)


def test_alpha_divergence_matches_kl_and_vanishes_at_the_teacher() -> None:
    torch.manual_seed(0)
    teacher = torch.randn(6, 10)
    student = torch.randn(6, 10, requires_grad=True)
    # With alpha = 1 on both sides the divergence is KL(p || q): the surrogate's gradient is KL's gradient.
    alpha_divergence_loss(student, teacher, 1.0, 1.0).backward()
    reference = student.detach().clone().requires_grad_(True)
    distill_loss(reference, teacher).backward()
    assert student.grad is not None and reference.grad is not None
    assert torch.allclose(student.grad * 6, reference.grad * 6, atol=1e-5)
    # The adaptive loss pushes the student toward the teacher and is stationary at it.
    at_teacher = teacher.clone().requires_grad_(True)
    alpha_divergence_loss(at_teacher, teacher, -1.0, 1.0).backward()
    assert at_teacher.grad is not None and at_teacher.grad.abs().max() < 1e-6
    moved = student.detach().clone().requires_grad_(True)
    before = F.kl_div(F.log_softmax(moved, -1), F.softmax(teacher, -1), reduction="batchmean").item()
    alpha_divergence_loss(moved, teacher, -1.0, 1.0).backward()
    with torch.no_grad():
        stepped = moved - 0.5 * moved.grad  # type: ignore[operator]
    after = F.kl_div(F.log_softmax(stepped, -1), F.softmax(teacher, -1), reduction="batchmean").item()
    assert after < before


def _export_folder(space: SearchSpace, splits, out: Path) -> torch.nn.Module:  # type: ignore[no-untyped-def]
    """A folder laid out as `nas export` writes it, holding a freshly initialised subnet."""
    torch.manual_seed(1)
    network = space.describe(space.smallest())
    net = static_model.build(network).eval()
    out.mkdir()
    (out / "network.json").write_text(json.dumps(network))
    torch.save(net.state_dict(), out / "weights.pt")
    return net


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning", "ignore:`torch.jit:DeprecationWarning")
def test_external_teacher_from_an_export_or_torchscript(tiny_spec_path: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    spec = _spec(tiny_spec_path, epochs=1)
    splits = load(spec.data)
    space = SearchSpace.from_spec(spec, splits.in_channels, splits.num_classes)
    net = _export_folder(space, splits, tmp_path / "export")
    x = splits.x_train[:5]
    assert torch.allclose(load_teacher(tmp_path / "export", splits)(x), net(x), atol=1e-6)
    # Trained on other statistics: our normalised inputs are mapped back to the teacher's normalisation.
    mean, std = [m + 0.1 for m in splits.mean], [s * 2 for s in splits.std]
    (tmp_path / "export" / "preprocess.json").write_text(json.dumps({"scale": 1 / 255, "mean": mean, "std": std}))
    raw = x * torch.tensor(splits.std).view(1, -1, 1, 1) + torch.tensor(splits.mean).view(1, -1, 1, 1)
    theirs = (raw - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)
    assert torch.allclose(load_teacher(tmp_path / "export", splits)(x), net(theirs), atol=1e-5)
    scripted = tmp_path / "teacher.torchscript.pt"
    torch.jit.trace(net, x).save(str(scripted))
    assert torch.allclose(load_teacher(scripted, splits)(x), net(x), atol=1e-5)
    exported = tmp_path / "teacher.pt2"
    batch = torch.export.Dim("batch", min=2)
    torch.export.save(torch.export.export(net, (x,), dynamic_shapes={"x": {0: batch}}), str(exported))
    assert torch.allclose(load_teacher(exported, splits)(x), net(x), atol=1e-5)

    spy = _Spy(monkeypatch)
    spec = _spec(tiny_spec_path, epochs=1, sampler="sandwich",
                 distill={"teacher": "external", "checkpoint": str(scripted)})
    result = train_supernet(spec, space, splits, tmp_path / "run", progress=False)
    assert len(spy.targets) == 3 * result.steps  # every subnet of the sandwich learns from the teacher
    first = splits.x_train[torch.randperm(len(splits.y_train), generator=torch.Generator().manual_seed(0))[:64]]
    with torch.no_grad():
        assert torch.allclose(spy.targets[0], net(first), atol=1e-4)


def test_unusable_teacher_names_the_field(tiny_spec_path: Path, tmp_path: Path) -> None:
    spec = _spec(tiny_spec_path)
    splits = load(spec.data)
    space = SearchSpace.from_spec(spec, splits.in_channels, splits.num_classes)
    with pytest.raises(NASError, match=r"^train.distill.checkpoint: cannot use teacher .*nope"):
        load_teacher(tmp_path / "nope", splits)
    (tmp_path / "junk.pt").write_bytes(b"not a model")
    with pytest.raises(NASError, match=r"^train.distill.checkpoint: cannot use teacher .*junk.pt"):
        load_teacher(tmp_path / "junk.pt", splits)
    other = SearchSpace.from_spec(spec, splits.in_channels, splits.num_classes + 3)
    _export_folder(other, splits, tmp_path / "wide")
    with pytest.raises(NASError, match=r"returns logits of shape \(13,\), but the data has 10 classes"):
        load_teacher(tmp_path / "wide", splits)
    assert space.num_classes == 10


def test_grad_cosine_on_shared_weights() -> None:
    w = torch.nn.Parameter(torch.zeros(4))
    cosine = GradCosine()
    w.grad = torch.tensor([1.0, 2.0, 0.0, 0.0])
    assert cosine.update([w]) is None  # nothing to compare with yet
    w.grad = torch.tensor([2.0, 4.0, 5.0, 0.0])  # shares the first two weights: same direction there
    assert cosine.update([w]) == pytest.approx(1.0)
    w.grad = torch.tensor([-2.0, -4.0, -5.0, 0.0])
    assert cosine.update([w]) == pytest.approx(-1.0)
    w.grad = torch.tensor([0.0, 0.0, 0.0, 7.0])  # disjoint: no shared weight
    assert cosine.update([w]) is None
    w.grad = None
    assert cosine.update([w]) is None


# ---- checkpoints: atomic, plain data only, loaded safely -------------------------------------------------
def _tiny(tiny_spec_path: Path, **train: object):
    spec = _spec(tiny_spec_path, **train)
    splits = load(spec.data)
    return spec, splits, SearchSpace.from_spec(spec, splits.in_channels, splits.num_classes)


def _one_line_error(err: pytest.ExceptionInfo[NASError]) -> str:
    message = str(err.value)
    assert "\n" not in message and "Traceback" not in message, message
    return message


def test_checkpoint_write_is_atomic_and_never_shares_a_temporary(tiny_spec_path: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A save dying half-way (disk full) leaves the previous epoch intact, nothing under the final name and no
    temporary behind; a concurrent trainer's in-flight file (the name the old code used) is never touched."""
    torch.set_num_threads(1)
    spec, splits, space = _tiny(tiny_spec_path, epochs=2)
    checkpoints = tmp_path / "checkpoints"
    checkpoints.mkdir()
    other = checkpoints / "epoch_1.tmp"
    other.write_bytes(b"another trainer's checkpoint, being written")
    real_save = torch.save

    def save_dying_in_epoch_2(obj: object, f: object, *args: object, **kwargs: object) -> None:
        if isinstance(obj, dict) and obj.get("epoch") == 2:
            if isinstance(f, str | Path):
                Path(f).write_bytes(b"half a checkpoint")
            else:
                f.write(b"half a checkpoint")  # type: ignore[attr-defined]
            raise OSError("No space left on device")
        real_save(obj, f, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(torch, "save", save_dying_in_epoch_2)
    with pytest.raises(OSError, match="No space left"):
        train_supernet(spec, space, splits, tmp_path, progress=False)
    monkeypatch.setattr(torch, "save", real_save)

    assert sorted(p.name for p in checkpoints.iterdir()) == ["epoch_1.pt", "epoch_1.tmp"]
    assert other.read_bytes() == b"another trainer's checkpoint, being written"
    assert load_checkpoint(checkpoints / "epoch_1.pt", "epoch 1", "")["epoch"] == 1
    resumed = train_supernet(spec, space, splits, tmp_path, resume=True, progress=False)
    assert resumed.steps == 2 * max(1, len(splits.y_train) // spec.data.batch_size)
    assert sorted(p.name for p in checkpoints.iterdir()) == ["epoch_1.pt", "epoch_1.tmp", "epoch_2.pt"]


class _RunsCode:
    """Pickles as a call to os.system: what a crafted checkpoint does to whoever unpickles it."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self) -> tuple:
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


def test_checkpoint_with_pickled_code_is_refused_without_running_it(tiny_spec_path: Path, tmp_path: Path) -> None:
    spec, splits, space = _tiny(tiny_spec_path, epochs=1)
    marker = tmp_path / "code_ran"
    evil = tmp_path / "supernet.pt"
    torch.save({"model": Supernet(space).state_dict(), "extra": _RunsCode(marker)}, evil)

    with pytest.raises(NASError) as err:
        load_supernet(space, evil)
    message = _one_line_error(err)
    assert message.startswith(f"{evil}: cannot load the trained supernet: it holds pickled Python objects")
    assert "system" in message and "--retrain" in message
    assert not marker.exists()

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    shutil.copy(evil, run / "checkpoints" / "epoch_1.pt")
    with pytest.raises(NASError, match="pickled Python objects") as err:
        train_supernet(spec, space, splits, run, resume=True, progress=False)
    assert "--retrain" in _one_line_error(err)
    assert not marker.exists()


def test_corrupt_or_truncated_checkpoint_is_one_line_suggesting_retrain(tiny_spec_path: Path, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    spec, splits, space = _tiny(tiny_spec_path, epochs=1)
    result = train_supernet(spec, space, splits, tmp_path / "run", progress=False)
    good = result.checkpoint.read_bytes()
    not_ours = io.BytesIO()
    torch.save([1, 2, 3], not_ours)
    damaged = {"truncated": good[: len(good) // 2], "garbage": b"not a checkpoint at all", "empty": b"",
               "not_ours": not_ours.getvalue()}
    for name, data in damaged.items():
        path = tmp_path / f"{name}.pt"
        path.write_bytes(data)
        with pytest.raises(NASError) as err:
            load_supernet(space, path)
        message = _one_line_error(err)
        assert message.startswith(f"{path}: cannot load the trained supernet: "), message
        assert message.endswith("train it again with `nas train SPEC --retrain`"), message
    other = SearchSpace.from_spec(spec, splits.in_channels, splits.num_classes + 3)
    with pytest.raises(NASError, match="do not fit this spec's space") as err:
        load_supernet(other, result.checkpoint)
    _one_line_error(err)

    latest = tmp_path / "run" / "checkpoints" / "epoch_1.pt"
    latest.write_bytes(latest.read_bytes()[:1000])
    with pytest.raises(NASError, match="corrupt or truncated") as err:
        train_supernet(spec, space, splits, tmp_path / "run", resume=True, progress=False)
    assert "--retrain" in _one_line_error(err)


def test_rng_state_is_plain_data_and_restores_exactly() -> None:
    rng = random.Random(3)
    rng.gauss(0.0, 1.0)  # leaves a cached second normal deviate in the state
    buffer = io.BytesIO()
    torch.save({"rng": rng_state(rng)}, buffer)
    buffer.seek(0)
    restored = random.Random()
    set_rng_state(restored, torch.load(buffer, weights_only=True)["rng"])
    assert restored.getstate() == rng.getstate()
    assert [restored.gauss(0.0, 1.0) for _ in range(3)] == [rng.gauss(0.0, 1.0) for _ in range(3)]


class _ObjectState(UniformSampler):
    """A sampler whose state holds an object: it could only be restored by unpickling code."""

    def state_dict(self) -> dict:
        return {"last": self.space.largest()}


def test_sampler_state_that_is_not_plain_data_is_refused(tiny_spec_path: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(nas.train, "make_sampler", _ObjectState)
    spec, splits, space = _tiny(tiny_spec_path, epochs=1)
    with pytest.raises(NASError, match=r"_ObjectState.state_dict\(\)\['last'\]: a ArchConfig cannot go into a "
                                       r"checkpoint") as err:
        train_supernet(spec, space, splits, tmp_path, progress=False)
    _one_line_error(err)


# ---- the training recipe: label smoothing, schedules, augmentation (issue 8, item 4) -----------------------
def test_label_smoothing_spreads_the_target_and_leaves_distillation_alone() -> None:
    from nas.train import label_loss

    torch.manual_seed(0)
    logits, labels = torch.randn(16, 10), torch.randint(0, 10, (16,))
    log_p = F.log_softmax(logits, -1)
    ce = F.nll_loss(log_p, labels)
    assert torch.allclose(label_loss(logits, labels), ce)  # 0.0 (the default) is today's cross-entropy
    for eps in (0.1, 0.5):
        expected = (1 - eps) * ce + eps * (-log_p.mean(-1)).mean()
        assert torch.allclose(label_loss(logits, labels, eps), expected, atol=1e-6)
    # A confident right answer costs more with smoothing (it asks for some mass on the other classes).
    confident = torch.full((1, 10), -10.0)
    confident[0, 3] = 10.0
    target = torch.tensor([3])
    assert label_loss(confident, target, 0.1) > label_loss(confident, target) + 1.0


def test_label_smoothing_reaches_the_label_learners_only(tiny_spec_path: Path) -> None:
    """In a step, the subnets that learn from labels get the smoothed loss; the students' KL and the reported
    cross-entropy do not change."""
    from nas.train import _backward_step

    spec, splits, space = _tiny(tiny_spec_path, epochs=1)
    archs, roles = [space.largest(), space.smallest()], ("teacher", "student")
    images, labels = splits.x_train[:32], splits.y_train[:32]

    def grads_and_ce(smoothing: float) -> tuple[list[torch.Tensor], list[float]]:
        torch.manual_seed(0)
        model = Supernet(space).eval()  # eval: BatchNorm uses its running statistics, so the two runs compare
        ce = _backward_step(model, archs, roles, images, labels, spec.train.distill, None, smoothing)
        return [p.grad.clone() for p in model.parameters() if p.grad is not None], ce

    plain_grads, plain_ce = grads_and_ce(0.0)
    smooth_grads, smooth_ce = grads_and_ce(0.2)
    assert plain_ce == pytest.approx(smooth_ce)  # reported: the plain cross-entropy, whatever the smoothing
    assert any(not torch.allclose(a, b) for a, b in zip(plain_grads, smooth_grads, strict=True))

    # Students learn from a teacher's soft labels (here an external one): smoothing does not reach them.
    def student_grads(smoothing: float) -> list[torch.Tensor]:
        torch.manual_seed(0)
        model = Supernet(space).eval()
        _backward_step(model, archs, ("student", "student"), images, labels, spec.train.distill,
                       _Fixed(torch.randn(32, 10, generator=torch.Generator().manual_seed(1))), smoothing)
        return [p.grad.clone() for p in model.parameters() if p.grad is not None]

    assert all(torch.equal(a, b) for a, b in zip(student_grads(0.0), student_grads(0.3), strict=True))


class _Fixed(torch.nn.Module):
    """An external teacher that always answers the same logits."""

    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.logits = logits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits


def _factors(kind: str, total: int, warmup_steps: int = 0, warmup_fraction: float | None = None) -> list[float]:
    from nas.train import schedule_for

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=2.0)
    schedule = schedule_for(optimizer, total, kind, warmup_steps, warmup_fraction)
    factors = []
    for _ in range(total):
        factors.append(optimizer.param_groups[0]["lr"] / 2.0)
        optimizer.step()
        schedule.step()
    return factors


def test_onecycle_warms_up_to_lr_then_anneals_to_about_zero() -> None:
    factors = _factors("onecycle", 100, warmup_fraction=0.3)
    peak = max(range(100), key=lambda i: factors[i])
    assert peak == 30 and factors[peak] == pytest.approx(1.0)  # the peak is the optimiser's lr
    assert factors[0] == pytest.approx(1 / 25)  # starts at lr / 25
    assert all(a < b for a, b in zip(factors[:30], factors[1:31], strict=True))  # linear warm-up
    assert factors[15] == pytest.approx(1 / 25 + (1 - 1 / 25) * 15 / 30)
    assert all(a > b for a, b in zip(factors[30:-1], factors[31:], strict=True))  # then strictly down
    assert factors[-1] == pytest.approx(1 / 25 / 1e4)  # to ~0 on the last step
    # warmup_steps sizes the warm-up when no fraction is given; a warm-up never takes every step
    assert max(range(100), key=_factors("onecycle", 100, warmup_steps=10).__getitem__) == 10
    assert _factors("onecycle", 1, warmup_fraction=0.5) == [pytest.approx(1.0)]


def test_cosine_and_constant_schedules_are_unchanged() -> None:
    cosine = _factors("cosine", 20, warmup_steps=4)
    assert cosine[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0]) and cosine[4] == pytest.approx(1.0)
    import math

    assert cosine[12] == pytest.approx(0.5 * (1 + math.cos(math.pi * 8 / 16)))
    assert _factors("constant", 10, warmup_steps=2) == pytest.approx([0.5] + [1.0] * 9)
    # warmup_fraction sizes any schedule's warm-up
    assert _factors("cosine", 20, warmup_steps=4, warmup_fraction=0.1)[:2] == pytest.approx([0.5, 1.0])


def test_augmentation_is_seeded_and_shape_preserving() -> None:
    from nas.augment import augment_batch, epoch_generator
    from nas.spec import AugmentSpec

    torch.manual_seed(0)
    images = torch.randn(64, 3, 8, 8)
    spec = AugmentSpec(random_crop=2, hflip=True)
    a = augment_batch(images, spec, epoch_generator(0, 1))
    assert a.shape == images.shape and a.dtype == images.dtype
    assert torch.equal(a, augment_batch(images, spec, epoch_generator(0, 1)))  # same seed and epoch: same batch
    assert not torch.equal(a, augment_batch(images, spec, epoch_generator(0, 2)))  # another epoch: others
    assert not torch.equal(a, augment_batch(images, spec, epoch_generator(1, 1)))  # another seed: others
    assert augment_batch(images, None, epoch_generator(0, 1)) is images  # off: the batch itself
    # Each image is a shift of itself by at most PAD pixels (edges repeated), mirrored or not: nothing else.
    padded = F.pad(images, (2, 2, 2, 2), mode="replicate")
    for out, src in zip(a, padded, strict=True):
        crops = [src[:, dy:dy + 8, dx:dx + 8] for dy in range(5) for dx in range(5)]
        assert any(torch.equal(out, c) or torch.equal(out, c.flip(-1)) for c in crops)
    # Flips are off by default (digits must not be mirrored); a crop alone never mirrors, and some images move.
    shifted = augment_batch(images, AugmentSpec(random_crop=1), epoch_generator(0, 0))
    assert not AugmentSpec(random_crop=1).hflip
    assert sum(not torch.equal(x, y) for x, y in zip(shifted, images, strict=True)) > 32
    flipped = augment_batch(images, AugmentSpec(hflip=True), epoch_generator(0, 0))
    mirrored = [torch.equal(x, y.flip(-1)) for x, y in zip(flipped, images, strict=True)]
    assert all(m or torch.equal(x, y) for m, x, y in zip(mirrored, flipped, images, strict=True))
    assert 16 < sum(mirrored) < 48


def test_recipe_trains_and_resumes_exactly(tiny_spec_path: Path, tmp_path: Path) -> None:
    """Label smoothing, one-cycle and augmentation together: the loss falls, and a run resumed after its first
    epoch ends with the uninterrupted run's weights."""
    torch.set_num_threads(1)
    spec, splits, space = _tiny(tiny_spec_path, epochs=2, schedule="onecycle", warmup_fraction=0.25,
                                label_smoothing=0.1, augment={"random_crop": 1})
    straight = train_supernet(spec, space, splits, tmp_path / "straight", progress=False)
    crashed = tmp_path / "resumed" / "checkpoints"
    crashed.mkdir(parents=True)
    shutil.copy(tmp_path / "straight" / "checkpoints" / "epoch_1.pt", crashed / "epoch_1.pt")
    resumed = train_supernet(spec, space, splits, tmp_path / "resumed", resume=True, progress=False)
    a = torch.load(straight.checkpoint, weights_only=True)["model"]
    b = torch.load(resumed.checkpoint, weights_only=True)["model"]
    for name in a:
        assert torch.equal(a[name], b[name]), name
    losses = [epoch["mean_loss"] for epoch in straight.epoch_metrics]
    assert losses[1] < losses[0] and losses == [epoch["mean_loss"] for epoch in resumed.epoch_metrics]
    # augmentation changes what is learned (the same run without it ends elsewhere)
    plain = _spec(tiny_spec_path, epochs=1, schedule="onecycle", warmup_fraction=0.25, label_smoothing=0.1)
    augmented = plain.model_copy(update={"train": plain.train.model_copy(update={"augment": spec.train.augment})})
    c = torch.load(train_supernet(plain, space, splits, tmp_path / "p", progress=False).checkpoint,
                   weights_only=True)["model"]
    d = torch.load(train_supernet(augmented, space, splits, tmp_path / "a", progress=False).checkpoint,
                   weights_only=True)["model"]
    assert any(not torch.equal(c[name], d[name]) for name in c)


@pytest.mark.parametrize(
    ("train", "expected"),
    [
        ({"label_smoothing": 0.6}, "train.label_smoothing: Input should be less than or equal to 0.5 (got 0.6)"),
        ({"label_smoothing": -0.1}, "train.label_smoothing: Input should be greater than or equal to 0"),
        ({"label_smoothing": "0.1"}, "train.label_smoothing: Input should be a valid number"),
        ({"schedule": "linear"}, "train.schedule: Input should be 'cosine', 'constant' or 'onecycle' (got 'linear')"),
        ({"warmup_fraction": 1.0}, "train.warmup_fraction: Input should be less than 1 (got 1.0)"),
        ({"warmup_fraction": -0.5}, "train.warmup_fraction: Input should be greater than or equal to 0"),
        ({"augment": {"random_crop": 65}}, "train.augment.random_crop: Input should be less than or equal to 64"),
        ({"augment": {"random_crop": -1}}, "train.augment.random_crop: Input should be greater than or equal to 0"),
        ({"augment": {"hflip": "yes"}}, "train.augment.hflip: Input should be a valid boolean (got 'yes')"),
        ({"augment": {"crop": 2}}, "train.augment.crop: unknown key 'crop'; known keys: hflip, random_crop"),
        ({"augment": "light"}, "train.augment: Input should be a valid dictionary"),
    ],
)
def test_recipe_options_are_validated_in_one_line(tiny_spec_path: Path, train: dict, expected: str) -> None:
    from nas.errors import SpecError

    raw = yaml.safe_load(tiny_spec_path.read_text())
    raw["train"].update(train)
    with pytest.raises(SpecError) as err:
        parse_spec(raw, "tiny.yaml")
    assert str(err.value).startswith("tiny.yaml: ") and "\n" not in str(err.value)
    assert expected in str(err.value)


def test_recipe_defaults_keep_todays_training_and_round_trip(tiny_spec_path: Path) -> None:
    spec = _spec(tiny_spec_path)
    assert (spec.train.label_smoothing, spec.train.schedule, spec.train.augment) == (0.0, "cosine", None)
    assert spec.train.warmup_fraction is None
    onecycle = _spec(tiny_spec_path, schedule="onecycle")  # tiny.yaml names warmup_steps: they size it
    assert onecycle.train.warmup_fraction is None
    raw = yaml.safe_load(tiny_spec_path.read_text())
    del raw["train"]["warmup_steps"]
    raw["train"].update(schedule="onecycle", augment={"random_crop": 0, "hflip": False})
    spec = parse_spec(raw, "tiny")
    assert spec.train.warmup_fraction == 0.3 and spec.train.augment is None  # nothing on: no augmentation
    assert parse_spec(spec.to_dict(), "again") == spec


def test_adaptive_alpha_divergence_follows_the_larger_divergence_per_sample() -> None:
    """Per sample, the gradient is that of the larger of D_-1 and D_1 (written out here from the definition);
    taking the smaller, or one alpha for the whole batch, gives other gradients."""
    torch.manual_seed(0)
    teacher = torch.randn(64, 10) * 1.5
    student = torch.randn(64, 10) * 1.5

    def divergence(logits: torch.Tensor, alpha: float) -> torch.Tensor:
        q, p = F.softmax(logits, -1), F.softmax(teacher, -1)
        if alpha == 1.0:
            return (p * (p / q).log()).sum(-1)
        return (q * ((p / q) ** alpha - 1)).sum(-1) / (alpha * (alpha - 1))

    with torch.no_grad():
        larger_left = divergence(student, -1.0) > divergence(student, 1.0)
    assert larger_left.any() and not larger_left.all()  # both cases occur in the batch
    exact = student.clone().requires_grad_(True)
    torch.where(larger_left, divergence(exact, -1.0), divergence(exact, 1.0)).mean().backward()
    tested = student.clone().requires_grad_(True)
    alpha_divergence_loss(tested, teacher, -1.0, 1.0, clip=1e9).backward()
    assert tested.grad is not None and exact.grad is not None
    assert torch.allclose(tested.grad, exact.grad, atol=1e-6)
    smaller = student.clone().requires_grad_(True)
    torch.where(larger_left, divergence(smaller, 1.0), divergence(smaller, -1.0)).mean().backward()
    assert not torch.allclose(tested.grad, smaller.grad, atol=1e-4)
