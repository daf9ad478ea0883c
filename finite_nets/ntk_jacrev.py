"""The generic empirical NTK of any nn.Module: torch.func.vmap(jacrev(functional_call)) per chunk of
samples and group of parameters (each group's per-sample Jacobian within a quarter of the budget),
then dot products."""
from __future__ import annotations

import torch
from torch import nn


def _jacrev(model: nn.Module, x1, x2, full: bool, budget: int) -> torch.Tensor:
    symmetric = x2 is None
    xb = x1 if symmetric else x2
    trainable = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    fixed = {n: p.detach() for n, p in model.named_parameters() if not p.requires_grad}
    fixed.update(dict(model.named_buffers()))
    with torch.no_grad():
        k = model(x1[:1]).reshape(1, -1).shape[1]
    n1, n2 = len(x1), len(xb)
    out = torch.zeros((n1, n2, k, k) if full else (n1, n2, k), dtype=x1.dtype, device=x1.device)
    if not trainable:
        return out
    item = x1.element_size()
    # groups of parameters whose per-sample Jacobian fits in a quarter of the budget
    groups: list[list[str]] = [[]]
    size = 0
    for name, p in trainable.items():
        if groups[-1] and (size + p.numel()) * k * item > budget // 4:
            groups.append([])
            size = 0
        groups[-1].append(name)
        size += p.numel()
    for group in groups:
        numel = sum(trainable[n].numel() for n in group)
        chunk = max(1, int(budget // 4 // (numel * k * item)))
        rest = {n: p for n, p in trainable.items() if n not in group}

        def f(params, x, rest=rest):
            y = torch.func.functional_call(model, {**params, **rest, **fixed}, (x[None],))
            return y.reshape(-1)

        jac = torch.func.vmap(torch.func.jacrev(f), in_dims=(None, 0))
        pg = {n: trainable[n] for n in group}

        def flat(x):  # (K, n, numel)
            j = jac(pg, x)
            return torch.cat([j[n].reshape(len(x), k, -1) for n in group], dim=2).transpose(0, 1)

        cache_ok = n2 * numel * k * item <= budget // 4
        cache: dict[int, torch.Tensor] = {}
        for i in range(0, n1, chunk):
            ja = flat(x1[i : i + chunk])
            if symmetric and cache_ok:
                cache[i] = ja
            for j in range(i if symmetric else 0, n2, chunk):
                if symmetric and i == j:
                    jb = ja
                elif j in cache:
                    jb = cache[j]
                else:
                    jb = flat(xb[j : j + chunk])
                    if cache_ok:
                        cache[j] = jb
                if full:
                    blk = torch.einsum("kid,ljd->ijkl", ja, jb)
                else:
                    blk = torch.bmm(ja, jb.transpose(1, 2)).permute(1, 2, 0)
                out[i : i + chunk, j : j + chunk] += blk
                if symmetric and i != j:
                    out[j : j + chunk, i : i + chunk] += blk.transpose(0, 1).transpose(2, 3) if full else blk.transpose(0, 1)
    return out
