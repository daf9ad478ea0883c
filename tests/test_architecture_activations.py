"""An Architecture builds each activation with its own parameters: the ABReLU slopes reach ABReLU only."""
import pytest
import torch

import cntk
from cntk import activations as A
from cntk.architecture import ArchitectureError


def test_sin_keeps_its_own_amplitude():
    # abrelu_a = 0 (the Architecture default) once became Sin's amplitude a: the zero network
    act = cntk.Architecture(depth=3, readout="flatten", activation="sin").act()
    assert act == A.Sin()
    x = torch.rand(3, 1, 6, 6, dtype=torch.float64)
    k = cntk.kernel(x, None, cntk.Architecture(depth=3, readout="flatten", activation="sin"), backend="reference")
    assert torch.all(torch.diagonal(k) > 1e-3)


def test_slopes_shape_abrelu_only():
    assert cntk.Architecture(activation="abrelu", abrelu_a=0.2).act() == A.ABReLU(a=0.2, b=1.0)
    with pytest.raises(ArchitectureError, match="abrelu"):
        cntk.Architecture(activation="sin", abrelu_a=1.0)
