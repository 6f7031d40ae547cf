"""Standalone exports of a candidate: `model.py` + `network.json` + `weights.pt` + preprocessing + README.

An export never destroys what it did not write. Every export leaves an `export_manifest.json` listing the files
it wrote with their SHA-256; a later export into the same folder (`force=True`, `nas export --force`) replaces
or removes only those files, and only while they still hold what was exported (a file the user edited is
theirs). Anything else in the folder is never touched, and a non-empty folder is refused without `force`.
Files are first written to a unique temporary folder beside the target, synced, then moved into place one by
one with `os.replace` (the manifest last), so a crash leaves each file either old or complete.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from nas import static_model
from nas.errors import NASError
from nas.evaluate import Evaluator
from nas.files import fsync_dir, fsync_file
from nas.space import ArchConfig
from nas.store import CandidateRecord

if TYPE_CHECKING:
    from nas.pipeline import Context

MANIFEST_NAME = "export_manifest.json"
MANIFEST_FORMAT = "nas-export"
MANIFEST_VERSION = 1
BASE_FILES = ("model.py", *static_model.OP_FILES, "network.json", "arch.json", "preprocess.json", "weights.pt",
              "README.md", "candidate.json")
FORMAT_FILES = {"pytorch": (), "torchscript": ("model.torchscript.pt",), "onnx": ("model.onnx",)}

EXPORT_README = """# Exported subnet {candidate_id} (job {job_id})

A standalone PyTorch model found by `nas`; it needs only `torch`.

```python
import json, torch
from model import build            # model.py in this folder (it loads the ops_*.py beside it)
net = build(json.load(open("network.json")))
net.load_state_dict(torch.load("weights.pt", weights_only=True))
net.eval()
```

Inputs: float images N x {in_channels} x H x W, scaled to [0, 1] (pixels / 255) then normalised with
`preprocess.json` (`(x - mean) / std` per channel); the network resizes them to {resolution} x {resolution}.
Outputs: logits over {num_classes} classes.

Weights: {weights}

`{manifest}` lists the files this export wrote; `nas export --force` into this folder replaces only those.

