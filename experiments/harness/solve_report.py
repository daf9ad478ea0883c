"""The report of kernel regression runs (``experiments.solve`` rows): this experiment's plot, and
``python -m experiments.harness.table1_report`` over several solve sweeps.

It gives every accuracy a Wilson 95 % interval (one deterministic kernel on M test
images: a binomial proportion), and paired tests (exact McNemar, and a paired bootstrap interval
of the difference) for the comparisons the paper makes: CNTK vs CNN-GP (NNGP), depth to the next
depth, and GAP vs V (only between kernels of equal "fix"), each between kernels solved on the same
training and test images, at both ridge settings (none, and the cross-validated ridge).  Holm's
step-down adjusts the McNemar p within each family: ridge setting x comparison type x training /
test size.  The paper's CIFAR-10 numbers are listed in their own table and panel, never on the
axis of ours.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from experiments.harness import stats
from experiments.harness.common import save_figure, style
from experiments.harness.results import write_atomic

# Arora et al. 2019, Table 1 (CIFAR-10, full data, no ridge), test accuracy in %; the CNTK-GAP
# column is computed with "fix" (first and last layer not trained), the CNTK-V column without.
PAPER_TABLE1 = {
    "gap": {3: 70.47, 4: 75.93, 6: 76.73, 11: 77.43, 21: 77.08},
    "flatten": {3: 64.47, 4: 65.52, 6: 66.03, 11: 65.90, 21: 64.09},
}


def kernel_name(kind: str, readout: str, fix: bool) -> str:
    """CNTK-V, CNN-GP-GAP (fix), ...; a readout key "gap [myrtle]" names its variant the same way."""
    base_readout, _, rest = readout.partition(" ")
    base = ("CNTK-" if kind == "ntk" else "CNN-GP-") + ("GAP" if base_readout == "gap" else "V")
    return base + (" (fix)" if fix and kind == "ntk" else "") + (f" {rest}" if rest else "")


# The two ridge settings every kernel is reported and tested at: (label in tests.md, summary key).
RIDGE_SETTINGS = (("none", "no_ridge"), ("CV", "cv_ridge"))
# The paired comparisons, each its own Holm family per ridge setting and data size: (name, figure label).
COMPARISONS = (("CNTK vs CNN-GP", "CNTK − CNN-GP"), ("depth vs next depth", "depth − next depth"),
               ("GAP vs V", "GAP − V"))
ALPHA = 0.05  # family-wise error rate of each family (Holm)


def _kernels(rows: list[dict]) -> dict[tuple, list[dict]]:
    """(setting, n_train, n_test, kind, readout, fix, depth) -> its rows by ridge."""
    out: dict[tuple, list[dict]] = {}
    for r in rows:
        readout = r["readout"] + (f" [{r['variant']}]" if r.get("variant") else "")  # variants never pool
        key = (r.get("setting", ""), r["n_train"], r["n_test"], r.get("kind", "ntk"), readout,
               bool(r.get("fix_first_last", False)), r["depth"])
        out.setdefault(key, []).append(r)
    order = lambda k: (str(k[0]), -k[1], -k[2], k[3] != "ntk", k[4] != "gap", not k[5], k[6])  # noqa: E731
    return {k: sorted(v, key=lambda r: r["ridge"]) for k, v in sorted(out.items(), key=lambda kv: order(kv[0]))}


def _cv_row(group: list[dict]) -> dict | None:
    """The row of the cross-validated ridge: the smallest ridge with the best CV accuracy."""
    scored = [r for r in group if not np.isnan(r.get("cv_accuracy", float("nan")))]
    return max(scored, key=lambda r: r["cv_accuracy"]) if scored else None  # max keeps the first (smallest)


def _setting_row(group: list[dict], key: str) -> dict | None:
    """A kernel's row at one ridge setting: ridge 0 ("no_ridge") or the CV-chosen ridge ("cv_ridge")."""
    return next((r for r in group if r["ridge"] == 0), None) if key == "no_ridge" else _cv_row(group)


def _accuracy(row: dict | None) -> tuple[float, float, float]:
    """(accuracy, low, high), the Wilson 95 % interval of one deterministic kernel on its n_test images."""
    if row is None:
        return (float("nan"),) * 3
    if "correct" in row:
        return stats.wilson_accuracy(stats.decode(row["correct"]))
    return (row["accuracy"], *stats.wilson(round(row["accuracy"] * row["n_test"]), row["n_test"]))


