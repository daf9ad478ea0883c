"""The override rule, walked: for every experiment found in conf/experiment/ and every model key (and
the experiment's own grid keys), an override either changes what is computed -- the rows differ
from the experiment's smallest run and carry the override as a column -- or is refused at start
with one line naming a key.  Nothing is ever silently ignored.  Figures are drawn small (conftest's
quick_figures): only the rows are compared here."""
import json
import re
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf, open_dict

import experiments
from experiments.harness.config import ConfigError, GridExperiment, dependencies, register
from experiments.harness.runner import execute, prepare

ROOT = Path(__file__).resolve().parents[1]
register()

# a valid value different from every smoke run's; None: no other valid value exists
MODEL = {"model.family": "fc", "model.depth": 4, "model.readout": "flatten", "model.fix_first_last": True,
         "model.filter_size": 5, "model.activation": "erf", "model.abrelu_a": 0.1, "model.abrelu_b": 2.0,
         "model.bias_var": 0.1, "model.width": 6, "model": "cnn_v"}
GRID = {"experiment.widths": "[5,10,20]", "experiment.depths": "[4]", "experiment.readouts": "[flatten]",
        "experiment.seeds": "[7]"}
# the overrides that must be refused, and the key their message names: each experiment's own REFUSED
# keys, and abrelu_a / abrelu_b (they shape activation=abrelu only: with the default ReLU they are refused)
REFUSED = {
    **{(name, key): key for name in experiments.names() for key in experiments.get(name).Config.REFUSED},
    **{(name, key): "model.abrelu_a" for name in experiments.names() for key in ("model.abrelu_a", "model.abrelu_b")},
}
GRID_OF = {"model.depth": "depths", "model.readout": "readouts", "model.width": "widths"}
TIMING = ("run_wall_seconds", "seconds", "seconds_empirical", "seconds_exact", "store")


def _run(overrides: list[str], out: Path) -> list[dict]:
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides, return_hydra_config=True)
    choices = {k: v for k, v in cfg.hydra.runtime.choices.items() if not k.startswith("hydra")}
    with open_dict(cfg):
        del cfg["hydra"]
    return execute(cfg, out, task_overrides=overrides, choices=choices)["rows"]


def _sequence(name: str, tmp: Path, extra: list[str]) -> list[dict]:
    """The experiment's smoke runs (e.g. gram then solve) with ``extra`` added to each; the last run's rows.
    An explicit model.depth / readout / width replaces the smoke run's experiment.depths / ... (both
    set is refused by design: tests/test_experiments_config.py)."""
    replaced = {f"experiment.{GRID_OF[k.split('=')[0]]}" for k in extra if k.split("=")[0] in GRID_OF}
    rows = []
    for i, overrides in enumerate(experiments.get(name).smoke(tmp)):
        kept = [o for o in overrides if o.split("=")[0] not in replaced]
        rows = _run([*kept, *extra, "progress=false", "threads=1"], tmp / f"run{i}")
    return rows


def _content(rows: list[dict], drop: set[str]) -> list[str]:
    return sorted(json.dumps({k: v for k, v in r.items() if k not in drop and k not in TIMING}, sort_keys=True,
                             default=str) for r in rows)


def _cases():
    for name in experiments.names():
        keys = dict(MODEL)
        if issubclass(experiments.get(name).Config, GridExperiment):
            keys.update(GRID)
        for key, value in keys.items():
            yield pytest.param(name, key, value, id=f"{name}-{key}")


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = _sequence(name, tmp_path_factory.mktemp(f"base_{name}"), [])
        return cache[name]

    return get


@pytest.mark.parametrize("name, key, value", list(_cases()))
def test_every_override_changes_the_rows_or_is_refused(name, key, value, baseline, tmp_path, one_thread, quick_figures):
    override = f"{key}={value}"
    if (name, key) in REFUSED:
        with pytest.raises(ConfigError, match=f"^{REFUSED[name, key].replace('.', '[.]')}: "):
            _sequence(name, tmp_path, [override])
        assert not list(tmp_path.rglob("results.json"))  # refused at start: nothing written
        return
    base = baseline(name)
    if key in ("model.readout", "model", "experiment.readouts") and {r.get("readout") for r in base} == {"flatten"}:
        value = {"model.readout": "gap", "model": "cnn_gap", "experiment.readouts": "[gap]"}[key]  # differ from the default
        override = f"{key}={value}"
    try:
        rows = _sequence(name, tmp_path, [override])
    except ConfigError as err:  # another refusal (a value impossible in this smoke run, e.g. fix at depth 2): at start,
        assert re.match(r"^(model|experiment|data)\.\w+: ", str(err)), err  # one line naming its key
        assert not list(tmp_path.rglob("results.json"))
        return
    column = {json.dumps(r.get(key)) for r in rows}
    assert len(column) == 1, f"rows must carry {key}"
    got = json.loads(column.pop())
    assert (json.loads(got) if isinstance(got, str) and got.startswith("[") else got) == yaml.safe_load(str(value))
    overridden = {key} | {k for k in rows[0] if k.startswith(("experiment.", "data.", "model."))}
    assert _content(rows, overridden) != _content(base, overridden), f"{override} did not change what {name} computed"


