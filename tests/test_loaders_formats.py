"""Tests of the IDX and image-folder loaders, path dispatch in load_dataset, and the IDX
fallback of the built-in names (kmnist, emnist, mnist, fashion-mnist) on synthetic files."""

from __future__ import annotations

import gzip
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from datasetflow.data import (
    DATA_DIR_ENV,
    describe_builtin_datasets,
    list_builtin_datasets,
    load_dataset,
    load_idx,
    load_image_folder,
    load_npz,
)
from datasetflow.errors import DataFormatError, DatasetflowWarning, InvalidArgumentError, ShapeMismatchError

Image = pytest.importorskip("PIL.Image")

pytestmark = pytest.mark.fast

IMAGES_MAGIC, LABELS_MAGIC = 0x00000803, 0x00000801
EMNIST_CLASSES = tuple("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabdefghnqrt")
KMNIST_CLASSES = ("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo")


@pytest.fixture(autouse=True)
def _no_data_dir_env(monkeypatch):
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)


# ---------------------------------------------------------------------- writers
def _idx_bytes(array: np.ndarray, magic: int | None = None) -> bytes:
    """An IDX file: big-endian magic number and sizes, then the uint8 data."""
    if magic is None:
        magic = IMAGES_MAGIC if array.ndim == 3 else LABELS_MAGIC
    header = np.array([magic, *array.shape], dtype=">u4").tobytes()
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)
    return path


def _write_idx_pair(folder: Path, stem: str, x: np.ndarray, y: np.ndarray, *, gz: bool = True) -> tuple[Path, Path]:
    suffix = ".gz" if gz else ""
    images = _write(folder / f"{stem}-images-idx3-ubyte{suffix}", _idx_bytes(x))
    labels = _write(folder / f"{stem}-labels-idx1-ubyte{suffix}", _idx_bytes(y))
    return images, labels


def _images(n: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, h, w), dtype=np.uint8)


def _write_png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


# ---------------------------------------------------------------------- IDX round trips
@pytest.mark.parametrize("gz", [True, False])
def test_idx_round_trip(tmp_path, gz):
    x = _images(6, 5, 3)  # non-square: height and width must not be swapped
    y = np.array([3, 1, 4, 1, 5, 9], dtype=np.uint8)
    images, labels = _write_idx_pair(tmp_path, "t10k", x, y, gz=gz)
    raw = load_idx(images, labels, scale=None)
    assert raw.feature_shape == (5, 3) and len(raw) == 6
    torch.testing.assert_close(raw.x, torch.from_numpy(x.reshape(6, -1)).float())
    assert raw.labels == [3, 1, 4, 1, 5, 9]
    assert raw.classes == (1, 3, 4, 5, 9)
    assert raw.name == "t10k"
    scaled = load_idx(str(images), str(labels), dtype=torch.float64)
    assert scaled.x.dtype == torch.float64
    torch.testing.assert_close(scaled.x, torch.from_numpy(x.reshape(6, -1) / 255.0))


def test_idx_compression_is_read_from_the_content(tmp_path):
    x, y = _images(3, 2, 2), np.array([0, 1, 0], dtype=np.uint8)
    images = tmp_path / "imgs.bin"
    images.write_bytes(gzip.compress(_idx_bytes(x)))  # gzipped without a .gz name
    labels = _write(tmp_path / "labels.bin", _idx_bytes(y))
    ds = load_idx(images, labels, scale=None, name="mine")
    torch.testing.assert_close(ds.x, torch.from_numpy(x.reshape(3, -1)).float())
    assert ds.name == "mine" and ds.labels == [0, 1, 0]


def test_idx_classes_name_the_labels(tmp_path):
    images, labels = _write_idx_pair(tmp_path, "a", _images(4, 2, 2), np.array([0, 2, 1, 2], dtype=np.uint8))
    ds = load_idx(images, labels, classes=["zero", "one", "two"])
    assert ds.classes == ("zero", "one", "two")
    assert ds.labels == ["zero", "two", "one", "two"]
    with pytest.warns(DatasetflowWarning, match="'three'"):
        assert load_idx(images, labels, classes=["zero", "one", "two", "three"]).classes == ("zero", "one", "two")
    with pytest.raises(DataFormatError, match=r"0\.\.1"):
        load_idx(images, labels, classes=["zero", "one"])


