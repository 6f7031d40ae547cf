"""Data loading: the supernet cache key follows the data's content, image folder layouts and `.npz` layouts.

Every data set here is built in tmp_path (tiny PNGs, small arrays), so the file runs in seconds.
"""

from __future__ import annotations

import builtins
import gzip
import os
import struct
from pathlib import Path

import numpy as np
import pytest
import yaml

from nas.data import data_hash, load
from nas.errors import NASError, SpecError
from nas.spec import DataSpec, parse_spec

TINY_SPEC = Path(__file__).resolve().parent / "specs" / "tiny.yaml"


def _png(path: Path, value: int, side: int = 4) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((side, side), value, dtype=np.uint8), mode="L").save(path)


def _folder(root: Path, counts: dict[str, dict[str, int]], value: int = 60) -> Path:
    """`counts` maps a split folder ("" for the root) to {class: number of images}."""
    for split, classes in counts.items():
        for name, count in classes.items():
            for i in range(count):
                _png(root / split / name / f"{i}.png", value + i)
    return root


def _error(spec: DataSpec) -> str:
    with pytest.raises(NASError) as info:
        load(spec)
    message = str(info.value)
    assert "\n" not in message, message
    return message


def _arrays(path: Path, **arrays: np.ndarray) -> DataSpec:
    np.savez(path, **arrays)
    return DataSpec(dataset="arrays", path=str(path), val_fraction=0.2)


def _images(n: int, value: int = 0) -> np.ndarray:
    return np.full((n, 4, 4), value, dtype=np.uint8)


def _set_mtime(path: Path, mtime_ns: int) -> None:
    os.utime(path, ns=(mtime_ns, mtime_ns))


# --- the cache key ---------------------------------------------------------------------------------------------


def test_key_follows_the_npz_content_at_the_same_path(tmp_path: Path) -> None:
    path = tmp_path / "data.npz"
    spec = _arrays(path, x_train=_images(8, 1), y_train=np.arange(8) % 2)
    original, stat = path.read_bytes(), path.stat()
    key = data_hash(spec)
    assert data_hash(spec) == key  # touching nothing: stable across calls
    # New data of the same size at the same path: only the modification time tells them apart.
    np.savez(path, x_train=_images(8, 2), y_train=np.arange(8) % 2)
    _set_mtime(path, stat.st_mtime_ns + 5_000_000_000)
    assert path.stat().st_size == stat.st_size
    assert data_hash(spec) != key
    # The same data again (bytes and modification time): the same key.
    path.write_bytes(original)
    _set_mtime(path, stat.st_mtime_ns)
    assert data_hash(spec) == key


def test_key_follows_the_folder_content_by_stat_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = _folder(tmp_path / "pets", {"": {"cat": 2, "dog": 2}})
    spec = DataSpec(dataset="folder", path=str(root))
    key = data_hash(spec)

    def no_reading(*args: object, **kwargs: object) -> None:
        raise AssertionError("data_hash must not open files")

    with monkeypatch.context() as patch:  # stat only: no file is opened, so large folders stay cheap
        patch.setattr(builtins, "open", no_reading)
        patch.setattr("PIL.Image.open", no_reading)
        assert data_hash(spec) == key
    (root / ".DS_Store").write_bytes(b"finder")  # hidden files are ignored by the loader and the key
    assert data_hash(spec) == key
    image = root / "cat" / "0.png"
    mtime = image.stat().st_mtime_ns
    _png(image, 200)  # same size, new pixels
    _set_mtime(image, mtime + 5_000_000_000)
    changed = data_hash(spec)
    assert changed != key
    _png(root / "dog" / "9.png", 1)
    assert data_hash(spec) not in (key, changed)


def _idx(path: Path, array: np.ndarray) -> None:
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.astype(np.uint8).tobytes())


