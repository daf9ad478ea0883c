"""Data sets: digits (embedded), Fashion-MNIST (IDX files), CIFAR-10 (python archive), sphere.

Every loader returns a seeded, class-balanced subset with the paper's preprocessing: pixels
scaled to [0, 1] (/16 for digits, /255 otherwise), then per-channel standardisation with the
training subset's statistics (computed by numpy in a fixed order, so the inputs are bit-identical
whatever the thread count).  Images are (N, C, H, W) float64 tensors, labels int64.

``Dataset.identity(part)`` says what the inputs are -- the data set, the chosen indices, the
preprocessing and the raw bytes of the chosen images -- so that a kernel store is tied to its
inputs' identity, never to the rounding of their preprocessing.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import pickle
import tarfile
import urllib.request
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from experiments.harness.config import DATA_SCHEMAS, ConfigError, DataConfig


class DataMissingError(FileNotFoundError):
    """A data set's files are not there, or are unreadable; the message says how to get them."""


def data_config(name: str, **fields: Any) -> DataConfig:
    """The schema of data set ``name`` with ``fields`` (what ``data=NAME data.KEY=...`` gives)."""
    if name not in DATA_SCHEMAS:
        raise ConfigError(f"data: unknown data set {name!r}: use one of {sorted(DATA_SCHEMAS)}")
    return DATA_SCHEMAS[name](**fields)


@dataclass
class Dataset:
    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    provenance: dict[str, Any] = field(default_factory=dict)  # identity of the train and test parts
    x_val: torch.Tensor | None = None  # validation images (data.n_val) from the training pool, disjoint
    y_val: torch.Tensor | None = None  # from x_train, standardised with the training statistics

    def identity(self, part: str) -> dict[str, Any]:
        """What the ``part`` ("train" or "test") inputs are: data set, seed, classes, preprocessing,
        sha256 of the chosen indices and of the chosen images' raw bytes (test inputs are
        standardised with training statistics, so their identity includes the training part's)."""
        ident = {k: v for k, v in self.provenance.items() if k not in ("train", "test")}
        ident["part"] = part
        ident.update(self.provenance[part])
        if part == "test":
            ident["standardized_with"] = self.provenance["train"]
        return ident


