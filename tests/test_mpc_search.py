"""End to end on an MPC target: an SPU-measured table for a tiny per-head space, then `nas search` with
NSGA-II and MPCViT's head search, fine-tuning with the all-softmax teacher, and `nas show` per head.

Needs SPU (its venv, `scripts/setup_mpc.sh`): CI installs it, so the test runs there; elsewhere it is skipped
when SPU is missing."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from nas.mpc.runner import spu_available
from nas.store import Store

TINY_MPC = Path(__file__).parent / "specs" / "tiny_mpc.yaml"

pytestmark = pytest.mark.skipif(not spu_available() and os.environ.get("CI") != "true",
                                reason="SPU is not installed (bash scripts/setup_mpc.sh); CI runs this")


def test_search_on_an_mpc_target_finds_heterogeneous_attention(workspace) -> None:
    measured = workspace.run_json("latency", "measure", "--target", "mpc-tiny", "--mpc-profile", "wan",
                                  "--spec", str(TINY_MPC), "--no-progress")
    assert measured["measured"] == measured["pieces"] > 0
    proc = workspace.run("search", str(TINY_MPC), "--target", "mpc-tiny", "--no-progress", timeout=600)
    assert "mpcvit: " in proc.stderr and "new candidate(s) from the head search" in proc.stderr
    jobs = workspace.run_json("jobs")
    job = jobs[0]["job_id"]
    front = workspace.run_json("pareto", str(job), "--target", "mpc-tiny")
    assert front and all(r["latency_ms"]["mpc-tiny"] > 0 for r in front)
    store = Store(workspace.env["NAS_STORE"])
    try:
        archs = [record.arch for record in store.candidates(job)]
    finally:
        store.close()
    kinds = [[layer["attention"]] if isinstance(layer.get("attention", "softmax"), str) else layer["attention"]
             for arch in archs for stage in arch["stages"] for layer in stage["layers"] if "attention" in layer]
    assert {k for layer in kinds for k in layer} <= {"softmax", "relu_softmax", "scaling"}
    assert any(len(set(layer)) > 1 for layer in kinds)  # heads of one layer with different kinds
    shown = workspace.run("show", str(front[0]["candidate_id"])).stdout
    assert "stage 0 layer 0: attention" in shown and "ffn " in shown
    assert any(r.get("finetuned_accuracy") is not None for r in front)  # fine-tuned with the softmax teacher


def test_an_mpc_target_without_the_spaces_pieces_is_refused_before_training(workspace, tiny_spec_path) -> None:
    proc = workspace.run("search", str(tiny_spec_path), "--target", "mpc-wan", "--no-progress", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "mpc-wan" in proc.stderr and "block kind" in proc.stderr
