"""Fine-tuning of chosen subnets (nas/finetune.py, `nas finetune`, `search.finetune`) and export of the result."""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
import torch
import yaml

import nas.pipeline as pipeline
from nas import static_model
from nas.errors import NASError, SpecError
from nas.evaluate import Evaluator, accuracy, make_evaluator
from nas.export import load_export
from nas.finetune import (
    FINETUNED_ARTIFACT,
    Recipe,
    _train_parallel,
    finetune_front,
    finetune_subnet,
    load_weights,
    pick_members,
    weights_path,
)
from nas.problem import CandidateResult
from nas.space import ArchConfig
from nas.spec import FinetuneSpec, parse_spec
from nas.store import CandidateRecord, Metric, Store


@dataclass
class Job:
    """A stored job of the tiny space whose supernet trained a single epoch, with three stored candidates."""

    store: Store
    ctx: pipeline.Context
    evaluator: Evaluator
    job_id: int
    run_dir: Path
    ids: dict[str, int]  # smallest, middle, largest -> candidate id


def _log(line: str) -> None:
    pass


@pytest.fixture(scope="module")
def job(tiny_spec_path: Path, tmp_path_factory: pytest.TempPathFactory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("finetune")
    raw = yaml.safe_load(tiny_spec_path.read_text())
    raw["train"]["epochs"] = 1  # a badly trained supernet: its subnets are far from what they can reach
    spec = parse_spec(raw, "tiny")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NAS_RUNS", str(root / "runs"))
        store = Store(f"sqlite:///{root / 'nas.db'}")
        ctx = pipeline.load_context(spec)
        supernet = pipeline.ensure_supernet(ctx, store, _log, progress=False)
        evaluator = make_evaluator(supernet, ctx.splits.x_train, ctx.splits.x_val, ctx.splits.y_val)
        job_id = store.create_job("tiny", spec.to_dict(), spec.spec_hash(), ["host"], "")
        run_dir = root / "runs" / f"job_{job_id}"
        store.set_run_dir(job_id, str(run_dir))
        ids = {}
        archs = {"smallest": ctx.space.smallest(), "middle": ctx.space.sample(random.Random(3)),
                 "largest": ctx.space.largest()}
        for name, arch in archs.items():
            subnet = evaluator.subnet(arch)
            ids[name] = store.add_candidate(job_id, arch.to_dict(), arch.arch_hash(), [
                Metric("accuracy", accuracy(subnet, evaluator.x_val, evaluator.y_val)),
                Metric("test_accuracy", accuracy(subnet, ctx.splits.x_test, ctx.splits.y_test))])
        yield Job(store, ctx, evaluator, job_id, run_dir, ids)
        store.close()


def test_finetuning_raises_a_badly_trained_subnets_accuracy_and_stores_both(job: Job) -> None:
    cid = job.ids["smallest"]
    before = job.store.candidate(cid)
    result = pipeline.finetune_stored(job.store, cid, _log, epochs=2, progress=False)
    assert result.epochs == 2 and result.inherited_accuracy == before.metric("accuracy")
    assert result.val_accuracy > before.metric("accuracy") + 0.1, result
    assert result.test_accuracy > before.metric("test_accuracy") + 0.1, result
    after = job.store.candidate(cid)
    # The fine-tuned figures sit beside the inherited ones, which stay as they were.
    assert after.metric("accuracy") == before.metric("accuracy")
    assert after.metric("test_accuracy") == before.metric("test_accuracy")
    assert after.metric("finetuned_accuracy") == pytest.approx(result.val_accuracy)
    assert after.metric("finetuned_test_accuracy") == pytest.approx(result.test_accuracy)
    assert after.metric("finetune_epochs") == 2.0
    shown = after.to_json()
    assert shown["finetuned_accuracy"] == result.val_accuracy and shown["accuracy"] == before.metric("accuracy")
    # The weights: a plain state dict under the job's run dir, recorded for export, loadable with weights_only.
    assert result.weights == weights_path(job.run_dir, cid).resolve() and result.weights.is_file()
    assert job.store.find_artifact(FINETUNED_ARTIFACT, str(cid)) == str(result.weights)
    arch = ArchConfig.from_dict(after.arch)
    net = static_model.build(job.ctx.space.describe(arch))
    net.load_state_dict(torch.load(result.weights, weights_only=True))
    assert accuracy(net.eval(), job.ctx.splits.x_test, job.ctx.splits.y_test) == result.test_accuracy


def test_export_after_finetuning_ships_the_finetuned_weights(job: Job, tmp_path: Path) -> None:
    cid = job.ids["smallest"]
    if job.store.candidate(cid).metric("finetuned_accuracy") is None:
        pipeline.finetune_stored(job.store, cid, _log, epochs=2, progress=False)
    record = job.store.candidate(cid)
    info = pipeline.export_candidate(job.store, cid, tmp_path / "out", _log)
    assert info["weights"] == "finetuned"
    assert info["test_accuracy"] == info["stored_test_accuracy"] == record.metric("finetuned_test_accuracy")
    # Moved away from the package, it loads the way its README says and reproduces the fine-tuned accuracy.
    moved = shutil.copytree(tmp_path / "out", tmp_path / "moved")
    net = load_export(moved)
    with torch.no_grad():
        predicted = net(job.ctx.splits.x_test).argmax(-1)
    correct = int((predicted == job.ctx.splits.y_test).sum())
    assert correct / len(predicted) == pytest.approx(record.metric("finetuned_test_accuracy"), abs=1e-9)
    shipped = torch.load(moved / "weights.pt", weights_only=True)
    tuned = load_weights(weights_path(job.run_dir, cid))
    assert all(torch.equal(shipped[k], tuned[k]) for k in tuned)
    card = json.loads((moved / "candidate.json").read_text())
    assert card["weights"] == "finetuned"
    assert card["finetuned_test_accuracy"] == record.metric("finetuned_test_accuracy")
    assert "fine-tuned for 2 epoch(s)" in (moved / "README.md").read_text()
    # A candidate that was not fine-tuned still ships its inherited weights, and says so.
    other = pipeline.export_candidate(job.store, job.ids["middle"], tmp_path / "other", _log)
    assert other["weights"] == "inherited" and other["test_accuracy"] == other["stored_test_accuracy"]
    assert "inherited from the trained supernet" in (tmp_path / "other" / "README.md").read_text()


def test_finetuning_is_deterministic_and_distillation_is_optional(job: Job) -> None:
    arch = ArchConfig.from_dict(job.store.candidate(job.ids["middle"]).arch)
    recipe = Recipe.from_spec(job.ctx.spec, epochs=1)
    assert (recipe.label_smoothing, recipe.distill, recipe.lr) == (0.1, 0.0, job.ctx.spec.train.optimizer.lr)
    a, losses_a = finetune_subnet(job.evaluator, arch, job.ctx.splits, recipe)
    b, losses_b = finetune_subnet(job.evaluator, arch, job.ctx.splits, recipe)
    assert losses_a == losses_b
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    distilled, losses_d = finetune_subnet(job.evaluator, arch, job.ctx.splits,
                                          Recipe.from_spec(job.ctx.spec, epochs=1, distill=0.5))
    assert losses_d != losses_a and not a.training and not distilled.training
    # the supernet itself is untouched by fine-tuning
    assert job.evaluator.val_accuracy(arch) == job.store.candidate(job.ids["middle"]).metric("accuracy")


def test_search_finetune_tunes_the_most_accurate_members_once(job: Job, tmp_path: Path) -> None:
    """`search.finetune: {top: 2, pick: accuracy}` over a front of three: the two most accurate by validation
    accuracy; asked again (a resumed job), nothing is fine-tuned twice."""
    store = Store(f"sqlite:///{tmp_path / 'nas.db'}")
    spec = job.ctx.spec
    tuned_spec = parse_spec({**spec.to_dict(), "search": {**spec.to_dict()["search"],
                                                         "finetune": {"top": 2, "epochs": 1,
                                                                      "pick": "accuracy"}}}, "tiny")
    ctx = pipeline.Context(tuned_spec, job.ctx.splits, job.ctx.space)
    job_id = store.create_job("tiny", tuned_spec.to_dict(), tuned_spec.spec_hash(), ["host"], str(tmp_path / "run"))
    ids = []
    for accuracy_, name in ((0.5, "smallest"), (0.9, "middle"), (0.7, "largest")):
        arch = job.store.candidate(job.ids[name]).arch
        ids.append(store.add_candidate(job_id, arch, ArchConfig.from_dict(arch).arch_hash(),
                                       [Metric("accuracy", accuracy_)]))
    done = finetune_front(store, ctx, job.evaluator, ids, tmp_path / "run", _log)
    assert [r.candidate_id for r in done] == [ids[1], ids[2]]
    assert store.candidate(ids[0]).metric("finetuned_accuracy") is None
    assert all(store.candidate(i).metric("finetune_epochs") == 1.0 for i in ids[1:])
    assert finetune_front(store, ctx, job.evaluator, ids, tmp_path / "run", _log) == []
    assert finetune_front(store, job.ctx, job.evaluator, ids, tmp_path / "run", _log) == []  # off: nothing
    store.close()


def test_damaged_finetuned_weights_are_one_line_errors(job: Job, tmp_path: Path) -> None:
    path = tmp_path / "c1.pt"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(NASError) as err:
        load_weights(path)
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"{path}: cannot load the fine-tuned weights: ")
    assert message.endswith("fine-tune the candidate again with `nas finetune`")

    class Payload:
        def __reduce__(self):
            return (print, ("ran",))

    torch.save({"weight": Payload()}, path)
    with pytest.raises(NASError, match="holds more than tensors") as err:
        load_weights(path)
    assert "\n" not in str(err.value)