def test_emnist_files_are_transposed(tmp_path):
    upright = _images(2, 4, 3)
    stored = upright.transpose(0, 2, 1)  # EMNIST stores images transposed
    y = np.array([0, 1], dtype=np.uint8)
    images, labels = _write_idx_pair(tmp_path, "emnist-balanced-test", stored, y)
    ds = load_idx(images, labels, scale=None)
    assert ds.feature_shape == (4, 3)
    torch.testing.assert_close(ds.x, torch.from_numpy(upright.reshape(2, -1)).float())
    kept = load_idx(images, labels, scale=None, transpose=False)
    assert kept.feature_shape == (3, 4)
    torch.testing.assert_close(kept.x, torch.from_numpy(stored.reshape(2, -1)).float())
    other, other_labels = _write_idx_pair(tmp_path / "o", "t10k", stored, y)
    forced = load_idx(other, other_labels, scale=None, transpose=True)
    torch.testing.assert_close(forced.x, ds.x)


# ---------------------------------------------------------------------- IDX failures
def test_idx_missing_file(tmp_path):
    images, labels = _write_idx_pair(tmp_path, "t10k", _images(2, 2, 2), np.array([0, 1], dtype=np.uint8))
    with pytest.raises(DataFormatError, match="not found.*nope-labels"):
        load_idx(images, tmp_path / "nope-labels-idx1-ubyte.gz")
    with pytest.raises(DataFormatError, match="not found.*nope-images"):
        load_idx(tmp_path / "nope-images-idx3-ubyte.gz", labels)
    with pytest.raises(DataFormatError, match="directory"):
        load_idx(tmp_path, labels)


def test_idx_wrong_magic_number(tmp_path):
    x, y = _images(2, 2, 2), np.array([0, 1], dtype=np.uint8)
    images, labels = _write_idx_pair(tmp_path, "t10k", x, y)
    with pytest.raises(DataFormatError) as info:
        load_idx(labels, images)  # swapped
    message = str(info.value)
    assert "t10k-labels-idx1-ubyte.gz" in message and "magic" in message
    assert "0x00000801" in message and "0x00000803" in message and "1 dimension" in message
    bad = _write(tmp_path / "bad-images-idx3-ubyte", _idx_bytes(x, magic=0x12345678))
    with pytest.raises(DataFormatError, match=r"bad-images-idx3-ubyte.*0x12345678.*not an IDX header"):
        load_idx(bad, labels)
    floats = _write(tmp_path / "f-images-idx3-ubyte", _idx_bytes(x, magic=0x00000D03))
    with pytest.raises(DataFormatError, match="float32"):
        load_idx(floats, labels)


def test_idx_truncated_data(tmp_path):
    x, y = _images(3, 4, 4), np.array([0, 1, 2], dtype=np.uint8)
    labels = _write(tmp_path / "l-labels-idx1-ubyte", _idx_bytes(y))
    short = _write(tmp_path / "short-images-idx3-ubyte.gz", _idx_bytes(x)[:-5])
    with pytest.raises(DataFormatError) as info:
        load_idx(short, labels)
    message = str(info.value)
    assert "short-images-idx3-ubyte.gz" in message and "truncated" in message
    assert "(3, 4, 4)" in message and "48 bytes" in message and "43 bytes" in message
    header_only = _write(tmp_path / "h-images-idx3-ubyte", _idx_bytes(x)[:10])
    with pytest.raises(DataFormatError, match=r"h-images-idx3-ubyte: truncated.*16-byte header"):
        load_idx(header_only, labels)
    tiny = _write(tmp_path / "t-images-idx3-ubyte", b"\x00\x00")
    with pytest.raises(DataFormatError, match="truncated"):
        load_idx(tiny, labels)
    cut_gzip = tmp_path / "cut-images-idx3-ubyte.gz"
    cut_gzip.write_bytes(gzip.compress(_idx_bytes(x))[:-12])  # the gzip stream itself is cut
    with pytest.raises(DataFormatError, match="cut-images-idx3-ubyte.gz"):
        load_idx(cut_gzip, labels)
    long = _write(tmp_path / "long-images-idx3-ubyte", _idx_bytes(x) + b"\x00")
    with pytest.raises(DataFormatError, match=r"corrupt IDX images file.*48 bytes of data, but 49 bytes"):
        load_idx(long, labels)


