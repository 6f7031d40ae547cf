"""Exports (nas/export.py): they write a manifest, and never destroy a file they did not write."""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from nas.errors import NASError
from nas.evaluate import make_evaluator
from nas.export import MANIFEST_NAME, load_export, write_export
from nas.pipeline import load_context
from nas.spec import parse_spec
from nas.store import CandidateRecord, Metric
from nas.supernet import Supernet

Export = Callable[..., dict[str, Any]]


@pytest.fixture(scope="module")
def export(tiny_spec_path: Path) -> Export:
    """`write_export` of one candidate of the tiny space (untrained weights: exports need no training)."""
    raw = yaml.safe_load(tiny_spec_path.read_text())
    raw["data"]["limit"] = 300
    ctx = load_context(parse_spec(raw, "tiny"))
    torch.manual_seed(0)
    evaluator = make_evaluator(Supernet(ctx.space), ctx.splits.x_train, ctx.splits.x_val, ctx.splits.y_val)
    arch = ctx.space.smallest()
    record = CandidateRecord(7, 3, arch.to_dict(), arch.arch_hash(), datetime.now(timezone.utc),
                             (Metric("accuracy", 0.5),), ())

    def run(out: Path | str, **options: Any) -> dict[str, Any]:
        return write_export(record, ctx, evaluator, out, **options)

    run.example = ctx.splits.x_test[:4]  # type: ignore[attr-defined]
    run.subnet = evaluator.subnet(arch).eval()  # type: ignore[attr-defined]
    return run


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _manifest(folder: Path) -> dict[str, str]:
    data = json.loads((folder / MANIFEST_NAME).read_text())
    assert data["format"] == "nas-export" and data["version"] == 1
    return {entry["name"]: entry["sha256"] for entry in data["files"]}


def test_export_writes_a_manifest_of_its_files_and_loads_standalone(export: Export, tmp_path: Path) -> None:
    out = tmp_path / "exported" / "c7"
    info = export(out)
    assert info["out"] == str(out.resolve()) and info["files"][-1] == MANIFEST_NAME
    listed = _manifest(out)
    assert sorted(listed) == sorted(set(info["files"]) - {MANIFEST_NAME})
    assert sorted(p.name for p in out.iterdir()) == sorted(info["files"])
    assert all(_sha256(out / name) == digest for name, digest in listed.items())
    assert [p.name for p in (tmp_path / "exported").iterdir()] == ["c7"]  # no temporary left beside it
    with torch.no_grad():
        assert torch.allclose(load_export(out)(export.example), export.subnet(export.example), atol=1e-6)


def test_non_empty_folder_is_refused_and_force_keeps_the_users_files(export: Export, tmp_path: Path) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "precious").write_text("a user's only copy")
    with pytest.raises(NASError, match=r"the folder is not empty; .*pass --force"):
        export(out)
    assert [p.name for p in out.iterdir()] == ["precious"] and [p.name for p in tmp_path.iterdir()] == ["mine"]
    export(out, force=True)
    assert (out / "precious").read_text() == "a user's only copy"
    assert "precious" not in _manifest(out) and (out / "weights.pt").is_file()


def test_force_replaces_and_removes_only_the_previous_exports_files(export: Export, tmp_path: Path) -> None:
    out = tmp_path / "c7"
    export(out, formats=("pytorch", "torchscript"))
    assert "model.torchscript.pt" in _manifest(out)
    (out / "notes.txt").write_text("what I found")
    info = export(out, force=True)
    assert not (out / "model.torchscript.pt").exists()  # ours, and not part of the new export
    assert (out / "notes.txt").read_text() == "what I found"
    assert "model.torchscript.pt" in info["replaced"] and "notes.txt" not in info["replaced"]
    assert sorted(_manifest(out)) == sorted(set(info["files"]) - {MANIFEST_NAME})


