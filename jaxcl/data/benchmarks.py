"""Image benchmarks of the method zoo that need a download: CIFAR-10, CIFAR-100 (Krizhevsky, 2009)
and Tiny-ImageNet (200 classes of 64x64 images), as :class:`jaxcl.data.loaders.Dataset`.

Lookup order: an explicit ``path``, ``$JAXCL_DATA/<name>``, then the Hugging Face hub
(``HUB[name]``: repository, image column, label column, train and test split names). A local copy is
a folder in the image-folder layout::

    <root>/train/<class name>/<any>.png|.jpg|.jpeg
    <root>/test/<class name>/...          (or val/ or valid/)

classes numbered in sorted order of the train folder's class names, images read as RGB uint8 (all
of one size). Streams of tasks come from :func:`jaxcl.data.streams.make_stream` as for every data
set (``split-cifar10``: ``--set data.dataset=cifar10``).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .loaders import Dataset, DatasetNotFoundError

HUB = {
    "cifar10": ("uoft-cs/cifar10", "img", "label", ("train", "test"), 10),
    "cifar100": ("uoft-cs/cifar100", "img", "fine_label", ("train", "test"), 100),
    "tinyimagenet": ("zh-plus/tiny-imagenet", "image", "label", ("train", "valid"), 200),
}
TEST_DIRS = ("test", "val", "valid")
EXTS = (".png", ".jpg", ".jpeg")


def _rgb(im) -> np.ndarray:
    from PIL import Image

    if not isinstance(im, Image.Image):
        im = Image.fromarray(np.asarray(im, np.uint8))
    return np.asarray(im.convert("RGB"), np.uint8)


def _stack(images: list, where: str) -> np.ndarray:
    shapes = {a.shape for a in images}
    if len(shapes) != 1:
        raise ValueError(f"{where}: images of different sizes {sorted(shapes)[:3]}; resize them to one size")
    return np.stack(images)


def image_folder(root: str | os.PathLike, name: str = "images") -> Dataset:
    """A data set in the image-folder layout (module docstring)."""
    root = Path(root)
    train = root / "train"
    test = next((root / d for d in TEST_DIRS if (root / d).is_dir()), None)
    if not train.is_dir() or test is None:
        raise DatasetNotFoundError(
            f"{root}: expected the folders train/<class>/ and test/<class>/ (or val/, valid/) of images"
        )
    classes = sorted(p.name for p in train.iterdir() if p.is_dir())
    if not classes:
        raise DatasetNotFoundError(f"{train}: no class folders")
    index = {c: i for i, c in enumerate(classes)}

    def read(split: Path):
        xs, ys = [], []
        for c in sorted(p.name for p in split.iterdir() if p.is_dir()):
            if c not in index:
                raise ValueError(f"{split / c}: class {c!r} is not among the train classes")
            for f in sorted((split / c).iterdir()):
                if f.suffix.lower() in EXTS:
                    from PIL import Image

                    with Image.open(f) as im:
                        xs.append(_rgb(im))
                    ys.append(index[c])
        if not xs:
            raise DatasetNotFoundError(f"{split}: no images ({', '.join(EXTS)})")
        return _stack(xs, str(split)), np.asarray(ys, np.int32)

    return Dataset(name, *read(train), *read(test), len(classes))


def from_rows(
    name: str, train_rows: list[dict], test_rows: list[dict], image_key: str, label_key: str, n: int
):
    """A :class:`Dataset` from hub rows (dicts with a PIL image or array and an integer label)."""

    def conv(rows, split):
        x = _stack([_rgb(r[image_key]) for r in rows], f"{name} {split}")
        return x, np.asarray([r[label_key] for r in rows], np.int32)

    return Dataset(name, *conv(train_rows, "train"), *conv(test_rows, "test"), n)


def load_benchmark(name: str, path: str | None = None, *, allow_hub: bool = True) -> Dataset:
    if name not in HUB:
        raise ValueError(f"unknown data set {name!r}; valid: {', '.join(HUB)}")
    repo, image_key, label_key, splits, n = HUB[name]
    local = [Path(path)] if path else []
    if not path and os.environ.get("JAXCL_DATA"):
        local.append(Path(os.environ["JAXCL_DATA"]) / name)
    for d in local:
        if (d / "train").is_dir():
            return image_folder(d, name)
    if allow_hub and not path:
        try:
            from ..hf import load_hub_dataset

            rows = [load_hub_dataset(repo, split=s) for s in splits]
            return from_rows(name, rows[0], rows[1], image_key, label_key, n)
        except Exception as e:  # no network, no cache
            reason = f" (hub: {type(e).__name__}: {str(e)[:120]})"
    else:
        reason = ""
    raise DatasetNotFoundError(
        f"{name} not found{' in ' + str(path) if path else ''} (nor in $JAXCL_DATA/{name}, nor on the hub "
        f"{repo}){reason}. Put a copy in the image-folder layout (train/<class>/*.png, test/<class>/*.png) "
        f"under $JAXCL_DATA/{name}, or run once with internet."
    )


def _loader(name):
    def load(path: str | None = None, *, allow_hub: bool = True) -> Dataset:
        return load_benchmark(name, path, allow_hub=allow_hub)

    load.__doc__ = f"{name}: see :mod:`jaxcl.data.benchmarks`."
    return load


LOADERS = {name: _loader(name) for name in HUB}
