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


def _quick_save_figure(fig, out_dir, name):
    """experiments.harness.common.save_figure, cheaper: the figure is drawn once, into a 20 dpi PNG
    (name.png), with no PDF and no tight-bbox pass.  The plotting code still runs to the end, drawing
    included (a bad label or mathtext still fails), at a third of the cost or less."""
    import io
    from pathlib import Path

    import matplotlib.pyplot as plt

    from experiments.harness.results import write_atomic

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=20)
    plt.close(fig)
    path = Path(out_dir) / f"{name}.png"
    write_atomic(path, buf.getvalue())
    return [path]


def patch_figures(mp: pytest.MonkeyPatch) -> None:
    """Every experiment module's save_figure replaced by the quick one, through ``mp``.  For tests that
    check rows and summaries; the real PNG + PDF files are checked through run.py by
    tests/test_experiments_e2e.py."""
    import sys

    import experiments
    from experiments.harness import common

    for name in experiments.names():
        experiments.get(name)
    for mod in list(sys.modules.values()):
        if getattr(mod, "__name__", "").startswith("experiments") and getattr(mod, "save_figure", None) is common.save_figure:
            mp.setattr(mod, "save_figure", _quick_save_figure)


@pytest.fixture
def quick_figures(monkeypatch):
    patch_figures(monkeypatch)


def selected_params(request, test_name: str, param: str) -> list:
    """The values of ``param`` of the collected (selected: -k included) items of ``test_name`` in the
    requesting module, in collection order."""
    return [item.callspec.params[param] for item in request.session.items
            if getattr(item, "originalname", None) == test_name and item.module is request.module]


class Ahead:
    """Subprocess-bound work for parametrised tests, started at once, a few at a time in threads (each
    run is its own process: on 2 cores two of them take about the time of one).  ``get(key)`` waits
    for that key's result and re-raises its exception inside the test that asks for it, so every
    case still passes or fails on its own."""

    def __init__(self, fn, keys, workers: int | None = None):
        import os
        from concurrent.futures import ThreadPoolExecutor

        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        self.pool = ThreadPoolExecutor(max_workers=workers or max(1, min(cores, 4)))
        self.futures = {key: self.pool.submit(fn, key) for key in dict.fromkeys(keys)}

    def get(self, key):
        return self.futures[key].result()

    def close(self):
        for f in self.futures.values():
            f.cancel()
        self.pool.shutdown(wait=True)


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
