"""memory_mb bounds one call's working memory on every backend: a backend whose single pair does not
fit is skipped by "auto" and refused when named, at once and in one line; invalid budgets are refused."""
import json
import subprocess
import sys
import textwrap

import pytest
import torch

import cntk
from cntk import activations as A, layers as L, presets as P

# two activations: planes computes it, the fused kernel (one activation for every layer) does not
MIXED = L.Network((L.Conv(3, w_var=None), L.Act(A.ReLU()), L.Conv(3), L.Act(A.Erf()), L.GlobalAvgPool(),
                   L.Dense(w_var=2 / 9)))


@pytest.mark.parametrize("bad", [0, -5, float("nan"), float("inf"), True, "64"])
def test_invalid_memory_budget_is_refused(bad):
    x = torch.rand(2, 1, 6, 6, dtype=torch.float64)
    with pytest.raises(ValueError, match="memory_mb must be a finite number"):
        cntk.kernel(x, None, cntk.Architecture(depth=3), memory_mb=bad)


@pytest.mark.parametrize("net, backend", [(MIXED, "planes"), (P.myrtle(5), "numba")])  # numba: its per-thread pool buffers
def test_a_pair_over_budget_is_refused_before_any_work(net, backend):
    x = torch.rand(2, 3, 96, 96)
    with pytest.raises(cntk.api.MemoryBudgetError, match=rf"one pair of \(3, 96, 96\) inputs needs about [\d,]+ MiB on "
                                                           rf"backend '{backend}', over memory_mb=64"):
        cntk.kernel(x, None, net, memory_mb=64)


def test_auto_skips_a_backend_whose_pair_does_not_fit():
    paper = cntk.Architecture(depth=3)
    shape = (3, 96, 96)
    assert cntk.choose_backend(paper, "cpu", "planes").NAME == "planes"
    with pytest.raises(cntk.api.MemoryBudgetError, match="backend 'numba' fits"):
        cntk.choose_backend(paper, "cpu", "planes", input_shape=shape, itemsize=4, memory_mb=64)
    assert cntk.choose_backend(paper, "cpu", input_shape=shape, itemsize=4, memory_mb=64).NAME == "numba"


RSS = textwrap.dedent("""
    import json, resource, torch, cntk
    arch = cntk.Architecture(depth=3)
    cntk.kernel(torch.rand(2, 3, 8, 8), None, arch, progress=False)  # compile / load the kernel
    x = torch.rand(2, 3, 96, 96)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    k = cntk.kernel(x, None, arch, memory_mb=64, progress=False)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"above_mib": peak - base, "finite": bool(torch.isfinite(k).all())}))
""")


def test_rss_of_a_96x96_gap_gram_stays_near_the_budget():
    """The paper's CNN-GAP on 96 x 96 images at memory_mb=64: peak RSS grows by at most 64 MiB plus
    slack for the allocator (measured in a fresh process, after the kernel is compiled)."""
    out = subprocess.run([sys.executable, "-c", RSS], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["finite"]
    assert r["above_mib"] < 64 + 32, r
