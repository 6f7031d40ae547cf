"""Data sets as in-memory tensors: train / validation (held out from train) / test.

Sources: Fashion-MNIST from its IDX gzip files (the Debian package `dataset-fashion-mnist` puts them in
/usr/share/datasets/fashion-mnist; `data.path` or `NAS_FASHION_MNIST` point elsewhere), scikit-learn's bundled
digits, an image folder (one sub-folder per class, optional `train/` and `test/` splits) or a `.npz` of arrays
(`x_train`, `y_train`, optional `x_test`, `y_test`; images as N x H x W or N x H x W x C).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from nas.errors import NASError
from nas.spec import DataSpec

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}


@dataclass(frozen=True)
class Splits:
    """Normalised float images (N, C, H, W) and int64 labels for each split."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()

    @property
    def in_channels(self) -> int:
        return int(self.x_train.shape[1])

    @property
    def resolution(self) -> int:
        return int(self.x_train.shape[-1])


def data_hash(spec: DataSpec) -> str:
    """Identifies the data a supernet was trained on (the spec section plus the resolved path)."""
    payload = spec.model_dump(mode="json") | {"resolved": str(_source_path(spec) or "")}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def _source_path(spec: DataSpec) -> Path | None:
    if spec.dataset == "fashion-mnist":
        return Path(spec.path or os.environ.get("NAS_FASHION_MNIST") or FASHION_MNIST_DIR)
    if spec.dataset in ("folder", "arrays"):
        return Path(spec.path or "")
    return None


def check_source(spec: DataSpec, where: str = "data") -> None:
    """Raise a one-line NASError when the data set's files are missing (cheap: no loading)."""
    path = _source_path(spec)
    if path is None:
        return
    if spec.dataset == "fashion-mnist":
        missing = [name for name in _FASHION_FILES.values() if not (path / name).exists()]
        if missing:
            raise NASError(
                f"{where}.dataset: fashion-mnist files not found in {path} (missing {missing[0]}); install the "
                "Debian package `dataset-fashion-mnist` or set data.path"
            )
    elif not path.exists():
        raise NASError(f"{where}.path: {spec.dataset} data set not found at {path}")


_FASHION_FILES = {
    "x_train": "train-images-idx3-ubyte.gz",
    "y_train": "train-labels-idx1-ubyte.gz",
    "x_test": "t10k-images-idx3-ubyte.gz",
    "y_test": "t10k-labels-idx1-ubyte.gz",
}


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally gzip-compressed) of unsigned bytes."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        data = handle.read()
    if len(data) < 4:
        raise NASError(f"{path}: not an IDX file (too short)")
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise NASError(f"{path}: not an IDX file of unsigned bytes")
    shape = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    array = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if array.size != int(np.prod(shape)):
        raise NASError(f"{path}: truncated IDX file ({array.size} values, header says {int(np.prod(shape))})")
    return array.reshape(shape)


def _load_fashion(path: Path) -> tuple[np.ndarray, ...]:
    return tuple(read_idx(path / name) for name in _FASHION_FILES.values())


def _load_digits() -> tuple[np.ndarray, ...]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images * (255.0 / 16.0)).astype(np.uint8)
    labels = digits.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(labels))
    images, labels = images[order], labels[order]
    cut = int(len(labels) * 0.8)
    return images[:cut], labels[:cut], images[cut:], labels[cut:]


def _load_arrays(path: Path) -> tuple[np.ndarray | None, ...]:
    try:
        with np.load(path) as data:
            if "x_train" not in data or "y_train" not in data:
                raise NASError(f"{path}: an arrays data set needs `x_train` and `y_train` (found {sorted(data)})")
            return (data["x_train"], data["y_train"], data.get("x_test"), data.get("y_test"))
    except (OSError, ValueError) as exc:
        raise NASError(f"{path}: cannot read arrays data set: {exc}") from None