def summarize(rows: list[dict]) -> list[dict]:
    """One row per kernel: accuracy with no ridge and with the CV ridge, each with its Wilson interval
    (``correct_no_ridge`` / ``correct_cv_ridge``: the per-image strings the paired tests use); cost."""
    out = []
    for (setting, n_train, n_test, kind, readout, fix, depth), group in _kernels(rows).items():
        s = {"setting": setting, "n_train": n_train, "n_test": n_test, "kernel": kernel_name(kind, readout, fix),
             "kind": kind, "readout": readout, "fix_first_last": fix, "depth": depth}
        for _, key in RIDGE_SETTINGS:
            row = _setting_row(group, key)
            acc, lo, hi = _accuracy(row)
            s.update({f"accuracy_{key}": acc, f"{key}_lo": lo, f"{key}_hi": hi,
                      f"correct_{key}": (row or {}).get("correct", "")})
        cv = _cv_row(group)
        s.update(cv_ridge=cv["ridge"] if cv else float("nan"), cv_accuracy=cv["cv_accuracy"] if cv else float("nan"),
                 kernel_seconds=group[0].get("kernel_seconds", float("nan")),
                 kernel_entries=group[0].get("kernel_entries", float("nan")))
        out.append(s)
    return out


def _key(s: dict) -> tuple:
    return s["setting"], s["n_train"], s["n_test"], s["kind"], s["readout"], s["fix_first_last"], s["depth"]


def _fix(s: dict) -> bool:
    """The effective "fix": only the NTK depends on which layers train (the NNGP is the forward covariance)."""
    return bool(s["fix_first_last"]) and s["kind"] == "ntk"


def _data(s: dict) -> str:
    return f"{s['n_train']} / {s['n_test']}" + (f" [{s['setting']}]" if s["setting"] else "")


def _pairs(summary: list[dict]) -> tuple[list[tuple[str, dict, dict]], list[dict]]:
    """The kernel pairs the paper compares, each on the same training and test images: (comparison,
    A, B); and the GAP-vs-V pairs refused for lack of an equal-fix partner (``refused_gap_v``)."""
    by_key = {_key(s): s for s in summary}

    def partners(s: dict, kind: str, readout: str) -> list[dict]:  # same data and depth, any fix
        return [b for f in (s["fix_first_last"], not s["fix_first_last"])
                if (b := by_key.get((*_key(s)[:3], kind, readout, f, s["depth"]))) is not None]

    pairs, refused = [], {}
    for s in summary:
        kind, readout, depth = s["kind"], s["readout"], s["depth"]
        if kind == "ntk":
            b = next(iter(partners(s, "nngp", readout)), None)  # any fix: the NNGP does not depend on it
            if b:
                pairs.append(("CNTK vs CNN-GP", s, b))
        deeper = sorted(k[-1] for k in by_key if k[:-1] == _key(s)[:-1] and k[-1] > depth)
        if deeper:
            pairs.append(("depth vs next depth", s, by_key[(*_key(s)[:-1], deeper[0])]))
        if readout in ("gap", "flatten"):  # GAP vs V only at equal fix: "fix" alone moves the accuracy
            other = partners(s, kind, "flatten" if readout == "gap" else "gap")
            equal = [b for b in other if _fix(b) == _fix(s)]
            if equal and readout == "gap":
                pairs.append(("GAP vs V", s, equal[0]))
            for b in other if not equal else []:
                gap, v = (s, b) if readout == "gap" else (b, s)
                pair = f"{gap['kernel']} vs {v['kernel']}"
                text = f"{pair}, depth {depth}, {_data(s)}"
                refused[text] = {"data": _data(s), "pair": pair, "depth": depth, "text": text}
    return pairs, list(refused.values())


def refused_gap_v(summary: list[dict]) -> list[dict]:
    """GAP-vs-V comparisons not made: the only partner differs in fix ({"data", "pair", "depth", "text"})."""
    return _pairs(summary)[1]