def test_key_follows_the_fashion_mnist_files(tmp_path: Path) -> None:
    _idx(tmp_path / "train-images-idx3-ubyte.gz", _images(10, 7))
    _idx(tmp_path / "train-labels-idx1-ubyte.gz", np.arange(10) % 3)
    _idx(tmp_path / "t10k-images-idx3-ubyte.gz", _images(4, 9))
    _idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.arange(4) % 3)
    spec = DataSpec(dataset="fashion-mnist", path=str(tmp_path), val_fraction=0.2)
    splits = load(spec)
    assert (len(splits.y_train), len(splits.y_val), len(splits.y_test)) == (8, 2, 4)
    assert "test <- t10k-*.gz" in splits.layout
    key = data_hash(spec)
    labels = tmp_path / "t10k-labels-idx1-ubyte.gz"
    mtime = labels.stat().st_mtime_ns
    _idx(labels, np.array([2, 1, 0, 0]))
    _set_mtime(labels, mtime + 5_000_000_000)
    assert data_hash(spec) != key


def test_key_follows_the_scikit_learn_version_and_the_spec(monkeypatch: pytest.MonkeyPatch) -> None:
    import sklearn

    spec = DataSpec(dataset="digits")
    key = data_hash(spec)
    assert data_hash(DataSpec(dataset="digits", val_fraction=0.2)) != key  # the spec section stays in the key
    monkeypatch.setattr(sklearn, "__version__", "0.0.1")
    assert data_hash(spec) != key


# --- image folder layouts --------------------------------------------------------------------------------------

TRAIN = {"cat": 10, "dog": 10}


@pytest.mark.parametrize(
    ("layout", "sizes", "says"),
    [
        ({"": TRAIN}, (10, 5, 5), "(class folders): train <- the class folders; validation <- 25% held out"),
        ({"train": TRAIN, "val": {"cat": 3, "dog": 3}}, (15, 6, 5),
         "(train/ + val/): train <- train/; validation <- val/; test <- 25% held out from train"),
        ({"train": TRAIN, "test": {"cat": 2, "dog": 2}}, (15, 5, 4),
         "(train/ + test/): train <- train/; validation <- 25% held out from train; test <- test/"),
        ({"train": TRAIN, "val": {"cat": 3, "dog": 3}, "test": {"cat": 2, "dog": 2}}, (20, 6, 4),
         "(train/ + val/ + test/): train <- train/; validation <- val/; test <- test/"),
    ],
    ids=["class-folders", "train-val", "train-test", "train-val-test"],
)
def test_folder_layouts_say_which_folder_becomes_which_split(
    tmp_path: Path, layout: dict[str, dict[str, int]], sizes: tuple[int, int, int], says: str
) -> None:
    root = _folder(tmp_path / "pets", {split: classes for split, classes in layout.items() if split != "val"})
    if "val" in layout:
        _folder(root, {"val": layout["val"]}, value=250)  # bright, to tell the validation images apart
    splits = load(DataSpec(dataset="folder", path=str(root), val_fraction=0.25))
    assert (len(splits.y_train), len(splits.y_val), len(splits.y_test)) == sizes
    assert says in splits.layout
    assert splits.num_classes == 2 and sorted(set(splits.y_train.tolist())) == [0, 1]
    mean, std = splits.mean[0], splits.std[0]
    raw_val = splits.x_val * std + mean
    if "val" in layout:  # val/ is the validation split, whatever data.val_fraction says
        assert raw_val.min().item() > 0.95
    else:
        assert raw_val.max().item() < 0.5


def test_class_ids_follow_train_even_when_val_lacks_a_class(tmp_path: Path) -> None:
    root = _folder(tmp_path / "pets", {"train": {"ant": 3, "cat": 3, "dog": 3}, "val": {"dog": 2}})
    splits = load(DataSpec(dataset="folder", path=str(root), val_fraction=0.2))
    assert splits.y_val.tolist() == [2, 2] and splits.num_classes == 3


def test_class_folder_in_val_that_train_lacks_is_named(tmp_path: Path) -> None:
    root = _folder(tmp_path / "pets", {"train": {"cat": 3, "dog": 3}, "val": {"cat": 1, "bird": 1}})
    message = _error(DataSpec(dataset="folder", path=str(root)))
    assert "class folder 'bird' is not in train/" in message and "cat, dog" in message


