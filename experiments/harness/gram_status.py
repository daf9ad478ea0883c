"""Tiles done / missing / failed of a gram store.

    python -m experiments.harness.gram_status stores/digits-gap-d3-200x200-ntk
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cntk.store.tiles import TileStore


def report(root: str | Path) -> dict[str, dict[str, int]]:
    root = Path(root)
    parts = [p for p in (root / "train", root / "test_train")
             if (p / "meta.json").exists() or (p / "meta.copy.json").exists()]
    if not parts:
        raise FileNotFoundError(f"{root} holds no tile store: run `python run.py experiment=gram` first")
    out = {}
    for part in parts:
        st = TileStore.load(part).status()
        out[part.name] = {k: len(v) for k, v in st.items()}
        out[part.name]["failed_tiles"] = st["failed"]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("store", help="the gram.store folder")
    args = p.parse_args(argv)
    try:
        rep = report(args.store)
    except (FileNotFoundError, ValueError) as err:  # no store, or an unreadable meta.json (and copy)
        print(f"error: {err}", file=sys.stderr)
        return 2
    complete = True
    for name, r in rep.items():
        total = r["done"] + r["missing"] + r["failed"]
        print(f"{name:11s} done {r['done']:5d} / {total:5d}   missing {r['missing']:5d}   failed {r['failed']:5d}"
              + (f"   (failed: {r['failed_tiles']})" if r["failed"] else ""))
        complete &= r["done"] == total
    print("complete" if complete else "incomplete: rerun the same experiment=gram command to finish it")
    return 0 if complete else 1


if __name__ == "__main__":
    sys.exit(main())
