import numpy as np
import pytest
import torch

import cntk


def fast_backends() -> list[str]:
    """Every non-reference CNN backend that runs on this CPU (triton has its own interpreter tests)."""
    return [b for b in cntk.available_backends() if b not in ("reference", "triton")]


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