def test_idx_count_mismatch(tmp_path):
    images, _ = _write_idx_pair(tmp_path, "a", _images(5, 2, 2), np.zeros(5, dtype=np.uint8))
    _, labels = _write_idx_pair(tmp_path, "b", _images(4, 2, 2), np.zeros(4, dtype=np.uint8))
    with pytest.raises(DataFormatError) as info:
        load_idx(images, labels)
    message = str(info.value)
    assert "a-images-idx3-ubyte.gz holds 5 images" in message and "b-labels-idx1-ubyte.gz holds 4 labels" in message


# ---------------------------------------------------------------------- image folders
def _gray_folder(root: Path) -> dict[str, list[np.ndarray]]:
    rng = np.random.default_rng(5)
    written = {"cat": [], "dog": []}
    for name, count in (("dog", 2), ("cat", 3)):
        for i in range(count):
            image = rng.integers(0, 256, size=(4, 6), dtype=np.uint8)
            _write_png(root / name / f"{i}.png", image)
            written[name].append(image)
    return written


def test_image_folder_round_trip(tmp_path):
    written = _gray_folder(tmp_path / "pets")
    (tmp_path / "pets" / "cat" / "notes.txt").write_text("not an image")
    (tmp_path / "pets" / "README.md").write_text("ignored")
    ds = load_image_folder(tmp_path / "pets", scale=None)
    assert ds.classes == ("cat", "dog")
    assert ds.labels == ["cat", "cat", "cat", "dog", "dog"]
    assert ds.feature_shape == (4, 6) and ds.name == "pets"
    expected = np.stack(written["cat"] + written["dog"]).reshape(5, -1)
    torch.testing.assert_close(ds.x, torch.from_numpy(expected).float())
    torch.testing.assert_close(load_image_folder(tmp_path / "pets").x, torch.from_numpy(expected / 255.0).float())


def test_image_folder_colour_and_grayscale(tmp_path):
    rng = np.random.default_rng(2)
    colour = rng.integers(0, 256, size=(3, 3, 3), dtype=np.uint8)
    gray_rgb = np.repeat(rng.integers(0, 256, size=(3, 3, 1), dtype=np.uint8), 3, axis=2)
    _write_png(tmp_path / "c" / "a" / "x.png", colour)
    _write_png(tmp_path / "c" / "b" / "sub" / "y.bmp", gray_rgb)  # nested, another format
    ds = load_image_folder(tmp_path / "c", scale=None)
    assert ds.feature_shape == (3, 3, 3) and ds.classes == ("a", "b")
    torch.testing.assert_close(ds.x, torch.from_numpy(np.stack([colour, gray_rgb]).reshape(2, -1)).float())
    _write_png(tmp_path / "g" / "a" / "x.png", gray_rgb)
    _write_png(tmp_path / "g" / "b" / "y.PNG", gray_rgb[..., 0])
    gray = load_image_folder(tmp_path / "g", scale=None)  # RGB with equal channels counts as gray
    assert gray.feature_shape == (3, 3)
    torch.testing.assert_close(gray.x, torch.from_numpy(np.stack([gray_rgb[..., 0]] * 2).reshape(2, -1)).float())
    rgb = load_image_folder(tmp_path / "g", grayscale=False, scale=None)
    assert rgb.feature_shape == (3, 3, 3)
    torch.testing.assert_close(rgb.x, torch.from_numpy(np.stack([gray_rgb] * 2).reshape(2, -1)).float())
    forced = load_image_folder(tmp_path / "c", grayscale=True)
    assert forced.feature_shape == (3, 3)
    with pytest.raises(InvalidArgumentError, match="grayscale"):
        load_image_folder(tmp_path / "c", grayscale="yes")