def comparisons(summary: list[dict]) -> list[dict]:
    """Paired tests (exact McNemar p, paired bootstrap interval of A - B) at both ridge settings, with
    Holm-adjusted p within each family = (ridge setting, comparison type, training / test size)."""
    pairs, _ = _pairs(summary)
    order = {name: i for i, (name, _) in enumerate(COMPARISONS)}
    blocks = list(dict.fromkeys(_data(s) for s in summary))
    out = []
    for label, key in RIDGE_SETTINGS:
        for what, a, b in sorted(pairs, key=lambda p: (blocks.index(_data(p[1])), order[p[0]])):  # stable
            if not (a[f"correct_{key}"] and b[f"correct_{key}"]):
                continue
            ca, cb = stats.decode(a[f"correct_{key}"]), stats.decode(b[f"correct_{key}"])
            d, lo, hi = stats.bootstrap_difference(ca, cb)
            t = stats.mcnemar(ca, cb)
            out.append({"comparison": what, "ridge": label, "data": _data(a), "family": f"{what}, {_data(a)}, ridge {label}",
                        "a": f"{a['kernel']}, depth {a['depth']}", "b": f"{b['kernel']}, depth {b['depth']}",
                        "kernel_a": a["kernel"], "depth_a": a["depth"], "kernel_b": b["kernel"], "depth_b": b["depth"],
                        "ridge_a": 0.0 if key == "no_ridge" else a["cv_ridge"],
                        "ridge_b": 0.0 if key == "no_ridge" else b["cv_ridge"],
                        "accuracy_a": ca.mean(), "accuracy_b": cb.mean(), "diff": d, "diff_lo": lo, "diff_hi": hi,
                        "a_only_right": t["b"], "b_only_right": t["c"], "mcnemar_p": t["p"]})
    families = [t["family"] for t in out]
    for t, h in zip(out, stats.holm_by_family([t["mcnemar_p"] for t in out], families)):
        t.update(holm_p=float(h), survives=bool(h < ALPHA), family_size=families.count(t["family"]))
    return out


