"""Kernel regression on a tile store: dense Cholesky when K fits in memory, else preconditioned
conjugate gradients streaming the tiles from disk (memory: a few vectors and one tile)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from cntk.solve.regression import fit
from cntk.store.tiles import TileStore


@dataclass
class Solution:
    alpha: torch.Tensor  # (N, k) float64
    residual: float  # ||(K + reg I) alpha - Y||_F / ||Y||_F
    iterations: int  # 0 for Cholesky
    jitter: float
    method: str


class TileOperator:
    """v -> (K + reg I) v for a symmetric tile store, reading one tile at a time."""

    def __init__(self, store: TileStore, device: torch.device):
        if not store.meta.symmetric:
            raise ValueError("the operator needs the symmetric train store")
        st = store.status()
        if st["missing"] or st["failed"]:
            raise ValueError(f"{store.path}: {len(st['missing'])} tiles missing, {len(st['failed'])} failed: "
                             "rerun experiment=gram to complete it")
        self.store, self.device = store, device
        self.n = store.meta.n_rows
        diag = np.zeros(self.n)
        for i in range(store.meta.grid[0]):
            rs, _ = store.bounds(i, i)
            diag[rs] = np.diagonal(store.read_tile(i, i, verify=False))
        self.diag = torch.tensor(diag, dtype=torch.float64, device=device)
        self.scale = float(self.diag.mean())

    def matvec(self, v: torch.Tensor, reg: float) -> torch.Tensor:
        out = reg * self.scale * v
        for i, j in self.store.meta.tiles():
            rs, cs = self.store.bounds(i, j)
            t = torch.from_numpy(self.store.read_tile(i, j, verify=False)).to(self.device, torch.float64)
            out[rs] += t @ v[cs]
            if i != j:
                out[cs] += t.T @ v[rs]
        return out

    def block_jacobi(self, reg: float):
        """Preconditioner: the Cholesky factors of the diagonal tiles (+ reg)."""
        factors = []
        for i in range(self.store.meta.grid[0]):
            rs, _ = self.store.bounds(i, i)
            t = torch.from_numpy(self.store.read_tile(i, i, verify=False)).to(self.device, torch.float64)
            t = t + (reg * self.scale + 1e-10 * self.scale) * torch.eye(len(t), dtype=torch.float64, device=self.device)
            factors.append((rs, torch.linalg.cholesky(t)))

        def apply(r: torch.Tensor) -> torch.Tensor:
            z = torch.empty_like(r)
            for rs, chol in factors:
                z[rs] = torch.cholesky_solve(r[rs], chol)
            return z

        return apply


def solve_cg(store: TileStore, targets: torch.Tensor, ridge: float, device: torch.device,
             tol: float = 1e-10, max_iter: int = 5000) -> Solution:
    """Block-Jacobi preconditioned CG on (K + ridge * mean(diag) I) alpha = Y, one CG per column."""
    op = TileOperator(store, device)
    y = targets.to(device, torch.float64)
    if y.ndim == 1:
        y = y[:, None]
    precond = op.block_jacobi(ridge)
    x = torch.zeros_like(y)
    r = y.clone()
    z = precond(r)
    p = z.clone()
    rz = (r * z).sum(0)
    ynorm = y.norm(dim=0).clamp_min(1e-300)
    it = 0
    for it in range(1, max_iter + 1):
        ap = op.matvec(p, ridge)
        step = rz / (p * ap).sum(0).clamp_min(1e-300)
        x += step * p
        r -= step * ap
        if bool((r.norm(dim=0) / ynorm <= tol).all()):
            break
        z = precond(r)
        rz_new = (r * z).sum(0)
        p = z + (rz_new / rz.clamp_min(1e-300)) * p
        rz = rz_new
    resid = float((op.matvec(x, ridge) - y).norm() / y.norm())
    return Solution(alpha=x, residual=resid, iterations=it, jitter=0.0, method="cg")


def solve_dense(k_train: torch.Tensor, targets: torch.Tensor, ridge: float, device: torch.device) -> Solution:
    """float64 Cholesky on ``device`` (a GPU when present), with cntk.kernel_regression's jitter rule."""
    k = k_train.to(device, torch.float64)
    model = fit(k, targets.to(device), ridge=ridge)
    y = targets.to(device, torch.float64)
    y = y[:, None] if y.ndim == 1 else y
    reg = (ridge + model.jitter) * float(k.diagonal().mean())
    resid = float(((k @ model.alpha + reg * model.alpha) - y).norm() / y.norm())
    return Solution(alpha=model.alpha, residual=resid, iterations=0, jitter=model.jitter, method="cholesky")
