"""Data sets as in-memory tensors: train / validation / test, each given by the source or held out from train.

Sources: Fashion-MNIST from its IDX gzip files (the Debian package `dataset-fashion-mnist` puts them in
/usr/share/datasets/fashion-mnist; `data.path` or `NAS_FASHION_MNIST` point elsewhere), scikit-learn's bundled
digits, an image folder, or a `.npz` of arrays (images as N x H x W or N x H x W x C, labels as N class ids).

Image folder layouts (names starting with a dot are ignored):
- one sub-folder per class at the root: train only; validation and test are held out from it;
- `train/` + `val/` and/or `test/`, each with one sub-folder per class: `val/` is the validation split and
  `test/` the test split; a split not given is held out from `train/`. The classes are `train/`'s sub-folders, in
  sorted order; a class folder in `val/` or `test/` that `train/` lacks, or any other folder beside them, is an
  error.

Array layouts: `x_train`/`y_train` (+ optional `x_val`/`y_val`, `x_test`/`y_test`), or `x`/`y` (train only), or
the names given in `data.keys`. Arrays are read without pickle; labels must be integer class ids >= 0.

A split held out from train takes `data.val_fraction` of it (validation first, then test, from one seeded
permutation); when the source gives the validation split, `val_fraction` only sizes a held-out test split.
`Splits.layout` says where each split came from.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import struct
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from nas.errors import NASError
from nas.spec import ArrayKeys, DataSpec

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}
SPLIT_FOLDERS = ("train", "val", "test")
ARRAY_ROLES = ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test")
SPLIT_NAMES = {"train": "train", "val": "validation", "test": "test"}


@dataclass(frozen=True)
class Splits:
    """Normalised float images (N, C, H, W) and int64 labels for each split; `layout` says where each came from."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    layout: str = ""

    @property
    def in_channels(self) -> int:
        return int(self.x_train.shape[1])

    @property
    def resolution(self) -> int:
        return int(self.x_train.shape[-1])


@dataclass
class _Raw:
    """A source's arrays before checks and normalisation; a split left None is held out from train."""

    origin: str
    arrays: dict[str, np.ndarray]
    names: dict[str, str] = field(default_factory=dict)  # role -> how errors name the array
    sources: dict[str, str] = field(default_factory=dict)  # split -> what it was read from
    num_classes: int | None = None

    def has(self, split: str) -> bool:
        return f"x_{split}" in self.arrays

    def name(self, role: str) -> str:
        return self.names.get(role, f"{self.origin}: {role}")


def data_hash(spec: DataSpec) -> str:
    """Identifies the data a supernet was trained on: the spec section plus a fingerprint of the content (name,
    size and modification time of every file, by stat alone; scikit-learn's version for digits)."""
    payload = spec.model_dump(mode="json") | {"content": _fingerprint(spec)}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def _fingerprint(spec: DataSpec) -> object:
    if spec.dataset == "digits":
        try:
            import sklearn
        except ImportError:
            return {"scikit-learn": None}
        return {"scikit-learn": sklearn.__version__}
    path = _source_path(spec)
    assert path is not None
    if spec.dataset == "fashion-mnist":
        return [_file_entry(path / name, name) for name in _FASHION_FILES.values()]
    if path.is_dir():
        return _tree_fingerprint(path)
    return [_file_entry(path, path.name)]


def _file_entry(path: str | Path, name: str) -> list[object]:
    try:
        stat = os.stat(path)
    except OSError:
        return [name, None, None]
    return [name, stat.st_size, stat.st_mtime_ns]