def _tests_md(tests: list[dict], refused: list[dict]) -> str:
    not_made = "; ".join(r["text"] for r in refused) or "none"
    lines = [
        "Paired tests on the same test images: exact McNemar p, and A - B with a paired bootstrap 95 % interval "
        "(test images resampled).",
        f"Families: one per ridge setting (none: ridge 0, the paper's setting; CV: each kernel at its "
        f"cross-validated ridge) x comparison type ({', '.join(c for c, _ in COMPARISONS)}) x training / test size. "
        f"Holm-Bonferroni (step-down) adjusts the McNemar p within each family (m: its number of tests); survives: "
        f"Holm p < {ALPHA} (family-wise error {100 * ALPHA:g} % per family, not across families).",
        f"GAP vs V only between kernels of equal fix (first and last layer frozen; the NNGP does not depend on it). "
        f"Not made for lack of an equal-fix partner: {not_made}.",
        "",
        "| family (m) | ridge | A | B | A % | B % | A - B, points [95 % CI] | only A right | only B right | "
        "McNemar p | Holm p (family) | survives |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for t in tests:
        ridge = "none" if t["ridge"] == "none" else f"CV ({t['ridge_a']:g} / {t['ridge_b']:g})"
        lines.append(f"| {t['family']} ({t['family_size']}) | {ridge} | {t['a']} | {t['b']} | {100 * t['accuracy_a']:.1f} | "
                     f"{100 * t['accuracy_b']:.1f} | {100 * t['diff']:+.1f} [{100 * t['diff_lo']:+.1f}, "
                     f"{100 * t['diff_hi']:+.1f}] | {t['a_only_right']} | {t['b_only_right']} | {t['mcnemar_p']:.2g} | "
                     f"{t['holm_p']:.2g} | {'yes' if t['survives'] else 'no'} |")
    return "\n".join(lines) + "\n"


def _table_md(summary: list[dict], data: str) -> str:
    lines = [f"| kernel | depth | {data} train / test | no ridge % [95 % CI] | CV ridge % [95 % CI] | CV ridge | "
             "cost: kernel entries, seconds (entries/s) |", "|---|---|---|---|---|---|---|"]
    for s in summary:
        cells = []
        for _, key in RIDGE_SETTINGS:
            acc, lo, hi = s[f"accuracy_{key}"], s[f"{key}_lo"], s[f"{key}_hi"]
            cells.append("" if np.isnan(acc) else f"{100 * acc:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]")
        sec, ent = s["kernel_seconds"], s["kernel_entries"]
        cost = f"{int(ent):,}, {sec:,.0f} s ({ent / sec:,.0f}/s)" if sec and sec == sec and ent else "not timed"
        tag = f" [{s['setting']}]" if s["setting"] else ""
        lines.append(f"| {s['kernel']}{tag} | {s['depth']} | "
                     f"{s['n_train']} / {s['n_test']} | {cells[0]} | {cells[1]} | "
                     f"{'' if np.isnan(s['cv_ridge']) else format(s['cv_ridge'], 'g')} | {cost} |")
    lines += ["", "Intervals: Wilson score 95 % intervals of a binomial proportion (one deterministic kernel, "
              "k of M test images right).  Differences between kernels: tests.md (paired).  Cost: the kernel's "
              "tiles' compute seconds; a gram pass that filled several depths or kinds at once (experiment.depths, "
              "experiment.kind=both) gives each of its kernels an equal share of its time."]
    return "\n".join(lines) + "\n"


def report(rows: list[dict], out_dir: str | Path, name: str = "table1") -> tuple[list[Path], list[dict]]:
    """table.md (accuracies with Wilson intervals, cost), tests.md (paired comparisons at both ridge
    settings, Holm within families), paper.md (the paper's CIFAR-10 column) and the figure
    ``name``.png; returns (figure paths, summary and test records)."""
    summary = summarize(rows)
    tests = comparisons(summary)
    refused = refused_gap_v(summary)
    data = ", ".join(sorted({str(r.get("data", "")) for r in rows}))
    write_atomic(Path(out_dir) / "table.md", _table_md(summary, data))
    write_atomic(Path(out_dir) / "tests.md", _tests_md(tests, refused))
    pl = ["| paper (CIFAR-10, 50,000 train / 10,000 test, no ridge) | " + " | ".join(f"depth {d}" for d in (3, 4, 6, 11, 21))
          + " |", "|---|---|---|---|---|---|"]
    for readout, label in (("flatten", "CNTK-V"), ("gap", "CNTK-GAP (fix)")):
        pl.append(f"| {label} | " + " | ".join(f"{PAPER_TABLE1[readout][d]:.2f}" for d in (3, 4, 6, 11, 21)) + " |")
    write_atomic(Path(out_dir) / "paper.md", "\n".join(pl) + "\n")
    paths = _figure(summary, tests, data, out_dir, name)
    return paths, [{k: v for k, v in s.items() if not k.startswith("correct")} for s in summary] + tests


def _size(s: dict) -> tuple:
    return s["setting"], s["n_train"], s["n_test"]


def _size_title(data: str, size: tuple) -> str:
    return f"{data}: {size[1]} train / {size[2]} test" + (f" [{size[0]}]" if size[0] else "")


def _accuracy_panels(axes, summary: list[dict], sizes: list[tuple], data: str) -> None:
    """Accuracy (CV ridge, Wilson 95 %) against depth, one panel per size; the paper's CIFAR-10 numbers last."""
    kernels = list(dict.fromkeys(s["kernel"] for s in summary))
    for ax, size in zip(axes, sizes):
        for ki, kernel in enumerate(kernels):
            sel = sorted((s for s in summary if s["kernel"] == kernel and _size(s) == size), key=lambda s: s["depth"])
            if not sel:
                continue
            acc = np.array([100 * s["accuracy_cv_ridge"] for s in sel])
            err = np.array([[100 * (s["accuracy_cv_ridge"] - s["cv_ridge_lo"]), 100 * (s["cv_ridge_hi"] - s["accuracy_cv_ridge"])]
                            for s in sel]).T
            ax.errorbar([s["depth"] for s in sel], acc, yerr=err, fmt="-o" if "CNTK" in kernel else "--s",
                        color=f"C{ki % 10}", ms=4, capsize=3, label=kernel)
        ticks = sorted({s["depth"] for s in summary if _size(s) == size})
        ax.set_xscale("log")
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.minorticks_off()
        ax.set_xlabel("depth")
        ax.set_ylabel("test accuracy (%), CV ridge")
        ax.set_title(_size_title(data, size), fontsize=9)
        ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax = axes[-1]
    for readout, label, color in (("flatten", "CNTK-V", "C7"), ("gap", "CNTK-GAP (fix)", "C8")):
        d = sorted(PAPER_TABLE1[readout])
        ax.plot(d, [PAPER_TABLE1[readout][x] for x in d], "-^", color=color, label=label)
    ax.set_xscale("log")
    ax.set_xticks([3, 4, 6, 11, 21], ["3", "4", "6", "11", "21"])
    ax.minorticks_off()
    ax.set_xlabel("depth")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("The paper: CIFAR-10, 50,000 train (own axis)", fontsize=9)
    ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.0, 1.0))


def _pair_label(t: dict) -> str:
    if t["kernel_a"] == t["kernel_b"]:
        return f"{t['kernel_a']}: depth {t['depth_a']} − {t['depth_b']}"
    return f"{t['kernel_a']} − {t['kernel_b']}, depth {t['depth_a']}"