FASHION_DEFAULT_ROOT = "/usr/share/datasets/fashion-mnist"
FASHION_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
# sha256 of the decompressed IDX files (robust to re-compression of the .gz)
FASHION_FILES = {
    "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}
CIFAR_DEFAULT_ROOT = os.path.join(os.path.expanduser("~"), ".cache", "cntk-suite", "cifar10")
CIFAR_ARCHIVE = "cifar-10-python.tar.gz"
CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR_MD5 = "c58f30108f718f92721af3b95e74349a"


def load(cfg: DataConfig, train_draw: int = 0) -> Dataset:
    """The configured data set: class-balanced subsets of n_train + n_test images, and n_val
    validation images from the rest of the training pool (the training subset does not depend on
    n_val).  ``train_draw`` d > 0: another seeded draw of the training (and validation) subset from
    the same pool, the test subset unchanged -- a replicate of the training set for intervals that
    cover which images were trained on (draw 0 is the subset ``data.seed`` gives; the provenance
    names d > 0 under ``train``, so kernel stores of different draws are told apart)."""
    if train_draw < 0:
        raise ValueError(f"train_draw must be >= 0, got {train_draw}")
    if cfg.name == "digits":
        x, y = _digits()
        raw_tr, y_tr, raw_te, y_te = _split_pool(x, y, cfg)
        scale = 16.0
    elif cfg.name == "fashion_mnist":
        raw_tr, y_tr, raw_te, y_te = _fashion(cfg)
        scale = 255.0
    elif cfg.name == "cifar10":
        raw_tr, y_tr, raw_te, y_te = _cifar(cfg)
        scale = 255.0
    else:
        raw_tr, y_tr, raw_te, y_te = _sphere(cfg)
        scale = 1.0
    drawn = (lambda s: s) if train_draw == 0 else (lambda s: [s, train_draw])  # numpy seeds a stream per list
    i_tr = balanced_indices(y_tr, cfg.n_train, cfg.num_classes, drawn(cfg.seed), "data.n_train", cfg.name)
    i_te = balanced_indices(y_te, cfg.n_test, cfg.num_classes, cfg.seed + 1, "data.n_test", cfg.name)
    rest = np.setdiff1d(np.arange(len(y_tr)), i_tr)
    i_va = rest[balanced_indices(np.asarray(y_tr)[rest], cfg.n_val, cfg.num_classes, drawn(cfg.seed + 2),
                                 "data.n_val", f"{cfg.name} beside data.n_train={cfg.n_train}")]
    raw_va = np.ascontiguousarray(raw_tr[i_va])
    raw_tr, raw_te = np.ascontiguousarray(raw_tr[i_tr]), np.ascontiguousarray(raw_te[i_te])
    standardize = bool(getattr(cfg, "standardize", False))
    x_tr, x_te, x_va = (r.astype(np.float64) / scale for r in (raw_tr, raw_te, raw_va))
    if standardize:
        mean = x_tr.mean(axis=(0, 2, 3), keepdims=True)  # numpy: one fixed summation order
        std = np.maximum(x_tr.std(axis=(0, 2, 3), ddof=1, keepdims=True), 1e-12)
        x_tr, x_te, x_va = (x_tr - mean) / std, (x_te - mean) / std, (x_va - mean) / std
    provenance = {
        "data": cfg.name, "seed": cfg.seed, "num_classes": cfg.num_classes,
        "preprocessing": {"scale": f"1/{scale:g}", "standardize": standardize},
        **{part: {"n": len(idx), "indices_sha256": _sha(np.asarray(idx, np.int64)), "raw_sha256": _sha(raw)}
           for part, idx, raw in (("train", i_tr, raw_tr), ("test", i_te, raw_te))},
    }
    if train_draw:
        provenance["train"]["draw"] = train_draw
    return Dataset(cfg.name, torch.from_numpy(x_tr), torch.as_tensor(np.asarray(y_tr)[i_tr], dtype=torch.int64),
                   torch.from_numpy(x_te), torch.as_tensor(np.asarray(y_te)[i_te], dtype=torch.int64),
                   cfg.num_classes, provenance, torch.from_numpy(x_va),
                   torch.as_tensor(np.asarray(y_tr)[i_va], dtype=torch.int64))


def _sha(a: np.ndarray) -> str:
    h = hashlib.sha256(json.dumps([list(a.shape), str(a.dtype)]).encode())
    h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def balanced_indices(y, n: int, num_classes: int, seed: int | list[int], key: str = "n", name: str = "data"
                     ) -> np.ndarray:
    """Indices of n examples from classes 0..num_classes-1, as equal per class as n allows, seeded
    (``seed``: anything ``numpy.random.default_rng`` takes, e.g. an int or a list of ints)."""
    g = np.random.default_rng(seed)
    per = [n // num_classes + (1 if c < n % num_classes else 0) for c in range(num_classes)]
    idx = []
    y_np = np.asarray(y)
    for c, k in enumerate(per):
        pool = np.flatnonzero(y_np == c)
        if len(pool) < k:
            total = sum(min(len(np.flatnonzero(y_np == c2)), n) for c2 in range(num_classes))
            raise ConfigError(
                f"{key}={n} is larger than {name} allows: class {c} has {len(pool)} images "
                f"(at most about {total} balanced over {num_classes} classes)"
            )
        idx.append(g.choice(pool, size=k, replace=False))
    idx = np.concatenate(idx) if idx else np.zeros(0, dtype=int)
    g.shuffle(idx)
    return idx


def balanced_subset(x, y, n: int, num_classes: int, seed: int, key: str = "n", name: str = "data"):
    """(x, y) of n examples from classes 0..num_classes-1, as equal per class as n allows, seeded."""
    idx = balanced_indices(y, n, num_classes, seed, key, name)
    return x[torch.as_tensor(idx)], torch.as_tensor(np.asarray(y)[idx], dtype=torch.int64)


def _digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    return d.images.astype(np.uint8)[:, None], d.target  # raw values 0..16


def _split_pool(x, y, cfg: DataConfig):
    """digits has no official split: a seeded, stratified split of the 1,797 images."""
    if cfg.n_train + cfg.n_val + cfg.n_test > len(x):
        raise ConfigError(
            f"data.n_train={cfg.n_train} + data.n_val={cfg.n_val} + data.n_test={cfg.n_test} exceeds the {len(x)} "
            f"images of {cfg.name}"
        )
    g = np.random.default_rng(cfg.seed + 12345)
    test = np.zeros(len(x), dtype=bool)
    for c in range(10):  # hold out 30 % of every class as the test pool
        pool = np.flatnonzero(y == c)
        test[g.choice(pool, size=int(round(0.3 * len(pool))), replace=False)] = True
    if cfg.n_test > test.sum() or cfg.n_train > (~test).sum():
        raise ConfigError(
            f"data.n_train={cfg.n_train} / data.n_test={cfg.n_test}: {cfg.name} holds {(~test).sum()} training "
            f"and {test.sum()} test images"
        )
    return x[~test], y[~test], x[test], y[test]


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (optionally .gz) as a numpy array."""
    raw = _read_maybe_gz(path)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte IDX file")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise ValueError(f"{path} is truncated: expected {int(np.prod(dims))} values, found {data.size}")
    return data.reshape(dims)


def _read_maybe_gz(path: Path) -> bytes:
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        return gzip.decompress(raw)
    except (EOFError, OSError, zlib.error) as err:
        raise ValueError(f"{path} is truncated or corrupt ({err})") from None


def _find(root: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (root / name).exists():
            return root / name
    return None


def _fashion(cfg: DataConfig):
    root = Path(cfg.root or FASHION_DEFAULT_ROOT)
    missing = [s for s in FASHION_FILES if _find(root, s) is None]
    if missing and cfg.download:
        root = Path(cfg.root or os.path.join(os.path.expanduser("~"), ".cache", "cntk-suite", "fashion-mnist"))
        root.mkdir(parents=True, exist_ok=True)
        for stem in missing:
            _download(FASHION_URL + stem + ".gz", root / (stem + ".gz"), lambda p, s=stem: _sha256_idx(p) == FASHION_FILES[s])
        missing = []
    if missing:
        raise DataMissingError(
            f"Fashion-MNIST not found in {root} (missing {missing[0]}): run 'sudo apt-get install "
            "dataset-fashion-mnist', or set data.root=DIR with the IDX files, or data.download=true (needs internet)"
        )
    arrays = {}
    for stem in FASHION_FILES:
        try:
            arrays[stem] = read_idx(_find(root, stem))
        except ValueError as err:
            raise DataMissingError(f"{err}: reinstall it (sudo apt-get install --reinstall dataset-fashion-mnist) "
                                   "or replace the file") from None
    x_tr, x_te = arrays["train-images-idx3-ubyte"][:, None], arrays["t10k-images-idx3-ubyte"][:, None]
    return x_tr, arrays["train-labels-idx1-ubyte"], x_te, arrays["t10k-labels-idx1-ubyte"]


def one_line(err: BaseException) -> str:
    return (str(err).splitlines() or [type(err).__name__])[0]


def _sha256_idx(path: Path) -> str:
    return hashlib.sha256(_read_maybe_gz(path)).hexdigest()


def _download(url: str, dest: Path, verify) -> None:
    tmp = dest.with_name(dest.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=60) as r, open(tmp, "wb") as f:
            while chunk := r.read(1 << 20):
                f.write(chunk)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise DataMissingError(f"download of {url} failed ({err}): fetch it by hand into {dest.parent}") from err
    if not verify(tmp):
        tmp.unlink(missing_ok=True)
        raise DataMissingError(f"download of {url} failed its checksum: try again or fetch it by hand")
    os.replace(tmp, dest)


def read_cifar_archive(path: Path):
    """The official python CIFAR-10 archive: (x_train, y_train, x_test, y_test), x uint8 (N, 3, 32, 32)."""
    batches: dict[str, dict] = {}
    with tarfile.open(path, "r:gz") as tar:
        for member in tar.getmembers():
            base = os.path.basename(member.name)
            if base.startswith("data_batch_") or base == "test_batch":
                batches[base] = pickle.load(tar.extractfile(member), encoding="bytes")
    train_names = sorted(b for b in batches if b.startswith("data_batch_"))
    if "test_batch" not in batches or not train_names:
        raise ValueError(f"{path} does not look like cifar-10-python.tar.gz (no data_batch_* / test_batch)")

    def stack(names):
        x = np.concatenate([np.asarray(batches[n][b"data"], dtype=np.uint8) for n in names])
        y = np.concatenate([np.asarray(batches[n][b"labels"], dtype=np.int64) for n in names])
        return x.reshape(-1, 3, 32, 32), y

    return (*stack(train_names), *stack(["test_batch"]))


def _md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _cifar(cfg: DataConfig):
    root = Path(cfg.root or CIFAR_DEFAULT_ROOT)
    archive = root / CIFAR_ARCHIVE
    if not archive.exists():
        if not cfg.download:
            raise DataMissingError(
                f"CIFAR-10 not found: put {CIFAR_ARCHIVE} in {root} (or set data.root=DIR), "
                "or set data.download=true (needs internet)"
            )
        root.mkdir(parents=True, exist_ok=True)
        _download(CIFAR_URL, archive, lambda p: _md5(p) == CIFAR_MD5)
    try:
        return read_cifar_archive(archive)
    except (tarfile.TarError, EOFError, OSError, pickle.UnpicklingError, ValueError) as err:
        raise DataMissingError(f"{archive} is truncated or corrupt ({one_line(err)}): delete it and fetch it again "
                               "(data.download=true)") from None


def _sphere(cfg: DataConfig):
    """Points uniform on the unit sphere in R^(C*H*W), shaped (C, H, W); the label is the sign
    pattern of a fixed random teacher: argmax of num_classes random projections."""
    g = torch.Generator().manual_seed(cfg.seed + 999)
    n = 4 * (cfg.n_train + cfg.n_val + cfg.n_test) + 50 * cfg.num_classes
    x = torch.randn(n, *cfg.shape, generator=g, dtype=torch.float64).numpy()
    x = x / np.sqrt((x.reshape(n, -1) ** 2).sum(1))[:, None, None, None]
    teacher = torch.randn(x[0].size, cfg.num_classes, generator=g, dtype=torch.float64).numpy()
    y = (x.reshape(n, -1) @ teacher).argmax(1)
    half = n // 2
    return x[:half], y[:half], x[half:], y[half:]
