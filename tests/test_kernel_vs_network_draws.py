"""kernel_vs_network with ``redraw_train``: seed s trains on training draw s, the exact kernel is
computed on every draw, and each net is compared with the kernel of its own draw (never with another
draw's, never pooled).  The summary's pairing is checked on rows built so that any other pairing
gives a different number; the run itself on a tiny digits grid."""
import json

import numpy as np
import pytest
from conftest import run_experiment

from experiments import kernel_vs_network as kvn
from experiments.harness import stats


def _rows(kernel_by_draw: dict[int, np.ndarray], nets: list[tuple[int, int, np.ndarray]]) -> list[dict]:
    where = {"family": "cnn", "readout": "flatten", "depth": 3, "net": "CNN-V, depth 3", "n_train": 10, "n_val": 5,
             "n_test": 8}
    rows = [{**where, "method": "kernel", "width": 0, "seed": -1, "train_draw": d, "accuracy": float(c.mean()),
             "correct": stats.encode(c)} for d, c in kernel_by_draw.items()]
    rows += [{**where, "method": "ntk_net", "width": 4, "seed": s, "train_draw": d, "accuracy": float(c.mean()),
              "correct": stats.encode(c), "val_accuracy": 0.5, "final_train_loss": 0.01, "train_accuracy": 1.0,
              "epochs": 1, "route": "centred", "kappa": 1.0, "lr_fraction": 0.5} for s, d, c in nets]
    return rows


def test_each_net_is_paired_with_the_kernel_of_its_own_draw():
    right, wrong = np.ones(8, bool), np.zeros(8, bool)
    # draw 0: kernel and net all right; draw 1: both all wrong.  Paired by draw, the net equals its kernel
    # exactly (difference 0, interval [0, 0], McNemar p = 1); paired with draw 0's kernel it would be -50.
    summary = kvn.summarize(_rows({0: right, 1: wrong}, [(0, 0, right), (1, 1, wrong)]))
    kern = next(s for s in summary if s["method"] == "kernel")
    net = next(s for s in summary if s["method"] == "ntk_net")
    assert kern["train_draws"] == 2 and kern["accuracy"] == 0.5 and kern["interval"].startswith("two-level")
    assert kern["acc_lo"] < 0.5 < kern["acc_hi"]  # the draws' spread is in the kernel's interval
    assert (net["diff_to_kernel"], net["diff_lo"], net["diff_hi"]) == (0.0, 0.0, 0.0)
    assert net["mcnemar_p"] == "1 / 1" and net["train_draws"] == 2
    assert "training draw" in net["interval"]


def test_a_net_whose_draw_has_no_kernel_is_refused():
    right = np.ones(8, bool)
    with pytest.raises(ValueError, match="training draw"):
        kvn.summarize(_rows({0: right}, [(0, 0, right), (1, 1, right)]))
    with pytest.raises(ValueError, match="two kernel rows of training draw 0"):
        kvn.summarize(_rows({0: right}, []) + _rows({0: right}, []))


def test_redraw_train_computes_a_kernel_per_draw(tmp_path, one_thread, quick_figures):
    run_experiment(["experiment=kernel_vs_network", "experiment.seeds=[0,1]", "experiment.redraw_train=true",
                    "experiment.epochs=1", "experiment.standard_lrs=[0.01]", "experiment.ntk_lr_fractions=[0.5]",
                    "experiment.ntk_routes=[centred]", "experiment.widths=[4]", "experiment.depths=[3]",
                    "experiment.readouts=[flatten]", "data.n_train=20", "data.n_val=10", "data.n_test=10", "threads=1",
                    "progress=false"], tmp_path)
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    kernels = {r["train_draw"]: r for r in rows if r["method"] == "kernel"}
    assert sorted(kernels) == [0, 1] and kernels[0]["train_indices_sha256"] != kernels[1]["train_indices_sha256"]
    assert {(r["seed"], r["train_draw"]) for r in rows if r["method"].endswith("_net")} == {(0, 0), (1, 1)}
    assert {r["train_draw"] for r in rows if r["method"].endswith("_selection")} == {0}  # selection on draw 0
    assert "kernel of its own draw" in (tmp_path / "table.md").read_text()
