"""experiments/aspect_ratio.py: the grid m = L / ratio and its refusals, the bias / fluctuation split,
and a tiny fc run whose errors must fall with width and whose summary reports the across-depth spread."""
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import patch_figures
from hydra import compose, initialize_config_dir

from experiments import aspect_ratio as ar
from experiments.harness.config import ConfigError, register
from experiments.harness.runner import execute

ROOT = Path(__file__).resolve().parents[1]
register()


def test_the_grid_sets_every_width_from_depth_and_ratio():
    g = ar.grid([3, 5, 17], ["1/64", "1/4", "0.5"])
    assert g[3, "1/64"] == 128 and g[5, "1/4"] == 16 and g[17, "1/4"] == 64 and g[5, "0.5"] == 8
    assert ar.Config(depths=[3, 9], ratios=["1/16"]).ratios == ["1/16"]


@pytest.mark.parametrize("fields, key, words", [
    ({"depths": [3], "ratios": ["4"]}, "experiment.ratios", "gives width m = 0.5"),  # m < 1
    ({"depths": [3], "ratios": ["3/4"]}, "experiment.ratios", "whole number"),  # m = 8/3
    ({"depths": [3], "ratios": ["0"]}, "experiment.ratios", "> 0"),
    ({"depths": [3], "ratios": ["a/b"]}, "experiment.ratios", "not a number"),
    ({"ratios": ["1/4", "0.25"]}, "experiment.ratios", "repeats"),
    ({"families": ["myrtle"]}, "experiment.families", "unknown"),
    ({"seeds": [0]}, "experiment.seeds", ">= 2 seeds"),
])
def test_impossible_grids_are_refused_by_name(fields, key, words):
    with pytest.raises(ConfigError, match="^" + key.replace(".", r"\.") + ": ") as err:
        ar.Config(**fields)
    assert words in str(err.value)


def test_the_bias_and_fluctuation_split_is_exact_and_unbiased():
    """mse = ens^2 + (S-1)/S fluct exactly; over many draws fluct_var -> the noise variance and
    bias_sq -> the squared bias (the finite-seed correction)."""
    g = torch.Generator().manual_seed(0)
    exact = torch.eye(4, dtype=torch.float64) * 2.0  # ||exact|| = 4
    bias = torch.zeros(4, 4, dtype=torch.float64)
    bias[0, 1] = bias[1, 0] = 0.4  # B^2 = 0.32 / 16 = 0.02
    sigma = 0.2  # per entry: V = 16 * 0.04 / 16 = 0.04
    fl, bs = [], []
    for _ in range(400):
        emps = [exact + bias + sigma * torch.randn(4, 4, generator=g, dtype=torch.float64) for _ in range(4)]
        st = ar.ensemble_stats(emps, exact)
        assert math.isclose(st["mse"], st["ens_rel_error"] ** 2 + 3 / 4 * st["fluct_var"], rel_tol=1e-12)
        fl.append(st["fluct_var"])
        bs.append(st["bias_sq"])
    assert abs(np.mean(fl) - 0.04) < 0.004 and abs(np.mean(bs) - 0.02) < 0.004


def _execute(overrides, out):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    return execute(cfg, out, task_overrides=overrides)


TINY = ["experiment=aspect_ratio", "data=digits", "data.n_train=6", "experiment.families=[fc]",
        "experiment.depths=[3,5]", "experiment.ratios=[1/4,1/64]", "experiment.seeds=[0,1,2,3,4,5,6,7]",
        "experiment.downsample=1", "experiment.bootstrap=200", "progress=false", "threads=1"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """fc, L = 2 and 4 at L / m = 1/4 and 1/64 (m = 8, 128 and 16, 256), 8 seeds, 6 digits; the net of
    L = 4, m = 256 (213,000 hidden weights) above max_weights: skipped, with its reason."""
    with pytest.MonkeyPatch.context() as mp:
        patch_figures(mp)  # the figure drawn small: only its name is checked here
        return _execute([*TINY, "experiment.max_weights=150000"], tmp_path_factory.mktemp("tiny"))


def test_the_error_falls_with_width_at_fixed_depth(tiny):
    seeds = [r for r in tiny["rows"] if r["kind"] == "seed"]
    assert {(r["L"], r["width"]) for r in seeds} == {(2, 8), (2, 128), (4, 16)}
    assert all(r["ratio_value"] == r["L"] / r["width"] for r in seeds)
    mse = {m: np.mean([r["rel_sq_error"] for r in seeds if r["L"] == 2 and r["width"] == m]) for m in (8, 128)}
    assert mse[128] < mse[8] / 3  # 16 times the width: about 16 times smaller (c L / m)


def test_the_ensemble_bias_is_below_the_per_seed_error_at_the_largest_width(tiny):
    at = [r for r in tiny["rows"] if r["kind"] == "seed" and r["width"] == 128]
    per_seed = np.mean([r["rel_fro_error"] for r in at])
    assert at[0]["ens_rel_error"] < per_seed and math.sqrt(max(at[0]["bias_sq"], 0.0)) < per_seed
    assert math.isclose(at[0]["mse"], np.mean([r["rel_sq_error"] for r in at]), rel_tol=1e-12)


def test_skipped_nets_are_recorded_with_their_reason(tiny):
    skipped = [r for r in tiny["rows"] if r["kind"] == "skipped"]
    assert [(r["L"], r["width"]) for r in skipped] == [(4, 256)]
    assert "experiment.max_weights=150000" in skipped[0]["reason"]
    assert any(s["kind"] == "skipped" and s["width"] == 256 for s in tiny["summary"])


def test_the_summary_reports_the_spread_across_depths(tiny):
    collapse = {s["ratio"]: s for s in tiny["summary"] if s["kind"] == "collapse"}
    c = collapse["1/4"]  # L = 2 and 4 at m = 8 and 16
    assert c["n_depths"] == 2 and c["depths_L"] == "2 4"
    means = [np.mean([r["rel_sq_error"] for r in tiny["rows"] if r["kind"] == "seed" and r["ratio"] == "1/4"
                      and r["L"] == L]) for L in (2, 4)]
    assert math.isclose(c["spread"], max(means) / min(means), rel_tol=1e-12)
    assert c["spread_lo"] <= c["spread"] <= c["spread_hi"] and 0 < c["perm_p"] <= 1
    assert np.isfinite(c["depth_slope"]) and c["depth_slope_lo"] < c["depth_slope"] < c["depth_slope_hi"]
    assert collapse["1/64"]["n_depths"] == 1  # the other depth was skipped: no spread claimed
    fit = next(s for s in tiny["summary"] if s["kind"] == "fit")
    assert np.isfinite(fit["slope"]) and fit["slope_lo"] < fit["slope"] < fit["slope_hi"]
    assert any(p.name == "aspect_ratio.png" for p in tiny["figures"])


def test_a_model_family_is_refused_at_start_not_ignored(tmp_path):
    with pytest.raises(ConfigError, match=r"^model\.family: .*experiment\.families=\[fc\]"):
        _execute([*TINY, "model=fc"], tmp_path)
    assert not list(tmp_path.rglob("results.json"))
