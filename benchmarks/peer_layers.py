"""External check of the layer vocabulary's kernels against neural-tangents (stax), out of CI.

    benchmarks/peer_layers.sh          # builds / reuses benchmarks/.peer-venv, runs both sides, prints the table

    python benchmarks/peer_layers.py speed   # Myrtle-5 on 32x32x3, float32: entries/s of our backends

Each network of ``NETWORKS`` is written once as a list of layer specs; ``ours`` builds it from
``cntk.layers`` and ``peer`` from ``neural_tangents.stax`` with the parameters that make the two
the same network (stax divides by fan_in = q^2 C_in like our layers; our unit first layer is
W_std = sqrt(q^2 C); our Flatten is a sum over pixels with the channels as fan_in, stax's a mean
over C P inputs: W_std^2 = w_var P after it).  Both compute NTK and NNGP on the same float64 inputs
(NHWC for stax); the table gives, per network and kind, the largest relative difference and the
spread of the ratio ours / theirs (0 when they differ by one constant).
"""
from __future__ import annotations

import json
import math
import sys

SIZE, CHANNELS, N1, N2 = 8, 2, 4, 3
NETWORKS = {  # name: (input, layers); layer: [type, params]
    "abrelu-gap": ("image", [["conv", None, None], ["abrelu", 0.2, 1.0], ["conv", 2.0, None], ["abrelu", 0.2, 1.0],
                             ["gap"], ["dense", 2 / 9, None]]),
    "leaky-bias-flatten": ("image", [["conv", None, 0.5], ["abrelu", 0.1, 1.0], ["conv", 2.0, 0.5], ["abrelu", 0.1, 1.0],
                                     ["flatten"], ["dense", 2 / 9, 0.5]]),
    "erf-bias-gap": ("image", [["conv", None, 0.2], ["erf"], ["conv", 2.0, 0.2], ["erf"], ["gap"], ["dense", 2 / 9, 0.2]]),
    "relu-bias-gap": ("image", [["conv", None, 0.3], ["relu"], ["conv", 2.0, 0.3], ["relu"], ["gap"], ["dense", 2 / 9, 0.3]]),
    "myrtle-5": ("image", [["conv", None, None], ["relu"], ["conv", 2.0, None], ["relu"], ["pool", 2],
                           ["conv", 2.0, None], ["relu"], ["pool", 2], ["conv", 2.0, None], ["relu"], ["gap"],
                           ["dense", 2 / 9, None]]),
    "fc-erf-bias": ("vector", [["dense", None, 0.1], ["erf"], ["dense", 2.0, 0.1], ["erf"], ["dense", 2.0, 0.1]]),
    "fc-abrelu": ("vector", [["dense", None, None], ["abrelu", -0.3, 1.5], ["dense", 2.0, None], ["abrelu", -0.3, 1.5],
                             ["dense", 2.0, None]]),
    # pre-activation residual blocks: ["block", w_var of the branch's last conv]
    "resnet-1-gap": ("image", [["conv", None, None], ["block", 2.0], ["relu"], ["gap"], ["dense", 2 / 9, None]]),
    "resnet-2-flatten": ("image", [["conv", None, 0.1], ["block", 1.0], ["block", 1.0], ["relu"], ["flatten"],
                                   ["dense", 2 / 9, None]]),
    "resnet-2-gap": ("image", [["conv", None, None], ["block", 1.0], ["block", 1.0], ["relu"], ["gap"],
                               ["dense", 2 / 9, None]]),
    "layernorm-relu-gap": ("image", [["conv", None, None], ["layernorm"], ["relu"], ["conv", 2.0, 0.1], ["layernorm"],
                                     ["relu"], ["gap"], ["dense", 2 / 9, None]]),
    "gelu-bias-gap": ("image", [["conv", None, 0.2], ["gelu"], ["conv", 2.0, 0.2], ["gelu"], ["gap"], ["dense", 2 / 9, 0.2]]),
    "sin-flatten": ("image", [["conv", None, None], ["sin", 1.0, 1.0, 0.0], ["conv", 2.0, None], ["sin", 1.2, 0.8, 0.3],
                              ["flatten"], ["dense", 2 / 9, None]]),
    "layernorm-gelu-sin-flatten": ("image", [["conv", None, None], ["layernorm"], ["gelu"], ["conv", 2.0, None],
                                             ["layernorm"], ["sin", 1.0, 1.0, 0.0], ["flatten"], ["dense", 2 / 9, None]]),
}


