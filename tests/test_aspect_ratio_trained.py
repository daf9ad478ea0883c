"""experiments/aspect_ratio_trained.py: the trained decomposition net - KR = (net - lin(Theta0)) +
(lin(Theta0) - KR) on the aspect-ratio grid.  (a) The seed ensemble on hand-made vectors: the mean
over seeds is what is compared with f_KR, so a random part that averages out leaves exactly the
systematic one; (b) a tiny run end to end whose rows are recomputed here, net by net, from the same
seeds (the decomposition as vectors, and the ensemble row from the recomputed predictions);
(c) the refusals and the weight caps."""

import numpy as np
import pytest
import torch
from conftest import run_experiment

import cntk
import finite_nets
from experiments import aspect_ratio as ar
from experiments import aspect_ratio_trained as art
from experiments.harness.config import ConfigError, register
from experiments.harness.data import load
from experiments.harness.config import DigitsConfig
from experiments.harness.trained_split import initial_ntk, linearised_limit, rms
from finite_nets.flow import train_flow

register()


def _norm(v, ref):
    return float(v.norm() / ref.norm())


def test_the_ensemble_compares_the_seed_mean_and_keeps_only_the_systematic_part():
    g = torch.Generator().manual_seed(0)
    f_kr = torch.randn(50, generator=g, dtype=torch.float64)
    bias = 0.05 * torch.randn(50, generator=g, dtype=torch.float64)  # the systematic part of lin - KR
    noise = 0.3 * torch.randn(4, 50, generator=g, dtype=torch.float64)
    noise -= noise.mean(0)  # a random part that the 4 seeds cancel exactly
    f_lin = [f_kr + bias + n for n in noise]
    nl = 0.02 * torch.randn(4, 50, generator=g, dtype=torch.float64)  # net - lin, per seed
    f_net = [a + d for a, d in zip(f_lin, nl)]
    out = art.ensemble(f_kr, f_lin, f_net)
    assert out["ens_lin_kr"] == pytest.approx(_norm(bias, f_kr), rel=1e-12)  # the noise is gone
    assert out["ens_net_lin"] == pytest.approx(_norm(nl.mean(0), f_kr), rel=1e-12)
    assert out["ens_net_kr"] == pytest.approx(_norm(bias + nl.mean(0), f_kr), rel=1e-12)  # the sum of the two
    per_seed = np.mean([_norm(a - f_kr, f_kr) for a in f_lin])
    assert per_seed > 5 * out["ens_lin_kr"]  # each seed alone carries the random part
    for q in ("lin_kr", "net_lin", "net_kr"):  # ens^2 = B^2 + V / S, V the seeds' spread around their mean
        assert out[f"ens_{q}"] ** 2 == pytest.approx(out[f"{q}_bias_sq"] + out[f"{q}_noise"] ** 2, rel=1e-9)
    v = 4 / 3 * float(np.mean([n.norm() ** 2 for n in noise])) / float(f_kr.norm()) ** 2
    assert out["lin_kr_fluct_var"] == pytest.approx(v, rel=1e-12)
    assert out["bias_resolved_lin_kr"] == (out["lin_kr_bias_sq"] > out["lin_kr_fluct_var"] / 4)