def test_image_folder_sizes_must_match_unless_resized(tmp_path):
    _write_png(tmp_path / "f" / "small" / "a.png", np.full((4, 4), 100, np.uint8))
    _write_png(tmp_path / "f" / "small" / "b.png", np.full((4, 4), 50, np.uint8))
    _write_png(tmp_path / "f" / "big" / "c.png", np.full((8, 6), 200, np.uint8))
    with pytest.raises(ShapeMismatchError) as info:
        load_image_folder(tmp_path / "f")
    message = str(info.value)
    assert "8x6" in message and "4x4" in message and "resize" in message and "c.png" in message
    ds = load_image_folder(tmp_path / "f", resize=(5, 5), scale=None)
    assert ds.feature_shape == (5, 5)
    assert ds.labels == ["big", "small", "small"]  # order of the files, not of the size groups
    torch.testing.assert_close(ds.x[:, 0], torch.tensor([200.0, 100.0, 50.0]))
    torch.testing.assert_close(ds.x, ds.x[:, :1].expand(3, 25))  # constant images stay constant


def test_image_folder_failures(tmp_path):
    with pytest.raises(DataFormatError, match="not found"):
        load_image_folder(tmp_path / "absent")
    (tmp_path / "file.png").write_bytes(b"")
    with pytest.raises(DataFormatError, match="not a directory"):
        load_image_folder(tmp_path / "file.png")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataFormatError, match=r"empty.*no images.*0 sub-folder"):
        load_image_folder(tmp_path / "empty")
    (tmp_path / "hollow" / "a").mkdir(parents=True)
    (tmp_path / "hollow" / "a" / "x.txt").write_text("text")
    with pytest.raises(DataFormatError, match=r"no images.*\['a'\]"):
        load_image_folder(tmp_path / "hollow")
    _write_png(tmp_path / "part" / "a" / "x.png", np.zeros((2, 2), np.uint8))
    _write_png(tmp_path / "part" / "c" / "y.png", np.zeros((2, 2), np.uint8))
    (tmp_path / "part" / "b").mkdir()
    with pytest.warns(DatasetflowWarning, match=r"\['b'\]"):
        assert load_image_folder(tmp_path / "part").classes == ("a", "c")
    (tmp_path / "part" / "b").rmdir()
    (tmp_path / "part" / "c" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DataFormatError, match="broken.png"):
        load_image_folder(tmp_path / "part")


def test_image_folder_without_pillow(tmp_path, monkeypatch):
    _write_png(tmp_path / "f" / "a" / "x.png", np.zeros((2, 2), np.uint8))
    monkeypatch.setitem(sys.modules, "PIL", None)  # import PIL raises ImportError
    with pytest.raises(DataFormatError, match="pip install pillow"):
        load_image_folder(tmp_path / "f")


# ---------------------------------------------------------------------- resizing keeps the labels
def test_resize_keeps_labels_for_every_format(tmp_path):
    x = np.stack([np.full((6, 6), v, np.uint8) for v in (10, 20, 30, 40)])
    y = np.array([1, 0, 1, 0], dtype=np.uint8)
    npz = tmp_path / "d.npz"
    np.savez(npz, x=x, y=y, classes=np.array(["even", "odd"]))
    images, labels = _write_idx_pair(tmp_path, "d", x, y)
    for index, (image, label) in enumerate(zip(x, y, strict=True)):
        _write_png(tmp_path / "folder" / ("odd" if label else "even") / f"{index}.png", image)
    for load in (
        lambda **kw: load_npz(npz, **kw),
        lambda **kw: load_idx(images, labels, classes=["even", "odd"], **kw),
        lambda **kw: load_image_folder(tmp_path / "folder", **kw),
    ):
        plain, resized = load(scale=None), load(scale=None, resize=3)
        assert plain.feature_shape == (6, 6) and resized.feature_shape == (3, 3)
        assert resized.classes == plain.classes == ("even", "odd")
        assert resized.y.tolist() == plain.y.tolist()
        assert resized.labels == plain.labels
        torch.testing.assert_close(resized.x.mean(1), plain.x.mean(1))  # constant images


