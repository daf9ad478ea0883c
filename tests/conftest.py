import numpy as np
import pytest
import torch

import cntk


def fast_backends() -> list[str]:
    """Every non-reference backend that computes the paper's CNNs on this CPU (triton runs in its
    interpreter in the conformance suite and its own tests)."""
    return [b for b in cntk.backends_for(cntk.Architecture(depth=3), "cpu") if b not in ("reference", "triton")]


@pytest.fixture(scope="session")
def digits() -> torch.Tensor:
    """The 1,797 real 8x8 digits images, (N, 1, 8, 8) float64 in [0, 1] (black borders included)."""
    from sklearn.datasets import load_digits

    return torch.tensor(load_digits().images, dtype=torch.float64)[:, None] / 16.0


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture(scope="module")
def one_thread():
    """Small tensors: one intra-op thread.  On a busy 2-core machine, OpenMP's spinning threads
    slowed the finite-net tests up to 25x (measured); with one thread they cost the same CPU time."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def idx_bytes(arr: np.ndarray) -> bytes:
    """An unsigned-byte IDX file's bytes (the Fashion-MNIST format)."""
    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    return header + arr.astype(np.uint8).tobytes()


def write_fashion(root, n_train=60, n_test=40, gz=True) -> dict:
    """Small Fashion-MNIST-format files (random 28x28 images, labels 0..9 in turn) under root."""
    import gzip

    rng = np.random.default_rng(0)
    files = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28)),
        "train-labels-idx1-ubyte": np.arange(n_train) % 10,
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28)),
        "t10k-labels-idx1-ubyte": np.arange(n_test) % 10,
    }
    for stem, arr in files.items():
        data = idx_bytes(arr)
        (root / (stem + (".gz" if gz else ""))).write_bytes(gzip.compress(data) if gz else data)
    return files


def alive(pids) -> list[int]:
    """The processes among ``pids`` that still run (neither gone nor zombies; reads /proc)."""
    from pathlib import Path

    out = []
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            out.append(pid)
    return out


def run_experiment(overrides, out) -> dict:
    """One experiment run in this process, composed from conf/ with ``overrides``, written to ``out``."""
    from pathlib import Path

    from hydra import compose, initialize_config_dir
    from omegaconf import open_dict

    from experiments.harness.config import register
    from experiments.harness.runner import execute

    register()
    with initialize_config_dir(config_dir=str(Path(__file__).resolve().parents[1] / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides, return_hydra_config=True)
    choices = {k: v for k, v in cfg.hydra.runtime.choices.items() if not k.startswith("hydra")}
    with open_dict(cfg):
        del cfg["hydra"]
    return execute(cfg, out, task_overrides=overrides, choices=choices)