def test_unknown_folder_beside_train_is_refused_and_hidden_ones_ignored(tmp_path: Path) -> None:
    root = _folder(tmp_path / "pets", {"train": {"cat": 3, "dog": 3}, ".ipynb_checkpoints": {"x": 1}})
    assert len(load(DataSpec(dataset="folder", path=str(root), val_fraction=0.2)).y_val) == 1
    _folder(root, {"validation": {"cat": 1}})
    assert "unexpected folder validation/ beside train/" in _error(DataSpec(dataset="folder", path=str(root)))


def test_val_without_train_and_loose_images_are_refused(tmp_path: Path) -> None:
    root = _folder(tmp_path / "pets", {"": {"cat": 3}, "val": {"cat": 1}})
    assert "has val/ but no train/" in _error(DataSpec(dataset="folder", path=str(root)))
    flat = tmp_path / "flat"
    _png(flat / "a.png", 1)
    _folder(flat, {"": {"cat": 1}})
    assert "images lie directly in the folder (a.png)" in _error(DataSpec(dataset="folder", path=str(flat)))


# --- arrays (.npz) layouts -------------------------------------------------------------------------------------


def test_arrays_x_and_y_are_a_train_only_set(tmp_path: Path) -> None:
    splits = load(_arrays(tmp_path / "d.npz", x=_images(10), y=np.arange(10) % 2))
    assert (len(splits.y_train), len(splits.y_val), len(splits.y_test)) == (6, 2, 2)
    assert splits.layout.endswith("train <- x/y; validation <- 20% held out from train; test <- 20% held out "
                                  "from train")


def test_arrays_with_validation_and_test_sets(tmp_path: Path) -> None:
    spec = _arrays(tmp_path / "d.npz", x_train=_images(10), y_train=np.arange(10) % 3, x_val=_images(3, 255),
                   y_val=np.array([2, 1, 0]), x_test=_images(4), y_test=np.arange(4) % 2)
    splits = load(spec)
    assert (len(splits.y_train), splits.y_val.tolist(), len(splits.y_test)) == (10, [2, 1, 0], 4)
    assert "validation <- x_val/y_val; test <- x_test/y_test" in splits.layout and splits.num_classes == 3


