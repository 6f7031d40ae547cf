"""Use cases of nas/pipeline.py that need no search: one supernet per key, however many processes want it."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
import yaml

import nas.pipeline as pipeline
from nas.store import Store
from nas.train import load_supernet

# A second process that trains the supernet; its training waits for the test's "go" file, so the test knows it
# holds the supernet's lock for as long as the test needs.
TRAINER = """
import sys, time
from pathlib import Path
import nas.pipeline as pipeline
from nas.store import Store

spec_path, store_url, go = sys.argv[1], sys.argv[2], Path(sys.argv[3])
real_train = pipeline.train_supernet

def train_when_told(*args, **kwargs):
    deadline = time.monotonic() + 60
    while not go.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return real_train(*args, **kwargs)

pipeline.train_supernet = train_when_told
ctx = pipeline.load_context(pipeline.load_checked(spec_path))
with Store(store_url) as store:
    pipeline.ensure_supernet(ctx, store, lambda line: print(line, flush=True), progress=False)
print("done", flush=True)
"""


def test_second_trainer_of_a_supernet_waits_then_reuses_it(tiny_spec_path: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    raw = yaml.safe_load(tiny_spec_path.read_text())
    raw["train"]["epochs"] = 1
    raw["data"]["limit"] = 300
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(raw))
    store_url = f"sqlite:///{tmp_path / 'nas.db'}"
    go = tmp_path / "go"
    monkeypatch.setenv("NAS_RUNS", str(tmp_path / "runs"))
    ctx = pipeline.load_context(pipeline.load_checked(spec_path))

    def train_again(*args: object, **kwargs: object) -> None:
        raise AssertionError("the second process trained the supernet again")

    monkeypatch.setattr(pipeline, "train_supernet", train_again)
    errors = (tmp_path / "first.stderr").open("w")  # a file, not a pipe: a chatty stderr must not block it
    first = subprocess.Popen([sys.executable, "-c", TRAINER, str(spec_path), store_url, str(go)],
                             stdout=subprocess.PIPE, stderr=errors, text=True,
                             env={**os.environ, "NAS_RUNS": str(tmp_path / "runs")})
    try:
        assert first.stdout is not None
        for line in first.stdout:  # "training supernet ..." is logged while the first process holds the lock
            if line.startswith("training supernet"):
                break
        else:
            pytest.fail(f"the first trainer never started: {(tmp_path / 'first.stderr').read_text()[-2000:]}")

        logs: list[str] = []
        outcome: dict[str, object] = {}

        def second() -> None:
            try:
                with Store(store_url) as store:
                    outcome["supernet"] = pipeline.ensure_supernet(ctx, store, logs.append, progress=False)
            except BaseException as exc:  # reported by the assertions below
                outcome["error"] = exc

        thread = threading.Thread(target=second)
        thread.start()
        deadline = time.monotonic() + 60
        while not any("waiting for it" in line for line in logs) and thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        go.touch()  # the first process may train now; the second is blocked on the lock
        thread.join(timeout=120)
        assert first.wait(timeout=120) == 0, (tmp_path / "first.stderr").read_text()[-2000:]
    finally:
        go.touch()
        first.kill()
        first.wait(timeout=10)
        errors.close()

    assert "error" not in outcome, outcome.get("error")
    assert any(line.startswith(f"another process is training supernet {ctx.supernet_key}") for line in logs), logs
    assert any(line.startswith("waited ") for line in logs), logs
    assert any(line.startswith("reusing trained supernet") for line in logs), logs
    with Store(store_url) as store:
        stored = Path(store.find_artifact(pipeline.SUPERNET_ARTIFACT, ctx.supernet_key) or "")
    theirs = load_supernet(ctx.space, stored).state_dict()
    ours = outcome["supernet"].state_dict()  # type: ignore[union-attr]
    assert sorted(theirs) == sorted(ours) and all(torch.equal(theirs[k], ours[k]) for k in theirs)
