"""The Table 1 analog from several solve sweeps (e.g. CNN-V at several thousand training images and
CNN-GAP at the size its cost allows): one table with Wilson intervals and costs, the paired tests
at both ridge settings (no ridge, CV ridge) with Holm-adjusted p within stated families, the
paper's CIFAR-10 column in its own table, one figure (accuracies, and the paired differences per
comparison family); optionally the finite CNNs of a kernel_vs_network run beside.

    python -m experiments.harness.table1_report SOLVE_SWEEP [SOLVE_SWEEP ...] --out figures/ [--networks RUN]

Writes into --out: table1.png / .pdf, table1.table.md, table1.tests.md, table1.paper.md,
table1.results.json / .csv (the merged rows, each sweep's provenance kept) and table1.summary.csv.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

from experiments.harness import results, solve_report


def merge(sweeps: list[Path]) -> dict:
    docs = [results.load(s) for s in sweeps]
    bad = [str(s) for s, d in zip(sweeps, docs) if (d.get("experiment") or d["config"]["experiment"]["name"]) != "solve"]
    if bad:
        raise ValueError(f"not solve sweeps: {', '.join(bad)}")
    rows = [{**r, "sweep": str(s)} for s, d in zip(sweeps, docs) for r in d["rows"]]
    return {"experiment": "solve", "sources": [{"sweep": str(s), "provenance": d.get("provenance"),
                                                "jobs": [j.get("job") for j in d.get("jobs", [])]}
                                               for s, d in zip(sweeps, docs)],
            "provenance": docs[0].get("provenance"), "rows": rows}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("sweeps", nargs="+", type=Path, help="solve sweep folders (their aggregated results.json)")
    p.add_argument("--out", type=Path, required=True, help="where the table1.* files go")
    p.add_argument("--networks", type=Path, help="a kernel_vs_network run folder: its table is appended")
    args = p.parse_args(argv)
    try:
        doc = merge(args.sweeps)
    except (OSError, ValueError, json.JSONDecodeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=args.out) as tmp:  # the report's own file names, then renamed
        paths, summary = solve_report.report(doc["rows"], tmp)
        for name in ("table.md", "tests.md", "paper.md"):
            text = (Path(tmp) / name).read_text()
            if name == "table.md" and args.networks:
                text += ("\n\nFinite CNNs (kernel_vs_network, " + str(args.networks) + "):\n\n"
                         + (args.networks / "table.md").read_text())
            results.write_atomic(args.out / f"table1.{name}", text)
        for path in paths:
            shutil.copyfile(path, args.out / path.name)
    results.write_atomic(args.out / "table1.results.json", json.dumps(doc, indent=1, default=float))
    results.write_csv(args.out / "table1.results.csv", [{k: v for k, v in r.items() if k != "correct"} for r in doc["rows"]])
    results.write_csv(args.out / "table1.summary.csv", summary)
    print("\n".join(str(args.out / f"table1.{x}") for x in ("png", "table.md", "tests.md", "paper.md")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
