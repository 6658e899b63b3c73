"""Tests of datasetflow.data.loaders: .npz files, pixel scale, resizing, built-in names."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from datasetflow.data import (
    DATA_DIR_ENV,
    LabeledDataset,
    describe_builtin_datasets,
    list_builtin_datasets,
    load_dataset,
    load_npz,
    parse_size,
    resolve_data_dir,
)
from datasetflow.errors import (
    DataFormatError,
    DatasetflowError,
    DatasetflowWarning,
    InvalidArgumentError,
    ShapeMismatchError,
)

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
EMBEDDED = ("mnist-mini", "fashion-mnist-mini", "usps-mini")
FULL = ("mnist", "fashion-mnist", "kmnist", "emnist", "usps", "cifar10")

needs_shared = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="../shared/data is not present")


@pytest.fixture(autouse=True)
def _no_data_dir_env(monkeypatch):
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)


def _save(path: Path, **arrays) -> Path:
    np.savez(path, **arrays)
    return path


# ---------------------------------------------------------------------- round trips
@pytest.mark.fast
def test_round_trip_with_classes_and_weights(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, 3)).astype(np.float32)
    y = np.array([0, 2, 1, 2, 0, 1])
    classes = np.array(["cat", "dog", "eel"])
    weights = np.array([1.0, 1.0, 2.0, 2.0, 1.0, 1.0])
    ds = load_npz(_save(tmp_path / "toy.npz", x=x, y=y, classes=classes, weights=weights))
    assert isinstance(ds, LabeledDataset)
    assert ds.classes == ("cat", "dog", "eel")
    assert ds.labels == ["cat", "eel", "dog", "eel", "cat", "dog"]
    assert ds.x.dtype == torch.float32
    torch.testing.assert_close(ds.x, torch.from_numpy(x))  # floats are left alone by scale="auto"
    torch.testing.assert_close(ds.weights, torch.tensor(weights / weights.sum(), dtype=torch.float32))
    assert ds.name == "toy"


@pytest.mark.fast
def test_round_trip_without_classes_keeps_label_values(tmp_path):
    x = np.arange(8, dtype=np.float64).reshape(4, 2)
    ds = load_npz(_save(tmp_path / "plain.npz", x=x, y=np.array([7, 3, 7, 3])), name="plain data")
    assert ds.classes == (3, 7)
    assert ds.labels == [7, 3, 7, 3]
    assert ds.x.dtype == torch.float64
    torch.testing.assert_close(ds.weights, torch.full((4,), 0.25, dtype=torch.float64))
    assert ds.name == "plain data"


@pytest.mark.fast
def test_y_indexes_integer_classes(tmp_path):
    # classes [1, 0]: y holds indices into it, so y=0 means label 1 (not label 0)
    path = _save(tmp_path / "ints.npz", x=np.zeros((3, 2)), y=np.array([0, 1, 1]), classes=np.array([1, 0]))
    assert load_npz(path).labels == [1, 0, 0]


@pytest.mark.fast
def test_unused_classes_are_dropped_with_a_warning(tmp_path):
    path = _save(tmp_path / "c.npz", x=np.zeros((2, 1)), y=np.array([0, 2]), classes=np.array(["a", "b", "c"]))
    with pytest.warns(DatasetflowWarning, match="'b'"):
        ds = load_npz(path)
    assert ds.classes == ("a", "c")


@pytest.mark.fast
def test_dtype_and_device(tmp_path):
    path = _save(tmp_path / "u8.npz", x=np.full((2, 2, 2), 255, dtype=np.uint8), y=np.array([0, 1]))
    ds = load_npz(path, dtype=torch.float64, device="cpu")
    assert ds.x.dtype == torch.float64 and ds.x.device.type == "cpu"
    assert ds.feature_shape == (2, 2)
    with pytest.raises(InvalidArgumentError, match="dtype"):
        load_npz(path, dtype=torch.int32)


# ---------------------------------------------------------------------- pixel scale
@pytest.mark.fast
def test_uint8_scale_conventions(tmp_path):
    x = np.array([[0, 51, 255], [255, 102, 0]], dtype=np.uint8)
    path = _save(tmp_path / "px.npz", x=x, y=np.array([0, 1]))
    torch.testing.assert_close(load_npz(path).x, torch.tensor(x / 255.0, dtype=torch.float32))
    torch.testing.assert_close(load_npz(path, scale=None).x, torch.tensor(x, dtype=torch.float32))
    torch.testing.assert_close(load_npz(path, scale=0.5).x, torch.tensor(x * 0.5, dtype=torch.float32))


@pytest.mark.fast
def test_auto_scale_leaves_other_dtypes_alone(tmp_path):
    x = np.array([[0, 300], [1000, 2]], dtype=np.int64)
    path = _save(tmp_path / "i64.npz", x=x, y=np.array([0, 1]))
    torch.testing.assert_close(load_npz(path).x, torch.tensor(x, dtype=torch.float32))


@pytest.mark.fast
@pytest.mark.parametrize("scale", ["linear", 0.0, -1.0, float("nan"), True, [2.0]])
def test_bad_scale_is_refused(tmp_path, scale):
    path = _save(tmp_path / "s.npz", x=np.zeros((2, 2)), y=np.array([0, 1]))
    with pytest.raises(InvalidArgumentError, match="scale"):
        load_npz(path, scale=scale)


# ---------------------------------------------------------------------- resizing
@pytest.mark.fast
def test_resize_keeps_labels_and_weights(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, size=(5, 16, 16), dtype=np.uint8)
    y = np.array([0, 1, 1, 0, 2])
    weights = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    path = _save(tmp_path / "img.npz", x=x, y=y, classes=np.array(["a", "b", "c"]), weights=weights)
    small = load_npz(path)
    big = load_npz(path, resize=(28, 28))
    assert big.feature_shape == (28, 28) and big.dim == 784
    assert big.labels == small.labels
    torch.testing.assert_close(big.weights, small.weights)
    assert float(big.x.min()) >= 0.0 and float(big.x.max()) <= 1.0
    # bilinear resizing roughly preserves the mean intensity of each image
    torch.testing.assert_close(big.x.mean(1), small.x.mean(1), atol=0.02, rtol=0)


@pytest.mark.fast
def test_resize_of_constant_images_is_exact_and_layouts_are_kept(tmp_path):
    x = np.full((2, 8, 8, 3), 200, dtype=np.uint8)  # channels-last RGB
    path = _save(tmp_path / "rgb.npz", x=x, y=np.array([0, 1]))
    down = load_npz(path, resize="4x4")
    assert down.feature_shape == (4, 4, 3)
    torch.testing.assert_close(down.x, torch.full((2, 48), 200 / 255))
    chw = _save(tmp_path / "chw.npz", x=np.full((2, 3, 8, 8), 2.0), y=np.array([0, 1]))
    up = load_npz(chw, resize=12)
    assert up.feature_shape == (3, 12, 12)
    torch.testing.assert_close(up.x, torch.full((2, 3 * 144), 2.0, dtype=torch.float64))
    same = load_npz(path, resize=(8, 8))
    torch.testing.assert_close(same.x, load_npz(path).x)


@pytest.mark.fast
def test_resize_needs_images(tmp_path):
    path = _save(tmp_path / "flat.npz", x=np.zeros((3, 256)), y=np.array([0, 1, 0]))
    with pytest.raises(ShapeMismatchError, match=r"\(3, 256\)"):
        load_npz(path, resize=(28, 28))


@pytest.mark.fast
def test_parse_size():
    assert parse_size(28) == (28, 28)
    assert parse_size((16, 32)) == (16, 32)
    assert parse_size("28x28") == (28, 28)
    assert parse_size("12") == (12, 12)
    for bad in ("28x", "axb", (0, 3), (1, 2, 3), 2.5, True, -4, None):
        with pytest.raises(InvalidArgumentError, match="HxW"):
            parse_size(bad)


# ---------------------------------------------------------------------- bad files
@pytest.mark.fast
def test_missing_file(tmp_path):
    path = tmp_path / "nope.npz"
    with pytest.raises(DataFormatError, match="nope.npz"):
        load_npz(path)
    with pytest.raises(DataFormatError, match="not found"):
        load_dataset(str(path))


@pytest.mark.fast
def test_missing_keys_lists_found_and_expected(tmp_path):
    path = _save(tmp_path / "bad.npz", X=np.zeros((2, 2)), labels=np.array([0, 1]))
    with pytest.raises(DataFormatError) as info:
        load_npz(path)
    message = str(info.value)
    assert "'x'" in message and "'y'" in message and "'X'" in message and "'labels'" in message
    assert "classes" in message and "weights" in message


@pytest.mark.fast
def test_object_arrays_are_refused(tmp_path):
    path = tmp_path / "pickled.npz"
    np.savez(path, x=np.zeros((2, 2)), y=np.array([0, 1]), classes=np.array(["a", None], dtype=object))
    with pytest.raises(DataFormatError, match="pickle"):
        load_npz(path)


@pytest.mark.fast
def test_not_an_npz_archive(tmp_path):
    npy = tmp_path / "single.npy"
    np.save(npy, np.zeros(3))
    with pytest.raises(DataFormatError, match=".npy"):
        load_npz(npy)
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"this is not a zip file")
    with pytest.raises(DataFormatError, match="junk.npz"):
        load_npz(junk)
    with pytest.raises(DataFormatError, match="directory"):
        load_npz(tmp_path)


@pytest.mark.fast
def test_bad_contents(tmp_path):
    out_of_range = _save(tmp_path / "r.npz", x=np.zeros((2, 1)), y=np.array([0, 5]), classes=np.array(["a", "b"]))
    with pytest.raises(DataFormatError, match=r"0\.\.1"):
        load_npz(out_of_range)
    strings = _save(tmp_path / "s.npz", x=np.array([["a"], ["b"]]), y=np.array([0, 1]))
    with pytest.raises(DataFormatError, match="numeric"):
        load_npz(strings)
    mismatch = _save(tmp_path / "m.npz", x=np.zeros((3, 1)), y=np.array([0, 1]))
    with pytest.raises(ShapeMismatchError, match="m.npz"):
        load_npz(mismatch)
    nonfinite = _save(tmp_path / "n.npz", x=np.array([[np.nan], [0.0]]), y=np.array([0, 1]))
    with pytest.raises(DatasetflowError, match="NaN"):
        load_npz(nonfinite)


# ---------------------------------------------------------------------- built-in names
@pytest.mark.fast
def test_list_builtin_datasets():
    names = list_builtin_datasets()
    assert set(FULL) | set(EMBEDDED) == set(names)


@pytest.mark.fast
@pytest.mark.parametrize("name", EMBEDDED)
def test_embedded_datasets_load_without_a_data_dir(tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)  # no ../shared/data from here
    assert resolve_data_dir() is None
    ds = load_dataset(name)
    side = 16 if name == "usps-mini" else 28
    assert len(ds) == 500 and ds.feature_shape == (side, side)
    assert ds.num_classes == 10
    assert ds.class_counts().tolist() == [50] * 10
    assert 0.0 <= float(ds.x.min()) and float(ds.x.max()) <= 1.0 and float(ds.x.max()) > 0.9
    assert ds.name == name


@pytest.mark.fast
def test_embedded_usps_resized_to_mnist_size():
    usps = load_dataset("USPS_mini", resize="28x28")
    mnist = load_dataset("mnist-mini")
    assert usps.dim == mnist.dim == 784
    assert usps.classes == mnist.classes


@pytest.mark.fast
def test_unknown_name_and_split():
    with pytest.raises(InvalidArgumentError) as info:
        load_dataset("svhn")
    for name in list_builtin_datasets():
        assert name in str(info.value)
    with pytest.raises(InvalidArgumentError, match=r"\['test', 'train'\]"):
        load_dataset("usps", split="validation")
    with pytest.raises(InvalidArgumentError, match=r"\['test'\]"):
        load_dataset("mnist-mini:train")


def _fake_data_dir(root: Path, label: str) -> Path:
    root.mkdir()
    _save(root / "mnist_test.npz", x=np.zeros((2, 4, 4), np.uint8), y=np.array([0, 1]), classes=np.array([label, "z"]))
    return root


@pytest.mark.fast
def test_data_dir_argument_env_var_and_precedence(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    by_arg = _fake_data_dir(tmp_path / "arg", "from-arg")
    by_env = _fake_data_dir(tmp_path / "env", "from-env")
    assert load_dataset("mnist", data_dir=by_arg).classes[0] == "from-arg"
    monkeypatch.setenv(DATA_DIR_ENV, str(by_env))
    assert load_dataset("mnist").classes[0] == "from-env"
    assert load_dataset("mnist", data_dir=by_arg).classes[0] == "from-arg"
    assert resolve_data_dir() == by_env


@pytest.mark.fast
def test_default_data_dir_is_shared_data_next_to_cwd(tmp_path, monkeypatch):
    _fake_data_dir(tmp_path / "shared", "from-shared")
    (tmp_path / "shared" / "data").mkdir()
    (tmp_path / "shared" / "mnist_test.npz").rename(tmp_path / "shared" / "data" / "mnist_test.npz")
    (tmp_path / "repo").mkdir()
    monkeypatch.chdir(tmp_path / "repo")
    assert load_dataset("mnist").classes[0] == "from-shared"


@pytest.mark.fast
def test_missing_data_dir_or_file_explains_the_fix(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataFormatError) as info:
        load_dataset("fashion-mnist")
    message = str(info.value)
    assert "data_dir" in message and DATA_DIR_ENV in message and "fashion-mnist-mini" in message
    with pytest.raises(DataFormatError, match="not a directory"):
        load_dataset("mnist", data_dir=tmp_path / "absent")
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path / "absent"))
    with pytest.raises(DataFormatError, match=DATA_DIR_ENV):
        load_dataset("mnist")
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path))
    with pytest.raises(DataFormatError, match="cifar10_test.npz"):
        load_dataset("cifar10")


@pytest.mark.fast
def test_describe_builtin_datasets(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rows = describe_builtin_datasets(_fake_data_dir(tmp_path / "d", "a"))
    status = {(r.name, r.split): r.available for r in rows}
    assert status[("mnist", "test")] and not status[("usps", "train")]
    assert all(status[(name, "test")] for name in EMBEDDED)
    assert not any(r.available for r in describe_builtin_datasets(tmp_path / "absent") if not r.embedded)


# ---------------------------------------------------------------------- the shared data directory
@needs_shared
@pytest.mark.parametrize(
    ("name", "split", "n", "shape", "first_count"),
    [
        ("mnist", "test", 10000, (28, 28), 980),
        ("fashion-mnist", "test", 10000, (28, 28), 1000),
        ("usps", "test", 2007, (16, 16), 359),
        ("usps", "train", 7291, (16, 16), 1194),
        ("cifar10", "test", 10000, (32, 32, 3), 1000),
    ],
)
def test_builtin_names_resolve_against_shared_data(monkeypatch, name, split, n, shape, first_count):
    monkeypatch.chdir(REPO)  # ../shared/data relative to the working directory
    ds = load_dataset(name, split=split)
    assert len(ds) == n and ds.feature_shape == shape and ds.num_classes == 10
    assert int(ds.class_counts()[0]) == first_count
    assert float(ds.x.max()) <= 1.0


@needs_shared
def test_embedded_subsets_match_their_selection_rule(monkeypatch, capsys):
    spec = importlib.util.spec_from_file_location("make_embedded", REPO / "scripts" / "make_embedded.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--check", "--data-dir", str(SHARED_DATA)]) == 0
    assert "match" in capsys.readouterr().out
