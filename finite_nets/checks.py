"""Argument checks shared by the finite nets and their training functions."""
from __future__ import annotations

import torch


def default_device() -> torch.device:
    """CUDA when available, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def check_dtype_device(x: torch.Tensor, p: torch.Tensor, name: str) -> torch.Tensor:
    """Raise ValueError unless x has the dtype and device of the net's parameter p."""
    if x.dtype != p.dtype:
        raise ValueError(f"{name} has dtype {x.dtype} but the net has {p.dtype}: convert one with .to(dtype)")
    if x.device != p.device:
        raise ValueError(f"{name} is on {x.device} but the net on {p.device}: move one with .to(device)")
    return x


def positive_int(name: str, value: object) -> int:
    """value, or ValueError unless it is an integer >= 1 (bools refused)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return value