def _tree_fingerprint(root: Path) -> dict[str, object]:
    """A sha256 over (relative path, size, mtime_ns) of every visible file under `root`, in sorted order: stat
    only, streamed, so it stays cheap for folders of millions of images."""
    digest, count = hashlib.sha256(), 0
    seen: set[tuple[int, int]] = set()
    for directory, subdirs, files in os.walk(root, followlinks=True):
        try:
            stat = os.stat(directory)
        except OSError:
            subdirs[:] = []
            continue
        if (stat.st_dev, stat.st_ino) in seen:  # a symbolic link back up the tree
            subdirs[:] = []
            continue
        seen.add((stat.st_dev, stat.st_ino))
        subdirs[:] = sorted(name for name in subdirs if not name.startswith("."))
        relative = Path(directory).relative_to(root)
        for name in sorted(name for name in files if not name.startswith(".")):
            entry = _file_entry(os.path.join(directory, name), (relative / name).as_posix())
            digest.update(json.dumps(entry).encode() + b"\n")
            count += 1
    return {"files": count, "sha256": digest.hexdigest()}


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


def _load_fashion(path: Path) -> _Raw:
    arrays = {role: read_idx(path / name) for role, name in _FASHION_FILES.items()}
    names = {role: str(path / name) for role, name in _FASHION_FILES.items()}
    return _Raw(f"fashion-mnist {path}", arrays, names, {"train": "train-*.gz", "test": "t10k-*.gz"})


def _load_digits() -> _Raw:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images * (255.0 / 16.0)).astype(np.uint8)
    labels = digits.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(labels))
    images, labels = images[order], labels[order]
    cut = int(len(labels) * 0.8)
    arrays = {"x_train": images[:cut], "y_train": labels[:cut], "x_test": images[cut:], "y_test": labels[cut:]}
    sources = {"train": "a seeded 80% of the images", "test": "the other 20%"}
    return _Raw("digits (scikit-learn)", arrays, sources=sources)


def _short(names: list[str], most: int = 8) -> str:
    """`names` comma-separated, cut after `most` with the total."""
    shown = ", ".join(names[:most])
    return f"{shown}, ... ({len(names)} in all)" if len(names) > most else shown or "nothing"


def _array_names(path: Path, found: list[str], keys: ArrayKeys | None) -> dict[str, str]:
    """Which array of the file plays which role (`x_train`, `y_train`, ...)."""
    if keys is not None:
        mapping = {role: name for role, name in keys.model_dump().items() if name is not None}
        how = "as named in data.keys"
    elif any(role in found for role in ARRAY_ROLES):
        given = {role for role in ARRAY_ROLES if role in found} | {"x_train", "y_train"}
        given |= {f"{axis}_{role[2:]}" for role in given for axis in "xy"}  # a split needs both x and y
        mapping = {role: role for role in ARRAY_ROLES if role in given}
        how = "x_train, y_train (+ x_val, y_val, x_test, y_test), or x, y, or names in data.keys"
    elif "x" in found or "y" in found:
        mapping = {"x_train": "x", "y_train": "y"}
        how = "x, y as a train-only set"
    else:
        raise NASError(f"{path}: an arrays data set needs x_train and y_train (or x and y, or names in data.keys), "
                       f"but the file holds {_short(sorted(found))}")
    missing = [name for name in mapping.values() if name not in found]
    if missing:
        raise NASError(f"{path}: missing array {missing[0]} (expected {', '.join(mapping.values())}, {how}; "
                       f"found {_short(sorted(found))})")
    return mapping


def _load_arrays(path: Path, keys: ArrayKeys | None) -> _Raw:
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise NASError(f"{path}: cannot read arrays data set: {exc}") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise NASError(f"{path}: an arrays data set is a .npz of named arrays (np.savez), but this is a single array")
    with archive:
        mapping = _array_names(path, list(archive.files), keys)
        arrays = {}
        for role, name in mapping.items():
            try:
                arrays[role] = archive[name]
            except ValueError as exc:
                if "allow_pickle" in str(exc):
                    raise NASError(f"{path}: array {name} holds pickled Python objects, which are not loaded; save "
                                   "plain numeric arrays") from None
                raise NASError(f"{path}: cannot read array {name}: {exc}") from None
    names = {role: f"{path}: {name}" for role, name in mapping.items()}
    sources = {split: f"{mapping[f'x_{split}']}/{mapping[f'y_{split}']}"
               for split in SPLIT_FOLDERS if f"x_{split}" in mapping}
    return _Raw(f"arrays {path}", arrays, names, sources)