def _read_folder(root: Path, classes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image

    images, labels = [], []
    for label, name in enumerate(classes):
        folder = root / name
        if not folder.is_dir():
            continue
        for file in sorted(folder.iterdir()):
            if file.suffix.lower() in IMAGE_SUFFIXES:
                with Image.open(file) as image:
                    images.append(np.asarray(image.convert("RGB" if image.mode not in ("L", "1") else "L")))
                labels.append(label)
    if not images:
        raise NASError(f"{root}: no images found in class folders")
    shapes = {image.shape for image in images}
    if len(shapes) != 1:
        raise NASError(f"{root}: all images must share one size, but found {sorted(shapes)[:3]}")
    return np.stack(images), np.asarray(labels, dtype=np.int64)


def _load_folder(path: Path) -> tuple[np.ndarray | None, ...]:
    split_dirs = (path / "train").is_dir()
    train_root = path / "train" if split_dirs else path
    classes = sorted(d.name for d in train_root.iterdir() if d.is_dir())
    if not classes:
        raise NASError(f"{train_root}: an image folder needs one sub-folder per class")
    x_train, y_train = _read_folder(train_root, classes)
    if split_dirs and (path / "test").is_dir():
        x_test, y_test = _read_folder(path / "test", classes)
        return x_train, y_train, x_test, y_test
    return x_train, y_train, None, None


def _to_tensor(images: np.ndarray) -> torch.Tensor:
    array = np.asarray(images)
    if array.ndim == 3:
        array = array[:, None]
    elif array.ndim == 4 and array.shape[-1] in (1, 3, 4) and array.shape[1] not in (1, 3, 4):
        array = array.transpose(0, 3, 1, 2)
    if array.ndim != 4:
        raise NASError(f"images must be N x H x W or N x H x W x C, but got shape {array.shape}")
    tensor = torch.from_numpy(np.array(array, copy=True)).float()
    return tensor / 255.0 if array.dtype == np.uint8 else tensor


def load(spec: DataSpec) -> Splits:
    """Load the data set a spec names, split off validation, and normalise with training statistics."""
    check_source(spec)
    path = _source_path(spec)
    if spec.dataset == "fashion-mnist":
        assert path is not None
        x_train, y_train, x_test, y_test = _load_fashion(path)
    elif spec.dataset == "digits":
        x_train, y_train, x_test, y_test = _load_digits()
    elif spec.dataset == "arrays":
        assert path is not None
        x_train, y_train, x_test, y_test = _load_arrays(path)
    else:
        assert path is not None
        x_train, y_train, x_test, y_test = _load_folder(path)
    images, labels = _to_tensor(x_train), torch.as_tensor(np.array(y_train, copy=True), dtype=torch.int64)
    if len(images) != len(labels):
        raise NASError(f"data: {len(images)} training images but {len(labels)} labels")
    generator = torch.Generator().manual_seed(spec.seed)
    order = torch.randperm(len(labels), generator=generator)
    if spec.limit is not None:
        order = order[: spec.limit]
    n_val = max(1, int(round(len(order) * spec.val_fraction)))
    if len(order) - n_val < 1:
        raise NASError(f"data.val_fraction: leaves no training images out of {len(order)}")
    val_idx, train_idx = order[:n_val], order[n_val:]
    if x_test is None:
        # No test split given: hold out a second slice of the training data as the test set.
        test_idx, train_idx = train_idx[:n_val], train_idx[n_val:]
        test_images, test_labels = images[test_idx], labels[test_idx]
    else:
        test_images = _to_tensor(x_test)
        test_labels = torch.as_tensor(np.array(y_test, copy=True), dtype=torch.int64)
    x_tr = images[train_idx]
    mean = x_tr.mean(dim=(0, 2, 3), keepdim=True)
    std = x_tr.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
    num_classes = int(max(labels.max().item(), test_labels.max().item())) + 1
    return Splits(
        x_train=(x_tr - mean) / std, y_train=labels[train_idx],
        x_val=(images[val_idx] - mean) / std, y_val=labels[val_idx],
        x_test=(test_images - mean) / std, y_test=test_labels,
        num_classes=num_classes,
        mean=tuple(float(v) for v in mean.flatten()), std=tuple(float(v) for v in std.flatten()),
    )