| metric | value |
| --- | --- |
{metrics}
"""


def export_files(formats: Sequence[str]) -> list[str]:
    """The names an export with `formats` writes, the manifest last."""
    unknown = sorted(set(formats) - set(FORMAT_FILES))
    if unknown:
        raise NASError(f"--format: unknown export format {unknown[0]!r} (known: {', '.join(sorted(FORMAT_FILES))})")
    extra = [name for fmt in dict.fromkeys(formats) for name in FORMAT_FILES[fmt]]
    return [*BASE_FILES, *extra, MANIFEST_NAME]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _plain_name(name: object) -> bool:
    """Whether a manifest entry names a file directly inside the folder (never `..`, a path, or empty)."""
    return isinstance(name, str) and name not in ("", ".", "..") and Path(name).name == name and "/" not in name


def read_manifest(folder: Path) -> dict[str, str] | None:
    """The files (name -> SHA-256) a previous export recorded in `folder`, or None without a valid manifest.

    Entries that are not plain file names are dropped: a manifest can never point outside its folder.
    """
    try:
        data = json.loads((folder / MANIFEST_NAME).read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT or not isinstance(data.get("files"), list):
        return None
    return {entry["name"]: entry["sha256"] for entry in data["files"]
            if isinstance(entry, dict) and _plain_name(entry.get("name")) and isinstance(entry.get("sha256"), str)}


@dataclass(frozen=True)
class ExportPlan:
    """Where an export goes and what it may replace there.

    `out` is the resolved folder; `replace` the previous export's files that may be overwritten or removed.
    """

    out: Path
    replace: frozenset[str] = field(default_factory=frozenset)


def plan_export(out_dir: Path | str, formats: Sequence[str] = ("pytorch",), force: bool = False,
                owned: bool = False, ignore: Sequence[str] = ()) -> ExportPlan:
    """Check that an export may go to `out_dir`; raises a one-line NASError saying why not.

    `force` allows replacing a previous export's files (those its manifest lists, unchanged since); `owned`
    marks a folder `nas` itself owns (a job's exports), where every file of the export may be overwritten.
    Entries named in `ignore` (our own temporary folder) are not counted as content.
    """
    out = Path(out_dir).expanduser().resolve()
    if not out.name:
        raise NASError(f"--out {out_dir}: {out} is the file system root; export into a folder of its own")
    if out.exists() and not out.is_dir():
        raise NASError(f"--out {out_dir}: {out} exists and is not a folder")
    present = {p.name for p in out.iterdir()} - set(ignore) if out.is_dir() else set()
    if not present:
        return ExportPlan(out)
    manifest = read_manifest(out)
    previous = manifest or {}
    if owned:
        return ExportPlan(out, frozenset(present & ({*previous, MANIFEST_NAME} | set(export_files(formats)))))
    if not force:
        raise NASError(f"--out {out}: the folder is not empty; export into a new folder, or pass --force to replace "
                       f"a previous export there (only the files its {MANIFEST_NAME} lists)")
    ours = {name for name, digest in previous.items()
            if name in present and (out / name).is_file() and not (out / name).is_symlink()
            and _sha256(out / name) == digest}
    changed = sorted(name for name in previous if name in present and name not in ours)
    if changed:
        raise NASError(f"--out {out}: {', '.join(changed)} changed since it was exported (not replaced, even with "
                       f"--force); move it away or export into a new folder")
    if manifest is not None:
        ours.add(MANIFEST_NAME)
    clash = sorted(name for name in export_files(formats) if name in present and name not in ours)
    if clash:
        raise NASError(f"--out {out}: {', '.join(clash)} already exist and are not files of a previous export "
                       f"(no {MANIFEST_NAME} lists them); not replaced, even with --force: export into a new folder")
    return ExportPlan(out, frozenset(ours))


@contextlib.contextmanager
def _staging(out: Path) -> Iterator[Path]:
    """A unique temporary folder beside `out` (inside it when its parent is not writable), removed on exit."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        try:
            tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".export-tmp", dir=out.parent))
        except PermissionError:
            if not out.is_dir():
                raise
            tmp = Path(tempfile.mkdtemp(prefix=".nas-export.", suffix=".tmp", dir=out))
    except OSError as exc:
        raise NASError(f"--out {out}: cannot write there ({exc.strerror or type(exc).__name__})") from None
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_export(record: CandidateRecord, ctx: Context, evaluator: Evaluator, out_dir: Path | str,
                 formats: Sequence[str] = ("pytorch",), force: bool = False, owned: bool = False,
                 finetuned: Path | None = None) -> dict[str, Any]:
    """Write a standalone model for `record` into `out_dir`, under the rules of `plan_export`.

    The weights are the candidate's fine-tuned ones when `finetuned` (their state dict, see `nas.finetune`)
    is given, else those it inherits from the supernet; `candidate.json` and the README say which.
    Returns the resolved folder, the files written, the previous export's files replaced or removed, and
    `weights` (`finetuned` or `inherited`).
    """
    names = export_files(formats)
    plan_export(out_dir, formats, force, owned)  # refuse before the work
    arch = ArchConfig.from_dict(record.arch)
    network = ctx.space.describe(arch)
    if finetuned is not None:
        from nas.finetune import load_weights

        model = static_model.build(network)
        try:
            model.load_state_dict(load_weights(finetuned))
        except RuntimeError as exc:
            raise NASError(f"{finetuned}: the fine-tuned weights do not fit candidate {record.candidate_id}'s "
                           f"network ({str(exc).strip().splitlines()[0]}); fine-tune it again with "
                           f"`nas finetune`") from None
        model.eval()
        epochs = record.metric("finetune_epochs")
        weights = (f"fine-tuned for {epochs:.0f} epoch(s) after the search (`finetuned_accuracy`, "
                   f"`finetuned_test_accuracy`), starting from the supernet's.")
    else:
        model = evaluator.subnet(arch).eval()
        weights = "inherited from the trained supernet (BatchNorm statistics re-estimated), not fine-tuned."
    out = Path(out_dir).expanduser().resolve()
    with _staging(out) as tmp:
        shutil.copyfile(static_model.__file__, tmp / "model.py")
        for name, source in static_model.op_files().items():  # the op modules model.py loads from beside it
            shutil.copyfile(source, tmp / name)
        (tmp / "network.json").write_text(json.dumps(network, indent=1))
        (tmp / "arch.json").write_text(json.dumps(record.arch, indent=1))
        (tmp / "preprocess.json").write_text(json.dumps({"scale": 1 / 255, "mean": ctx.splits.mean,
                                                         "std": ctx.splits.std}, indent=1))
        torch.save(model.state_dict(), tmp / "weights.pt")
        example = torch.zeros(1, ctx.space.in_channels, arch.resolution, arch.resolution)
        if "torchscript" in formats:
            torch.jit.trace(model, example).save(str(tmp / "model.torchscript.pt"))
        if "onnx" in formats:
            torch.onnx.export(model, (example,), str(tmp / "model.onnx"), dynamo=False, input_names=["images"],
                              output_names=["logits"],
                              dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}})
        info = {**record.to_json(), "weights": "finetuned" if finetuned is not None else "inherited"}
        rows = "\n".join(f"| {k} | {v} |" for k, v in info.items() if k not in ("arch", "flags", "arch_hash"))
        (tmp / "README.md").write_text(EXPORT_README.format(
            candidate_id=record.candidate_id, job_id=record.job_id, in_channels=ctx.space.in_channels,
            resolution=arch.resolution, num_classes=ctx.space.num_classes, metrics=rows, manifest=MANIFEST_NAME,
            weights=weights))
        (tmp / "candidate.json").write_text(json.dumps(info, indent=1, default=str))
        files = [{"name": name, "sha256": _sha256(tmp / name)} for name in names if name != MANIFEST_NAME]
        (tmp / MANIFEST_NAME).write_text(json.dumps({"format": MANIFEST_FORMAT, "version": MANIFEST_VERSION,
                                                     "candidate_id": record.candidate_id, "job_id": record.job_id,
                                                     "files": files}, indent=1))
        for name in names:
            fsync_file(tmp / name)
        # Check again right before touching the folder: it may have changed while the model was written.
        plan = plan_export(out, formats, force, owned, ignore=[tmp.name] if tmp.parent == out else [])
        out.mkdir(parents=True, exist_ok=True)
        stale = sorted(plan.replace - set(names))
        for name in stale:
            (out / name).unlink(missing_ok=True)
        for name in names:  # the manifest last: until it lands, the previous one still describes the folder
            os.replace(tmp / name, out / name)
        fsync_dir(out)
    return {"out": str(out), "files": names, "replaced": sorted(plan.replace),
            "weights": "finetuned" if finetuned is not None else "inherited"}


def load_export(out_dir: Path | str) -> torch.nn.Module:
    """Load an exported model the way its README says, without the supernet (nor `nas.static_model`)."""
    out_dir = Path(out_dir)
    spec = importlib.util.spec_from_file_location(f"nas_export_{abs(hash(str(out_dir)))}", out_dir / "model.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    net = module.build(json.loads((out_dir / "network.json").read_text()))
    net.load_state_dict(torch.load(out_dir / "weights.pt", weights_only=True))
    return net.eval()