def _visible(path: Path) -> list[Path]:
    return sorted(entry for entry in path.iterdir() if not entry.name.startswith("."))


def _class_folders(root: Path) -> list[str]:
    """The class sub-folders of `root`; images lying directly in it are an error."""
    loose = [entry.name for entry in _visible(root) if entry.is_file() and entry.suffix.lower() in IMAGE_SUFFIXES]
    if loose:
        raise NASError(f"{root}: images lie directly in the folder ({_short(loose, 2)}); put them in one sub-folder "
                       "per class")
    classes = [entry.name for entry in _visible(root) if entry.is_dir()]
    if not classes:
        raise NASError(f"{root}: an image folder needs one sub-folder per class")
    return classes


def _read_folder(root: Path, classes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image

    images, labels = [], []
    for label, name in enumerate(classes):
        folder = root / name
        if not folder.is_dir():
            continue
        for file in _visible(folder):
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


def _load_folder(path: Path) -> _Raw:
    if not path.is_dir():
        raise NASError(f"{path}: a folder data set must be a directory")
    folders = [entry.name for entry in _visible(path) if entry.is_dir()]
    splits = [name for name in SPLIT_FOLDERS if name in folders]
    if "train" not in splits:
        if splits:
            raise NASError(f"{path}: has {splits[0]}/ but no train/; a split layout is train/ (+ val/, test/), each "
                           "with one sub-folder per class")
        classes = _class_folders(path)
        x_train, y_train = _read_folder(path, classes)
        return _Raw(f"folder {path} (class folders)", {"x_train": x_train, "y_train": y_train},
                    {"x_train": str(path)}, {"train": "the class folders"}, num_classes=len(classes))
    extra = [name for name in folders if name not in SPLIT_FOLDERS]
    if extra:
        raise NASError(f"{path}: unexpected folder {extra[0]}/ beside train/ (a split layout holds only train/, val/ "
                       "and test/, each with one sub-folder per class)")
    classes = _class_folders(path / "train")
    arrays, names = {}, {}
    for split in splits:
        root = path / split
        unknown = [name for name in _class_folders(root) if name not in classes]
        if unknown:
            raise NASError(f"{root / unknown[0]}: class folder '{unknown[0]}' is not in train/ (train's classes: "
                           f"{_short(classes)})")
        arrays[f"x_{split}"], arrays[f"y_{split}"] = _read_folder(root, classes)
        names[f"x_{split}"] = str(root)
    return _Raw(f"folder {path} ({' + '.join(f'{name}/' for name in splits)})", arrays, names,
                {split: f"{split}/" for split in splits}, num_classes=len(classes))


def _to_tensor(images: np.ndarray, name: str = "data") -> torch.Tensor:
    array = np.asarray(images)
    if array.dtype == np.bool_ or not np.issubdtype(array.dtype, np.number):
        raise NASError(f"{name}: images must be numbers, but the array has dtype {array.dtype}")
    if array.ndim == 3:
        array = array[:, None]
    elif array.ndim == 4 and array.shape[-1] in (1, 3, 4) and array.shape[1] not in (1, 3, 4):
        array = array.transpose(0, 3, 1, 2)
    if array.ndim != 4:
        raise NASError(f"{name}: images must be N x H x W or N x H x W x C, but got shape {array.shape}")
    if array.size == 0:
        raise NASError(f"{name}: no images (shape {array.shape})")
    tensor = torch.from_numpy(np.array(array, copy=True)).float()
    return tensor / 255.0 if array.dtype == np.uint8 else tensor


def _to_labels(labels: np.ndarray, name: str) -> torch.Tensor:
    """Integer class ids >= 0, one per image (N, or N x 1); float arrays must hold whole numbers."""
    array = np.asarray(labels)
    if array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim != 1:
        raise NASError(f"{name}: labels must be one class id per image (shape N), but got shape {array.shape}")
    if array.size == 0:
        raise NASError(f"{name}: no labels (empty array)")
    if array.dtype == np.bool_ or not (np.issubdtype(array.dtype, np.integer)
                                       or np.issubdtype(array.dtype, np.floating)):
        raise NASError(f"{name}: labels must be integer class ids, but the array has dtype {array.dtype}")
    if np.issubdtype(array.dtype, np.floating):
        bad = ~np.isfinite(array) | (array != np.round(array))
        if bad.any():
            raise NASError(f"{name}: labels must be integer class ids, but found {array[bad][0].item()!r} (one-hot or "
                           "probability labels are not supported)")
    if array.min() < 0:
        raise NASError(f"{name}: labels must be class ids >= 0, but found {array.min().item()!r}")
    return torch.from_numpy(array.astype(np.int64))


def _split(raw: _Raw, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """A split's images and labels, checked."""
    x_name, y_name = raw.name(f"x_{split}"), raw.names.get(f"y_{split}", raw.name(f"x_{split}"))
    images = _to_tensor(raw.arrays[f"x_{split}"], x_name)
    labels = _to_labels(raw.arrays[f"y_{split}"], y_name)
    if len(images) != len(labels):
        where = x_name if x_name == y_name else f"{x_name} and {y_name.rsplit(': ', 1)[-1]}"
        raise NASError(f"{where}: {len(images)} images but {len(labels)} labels")
    return images, labels


def _load_raw(spec: DataSpec) -> _Raw:
    path = _source_path(spec)
    if spec.dataset == "digits":
        return _load_digits()
    assert path is not None
    if spec.dataset == "fashion-mnist":
        return _load_fashion(path)
    if spec.dataset == "arrays":
        return _load_arrays(path, spec.keys)
    return _load_folder(path)


def _layout(raw: _Raw, fraction: float) -> str:
    """Where each split came from, e.g. `folder d (train/ + val/): train <- train/; validation <- val/; test <- 10%
    held out from train`."""
    parts = [f"{SPLIT_NAMES[split]} <- {raw.sources.get(split) or f'{fraction * 100:g}% held out from train'}"
             for split in SPLIT_FOLDERS]
    return f"{raw.origin}: {'; '.join(parts)}"


def load(spec: DataSpec) -> Splits:
    """Load the data set a spec names, hold out the splits it does not give, normalise with training statistics."""
    check_source(spec)
    raw = _load_raw(spec)
    images, labels = _split(raw, "train")
    generator = torch.Generator().manual_seed(spec.seed)
    order = torch.randperm(len(labels), generator=generator)
    if spec.limit is not None:
        order = order[: spec.limit]
    held = [split for split in ("val", "test") if not raw.has(split)]
    n_held = max(1, int(round(len(order) * spec.val_fraction)))
    if held and len(order) - n_held * len(held) < 1:
        raise NASError(f"data.val_fraction: holding out {' and '.join(SPLIT_NAMES[s] for s in held)} ({n_held} "
                       f"each) leaves no training images out of {len(order)}")
    parts: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for split in ("val", "test"):
        if split in held:  # validation first, then test, from the front of the permutation
            index, order = order[:n_held], order[n_held:]
            parts[split] = images[index], labels[index]
            continue
        parts[split] = _split(raw, split)
        shape = tuple(parts[split][0].shape[1:])
        if shape != tuple(images.shape[1:]):
            raise NASError(f"{raw.name(f'x_{split}')}: {SPLIT_NAMES[split]} images are {shape} (C x H x W), but "
                           f"training images are {tuple(images.shape[1:])}")
    x_tr = images[order]
    mean = x_tr.mean(dim=(0, 2, 3), keepdim=True)
    std = x_tr.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
    num_classes = raw.num_classes or int(max(y.max().item() for y in (labels, parts["val"][1], parts["test"][1]))) + 1
    return Splits(
        x_train=(x_tr - mean) / std, y_train=labels[order],
        x_val=(parts["val"][0] - mean) / std, y_val=parts["val"][1],
        x_test=(parts["test"][0] - mean) / std, y_test=parts["test"][1],
        num_classes=num_classes,
        mean=tuple(float(v) for v in mean.flatten()), std=tuple(float(v) for v in std.flatten()),
        layout=_layout(raw, spec.val_fraction),
    )