def _difference_panel(ax, tests: list[dict], title: str, note: str) -> None:
    """One family type at one size: each pair a row, a point per ridge setting (paired 95 % interval;
    filled: survives Holm in its family, hollow: does not), a zero line."""
    labels = list(dict.fromkeys(_pair_label(t) for t in tests))
    ax.set_title(title + (f"\n{note}" if note else ""), fontsize=8)
    if not labels:
        ax.text(0.5, 0.5, "no comparison at this size", ha="center", va="center", fontsize=7, transform=ax.transAxes)
        ax.set_xticks([])
        ax.set_yticks([])
        return
    ax.axvline(0, color="black", lw=0.8)
    for ri, (setting, _) in enumerate(RIDGE_SETTINGS):
        for t in (t for t in tests if t["ridge"] == setting):
            y = labels.index(_pair_label(t)) + (ri - 0.5) * 0.3
            x = 100 * t["diff"]
            ax.errorbar(x, y, xerr=[[x - 100 * t["diff_lo"]], [100 * t["diff_hi"] - x]], fmt="o", ms=5, capsize=2,
                        color=f"C{ri}", mfc=f"C{ri}" if t["survives"] else "white", mew=1.2)
    ax.set_yticks(range(len(labels)), labels, fontsize=6)
    ax.set_ylim(len(labels) - 0.5, -0.5)
    ax.set_xlabel("A − B, accuracy points", fontsize=7)


def _figure(summary: list[dict], tests: list[dict], data: str, out_dir: str | Path, name: str) -> list[Path]:
    """Top: accuracy (CV ridge) against depth per size, and the paper's panel.  Below: the paired
    differences, one row per training / test size and one panel per comparison family type."""
    if not tests:
        return []
    style()
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    sizes = sorted({_size(s) for s in summary}, key=lambda k: (str(k[0]), -k[1]))
    test_sizes = [z for z in sizes if any(t["data"] == _data({"n_train": z[1], "n_test": z[2], "setting": z[0]})
                                          for t in tests)]
    rows_per_size = [max(1, max(len({_pair_label(t) for t in tests if t["data"] == _data(
        {"n_train": z[1], "n_test": z[2], "setting": z[0]}) and t["comparison"] == c}) for c, _ in COMPARISONS))
        for z in test_sizes]
    top_h, bottom_h = 3.6, sum(1.2 + 0.32 * n for n in rows_per_size)
    fig = plt.figure(figsize=(6.0 * len(COMPARISONS), top_h + bottom_h), layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=[top_h, bottom_h])
    _accuracy_panels(top.subplots(1, len(sizes) + 1, squeeze=False)[0], summary, sizes, data)
    top.suptitle("Accuracy (CV ridge) with Wilson 95 % intervals; differences between kernels are read below, "
                 "paired on the same test images, not from these overlaps", fontsize=8)
    axes = bottom.subplots(len(test_sizes), len(COMPARISONS), squeeze=False,
                           gridspec_kw={"height_ratios": rows_per_size})
    refused = refused_gap_v(summary)
    for row, size in zip(axes, test_sizes):
        block = _data({"n_train": size[1], "n_test": size[2], "setting": size[0]})
        for ax, (what, label) in zip(row, COMPARISONS):
            here = [r for r in refused if r["data"] == block] if what == "GAP vs V" else []
            note = "not made (no equal-fix partner): " + "; ".join(
                f"{pair} (depth {', '.join(str(r['depth']) for r in here if r['pair'] == pair)})"
                for pair in dict.fromkeys(r["pair"] for r in here)) if here else ""
            _difference_panel(ax, [t for t in tests if t["data"] == block and t["comparison"] == what],
                              f"{_size_title(data, size)}: {label}", note)
    handles = [Line2D([], [], ls="", marker="o", color=f"C{i}", label=f"ridge: {setting}")
               for i, (setting, _) in enumerate(RIDGE_SETTINGS)]
    handles += [Line2D([], [], ls="", marker="o", color="gray", label=f"filled: Holm p < {ALPHA} in its family"),
                Line2D([], [], ls="", marker="o", color="gray", mfc="white", label="hollow: not significant after Holm")]
    bottom.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=len(handles), fontsize=7)
    bottom.suptitle("Paired differences A − B (points) with paired bootstrap 95 % intervals; families: ridge setting x "
                    "comparison x size (tests.md)", fontsize=8)
    paths = save_figure(fig, out_dir, name)
    plt.close(fig)
    return paths


