"""Tiled, resumable kernel matrices (experiment=gram) and their solve (experiment=solve)."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import cntk
from cntk.solve.regression import cross_validate_ridge
from cntk.store.tiles import TileStore
from experiments.harness.data import data_config, load

ROOT = Path(__file__).resolve().parents[1]
DATA = ["data.n_train=40", "data.n_test=16"]


def run_py(*args, cwd, check=True, **kw):
    proc = subprocess.run([sys.executable, str(ROOT / "run.py"), *args, "progress=false"], capture_output=True,
                          text=True, cwd=cwd, timeout=600, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(proc.stderr[-3000:])
    return proc


def _direct(n_train=40, n_test=16, depth=3, readout="gap"):
    d = load(data_config("digits", n_train=n_train, n_test=n_test))
    arch = cntk.Architecture(depth=depth, readout=readout)
    return cntk.kernel(d.x_train, None, arch).numpy(), cntk.kernel(d.x_test, d.x_train, arch).numpy()


def test_tiles_assemble_to_the_direct_kernel(tmp_path):
    x, y = torch.rand(11, 1, 5, 5, dtype=torch.float64), torch.rand(7, 1, 5, 5, dtype=torch.float64)
    arch = cntk.Architecture(depth=4, readout="flatten")
    s = TileStore.open(tmp_path / "a", x, None, arch, tile=4)
    assert s.compute(x, None, job=0, num_jobs=2, progress=False)["computed"] == 3
    assert len(s.status()["missing"]) == 3
    s.compute(x, None, job=1, num_jobs=2, progress=False)
    np.testing.assert_allclose(s.assemble(), cntk.kernel(x, None, arch).numpy(), rtol=1e-13)
    r = TileStore.open(tmp_path / "b", y, x, arch, tile=3)
    r.compute(y, x, progress=False)
    np.testing.assert_allclose(r.assemble(), cntk.kernel(y, x, arch).numpy(), rtol=1e-13)
    with pytest.raises(ValueError, match="different matrix"):
        TileStore.open(tmp_path / "a", x * 2, None, arch, tile=4)


def test_corrupted_and_truncated_tiles_are_detected_and_recomputed(tmp_path):
    x = torch.rand(9, 1, 4, 4, dtype=torch.float64)
    arch = cntk.Architecture(depth=3)
    s = TileStore.open(tmp_path / "s", x, None, arch, tile=3)
    s.compute(x, None, progress=False)
    good = s.assemble()
    tiles = tmp_path / "s" / "tiles"
    raw = bytearray((tiles / "r0_c1.npy").read_bytes())
    raw[-5] ^= 0xFF  # flip bits in the data
    (tiles / "r0_c1.npy").write_bytes(bytes(raw))
    (tiles / "r1_c2.npy").write_bytes((tiles / "r1_c2.npy").read_bytes()[:-20])  # truncate
    (tiles / "r2_c2.sha256").unlink()  # killed between the tile and its checksum
    st = s.status()
    assert sorted(st["failed"]) == [(0, 1), (1, 2)] and st["missing"] == [(2, 2)]
    with pytest.raises(ValueError, match="missing or corrupt"):
        s.read_tile(0, 1)
    with pytest.raises(ValueError, match="tiles missing"):
        s.assemble()
    counts = s.compute(x, None, progress=False)
    assert counts == {"computed": 1, "skipped": 3, "recomputed": 2}
    np.testing.assert_array_equal(s.assemble(), good)


def test_killed_gram_run_resumes_and_recomputes_only_missing_tiles(tmp_path):
    store = tmp_path / "store"
    args = ["experiment=gram", *DATA, "model.depth=4", "experiment.tile=2", f"experiment.store={store}"]  # 370 small tiles
    proc = subprocess.Popen([sys.executable, str(ROOT / "run.py"), *args, "progress=false",
                             f"hydra.run.dir={tmp_path / 'killed'}"], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 240
    while time.time() < deadline and len(list((store / "train" / "tiles").glob("*.sha256"))) < 3:
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)  # a real kill, mid-tile
    proc.wait()
    done_before = {p.stem for p in (store / "train" / "tiles").glob("*.sha256")}
    assert 3 <= len(done_before) < 210, "the kill must land mid-way"
    assert not (tmp_path / "killed" / "results.csv").exists()
    status = subprocess.run([sys.executable, "-m", "experiments.harness.gram_status", str(store)], capture_output=True,
                            text=True, cwd=ROOT)
    assert status.returncode == 1 and "incomplete" in status.stdout
    run_py(*args, f"hydra.run.dir={tmp_path / 'resumed'}", cwd=tmp_path)
    import csv

    rows = list(csv.DictReader(open(tmp_path / "resumed" / "results.csv")))
    skipped = {f"r{r['tile_row']}_c{r['tile_col']}" for r in rows if r["state_before"] == "done" and r["block"] == "train"}
    assert skipped == done_before  # only missing tiles were recomputed
    k, kt = _direct(depth=4)
    np.testing.assert_allclose(TileStore.load(store / "train").assemble(), k, rtol=1e-10)
    np.testing.assert_allclose(TileStore.load(store / "test_train").assemble(), kt, rtol=1e-10)
    status = subprocess.run([sys.executable, "-m", "experiments.harness.gram_status", str(store)], capture_output=True,
                            text=True, cwd=ROOT)
    assert status.returncode == 0 and "complete" in status.stdout


def test_joblib_and_submitit_local_give_identical_stores_and_solve(tmp_path):
    stores = {}
    for launcher in ("local_parallel", "submitit_local_preset"):
        store = tmp_path / launcher
        run_py("-m", f"hydra/launcher={launcher}", "experiment=gram", *DATA, "experiment.tile=8", "experiment.job=0,1",
               "experiment.num_jobs=2", f"experiment.store={store}", f"hydra.sweep.dir={tmp_path / ('sweep_' + launcher)}",
               cwd=tmp_path)
        stores[launcher] = store
    a, b = (sorted((s / "train" / "tiles").glob("*.npy")) for s in stores.values())
    assert [p.name for p in a] == [p.name for p in b] and len(a) == 15
    for pa, pb in zip(a, b):
        assert pa.read_bytes() == pb.read_bytes()
    k, kt = _direct()
    np.testing.assert_allclose(TileStore.load(stores["local_parallel"] / "train").assemble(), k, rtol=1e-12)
    # solve: Cholesky and CG agree with a direct kernel regression
    for solver in ("cholesky", "cg"):
        out = tmp_path / f"solve_{solver}"
        run_py("experiment=solve", *DATA, f"experiment.store={stores['local_parallel']}",
               f"experiment.solver={solver}", "experiment.ridges=[0.001]", f"hydra.run.dir={out}", cwd=tmp_path)
        import csv

        row = list(csv.DictReader(open(out / "results.csv")))[0]
        d = load(data_config("digits", n_train=40, n_test=16))
        direct = cntk.accuracy(cntk.kernel_regression(torch.tensor(k), cntk.paper_targets(d.y_train, 10), ridge=1e-3)
                               .predict(torch.tensor(kt)), d.y_test)
        assert float(row["accuracy"]) == pytest.approx(direct) and float(row["residual"]) < 1e-8
        # the ridge is chosen by cross-validation on K_train (Cholesky path only), never on the test set
        if solver == "cholesky":
            cv = cross_validate_ridge(torch.tensor(k), d.y_train, 10, [0.001], folds=5)[0]
            assert float(row["cv_accuracy"]) == pytest.approx(cv) and int(row["cv_folds"]) == 5
        else:
            assert row["cv_accuracy"] in ("nan", "") and int(row["cv_folds"]) == 0
        table = (out / "table.md").read_text()
        assert "CV ridge" in table and "no ridge" in table


def test_ray_launcher_gives_the_direct_kernel(tmp_path):
    """The optional Ray preset (pip install -e .[ray]); skipped where hydra-ray-launcher is absent."""
    pytest.importorskip("hydra_plugins.hydra_ray_launcher", reason="optional extra: pip install -e .[ray]")
    store = tmp_path / "ray"
    run_py("-m", "hydra/launcher=ray_preset", "experiment=gram", *DATA, "experiment.tile=8", "experiment.job=0,1",
           "experiment.num_jobs=2", "threads=1", f"experiment.store={store}", f"hydra.sweep.dir={tmp_path / 'sweep'}", cwd=tmp_path)
    k, kt = _direct()
    np.testing.assert_allclose(TileStore.load(store / "train").assemble(), k, rtol=1e-12)
    np.testing.assert_allclose(TileStore.load(store / "test_train").assemble(), kt, rtol=1e-12)


def test_gram_resume_and_solve_agree_with_any_thread_count(tmp_path):
    """The store is tied to the inputs' identity: gram with threads=1, resume and solve with threads=2
    (float64 Fashion-MNIST-format data, n_train >= 42, where a thread-dependent reduction used to
    change the standardised inputs' last bits)."""
    from conftest import write_fashion

    write_fashion(tmp_path, n_train=120, n_test=30)
    # CNN-V: the store's identity is what is tested, and its kernel costs a fraction of CNN-GAP's on 28x28
    data = ["data=fashion_mnist", f"data.root={tmp_path}", "data.n_train=60", "data.n_test=20", "model=cnn_v"]
    store = tmp_path / "store"
    run_py("experiment=gram", *data, "experiment.tile=32", f"experiment.store={store}", "threads=1",
           f"hydra.run.dir={tmp_path / 'g1'}", cwd=tmp_path)
    run_py("experiment=gram", *data, "experiment.tile=32", f"experiment.store={store}", "threads=2",
           f"hydra.run.dir={tmp_path / 'g2'}", cwd=tmp_path)
    import csv

    assert {r["state_before"] for r in csv.DictReader(open(tmp_path / "g2" / "results.csv"))} == {"done"}
    run_py("experiment=solve", *data, f"experiment.store={store}", "threads=2", f"hydra.run.dir={tmp_path / 's'}",
           cwd=tmp_path)
    assert float(next(csv.DictReader(open(tmp_path / "s" / "results.csv")))["accuracy"]) >= 0
    # other images (another seed) are refused, naming what differs
    proc = run_py("experiment=solve", *data, "data.seed=1", f"experiment.store={store}",
                  f"hydra.run.dir={tmp_path / 's2'}", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "these inputs are not the ones" in proc.stderr.strip().splitlines()[-1]


def test_unwritable_or_corrupt_stores_are_one_line(tmp_path, monkeypatch):
    from hydra import compose, initialize_config_dir

    from experiments.harness.config import ConfigError, register
    from experiments.harness.runner import execute

    register()
    overrides = ["experiment=gram", *DATA, f"experiment.store={tmp_path / 'store'}", "progress=false"]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)

    def denied(*a, **k):
        raise PermissionError(13, "Permission denied", str(tmp_path / "store" / "train" / "tiles" / "r0_c0.npy"))

    monkeypatch.setattr(TileStore, "write_tile", denied)
    with pytest.raises(ConfigError, match=r"^experiment.store: cannot write to .*r0_c0.npy \(Permission denied\): free "
                                          r"space or fix the permissions and rerun the same command \(finished tiles "
                                          r"are kept\)"):
        execute(cfg, tmp_path / "run", task_overrides=overrides)
    monkeypatch.undo()


def test_damaged_meta_json_costs_no_finished_tile(tmp_path):
    """A truncated meta.json is restored from its copy; with both lost, the next gram run rewrites them
    from its settings and keeps exactly the tiles written for those settings (each checksum file
    names its matrix); gram_status says so in one line meanwhile."""
    from experiments.harness import gram_status

    store = tmp_path / "store"
    small = ["data.n_train=8", "data.n_test=4", "threads=1"]
    run_py("experiment=gram", *small, "experiment.tile=4", f"experiment.store={store}", f"hydra.run.dir={tmp_path / 'a'}",
           cwd=tmp_path)
    train = TileStore.load(store / "train")
    done = train.status()["done"]
    sums = {ij: train.checksum(*ij) for ij in done}
    meta = store / "train" / "meta.json"
    meta.write_text(meta.read_text()[:40])  # truncated: the copy serves and restores it
    assert TileStore.load(store / "train").status()["done"] == done and meta.read_text().endswith("}")
    for f in (meta, store / "train" / "meta.copy.json"):
        f.write_text(f.read_text()[:40])
    assert gram_status.main([str(store)]) == 2  # one line on stderr, no traceback
    run_py("experiment=gram", *small, "experiment.tile=4", f"experiment.store={store}", f"hydra.run.dir={tmp_path / 'b'}",
           cwd=tmp_path)
    again = TileStore.load(store / "train")
    assert again.status()["done"] == done and {ij: again.checksum(*ij) for ij in done} == sums  # none recomputed
    # a tile written for another matrix is never counted for this one
    for part in ("train", "test_train"):
        (store / part / "meta.copy.json").unlink()
        (store / part / "meta.json").write_text("{")
    run_py("experiment=gram", *small, "experiment.tile=4", "experiment.kind=nngp", f"experiment.store={store}",
           f"hydra.run.dir={tmp_path / 'c'}", cwd=tmp_path)
    nngp = TileStore.load(store / "train")
    assert nngp.meta.kind == "nngp" and nngp.status()["done"] == done
    assert all(nngp.checksum(*ij) != sums[ij] for ij in done)  # every tile recomputed as the NNGP


def test_solve_without_a_store_says_what_to_do(tmp_path):
    proc = run_py("experiment=solve", *DATA, f"experiment.store={tmp_path / 'none'}", f"hydra.run.dir={tmp_path / 'r'}",
                  cwd=tmp_path, check=False)
    assert proc.returncode != 0 and "run experiment=gram first" in proc.stderr


def test_solve_report_intervals_cv_ridge_and_paired_tests(tmp_path):
    """The table never picks a ridge by test accuracy: the CV column is the smallest ridge with the
    best cross-validation accuracy, whatever its test accuracy.  Every accuracy has its interval, the
    paper's numbers stay in their own table, and GAP vs V / CNTK vs CNN-GP / depth comparisons are
    paired tests on the same test images."""
    import numpy as np

    from experiments import solve
    from experiments.harness import stats

    rng = np.random.default_rng(0)
    rows = []
    for kind in ("ntk", "nngp"):
        for readout in ("gap", "flatten"):
            for depth in (3, 21):
                for ridge, cv, p in ((0.0, 0.50, 0.70), (1e-3, 0.60, 0.65), (1e-2, 0.60, 0.90)):
                    correct = rng.random(400) < p
                    rows.append({"data": "digits", "kind": kind, "readout": readout, "depth": depth, "ridge": ridge,
                                 "cv_accuracy": cv, "accuracy": correct.mean(), "correct": stats.encode(correct),
                                 "n_train": 10, "n_test": 400, "fix_first_last": False})
    paths, summary = solve.plot({"rows": rows}, tmp_path)
    assert {p.name for p in paths} == {"table1.png", "table1.pdf"}
    kernels = [s for s in summary if "kernel" in s]
    assert len(kernels) == 8
    for s in kernels:
        assert s["cv_ridge"] == 1e-3 and 0.55 < s["accuracy_cv_ridge"] < 0.75  # the ridge CV chose, not the best on test
        assert s["cv_ridge_lo"] < s["accuracy_cv_ridge"] < s["cv_ridge_hi"]
    tests = [s for s in summary if "comparison" in s]
    assert {t["comparison"] for t in tests} == {"GAP vs V", "CNTK vs CNN-GP", "depth vs next depth"}
    assert all(0 <= t["mcnemar_p"] <= 1 and t["diff_lo"] <= t["diff"] <= t["diff_hi"] for t in tests)
    table = (tmp_path / "table.md").read_text()
    assert "| CNTK-GAP | 21 | 10 / 400 |" in table and "77.08" not in table
    assert "77.08" in (tmp_path / "paper.md").read_text() and "McNemar" in (tmp_path / "tests.md").read_text()


def test_solve_report_keeps_kernel_variants_apart():
    """A Myrtle or ABReLU kernel with the paper's readout and depth is its own row, never pooled."""
    from experiments.harness import stats
    from experiments.harness.solve_report import comparisons, summarize

    correct = stats.encode(np.array([True, False, True, True]))
    base = {"n_train": 8, "n_test": 4, "kind": "ntk", "readout": "gap", "fix_first_last": False, "depth": 5,
            "ridge": 0.0, "accuracy": 0.75, "correct": correct}
    rows = [{**base, "variant": ""}, {**base, "variant": "myrtle"}, {**base, "variant": "abrelu(0.2, 1)"}]
    names = sorted(s["kernel"] for s in summarize(rows))
    assert names == ["CNTK-GAP", "CNTK-GAP [abrelu(0.2, 1)]", "CNTK-GAP [myrtle]"]
    assert comparisons(summarize(rows)) == []  # nothing compares across variants


def test_myrtle_runs_through_gram_and_solve(tmp_path):
    store = tmp_path / "store"
    common = ["model=myrtle", "data.n_train=6", "data.n_test=4", f"experiment.store={store}"]
    run_py("experiment=gram", *common, "experiment.tile=3", f"hydra.run.dir={tmp_path / 'g'}", cwd=tmp_path)
    run_py("experiment=solve", *common, f"hydra.run.dir={tmp_path / 's'}", cwd=tmp_path)
    table = (tmp_path / "s" / "table.md").read_text()
    assert "CNTK-GAP [myrtle] | 5 | 6 / 4 |" in table, table


@pytest.mark.parametrize("model, slug", [
    ({}, "gap-d3"),
    ({"readout": "flatten", "depth": 6, "fix_first_last": True}, "flatten-d6-fix"),
    ({"family": "fc", "filter_size": 5}, "fc-d3"),  # an fc net has no filter: not in its name
    ({"family": "myrtle", "depth": 5}, "myrtle-d5"),
    ({"filter_size": 5, "activation": "abrelu", "abrelu_a": 0.2, "bias_var": 0.1}, "gap-d3-q5-abrelu0.2_1-bias0.1"),
])
def test_default_store_path_names_the_matrix(model, slug):
    """stores/DATA-SLUG-NTRAINxNTEST-KIND-DTYPE[-seedS], SLUG the architecture's own (Architecture.slug)."""
    from experiments.gram import store_path

    assert cntk.Architecture(**model).slug == slug
    cfg = {"data": {"name": "digits", "n_train": 40, "n_test": 16, "seed": 0}, "model": {**model, "width": 8},
           "experiment": {"store": None, "kind": "ntk"}, "dtype": "float64"}
    assert store_path(cfg) == Path("stores") / f"digits-{slug}-40x16-ntk-float64"
    cfg["data"]["seed"] = 2
    assert store_path(cfg) == Path("stores") / f"digits-{slug}-40x16-ntk-float64-seed2"


def test_a_store_names_every_field_in_which_it_holds_another_kernel(tmp_path):
    import torch

    from cntk.store.tiles import TileStore

    x = torch.rand(4, 1, 8, 8, dtype=torch.float64)
    store = TileStore.open(tmp_path / "s", x, None, cntk.Architecture(depth=3), "ntk", tile=2)
    store.check_matrix(cntk.Architecture(depth=3), "ntk", torch.float64)  # the same kernel: no error
    cases = [((cntk.Architecture(depth=3, activation="erf"), "ntk", torch.float64), "arch.activation: stored 'relu', asked 'erf'"),
             ((cntk.Architecture(depth=6), "ntk", torch.float64), "arch.depth: stored 3, asked 6"),
             ((cntk.Architecture(depth=3, readout="flatten"), "ntk", torch.float64), "arch.readout: stored 'gap', asked 'flatten'"),
             ((cntk.Architecture(family="myrtle", depth=5), "ntk", torch.float64), "arch.family: stored 'cnn', asked 'myrtle'"),
             ((cntk.Architecture(depth=3), "nngp", torch.float64), "kind: stored 'ntk', asked 'nngp'"),
             ((cntk.Architecture(depth=3), "ntk", torch.float32), "dtype: stored 'float64', asked 'float32'")]
    for args, says in cases:
        with pytest.raises(ValueError, match="holds another kernel") as err:
            store.check_matrix(*args)
        assert says in str(err.value) and "\n" not in str(err.value)


def test_solve_refuses_a_store_of_another_kernel(tmp_path):
    """A store made for one network, kind and dtype is never read as another's: refused in one line
    naming the field and its two values, before any solve."""
    store = tmp_path / "store"
    small = ["data.n_train=8", "data.n_test=4", "threads=1"]
    run_py("experiment=gram", *small, "experiment.tile=4", f"experiment.store={store}", f"hydra.run.dir={tmp_path / 'g'}",
           cwd=tmp_path)
    cases = {"model.activation=erf": "arch.activation: stored 'relu', asked 'erf'",
             "dtype=float32": "dtype: stored 'float64', asked 'float32'"}
    for k, (override, says) in enumerate(cases.items()):
        proc = run_py("experiment=solve", *small, f"experiment.store={store}", override,
                      f"hydra.run.dir={tmp_path / f's{k}'}", cwd=tmp_path, check=False)
        last = proc.stderr.strip().splitlines()[-1]
        assert proc.returncode != 0 and "holds another kernel" in last and says in last, (override, last)
        assert not (tmp_path / f"s{k}" / "results.json").exists()


def test_solve_without_test_images_says_so(tmp_path):
    store = tmp_path / "store"
    small = ["data.n_train=8", "data.n_test=0", "threads=1"]
    run_py("experiment=gram", *small, "experiment.tile=4", f"experiment.store={store}", f"hydra.run.dir={tmp_path / 'g'}",
           cwd=tmp_path)
    proc = run_py("experiment=solve", *small, f"experiment.store={store}", f"hydra.run.dir={tmp_path / 's'}",
                  cwd=tmp_path, check=False)
    assert proc.returncode != 0 and "needs test images" in proc.stderr.strip().splitlines()[-1]


def test_one_pass_gram_fills_one_store_per_depth_and_kind(tmp_path):
    """experiment.kind=both + experiment.depths: every (depth, kind) store equals the direct kernel,
    solve reads each by its own settings, and a lost tile of one store is refilled alone."""
    d = load(data_config("digits", n_train=10, n_test=4))
    store = tmp_path / "store"
    common = ["data.n_train=10", "data.n_test=4", "dtype=float64", f"experiment.store={store}"]
    run_py("experiment=gram", *common, "experiment.kind=both", "experiment.depths=[2,4]", "experiment.tile=4",
           f"hydra.run.dir={tmp_path / 'g'}", cwd=tmp_path)
    for depth in (3, 2, 4):
        arch = cntk.Architecture(depth=depth)
        for kind in ("ntk", "nngp"):
            root = store / f"depth{depth}-{kind}"
            np.testing.assert_allclose(TileStore.load(root / "train").assemble(),
                                       cntk.kernel(d.x_train, None, arch, kind).numpy(), rtol=1e-12)
            np.testing.assert_allclose(TileStore.load(root / "test_train").assemble(),
                                       cntk.kernel(d.x_test, d.x_train, arch, kind).numpy(), rtol=1e-12)
    run_py("experiment=solve", "data.n_train=10", "data.n_test=4", "dtype=float64", "model.depth=4",
           "experiment.kind=nngp", f"experiment.store={store / 'depth4-nngp'}", f"hydra.run.dir={tmp_path / 's'}",
           cwd=tmp_path)
    wrong = run_py("experiment=solve", "data.n_train=10", "data.n_test=4", "dtype=float64", "model.depth=3",
                   "experiment.kind=nngp", f"experiment.store={store / 'depth4-nngp'}", cwd=tmp_path, check=False)
    assert wrong.returncode != 0 and "depth" in wrong.stderr
    (store / "depth2-nngp" / "train" / "tiles" / "r0_c1.npy").unlink()
    run_py("experiment=gram", *common, "experiment.kind=both", "experiment.depths=[2,4]", "experiment.tile=4",
           f"hydra.run.dir={tmp_path / 'g2'}", cwd=tmp_path)
    import json

    rows = json.loads((tmp_path / "g2" / "results.json").read_text())["rows"]
    redone = [(r["depth"], r["kind"], r["block"], r["tile_row"], r["tile_col"]) for r in rows if r["state_before"] != "done"]
    assert redone == [(2, "nngp", "train", 0, 1)]
    np.testing.assert_allclose(TileStore.load(store / "depth2-nngp" / "train").assemble(),
                               cntk.kernel(d.x_train, None, cntk.Architecture(depth=2), "nngp").numpy(), rtol=1e-12)


def test_one_pass_gram_fills_the_fix_stores_too(tmp_path):
    """experiment.also_fix=true: the NTK stores of model.fix_first_last=true at every depth come from the
    same pass, each the very store a separate fix run makes (that run finds every tile done), equal to
    the direct fix kernel; solve model.fix_first_last=true reads it, and a mismatch is refused."""
    import json

    d = load(data_config("digits", n_train=10, n_test=4))
    common = ["data.n_train=10", "data.n_test=4", "dtype=float64", "experiment.tile=4"]
    run_py("experiment=gram", *common, "experiment.kind=both", "experiment.depths=[4]", "experiment.also_fix=true",
           f"hydra.run.dir={tmp_path / 'g'}", cwd=tmp_path)
    rows = json.loads((tmp_path / "g" / "results.json").read_text())["rows"]
    assert {(r["depth"], r["kind"], r["fix_first_last"]) for r in rows} == {
        (3, "ntk", False), (3, "nngp", False), (4, "ntk", False), (4, "nngp", False), (3, "ntk", True), (4, "ntk", True)}
    for depth in (3, 4):
        root = tmp_path / "stores" / f"digits-gap-d{depth}-fix-10x4-ntk-float64"
        arch = cntk.Architecture(depth=depth, fix_first_last=True)
        np.testing.assert_allclose(TileStore.load(root / "train").assemble(),
                                   cntk.kernel(d.x_train, None, arch, "ntk").numpy(), rtol=1e-12)
        np.testing.assert_allclose(TileStore.load(root / "test_train").assemble(),
                                   cntk.kernel(d.x_test, d.x_train, arch, "ntk").numpy(), rtol=1e-12)
        assert not (tmp_path / "stores" / f"digits-gap-d{depth}-fix-10x4-nngp-float64").exists()
    # a separate fix run would make the same stores: it finds every tile done
    run_py("experiment=gram", *common, "model.fix_first_last=true", "model.depth=4", f"hydra.run.dir={tmp_path / 'f'}",
           cwd=tmp_path)
    sep = json.loads((tmp_path / "f" / "results.json").read_text())["rows"]
    assert sep and {r["state_before"] for r in sep} == {"done"}
    run_py("experiment=solve", "data.n_train=10", "data.n_test=4", "dtype=float64", "model.fix_first_last=true",
           "model.depth=4", "experiment.cv_folds=2", f"hydra.run.dir={tmp_path / 's'}", cwd=tmp_path)
    row = json.loads((tmp_path / "s" / "results.json").read_text())["rows"][0]
    assert row["fix_first_last"] is True and row["depth"] == 4 and 0 <= row["accuracy"] <= 1
    # with experiment.store: depthD-ntk-fix subfolders, read by their own settings; a mismatch is refused
    store = tmp_path / "store"
    run_py("experiment=gram", *common, "experiment.also_fix=true", f"experiment.store={store}",
           f"hydra.run.dir={tmp_path / 'g2'}", cwd=tmp_path)
    assert sorted(p.name for p in store.iterdir()) == ["depth3-ntk", "depth3-ntk-fix"]
    np.testing.assert_array_equal(TileStore.load(store / "depth3-ntk-fix" / "train").assemble(),
                                  TileStore.load(tmp_path / "stores" / "digits-gap-d3-fix-10x4-ntk-float64" / "train").assemble())
    wrong = run_py("experiment=solve", "data.n_train=10", "data.n_test=4", "dtype=float64",
                   f"experiment.store={store / 'depth3-ntk-fix'}", cwd=tmp_path, check=False)
    assert wrong.returncode != 0 and "fix_first_last: stored True, asked False" in wrong.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("override, says", [
    ("model.fix_first_last=true", "experiment.also_fix: adds the stores of model.fix_first_last=true"),
    ("model=myrtle", "experiment.also_fix: no fix variant at depth 5"),
    ("experiment.depths=[2]", "experiment.also_fix: no fix variant at depth 2"),
])
def test_also_fix_refuses_what_has_no_fix_variant(tmp_path, override, says):
    proc = run_py("experiment=gram", "data.n_train=4", "data.n_test=2", "experiment.also_fix=true", override,
                  f"experiment.store={tmp_path / 'store'}", f"hydra.run.dir={tmp_path / 'g'}", cwd=tmp_path, check=False)
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode != 0 and says in last, last
    assert not (tmp_path / "store").exists()