def test_arrays_with_key_names_from_the_spec(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    np.savez(path, images=_images(10), labels=np.arange(10) % 2, t_images=_images(2), t_labels=np.array([1, 0]))
    keys = {"x_train": "images", "y_train": "labels", "x_test": "t_images", "y_test": "t_labels"}
    splits = load(DataSpec(dataset="arrays", path=str(path), keys=keys, val_fraction=0.2))
    assert splits.y_test.tolist() == [1, 0] and len(splits.y_train) == 8
    assert "train <- images/labels" in splits.layout
    missing = DataSpec(dataset="arrays", path=str(path), keys={"x_train": "images", "y_train": "targets"})
    message = _error(missing)
    assert message == (f"{path}: missing array targets (expected images, targets, as named in data.keys; "
                       "found images, labels, t_images, t_labels)")


def _raw_spec(data: dict) -> dict:
    raw = yaml.safe_load(TINY_SPEC.read_text())
    raw["data"] = data
    return raw


def test_spec_keys_are_strict_and_round_trip() -> None:
    keys = {"x_train": "images", "y_train": "labels"}
    spec = parse_spec(_raw_spec({"dataset": "arrays", "path": "d.npz", "keys": keys}), "s.yaml")
    assert spec.data.keys is not None and spec.data.keys.x_train == "images"
    assert parse_spec(spec.to_dict(), "again") == spec
    cases = [
        ({"dataset": "arrays", "path": "d.npz", "keys": {"x_tran": "a", "y_train": "b"}},
         "s.yaml: data.keys.x_tran: unknown key 'x_tran'; did you mean 'x_train'?"),
        ({"dataset": "folder", "path": "d", "keys": keys}, "s.yaml: data: `keys` only applies to dataset 'arrays'"),
        ({"dataset": "arrays", "path": "d.npz", "keys": keys | {"x_val": "v"}},
         "s.yaml: data.keys: x_val and y_val go together"),
        ({"dataset": "arrays", "path": "d.npz", "keys": keys | {"x_test": "images", "y_test": "t"}},
         "s.yaml: data.keys: each key must name a different array"),
    ]
    for data, expected in cases:
        with pytest.raises(SpecError) as info:
            parse_spec(_raw_spec(data), "s.yaml")
        assert expected in str(info.value)


def test_missing_arrays_name_the_file_the_expected_and_the_found_keys(tmp_path: Path) -> None:
    path = tmp_path / "many.npz"
    spec = _arrays(path, **{f"a{i:02d}": np.zeros(1) for i in range(20)})
    assert _error(spec) == (f"{path}: an arrays data set needs x_train and y_train (or x and y, or names in "
                            "data.keys), but the file holds a00, a01, a02, a03, a04, a05, a06, a07, ... (20 in all)")
    message = _error(_arrays(path, x_train=_images(4), y_train=np.zeros(4, dtype=int), x_val=_images(2)))
    assert message.startswith(f"{path}: missing array y_val (expected x_train, y_train, x_val, y_val")
    assert message.endswith("found x_train, x_val, y_train)")


@pytest.mark.parametrize(
    ("arrays", "expected"),
    [
        ({"y_train": np.array([0.0, 1.5, 1.0, 0.0])}, "y_train: labels must be integer class ids, but found 1.5"),
        ({"y_train": np.array([0, -1, 1, 0])}, "y_train: labels must be class ids >= 0, but found -1"),
        ({"y_train": np.eye(4)}, "y_train: labels must be one class id per image (shape N), but got shape (4, 4)"),
        ({"y_train": np.array(["a", "b", "a", "b"])}, "y_train: labels must be integer class ids, but the array"),
        ({"y_train": np.array([0, 1, 0])}, "x_train and y_train: 4 images but 3 labels"),
        ({"x_train": np.zeros((0, 4, 4)), "y_train": np.zeros(0, dtype=int)},
         "x_train: no images (shape (0, 1, 4, 4))"),
        ({"y_train": np.zeros(0, dtype=int)}, "y_train: no labels (empty array)"),
        ({"x_test": _images(2), "y_test": np.array([0, 1, 1])}, "x_test and y_test: 2 images but 3 labels"),
        ({"x_test": np.zeros((2, 5, 5)), "y_test": np.array([0, 1])},
         "x_test: test images are (1, 5, 5) (C x H x W), but training images are (1, 4, 4)"),
        ({"x_train": np.array([None, 1, 2, 3], dtype=object)},
         "array x_train holds pickled Python objects, which are not loaded"),
    ],
    ids=["fractional", "negative", "one-hot", "strings", "lengths", "empty-images", "empty-labels", "test-lengths",
         "test-shape", "pickled"],
)
def test_bad_arrays_are_refused_in_one_line(tmp_path: Path, arrays: dict[str, np.ndarray], expected: str) -> None:
    path = tmp_path / "d.npz"
    spec = _arrays(path, **({"x_train": _images(4), "y_train": np.array([0, 1, 0, 1])} | arrays))
    assert _error(spec).startswith(f"{path}: {expected}")


def test_whole_float_labels_are_accepted_and_pickle_is_never_allowed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[dict] = []
    real_load = np.load

    def spy(*args: object, **kwargs: object) -> object:
        calls.append(kwargs)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(np, "load", spy)
    splits = load(_arrays(tmp_path / "d.npz", x=_images(10), y=(np.arange(10) % 2).astype(np.float32)))
    assert splits.y_train.dtype.is_floating_point is False and splits.num_classes == 2
    assert calls and all(call.get("allow_pickle") is False for call in calls)