def inputs(kind: str):
    import numpy as np

    rng = np.random.default_rng(7)
    shape = (CHANNELS, SIZE, SIZE) if kind == "image" else (CHANNELS * SIZE * SIZE,)
    return rng.standard_normal((N1, *shape)), rng.standard_normal((N2, *shape))


def stax_network(kind: str, spec: list, channels: int = CHANNELS, size: int = SIZE):
    """``spec`` as a neural-tangents ``stax.serial`` kernel function (inputs NHWC)."""
    from neural_tangents import stax

    layers, c, p, flat = [], channels if kind == "image" else channels * size * size, size * size, False

    def conv(w_var, b_var=None):  # a conv after the first layer (fan_in normalised away)
        return stax.Conv(1, (3, 3), padding="SAME", W_std=math.sqrt(w_var), b_std=None if b_var is None else math.sqrt(b_var))

    for t, *a in spec:
        if t == "block":  # neural-tangents' WideResnetBlock, no channel change, last conv w_var a[0]
            main = stax.serial(stax.Relu(), conv(2.0), stax.Relu(), conv(a[0]))
            layers.append(stax.serial(stax.FanOut(2), stax.parallel(main, stax.Identity()), stax.FanInSum()))
        elif t == "layernorm":
            layers.append(stax.LayerNorm(axis=3 if kind == "image" else 1))
        elif t == "gelu":
            layers.append(stax.Gelu(approximate=False))
        elif t == "sin":
            layers.append(stax.Sin(a=a[0], b=a[1], c=a[2]))
        elif t in ("conv", "dense"):
            w_var, b_var = a
            fan = (9 * c if t == "conv" else c)
            w_std = math.sqrt(fan) if w_var is None else math.sqrt(w_var * (p if t == "dense" and flat else 1))
            b_std = None if b_var is None else math.sqrt(b_var)
            layers.append(stax.Conv(1, (3, 3), padding="SAME", W_std=w_std, b_std=b_std) if t == "conv"
                          else stax.Dense(1, W_std=w_std, b_std=b_std))
            c = 1  # stax's infinite-width layers: the next fan_in is normalised away
        elif t == "relu":
            layers.append(stax.Relu())
        elif t == "abrelu":
            layers.append(stax.ABRelu(a[0], a[1]))
        elif t == "erf":
            layers.append(stax.Erf())
        elif t == "pool":
            layers.append(stax.AvgPool((a[0], a[0]), strides=(a[0], a[0]), padding="VALID"))
            p //= a[0] * a[0]
        elif t == "gap":
            layers.append(stax.GlobalAvgPool())
        elif t == "flatten":
            layers.append(stax.Flatten())
        flat = t == "flatten"
    return stax.serial(*layers)[2]


def peer() -> dict:
    import jax

    jax.config.update("jax_enable_x64", True)
    import numpy as np

    out = {}
    for name, (kind, spec) in NETWORKS.items():
        x1, x2 = inputs(kind)
        if kind == "image":
            x1, x2 = x1.transpose(0, 2, 3, 1), x2.transpose(0, 2, 3, 1)
        k = stax_network(kind, spec)(x1, x2, ("nngp", "ntk"))
        out[name] = {"nngp": np.asarray(k.nngp).tolist(), "ntk": np.asarray(k.ntk).tolist()}
    return out


def our_network(spec: list, name: str):
    """``spec`` as a ``cntk.layers.Network``."""
    from cntk import activations as A, graph as G, layers as L

    layers = []
    for t, *a in spec:
        if t == "conv":
            layers.append(L.Conv(3, w_var=a[0], b_var=a[1]))
        elif t == "dense":
            layers.append(L.Dense(w_var=a[0], b_var=a[1]))
        elif t == "relu":
            layers.append(L.Act(A.ReLU()))
        elif t == "abrelu":
            layers.append(L.Act(A.ABReLU(a=a[0], b=a[1])))
        elif t == "erf":
            layers.append(L.Act(A.Erf()))
        elif t == "pool":
            layers.append(L.AvgPool(a[0]))
        elif t == "gap":
            layers.append(L.GlobalAvgPool())
        elif t == "flatten":
            layers.append(L.Flatten())
        elif t == "block":
            branch = [L.Act(A.ReLU()), L.Conv(3, w_var=2.0), L.Act(A.ReLU()), L.Conv(3, w_var=a[0])]
            layers += [G.FanOut(2), G.Parallel(branch, [G.Identity()]), G.FanInSum()]
        elif t == "layernorm":
            layers.append(G.LayerNorm())
        elif t == "gelu":
            layers.append(L.Act(A.Gelu()))
        elif t == "sin":
            layers.append(L.Act(A.Sin(a=a[0], b=a[1], c=a[2])))
    return L.Network(tuple(layers), name)


