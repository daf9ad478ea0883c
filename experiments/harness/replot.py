"""Redraw a run's figures from its results file (no recomputation).

    python -m experiments.harness.replot outputs/2026-11-27/10-00-00 [--out figures/]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from experiments import get
from experiments.harness import results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir", help="a run (or aggregated sweep) folder holding results.json")
    p.add_argument("--out", help="where to write the figures (default: the run folder)")
    args = p.parse_args(argv)
    try:
        doc = results.load(args.run_dir)
    except (OSError, ValueError) as err:
        print(f"error: cannot read {args.run_dir}/results.json: {err}", file=sys.stderr)
        return 2
    out = Path(args.out or args.run_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths, summary = get(doc.get("experiment") or doc["config"]["experiment"]["name"]).plot(doc, out)
    if summary:
        results.write_csv(out / "summary.csv", summary)
    print("\n".join(str(p) for p in paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