# ---------------------------------------------------------------------- load_dataset on paths
def test_load_dataset_dispatches_on_the_path(tmp_path, monkeypatch):
    x, y = _images(3, 2, 2), np.array([2, 0, 1], dtype=np.uint8)
    images, _ = _write_idx_pair(tmp_path, "t10k", x, y)
    ds = load_dataset(images, scale=None)
    torch.testing.assert_close(ds.x, torch.from_numpy(x.reshape(3, -1)).float())
    assert ds.labels == [2, 0, 1] and ds.name == "t10k"
    npz = tmp_path / "d.npz"
    np.savez(npz, x=x, y=y)
    assert load_dataset(str(npz)).labels == [2, 0, 1]
    _gray_folder(tmp_path / "pets")
    assert load_dataset(tmp_path / "pets", name="p").classes == ("cat", "dog")
    monkeypatch.chdir(tmp_path)  # bare names of existing files and folders are paths too
    assert load_dataset("pets").labels == ["cat"] * 3 + ["dog"] * 2
    assert load_dataset("t10k-images-idx3-ubyte.gz").labels == [2, 0, 1]


def test_load_dataset_finds_labels_with_other_compression(tmp_path):
    x, y = _images(2, 2, 2), np.array([1, 0], dtype=np.uint8)
    images = _write(tmp_path / "train-images-idx3-ubyte.gz", _idx_bytes(x))
    _write(tmp_path / "train-labels-idx1-ubyte", _idx_bytes(y))
    assert load_dataset(images).labels == [1, 0]
    dotted = _write(tmp_path / "o-images.idx3-ubyte", _idx_bytes(x))  # the other common spelling
    _write(tmp_path / "o-labels.idx1-ubyte", _idx_bytes(y))
    assert load_dataset(dotted).labels == [1, 0]


def test_load_dataset_missing_label_file(tmp_path):
    images = _write(tmp_path / "t10k-images-idx3-ubyte.gz", _idx_bytes(_images(2, 2, 2)))
    with pytest.raises(DataFormatError) as info:
        load_dataset(images)
    message = str(info.value)
    assert "t10k-labels-idx1-ubyte.gz" in message and "'t10k-labels-idx1-ubyte'" in message and "load_idx" in message
    with pytest.raises(DataFormatError, match="not found"):
        load_dataset(tmp_path / "absent-images-idx3-ubyte.gz")


# ---------------------------------------------------------------------- built-in names via IDX files
def test_builtin_names_are_listed():
    names = list_builtin_datasets()
    assert "kmnist" in names and "emnist" in names
    assert names.index("emnist") < names.index("mnist-mini")  # full datasets first


def test_kmnist_from_idx_files(tmp_path):
    x_test, y_test = _images(10, 28, 28, seed=1), np.arange(10, dtype=np.uint8)[::-1].copy()
    x_train, y_train = _images(20, 28, 28, seed=2), np.tile(np.arange(10, dtype=np.uint8), 2)
    _write_idx_pair(tmp_path / "kmnist", "t10k", x_test, y_test)
    _write_idx_pair(tmp_path / "kmnist", "train", x_train, y_train, gz=False)  # plain files are found too
    ds = load_dataset("kmnist", data_dir=tmp_path)
    assert ds.name == "kmnist" and ds.feature_shape == (28, 28) and len(ds) == 10
    assert ds.classes == KMNIST_CLASSES
    assert ds.labels == [KMNIST_CLASSES[int(k)] for k in y_test]
    torch.testing.assert_close(ds.x, torch.from_numpy(x_test.reshape(10, -1) / 255.0).float())
    train = load_dataset("Kuzushiji_MNIST:train", data_dir=tmp_path, scale=None)
    assert train.name == "kmnist:train" and len(train) == 20
    torch.testing.assert_close(train.x, torch.from_numpy(x_train.reshape(20, -1)).float())
    rows = {(r.name, r.split): r for r in describe_builtin_datasets(tmp_path)}
    assert rows[("kmnist", "test")].path == tmp_path / "kmnist" / "t10k-images-idx3-ubyte.gz"
    assert rows[("kmnist", "train")].path == tmp_path / "kmnist" / "train-images-idx3-ubyte"
    assert not rows[("emnist", "test")].available