def ours() -> dict:
    import torch

    import cntk

    out = {}
    for name, (kind, spec) in NETWORKS.items():
        x1, x2 = (torch.tensor(a, dtype=torch.float64) for a in inputs(kind))
        net = our_network(spec, name)
        out[name] = {k: cntk.kernel(x1, x2, net, k).tolist() for k in ("nngp", "ntk")}
    return out


# --- speed against neural-tangents: the same networks, the same float32 32x32x3 inputs, one run ---------
TIMED = {  # name: layers (all image networks, no bias)
    "myrtle-5": NETWORKS["myrtle-5"][1],
    "erf-gap-depth3": [["conv", None, None], ["erf"], ["conv", 2.0, None], ["erf"], ["gap"], ["dense", 2 / 9, None]],
    "abrelu(0.2,1)-gap-depth4": [["conv", None, None], ["abrelu", 0.2, 1.0], ["conv", 2.0, None], ["abrelu", 0.2, 1.0],
                                 ["conv", 2.0, None], ["abrelu", 0.2, 1.0], ["gap"], ["dense", 2 / 9, None]],
}
TIMED_SIZE, TIMED_CHANNELS, N_PEER, N_OURS, CHECK = 32, 3, 4, 16, 4


def timed_inputs():
    """(x1, x2): N_OURS images each, float32 NCHW; the peer times the first N_PEER of each."""
    import numpy as np

    rng = np.random.default_rng(2020)
    shape = (N_OURS, TIMED_CHANNELS, TIMED_SIZE, TIMED_SIZE)
    return rng.standard_normal(shape).astype(np.float32), rng.standard_normal(shape).astype(np.float32)


def time_peer() -> dict:
    """neural-tangents' jitted NTK on an N_PEER x N_PEER cross block, float32, after a warm-up call."""
    import time

    import jax
    import numpy as np

    x1, x2 = (jax.numpy.asarray(x[:N_PEER].transpose(0, 2, 3, 1)) for x in timed_inputs())
    out = {}
    for name, spec in TIMED.items():
        kfn = jax.jit(stax_network("image", spec, TIMED_CHANNELS, TIMED_SIZE), static_argnames="get")
        kfn(x1[:1], x2[:1], "ntk").block_until_ready()  # compile for one shape, then time the block
        kfn(x1, x2, "ntk").block_until_ready()
        start = time.perf_counter()
        k = kfn(x1, x2, "ntk").block_until_ready()
        secs = time.perf_counter() - start
        out[name] = {"entries": N_PEER * N_PEER, "seconds": secs, "check": np.asarray(k, dtype=np.float64).tolist(),
                     "who": f"neural-tangents {__import__('neural_tangents').__version__}, jax {jax.__version__}"}
    return out


def time_ours() -> dict:
    """cntk's default CPU backend (its name recorded) on an N_OURS x N_OURS cross block, float32."""
    import time

    import torch

    import cntk

    x1, x2 = (torch.from_numpy(x) for x in timed_inputs())
    out = {}
    for name, spec in TIMED.items():
        net = our_network(spec, name)
        backend = cntk.choose_backend(net, "cpu").NAME
        cntk.kernel(x1[:1], x2[:1], net, "ntk", progress=False)  # numba compiles here
        start = time.perf_counter()
        k = cntk.kernel(x1, x2, net, "ntk", progress=False)
        secs = time.perf_counter() - start
        k64 = cntk.kernel(x1[:CHECK].double(), x2[:CHECK].double(), net, "ntk", progress=False)
        f32_err = float(((k[:CHECK, :CHECK].double() - k64).abs() / k64.abs()).max())
        out[name] = {"entries": N_OURS * N_OURS, "seconds": secs, "check": k64.tolist(), "f32_err": f32_err,
                     "who": f"cntk {backend}, torch {torch.__version__}"}
    return out