def test_parallel_finetuning_gives_the_weights_of_one_after_the_other(job: Job) -> None:
    """Two subnets fine-tuned on two spawned processes (one thread each, as the tests run) end bit-identical to
    the same recipe run in this process, calibrated and in eval mode, in the order asked."""
    recipe = Recipe.from_spec(job.ctx.spec, epochs=1, distill=0.3)
    archs = [job.ctx.space.smallest(), job.ctx.space.sample(random.Random(3))]
    trained = _train_parallel(job.evaluator, archs, job.ctx.splits, [recipe, recipe], workers=2)
    for arch, (model, losses, seconds) in zip(archs, trained, strict=True):
        alone, alone_losses = finetune_subnet(job.evaluator, arch, job.ctx.splits, recipe)
        assert losses == alone_losses and seconds > 0 and not model.training
        assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), alone.state_dict().values(),
                                                     strict=True))


def _record(candidate_id: int, accuracy_: float, macs: float) -> CandidateRecord:
    return CandidateRecord(candidate_id=candidate_id, job_id=1, arch={}, arch_hash=str(candidate_id),
                           created_at=datetime.now(UTC), pareto_targets=(),
                           metrics=(Metric("accuracy", accuracy_), Metric("flops", macs)))


def test_spread_pick_covers_the_front_from_smallest_to_largest() -> None:
    """`pick: spread` (the default): members evenly spaced by MACs, the smallest and the largest always; the
    most accurate alone when one is asked; everything when asked for more than there are."""
    front = [_record(i, acc, macs) for i, acc, macs in
             ((1, 0.90, 5e6), (2, 0.80, 1e6), (3, 0.85, 2e6), (4, 0.88, 3e6), (5, 0.89, 4e6))]
    assert [r.candidate_id for r in pick_members(front, 3, "spread")] == [2, 4, 1]
    assert [r.candidate_id for r in pick_members(front, 2, "spread")] == [2, 1]
    assert [r.candidate_id for r in pick_members(front, 1, "spread")] == [1]
    assert [r.candidate_id for r in pick_members(front, 9, "spread")] == [2, 3, 4, 5, 1]
    assert [r.candidate_id for r in pick_members(front, 2, "accuracy")] == [1, 5]
    assert FinetuneSpec().pick == "spread"