TINY = ["experiment=aspect_ratio_trained", "data=digits", "data.n_train=6", "data.n_test=5",
        "experiment.families=[fc,cnn]", "experiment.readouts=[flatten]", "experiment.depths=[3,5]",
        "experiment.ratios=[1/64]", "experiment.seeds=[0,1,2]", "experiment.cnn_max_weights=1",
        "experiment.flow_error_bound=100", "experiment.bootstrap=50", "progress=false", "threads=1"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """fc L = 2, 4 at L / m = 1/64 (m = 128, 256), 3 seeds, 6 + 5 digits; every CNN above cnn_max_weights = 1."""
    return run_experiment(TINY, tmp_path_factory.mktemp("tiny"))


def test_the_rows_are_the_decomposition_of_the_same_nets_recomputed(tiny, one_thread):
    data = load(DigitsConfig(n_train=6, n_test=5))
    y = torch.where(data.y_train < data.num_classes // 2, 1.0, -1.0).to(torch.float64)
    xtr0, xte0 = ar.prepare_inputs(data.x_train, 1).double(), ar.prepare_inputs(data.x_test, 1).double()
    rows = tiny["rows"]
    for depth, m in ((3, 128), (5, 256)):
        arch = cntk.Architecture(family="fc", depth=depth)
        xtr, xte = arch.inputs(xtr0), arch.inputs(xte0)
        f_kr = linearised_limit(cntk.kernel(xtr, None, arch).double(), cntk.kernel(xte, xtr, arch).double(), y)
        f_lin, f_net = [], []
        for seed in (0, 1, 2):
            net = finite_nets.build(arch, m, seed=ar.net_seed(seed, depth, m), input_shape=tuple(xtr.shape[1:]),
                                    dtype=torch.float64, device="cpu")
            th = initial_ntk(net, xtr, xte)
            row = next(r for r in rows if (r["kind"], r["family"], r["depth"], r.get("seed")) == ("seed", "fc", depth, seed))
            res = train_flow(net, xtr, y, xte, loss_tol=1e-6, rtol=row["rtol_used"], max_steps=row["max_steps"],
                             centered=True)
            fn, fl = res.test_predictions[-1, :, 0].double(), linearised_limit(*th, y)
            f_net.append(fn)
            f_lin.append(fl)
            assert torch.allclose(fn - f_kr, (fn - fl) + (fl - f_kr), atol=1e-12)  # the split, as vectors
            assert row["width"] == m and row["ratio_value"] == (depth - 1) / m and row["converged"]
            assert row["final_rel_loss"] <= 1e-6 and row["drift"] > 0
            s = rms(f_kr)
            assert row["rel_lin_kr"] == pytest.approx(rms(fl - f_kr) / s, rel=1e-6)
            assert row["rel_net_lin"] == pytest.approx(rms(fn - fl) / s, rel=1e-5)
            assert row["rel_diff_to_kernel_regression"] == pytest.approx(rms(fn - f_kr) / s, rel=1e-5)
            # the triangle: |a - b| <= net - KR <= a + b
            a, b = row["rel_lin_kr"], row["rel_net_lin"]
            assert abs(a - b) - 1e-12 <= row["rel_diff_to_kernel_regression"] <= a + b + 1e-12
        ens = next(r for r in rows if (r["kind"], r["family"], r["depth"]) == ("ensemble", "fc", depth))
        mean_net, mean_lin = torch.stack(f_net).mean(0), torch.stack(f_lin).mean(0)
        assert ens["ens_lin_kr"] == pytest.approx(rms(mean_lin - f_kr) / rms(f_kr), rel=1e-6)
        assert ens["ens_net_kr"] == pytest.approx(rms(mean_net - f_kr) / rms(f_kr), rel=1e-5)
        assert ens["ens_net_lin"] == pytest.approx(rms(mean_net - mean_lin) / rms(f_kr), rel=1e-5)
        assert ens["seeds"] == 3 and ens["converged_nets"] == 3


def test_the_summary_fits_every_quantity_and_records_the_skipped_nets(tiny):
    summary = tiny["summary"]
    fits = {s["quantity"]: s for s in summary if s["kind"] == "fit" and s["family"] == "fc"}
    assert set(fits) == {"rel_lin_kr", "rel_net_lin", "rel_diff_to_kernel_regression", "drift", "ens_lin_kr",
                         "ens_net_lin", "ens_net_kr"}
    assert fits["rel_lin_kr"]["points"] == 6 and fits["ens_lin_kr"]["points"] == 2
    assert fits["rel_lin_kr"]["expected_slope"] == 0.5 and fits["rel_net_lin"]["expected_slope"] == 1.0
    collapse = [s for s in summary if s["kind"] == "collapse" and s["family"] == "fc"]
    assert {s["quantity"] for s in collapse} == {"rel_lin_kr", "rel_net_lin", "rel_diff_to_kernel_regression", "drift"}
    for s in collapse:  # one ratio, two depths: one test each, Holm over one test is the test
        assert s["depths_L"] == "2 4" and s["holm_p"] == pytest.approx(s["perm_p"]) and 0 < s["perm_p"] <= 1
    skipped = [r for r in tiny["rows"] if r["kind"] == "skipped"]
    assert {(r["family"], r["L"]) for r in skipped} == {("cnn", 2), ("cnn", 4)}
    assert all("experiment.cnn_max_weights=1" in r["reason"] for r in skipped)
    assert not [r for r in tiny["rows"] if r["family"] == "cnn" and r["kind"] != "skipped"]
    assert any(p.name == "aspect_ratio_trained.png" for p in tiny["figures"])


@pytest.mark.parametrize("fields, key", [
    ({"cnn_max_weights": -1}, "experiment.cnn_max_weights"),
    ({"loss_tol": 2.0}, "experiment.loss_tol"),
    ({"max_steps": 0}, "experiment.max_steps"),
    ({"depths": [3], "ratios": ["3/4"]}, "experiment.ratios"),  # m = 8/3
    ({"seeds": [0]}, "experiment.seeds"),
])
def test_impossible_settings_are_refused_by_name(fields, key):
    with pytest.raises(ConfigError, match="^" + key.replace(".", r"\.") + ": "):
        art.Config(**fields)


@pytest.mark.parametrize("extra, key", [
    (["data.n_test=0"], "data.n_test"),
    (["experiment.widths=[8]"], "experiment.widths"),
    (["model=fc"], "model.family"),
    (["experiment.no_such_key=1"], None),  # unknown keys: refused by the schema
])
def test_refused_at_start_in_one_line(extra, key, tmp_path):
    base = [o for o in TINY if not (extra == ["model=fc"] and o.startswith("experiment.readouts"))]  # fc: no readout
    with pytest.raises(Exception) as err:
        run_experiment([*base, *extra], tmp_path)
    if key:
        assert isinstance(err.value, ConfigError) and str(err.value).startswith(key + ": ")
        assert "\n" not in str(err.value)
    else:
        assert "no_such_key" in str(err.value)
    assert not list(tmp_path.rglob("results.json"))