def timing_table(paths: list[str]) -> None:
    """Rows per network from alternating runs (peer_layers.sh --speed): each side's entries/s range,
    the ratio's range over the runs paired in order, and how constant ours / theirs is on the checked block."""
    import numpy as np

    runs = [json.load(open(p)) for p in paths]
    peer_runs = [r for r in runs if r["side"] == "peer"]
    our_runs = [r for r in runs if r["side"] == "ours"]
    name0 = next(iter(TIMED))
    print(f"32x32x3, float32, NTK cross blocks ({N_OURS}x{N_OURS} ours, {N_PEER}x{N_PEER} neural-tangents), "
          f"{len(our_runs)} alternating runs per side")
    print(f"peer: {peer_runs[0]['rows'][name0]['who']}")
    print("| network | ours (backend) entries/s | neural-tangents entries/s | ratio | kernel ratio spread | ours f32 vs f64 |")
    print("|---|---:|---:|---:|---:|---:|")
    for name in TIMED:
        o = [r["rows"][name]["entries"] / r["rows"][name]["seconds"] for r in our_runs]
        p = [r["rows"][name]["entries"] / r["rows"][name]["seconds"] for r in peer_runs]
        ratios = [a / b for a, b in zip(o, p)]
        ratio = np.asarray(our_runs[0]["rows"][name]["check"]) / np.asarray(peer_runs[0]["rows"][name]["check"])
        spread = float((ratio.max() - ratio.min()) / abs(ratio.mean()))
        who = our_runs[0]["rows"][name]["who"].split(",")[0]
        print(f"| {name} | {min(o):,.1f}-{max(o):,.1f} ({who}) | {min(p):,.2f}-{max(p):,.2f} | "
              f"{min(ratios):,.0f}-{max(ratios):,.0f}x | {spread:.1e} | {our_runs[0]['rows'][name]['f32_err']:.1e} |")
    print("ratio: ours / neural-tangents entries/s, run k of one side against run k of the other; kernel ratio")
    print(f"spread: (max - min) / mean of ours (float64) / theirs (float32) on the first {CHECK}x{CHECK} entries: 0 up to")
    print("neural-tangents' float32 rounding when the kernels agree after one constant; ours f32 vs f64: the largest")
    print("relative difference of our timed float32 block from our float64 kernel on those entries.")


def table(peer_path: str, ours_path: str) -> None:
    import numpy as np

    a, b = json.load(open(peer_path)), json.load(open(ours_path))
    print("| network | kind | max relative difference | ratio ours / neural-tangents: mean, spread (max - min) / mean |")
    print("|---|---|---|---|")
    for name in NETWORKS:
        for kind in ("nngp", "ntk"):
            t, o = np.array(a[name][kind]), np.array(b[name][kind])
            rel = float(np.abs(o - t).max() / np.abs(t).max())
            ratio = o / t
            print(f"| {name} | {kind} | {rel:.2e} | {ratio.mean():.6g}, {(ratio.max() - ratio.min()) / ratio.mean():.2e} |")


def speed(budget_s: float = 20.0) -> None:
    """Entries/s of Myrtle-5 (``cntk.presets.myrtle(5)``) on random 32x32x3 float32 images, every
    backend that computes it here in one run: an n x n cross block per backend, n grown until one
    call takes about budget_s / 4 (a first small call compiles numba's kernels, not timed)."""
    import time

    import torch

    import cntk
    from cntk import presets

    net = presets.myrtle(5)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 3, 32, 32, generator=g).float()
    print(f"Myrtle-5, 32x32x3, float32, ntk; torch threads {torch.get_num_threads()}")
    for backend in cntk.backends_for(net, "cpu"):
        cntk.kernel(x[:1], x[1:2], net, backend=backend)  # warm-up / compilation
        n, took = 1, 0.0
        while took < budget_s / 4 and n <= 32:
            start = time.perf_counter()
            cntk.kernel(x[:n], x[32 : 32 + n], net, backend=backend, progress=False)
            took = time.perf_counter() - start
            n *= 2
        print(f"{backend:>10}: {(n // 2) ** 2 / took:10.1f} entries/s ({(n // 2) ** 2} entries in {took:.2f} s)")


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "speed":
        speed()
    elif mode == "peer":
        json.dump(peer(), sys.stdout)
    elif mode == "ours":
        json.dump(ours(), sys.stdout)
    elif mode in ("time-peer", "time-ours"):
        json.dump({"side": mode[5:], "rows": time_peer() if mode == "time-peer" else time_ours()}, sys.stdout)
    elif mode == "timing-table":
        timing_table(sys.argv[2:])
    else:
        table(sys.argv[2], sys.argv[3])