def test_emnist_balanced_from_transposed_idx_files(tmp_path):
    upright = _images(47, 28, 28, seed=3)
    y = np.arange(47, dtype=np.uint8)
    _write_idx_pair(tmp_path / "emnist", "emnist-balanced-test", upright.transpose(0, 2, 1), y)
    ds = load_dataset("emnist", data_dir=tmp_path, scale=None)
    assert ds.num_classes == 47 and ds.classes == EMNIST_CLASSES
    assert ds.labels[:12] == list("0123456789AB") and ds.labels[-1] == "t"
    torch.testing.assert_close(ds.x, torch.from_numpy(upright.reshape(47, -1)).float())  # upright again
    assert load_dataset("emnist-balanced", data_dir=tmp_path).name == "emnist"


def test_npz_is_preferred_and_mnist_falls_back_to_idx(tmp_path):
    x, y = _images(10, 28, 28, seed=4), np.arange(10, dtype=np.uint8)
    _write_idx_pair(tmp_path / "mnist", "t10k", x, y)
    _write_idx_pair(tmp_path / "fashion-mnist", "t10k", x, y, gz=False)
    mnist = load_dataset("mnist", data_dir=tmp_path, scale=None)
    assert mnist.classes == tuple("0123456789")
    torch.testing.assert_close(mnist.x, torch.from_numpy(x.reshape(10, -1)).float())
    fashion = load_dataset("fmnist", data_dir=tmp_path)
    assert fashion.classes[0] == "T-shirt/top" and fashion.labels[9] == "Ankle boot"
    np.savez(tmp_path / "mnist_test.npz", x=np.zeros((2, 3, 3), np.uint8), y=np.array([0, 1]))
    assert load_dataset("mnist", data_dir=tmp_path).feature_shape == (3, 3)  # the .npz wins


def test_not_found_lists_every_file_tried(tmp_path):
    (tmp_path / "kmnist").mkdir()
    _write(tmp_path / "kmnist" / "t10k-images-idx3-ubyte.gz", _idx_bytes(_images(2, 2, 2)))  # labels missing
    with pytest.raises(DataFormatError) as info:
        load_dataset("kmnist", data_dir=tmp_path)
    message = str(info.value)
    for tried in (
        "kmnist_test.npz",
        "kmnist/t10k-images-idx3-ubyte.gz",
        "kmnist/t10k-labels-idx1-ubyte.gz",
        "'kmnist/t10k-images-idx3-ubyte'",
        "'kmnist/t10k-labels-idx1-ubyte'",
    ):
        assert tried in message
    assert str(tmp_path) in message and DATA_DIR_ENV in message
    with pytest.raises(DataFormatError) as info:
        load_dataset("emnist", split="train", data_dir=tmp_path)
    assert "emnist_train.npz" in str(info.value)
    assert "emnist/emnist-balanced-train-images-idx3-ubyte.gz" in str(info.value)
    assert "emnist/emnist-balanced-train-labels-idx1-ubyte.gz" in str(info.value)
    with pytest.raises(InvalidArgumentError, match=r"\['test', 'train'\]"):
        load_dataset("kmnist", split="validation", data_dir=tmp_path)


def test_datasets_command_lists_the_idx_datasets(tmp_path):
    from conftest import invoke_cli

    pytest.importorskip("click")
    _write_idx_pair(tmp_path / "kmnist", "t10k", _images(2, 2, 2), np.array([0, 1], dtype=np.uint8))
    result = invoke_cli("datasets", "--data-dir", tmp_path)
    assert result.exit_code == 0, result.stderr
    rows = {line.split()[0]: line.split()[1] for line in result.stdout.splitlines()[1:]}
    assert rows["kmnist"] == "available" and rows["kmnist:train"] == "missing"
    assert rows["emnist"] == "missing" and rows["mnist-mini"] == "embedded"