def test_a_list_of_epochs_gives_the_smallest_pick_the_first_and_the_largest_the_last() -> None:
    tune = FinetuneSpec(top=3, epochs=[6, 4, 3])
    assert [tune.epochs_for(i, 3) for i in range(3)] == [6, 4, 3]
    assert [tune.epochs_for(i, 2) for i in range(2)] == [6, 3]  # a front of two: the ends
    assert tune.epochs_for(0, 1) == 6 and FinetuneSpec(epochs=5).epochs_for(2, 3) == 5
    assert [FinetuneSpec(epochs=[8, 2]).epochs_for(i, 5) for i in range(5)] == [8, 8, 8, 2, 2]


@pytest.mark.parametrize(
    ("finetune", "expected"),
    [
        ({"top": 0}, "search.finetune.top: Input should be greater than 0 (got 0)"),
        ({"epochs": 0}, "search.finetune.epochs: epochs must be an integer in 1..100000 or a list of them, got 0"),
        ({"epochs": 100_001}, "search.finetune.epochs: epochs must be an integer in 1..100000 or a list of them, got"),
        ({"epochs": "3"}, "search.finetune.epochs: epochs must be an integer in 1..100000 or a list of them, got '3'"),
        ({"lr": 0.0}, "search.finetune.lr: Input should be greater than 0"),
        ({"label_smoothing": 0.6}, "search.finetune.label_smoothing: Input should be less than or equal to 0.5"),
        ({"distill": 1.5}, "search.finetune.distill: Input should be less than or equal to 1"),
        ({"topk": 3}, "search.finetune.topk: unknown key 'topk'; did you mean 'top'?"),
        ({"top": "3"}, "search.finetune.top: Input should be a valid integer"),
        ({"epochs": []}, "search.finetune.epochs: a list of epochs needs 1 to 64 entries, got 0"),
        ({"epochs": [3, 0]}, "search.finetune.epochs: epochs must be an integer in 1..100000 or a list of them, got 0"),
        ({"pick": "best"}, "search.finetune.pick: Input should be 'spread' or 'accuracy'"),
        (True, "search.finetune: Input should be a valid dictionary"),
    ],
)
def test_search_finetune_is_validated_in_one_line(tiny_spec_path: Path, finetune: object, expected: str) -> None:
    raw = yaml.safe_load(tiny_spec_path.read_text())
    raw["search"]["finetune"] = finetune
    with pytest.raises(SpecError) as err:
        parse_spec(raw, "tiny.yaml")
    assert str(err.value).startswith("tiny.yaml: ") and "\n" not in str(err.value)
    assert expected in str(err.value)