def test_force_never_replaces_edited_or_foreign_files(export: Export, tmp_path: Path) -> None:
    edited = tmp_path / "edited"
    export(edited)
    (edited / "README.md").write_text("my notes on this model")
    with pytest.raises(NASError, match=r"README.md changed since it was exported"):
        export(edited, force=True)
    assert (edited / "README.md").read_text() == "my notes on this model"

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "model.py").write_text("my own model")
    with pytest.raises(NASError, match=r"model.py already exist and are not files of a previous export"):
        export(foreign, force=True)
    assert [p.name for p in foreign.iterdir()] == ["model.py"]

    # A manifest can only name files inside its folder, whatever it says.
    victim = tmp_path / "victim.txt"
    victim.write_text("outside the export")
    crafted = tmp_path / "crafted"
    crafted.mkdir()
    (crafted / MANIFEST_NAME).write_text(json.dumps({"format": "nas-export", "version": 1, "files": [
        {"name": "../victim.txt", "sha256": _sha256(victim)}, {"name": str(victim), "sha256": _sha256(victim)}]}))
    export(crafted, force=True)
    assert victim.read_text() == "outside the export"


def test_out_dot_is_the_current_folder_and_the_root_is_refused(export: Export, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    info = export(Path("."))
    assert info["out"] == str(here.resolve()) and (here / MANIFEST_NAME).is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["here"]
    with pytest.raises(NASError, match="not empty"):
        export(".")
    export(".", force=True)
    with pytest.raises(NASError, match="file system root"):
        export(Path("/"), force=True)


def test_a_failed_export_leaves_the_folder_as_it_was(export: Export, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "c7"
    export(out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def disk_full(*args: object, **kwargs: object) -> None:
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(OSError, match="No space left"):
        export(out, force=True)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["c7"]


def test_a_jobs_own_export_folder_is_replaced(export: Export, tmp_path: Path) -> None:
    """runs/job_N/exports/cN belong to nas: an older export there without a manifest is simply replaced."""
    out = tmp_path / "exports" / "c7"
    out.mkdir(parents=True)
    (out / "model.py").write_text("an export by an older nas")
    (out / "keep.txt").write_text("not an export file")
    export(out, owned=True)
    assert (out / "model.py").read_text() != "an export by an older nas"
    assert (out / "keep.txt").read_text() == "not an export file"


# ---- through the CLI, on the end-to-end workspace ---------------------------------------------------------
def _error_line(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.strip().splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def test_cli_export_refuses_a_non_empty_out_and_force_keeps_user_files(searched, tmp_path: Path) -> None:
    ws, result = searched
    candidate = str(result["pareto"][0]["candidate_id"])
    out = tmp_path / "exported"
    out.mkdir()
    (out / "precious").write_text("keep me")
    assert "pass --force" in _error_line(ws.run("export", candidate, "--out", str(out), check=False))
    assert [p.name for p in out.iterdir()] == ["precious"]
    ws.run("export", candidate, "--out", str(out), "--force")
    assert (out / "precious").read_text() == "keep me" and (out / MANIFEST_NAME).is_file()

    here = tmp_path / "here"
    here.mkdir()
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve().parents[1] / "cli.py"), "export", candidate,
                           "--out", ".", "--json"], cwd=here, env=ws.env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1])["out"] == str(here.resolve())
    assert (here / "weights.pt").is_file() and (here / MANIFEST_NAME).is_file()


def test_cli_reports_a_truncated_stored_supernet_in_one_line(searched, tmp_path: Path) -> None:
    """The store points at a damaged supernet.pt (a copy: the shared workspace stays intact)."""
    ws, result = searched
    db = tmp_path / "nas.db"
    shutil.copy(ws.path / "nas.db", db)
    with sqlite3.connect(db) as conn:
        (stored,) = conn.execute("select path from artifacts where kind = 'supernet'").fetchone()
        truncated = tmp_path / "supernet.pt"
        truncated.write_bytes(Path(stored).read_bytes()[:2000])
        conn.execute("update artifacts set path = ? where kind = 'supernet'", (str(truncated),))
    proc = ws.run("export", str(result["pareto"][0]["candidate_id"]), "--out", str(tmp_path / "out"),
                  "--store", f"sqlite:///{db}", check=False)
    line = _error_line(proc)
    assert f"{truncated}: cannot load the trained supernet: the file is corrupt or truncated" in line
    assert line.endswith("--retrain`")
