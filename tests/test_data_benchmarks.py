"""CIFAR-10 / CIFAR-100 / Tiny-ImageNet loaders on small files the test writes: the image-folder
layout, the hub path (rows as the hub returns them, the hub call replaced), and the errors."""

import numpy as np
import pytest
from PIL import Image

from jaxcl import hf
from jaxcl.data import benchmarks, loaders, streams


def write_folder(root, split, classes, n, size=(8, 8)):
    rng = np.random.default_rng(len(split))
    arrays = {}
    for c in classes:
        (root / split / c).mkdir(parents=True)
        for i in range(n):
            a = rng.integers(0, 256, size + (3,), dtype=np.uint8)
            Image.fromarray(a).save(root / split / c / f"{i}.png")
            arrays[(c, i)] = a
    return arrays


def test_image_folder_layout_and_a_stream(tmp_path, monkeypatch):
    root = tmp_path / "cifar10"
    tr = write_folder(root, "train", ["cat", "airplane", "dog", "bird"], 3)
    write_folder(root, "test", ["cat", "airplane", "dog", "bird"], 2)
    monkeypatch.setenv("JAXCL_DATA", str(tmp_path))
    d = loaders.load("cifar10", allow_hub=False)
    assert d.x_train.shape == (12, 8, 8, 3) and d.x_test.shape == (8, 8, 8, 3) and d.n_classes == 4
    # classes numbered in sorted name order: airplane 0, bird 1, cat 2, dog 3
    np.testing.assert_array_equal(d.y_train, np.repeat([0, 1, 2, 3], 3))
    np.testing.assert_array_equal(d.x_train[6], tr[("cat", 0)])
    s = streams.make_stream(d, "class-incremental", 2)
    assert s.n_tasks == 2 and s.input_shape == (8, 8, 3)


def test_hub_rows_with_the_benchmarks_label_columns(monkeypatch):
    calls = []

    def fake_hub(repo, config=None, split="train"):
        calls.append((repo, split))
        rng = np.random.default_rng(0)
        return [
            {
                "img": Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)),
                "fine_label": i % 7,
                "coarse_label": 0,
            }
            for i in range(5)
        ]

    monkeypatch.setattr(hf, "load_hub_dataset", fake_hub)
    monkeypatch.delenv("JAXCL_DATA", raising=False)
    d = loaders.load("cifar100")
    assert calls == [("uoft-cs/cifar100", "train"), ("uoft-cs/cifar100", "test")]
    assert d.n_classes == 100 and d.x_train.shape == (5, 4, 4, 3) and d.y_train.tolist() == [0, 1, 2, 3, 4]
    assert benchmarks.HUB["tinyimagenet"][:3] == ("zh-plus/tiny-imagenet", "image", "label")


def test_missing_or_bad_copies_are_clear_errors(tmp_path, monkeypatch):
    monkeypatch.delenv("JAXCL_DATA", raising=False)
    with pytest.raises(loaders.DatasetNotFoundError, match="image-folder layout"):
        loaders.load("tinyimagenet", path=str(tmp_path / "none"))
    root = tmp_path / "mixed"
    write_folder(root, "train", ["a"], 1, (8, 8))
    write_folder(root, "val", ["a"], 1, (8, 8))
    Image.fromarray(np.zeros((5, 5, 3), np.uint8)).save(root / "train" / "a" / "odd.png")
    with pytest.raises(ValueError, match="different sizes"):
        benchmarks.image_folder(root)
    with pytest.raises(ValueError, match="unknown data set"):
        loaders.load("cifar1000")