def test_search_finetune_defaults_and_round_trip(tiny_spec_path: Path) -> None:
    raw = yaml.safe_load(tiny_spec_path.read_text())
    assert parse_spec(raw, "tiny").search.finetune is None  # off by default
    raw["search"]["finetune"] = {"top": 2, "epochs": 1}
    spec = parse_spec(raw, "tiny")
    tune = spec.search.finetune
    assert (tune.top, tune.epochs, tune.lr, tune.label_smoothing, tune.distill) == (2, 1, None, 0.1, 0.0)
    assert parse_spec(spec.to_dict(), "again") == spec
    assert spec.training_hash() == parse_spec(yaml.safe_load(tiny_spec_path.read_text()), "t").training_hash()


# ---- through the command line, on the session's searched tiny workspace (on a copy of its store) ---------------
def test_cli_finetune_show_pareto_and_export(searched, tmp_path: Path) -> None:
    ws, result = searched
    db = tmp_path / "nas.db"
    shutil.copy(ws.path / "nas.db", db)  # the shared workspace's store stays as the other tests expect it
    store = ["--store", f"sqlite:///{db}"]
    record = min(result["pareto"], key=lambda r: r["accuracy"])
    cid = str(record["candidate_id"])
    tuned = ws.run_json("finetune", cid, "--epochs", "1", "--no-progress", *store)
    assert tuned["candidate_id"] == record["candidate_id"] and tuned["finetune_epochs"] == 1
    assert tuned["accuracy"] == record["accuracy"] and 0.0 <= tuned["finetuned_accuracy"] <= 1.0
    assert Path(tuned["weights"]).is_file() and Path(tuned["weights"]).parent.name == "finetuned"

    shown = ws.run_json("show", cid, *store)
    assert shown["finetuned_accuracy"] == tuned["finetuned_accuracy"]
    assert shown["finetuned_test_accuracy"] == tuned["finetuned_test_accuracy"]
    assert shown["accuracy"] == record["accuracy"] and shown["test_accuracy"] == record["test_accuracy"]
    assert "finetuned: accuracy" in ws.run("show", cid, *store).stdout
    table = ws.run("pareto", str(result["job_id"]), "--target", "host", *store).stdout
    assert "ft_acc" in table.splitlines()[0] and "ft_test_acc" in table.splitlines()[0]

    out = tmp_path / "export"
    info = ws.run_json("export", cid, "--out", str(out), *store)
    assert info["weights"] == "finetuned"
    assert info["test_accuracy"] == pytest.approx(tuned["finetuned_test_accuracy"], abs=1e-9)

    for args, expected in ((("2147483647",), "candidate 2147483647"), ((cid, "--epochs", "0"), "--epochs")):
        proc = ws.run("finetune", *args, *store, check=False)
        assert proc.returncode == 2, proc.stderr
        assert expected in proc.stderr and "Traceback" not in proc.stderr


