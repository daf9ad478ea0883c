"""The Table 1 report's statistics on hand-made solve rows: both ridge settings, Holm within the
stated families, GAP vs V only at equal fix, Wilson intervals for single accuracies."""
import numpy as np
import pytest

from experiments.harness import solve_report as solve
from experiments.harness import stats

M = 300


def _rows(kind: str, readout: str, fix: bool, depth: int, p: float, seed: int, n_train: int = 50) -> list[dict]:
    """A kernel's solve rows: ridge 0 (CV accuracy 0.5) and ridge 1e-3 (CV's choice, 0.6)."""
    rng = np.random.default_rng(seed)
    out = []
    for ridge, cv in ((0.0, 0.5), (1e-3, 0.6), (1e-2, 0.55)):
        correct = rng.random(M) < p
        out.append({"data": "digits", "kind": kind, "readout": readout, "fix_first_last": fix, "depth": depth,
                    "ridge": ridge, "cv_accuracy": cv, "accuracy": correct.mean(), "correct": stats.encode(correct),
                    "n_train": n_train, "n_test": M})
    return out


def _gap_v_rows(gap_fix: bool, v_fix: bool, kind: str = "ntk") -> list[dict]:
    return _rows(kind, "gap", gap_fix, 3, 0.8, 1) + _rows(kind, "flatten", v_fix, 3, 0.7, 2)


@pytest.mark.parametrize("gap_fix, v_fix", [(True, False), (False, True)])
def test_gap_vs_v_refuses_unequal_fix(gap_fix, v_fix):
    summary = solve.summarize(_gap_v_rows(gap_fix, v_fix))
    assert not [t for t in solve.comparisons(summary) if t["comparison"] == "GAP vs V"]
    refused = solve.refused_gap_v(summary)
    assert [r["pair"] for r in refused] == [f"CNTK-GAP{' (fix)' * gap_fix} vs CNTK-V{' (fix)' * v_fix}"]
    assert "Not made for lack of an equal-fix partner: CNTK-GAP" in solve._tests_md([], refused)


def test_gap_vs_v_pairs_equal_fix_and_any_nngp():
    for rows in (_gap_v_rows(True, True), _gap_v_rows(False, False), _gap_v_rows(True, False, kind="nngp")):
        summary = solve.summarize(rows)  # the NNGP does not depend on fix: its flag never blocks a pair
        tests = [t for t in solve.comparisons(summary) if t["comparison"] == "GAP vs V"]
        assert len(tests) == 2 and not solve.refused_gap_v(summary)
    # with both V kernels present, GAP (fix) takes V (fix), never V without fix
    summary = solve.summarize(_gap_v_rows(True, True) + _rows("ntk", "flatten", False, 3, 0.7, 3))
    assert {t["b"] for t in solve.comparisons(summary) if t["comparison"] == "GAP vs V"} == {"CNTK-V (fix), depth 3"}


def test_both_ridge_settings_each_with_its_own_holm_families():
    rows = []
    for n_train in (50, 100):
        for i, depth in enumerate((3, 6)):
            rows += _rows("ntk", "flatten", False, depth, 0.85, 10 * i + n_train, n_train)
            rows += _rows("nngp", "flatten", False, depth, 0.6, 10 * i + n_train + 1, n_train)
    summary = solve.summarize(rows)
    assert all(s["cv_ridge"] == 1e-3 for s in summary)
    tests = solve.comparisons(summary)
    assert {t["ridge"] for t in tests} == {"none", "CV"}
    families = {t["family"] for t in tests}
    assert len(families) == 2 * 2 * 2  # ridge setting x (CNTK vs CNN-GP, depth) x size
    for family in families:
        sel = [t for t in tests if t["family"] == family]
        assert len({(t["ridge"], t["comparison"], t["data"]) for t in sel}) == 1
        assert [t["holm_p"] for t in sel] == pytest.approx(list(stats.holm([t["mcnemar_p"] for t in sel])))
        assert all(t["family_size"] == len(sel) and t["survives"] == (t["holm_p"] < 0.05) for t in sel)
    # the no-ridge tests use the ridge-0 predictions, the CV tests the chosen ridge's
    t0 = next(t for t in tests if t["ridge"] == "none")
    tcv = next(t for t in tests if t["ridge"] == "CV" and (t["a"], t["b"], t["data"]) == (t0["a"], t0["b"], t0["data"]))
    assert (tcv["ridge_a"], t0["ridge_a"]) == (1e-3, 0.0) and t0["accuracy_a"] != tcv["accuracy_a"]
    # CNTK (p = 0.85) against CNN-GP (p = 0.6) on 300 images: far apart, survives Holm
    assert all(t["survives"] for t in tests if t["comparison"] == "CNTK vs CNN-GP")


def test_single_accuracies_have_wilson_intervals_and_the_tables_say_so(tmp_path, monkeypatch):
    rows = [{"data": "digits", "kind": "ntk", "readout": "gap", "fix_first_last": False, "depth": 3, "ridge": 0.0,
             "accuracy": 0.95, "n_train": 10, "n_test": 100, "correct": stats.encode(np.arange(100) < 95)},
            {"data": "digits", "kind": "ntk", "readout": "gap", "fix_first_last": False, "depth": 4, "ridge": 0.0,
             "accuracy": 0.95, "n_train": 10, "n_test": 100}]  # no per-image string: k from the accuracy
    for s in solve.summarize(rows):
        assert (s["no_ridge_lo"], s["no_ridge_hi"]) == pytest.approx((0.8883, 0.9785), abs=1e-4)
        assert np.isnan(s["accuracy_cv_ridge"])  # no CV ran: no CV column, no CV tests
    monkeypatch.setattr(solve, "_figure", lambda *a: [])
    _, records = solve.report(rows, tmp_path)
    tests = (tmp_path / "tests.md").read_text()
    assert "Wilson" in (tmp_path / "table.md").read_text()
    assert "| family (m) | ridge |" in tests and "| McNemar p | Holm p (family) | survives |" in tests
    assert "Families: one per ridge setting" in tests and not any("correct" in k for r in records for k in r)
