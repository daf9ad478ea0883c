"""Helper of peer_neural_tangents.sh: time neural-tangents (peer side) and cntk (ours) on the same inputs.

    <peer venv python> peer_neural_tangents.py peer [--quick]   > peer.json   (imports jax, neural_tangents)
    <project python>   peer_neural_tangents.py ours [--quick]   > ours.json   (imports cntk)
    <project python>   peer_neural_tangents.py table peer.json ours.json

Rows: CNN-GAP and CNN-Flatten, 3 conv layers (cntk depth 4), 3x3 filters, SAME padding, ReLU, no bias,
32x32x3 images, float32, a cross kernel x1 (n1 images) against x2 (n2 images): n1 * n2 entries,
no symmetry to exploit on either side.  Both sides draw the same inputs from numpy's PCG64 stream.
The two libraries normalise differently (neural-tangents: channel means, flatten as a mean, readout
scale); for bias-free ReLU nets the kernels differ by one positive constant per readout, and the
table reports how constant the ratio is on the timed block (a check that both compute the same kernel).
"""
from __future__ import annotations

import argparse
import json
import sys
import time

ROWS = {  # readout: (n1, n2) full run, (n1, n2) --quick
    "gap": ((4, 4), (2, 2)),
    "flatten": ((128, 128), (64, 64)),
}
SIZE, CHANNELS, CONV_LAYERS = 32, 3, 3


def _inputs(readout: str, quick: bool):
    import numpy as np

    n1, n2 = ROWS[readout][1 if quick else 0]
    rng = np.random.default_rng(1234)
    x1 = rng.standard_normal((n1, CHANNELS, SIZE, SIZE)).astype(np.float32)
    x2 = rng.standard_normal((n2, CHANNELS, SIZE, SIZE)).astype(np.float32)
    return x1, x2


def _time(fn, repeats: int) -> tuple[float, object]:
    out = fn()  # warm-up: jit compilation on both sides
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def peer(quick: bool) -> list[dict]:
    import jax
    import numpy as np
    from neural_tangents import stax

    rows = []
    for readout in ROWS:
        layers = []
        for _ in range(CONV_LAYERS):
            layers += [stax.Conv(1, (3, 3), padding="SAME"), stax.Relu()]
        layers += [stax.GlobalAvgPool() if readout == "gap" else stax.Flatten(), stax.Dense(1)]
        _, _, kernel_fn = stax.serial(*layers)
        kernel_fn = jax.jit(kernel_fn, static_argnames="get")
        x1, x2 = _inputs(readout, quick)
        a, b = (jax.numpy.asarray(np.transpose(x, (0, 2, 3, 1))) for x in (x1, x2))  # NCHW -> NHWC
        secs, k = _time(lambda: kernel_fn(a, b, "ntk").block_until_ready(), 1 if readout == "gap" else 3)
        rows.append(
            {
                "readout": readout, "n1": len(x1), "n2": len(x2), "seconds": secs,
                "entries_per_s": len(x1) * len(x2) / secs, "kernel": np.asarray(k, dtype=np.float64).tolist(),
                "version": f"neural-tangents {__import__('neural_tangents').__version__}, jax {jax.__version__}",
            }
        )
    return rows


def ours(quick: bool) -> list[dict]:
    import torch

    import cntk

    rows = []
    for readout in ROWS:
        arch = cntk.Architecture(depth=CONV_LAYERS + 1, readout=readout)
        x1, x2 = (torch.from_numpy(x) for x in _inputs(readout, quick))
        backend = cntk.api._auto_backend(torch.device("cpu"))
        secs, k = _time(lambda: cntk.kernel(x1, x2, arch, "ntk", progress=False), 3)
        rows.append(
            {
                "readout": readout, "n1": len(x1), "n2": len(x2), "seconds": secs,
                "entries_per_s": len(x1) * len(x2) / secs, "kernel": k.double().tolist(),
                "version": f"cntk backend {backend}, torch {torch.__version__}",
            }
        )
    return rows


def table(peer_file: str, ours_file: str) -> None:
    import numpy as np

    peer_rows = {r["readout"]: r for r in json.load(open(peer_file))}
    our_rows = {r["readout"]: r for r in json.load(open(ours_file))}
    print("CNN, 3 conv layers (depth 4), 32x32x3, float32, cross kernel, NTK")
    print(f"peer: {next(iter(peer_rows.values()))['version']}; ours: {next(iter(our_rows.values()))['version']}")
    head = f"{'readout':<8} {'entries':>8} {'neural-tangents /s':>19} {'cntk /s':>12} {'ratio':>8} {'kernel ratio spread':>20}"
    print(head)
    print("-" * len(head))
    for readout in ROWS:
        p, o = peer_rows[readout], our_rows[readout]
        ratio = np.asarray(o["kernel"]) / np.asarray(p["kernel"])
        spread = float((ratio.max() - ratio.min()) / abs(ratio.mean()))
        print(
            f"{readout:<8} {p['n1'] * p['n2']:>8} {p['entries_per_s']:>19,.1f} {o['entries_per_s']:>12,.1f} "
            f"{o['entries_per_s'] / p['entries_per_s']:>7.1f}x {spread:>20.1e}"
        )
    print("ratio = cntk entries/s over neural-tangents entries/s; kernel ratio spread = (max - min) / mean of")
    print("cntk / neural-tangents over the timed block (the libraries differ by one constant per readout).")


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("side", choices=["peer", "ours", "table"])
    parser.add_argument("files", nargs="*", help="table: peer.json ours.json")
    parser.add_argument("--quick", action="store_true", help="fewer entries per row")
    args = parser.parse_args(argv)
    if args.side == "table":
        table(*args.files)
    else:
        json.dump(peer(args.quick) if args.side == "peer" else ours(args.quick), sys.stdout)


if __name__ == "__main__":
    main(sys.argv[1:])