def test_a_search_with_finetune_tunes_before_it_exports(job: Job, tmp_path: Path) -> None:
    """`search.finetune: {top: 1}` in a job's end (`_store_fronts`, the step after the search, without Ray): the
    most accurate front member is fine-tuned before the front is exported, and its export ships those weights."""
    store = Store(f"sqlite:///{tmp_path / 'nas.db'}")
    spec = job.ctx.spec.to_dict()
    tuned = parse_spec({**spec, "search": {**spec["search"], "finetune": {"top": 1, "epochs": 1}}}, "tiny")
    ctx = pipeline.Context(tuned, job.ctx.splits, job.ctx.space)
    job_id = store.create_job("tiny", tuned.to_dict(), tuned.spec_hash(), ["host"], str(tmp_path / "run"))
    results, ids = [], {}
    for latency, name in enumerate(("smallest", "middle", "largest")):  # all three on the front
        arch = ArchConfig.from_dict(job.store.candidate(job.ids[name]).arch)
        results.append(CandidateResult(arch, 0.5 + 0.1 * latency, 1000, 1000, {"host": 1.0 + latency}))
        ids[arch.arch_hash()] = store.add_candidate(job_id, arch.to_dict(), arch.arch_hash(),
                                                    pipeline.candidate_metrics(results[-1]))
    pipeline._store_fronts(job_id, ctx, job.evaluator, results, ids, ["host"], store, _log, tmp_path / "run")
    best = ids[results[-1].arch.arch_hash()]
    assert store.candidate(best).metric("finetuned_accuracy") is not None
    assert (tmp_path / "run" / "finetuned" / f"c{best}.pt").is_file()
    for cid in ids.values():
        card = json.loads((tmp_path / "run" / "exports" / f"c{cid}" / "candidate.json").read_text())
        assert card["weights"] == ("finetuned" if cid == best else "inherited")
        assert (card["finetuned_accuracy"] is not None) == (cid == best)
    store.close()