def test_one_value_grids_follow_explicit_model_keys(tmp_path, quick_figures):
    """model.depth=4 on a depth-sweeping experiment computes depth 4 only, and model=cnn_v the flatten readout."""
    rows = _run(["experiment.widths=[4]", "experiment.seeds=[0]", "data.n_train=3", "model.depth=4", "model=cnn_v",
                 "progress=false"], tmp_path)
    assert {(r["readout"], r["depth"]) for r in rows} == {("flatten", 4)}
    assert rows[0]["model"] == "cnn_v" and rows[0]["model.depth"] == 4
    rows = _run(["experiment.widths=[4]", "experiment.seeds=[0]", "data.n_train=3", "model=fc", "progress=false"],
                tmp_path / "fc")
    assert {(r["family"], r["readout"]) for r in rows} == {("fc", "none")}  # fc: one pass, no readout


# -- an experiment's own keys that another of its keys leaves unread (Config.DEPENDS) -----------


def _dependency_cases():
    for name in experiments.names():
        for key, need in dependencies(experiments.get(name).Config):
            yield pytest.param(name, key, need, id=f"{name}-{key}-{need.master}")


def _validate(name: str, overrides: list[str], tmp: Path):
    """(typed config, config after the override rule) of the experiment's last smoke run plus
    ``overrides``, in-process: the override rule and the config checks, nothing computed.  The smoke
    run's own values of those keys, and of every key with a master, are left out."""
    dependent = {f"experiment.{k}" for k, _ in dependencies(experiments.get(name).Config)}
    keys = {o.split("=")[0] for o in overrides} | dependent
    smoke = [o for o in experiments.get(name).smoke(tmp)[-1] if o.split("=")[0] not in keys]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[*smoke, *overrides])
    return prepare(cfg, [*smoke, *overrides])[:2]


def _masters(schema, key: str, seen: tuple = ()) -> dict:
    """Master -> its Needs, for every master of ``key`` and (transitively) theirs."""
    out: dict = {}
    for k, need in dependencies(schema):
        if k == key and need.master not in seen:
            out.setdefault(need.master, need)
            for m, n in _masters(schema, need.master, (*seen, key)).items():
                out.setdefault(m, n)
    return out


@pytest.mark.parametrize("name, key, need", list(_dependency_cases()))
def test_an_override_its_master_leaves_unread_is_refused(name, key, need, tmp_path):
    """For every declared dependency (discovered: a new DEPENDS entry is walked without a line here):
    the key set explicitly (to the value it has anyway) while its master has an idling value is
    refused at start, in one line naming the key, the master and that value; with every master of
    the key at a value that reads it, the same override is accepted."""
    schema = experiments.get(name).Config
    base = OmegaConf.to_container(_validate(name, [], tmp_path)[1].experiment, resolve=True)

    def master(n, value):  # experiment.<master>=value (a list-valued master: the one-entry list)
        return f"experiment.{n.master}=" + (f"[{value}]" if isinstance(base[n.master], list) else str(value))

    mine = f"experiment.{key}={json.dumps(base[key])}"
    idle = master(need, need.idle[0])
    around = [master(n, n.use) for n in _masters(schema, need.master).values()]  # the master itself read
    with pytest.raises(ConfigError) as err:
        _validate(name, [*around, idle, mine], tmp_path)
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"experiment.{key}: idle with {idle} ("), message
    reading = _masters(schema, key)
    cfg, _ = _validate(name, [*(master(n, n.use) for n in reading.values()), mine], tmp_path)  # accepted
    assert not any(n.idles(getattr(cfg.experiment, m)) for m, n in reading.items())


def test_dependencies_are_declared_where_they_were_found_ignored():
    """The overrides once accepted and ignored (only their echoed column changed) stay declared."""
    declared = {(name, key, need.master) for name in experiments.names()
                for key, need in dependencies(experiments.get(name).Config)}
    assert {("prediction_equivalence", "small_kappa", "routes"), ("kernel_vs_network", "standard_lrs", "parameterisations"),
            ("solve", "cg_tol", "solver"), ("solve", "cg_max_iter", "solver")} <= declared
