"""Baselines of the FIITED benchmark at equal bytes: uniform dimension, row pruning, PEP.

Byte counts (fp32 values; every method's index, masks and per-row metadata counted):

* dense / uniform dimension ``k``: ``rows * k * 4`` (no index);
* FIITED (prefix index, ``chunk_size`` 1): the pool + ``1 + 4 / index_block`` bytes per row
  (:meth:`~lightning_recsys.embeddings.chunked.ChunkedEmbeddingBase.use_prefix_index`);
* row pruning (ITEP / AdaEmbed style): FIITED's storage with one chunk per row (``chunk_size = d``) and the
  same prefix index: a kept row costs ``4 d`` bytes, every row ``1 + 4 / index_block``;
* PEP (Liu et al., ICLR 2021): the kept values + a 1-bit-per-entry mask (``rows * d / 8`` bytes), a
  lower bound on any sparse storage of it (no row offsets counted).

PEP here: every table's weight is soft-thresholded, ``sign(v) * relu(|v| - sigmoid(s))`` with a learnable
threshold ``s`` per table and dimension, for the first training run; the mask is then the largest
``|soft-thresholded value|`` entries (over all tables) that fit the byte budget, and the model is
retrained from its initial weights with that mask fixed (PEP's lottery-ticket retraining).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize


class SoftThreshold(nn.Module):
    """``sign(v) * relu(|v| - sigmoid(s))``, ``s [d]`` learnable (PEP's dimension-wise threshold)."""

    def __init__(self, dim: int, init: float) -> None:
        super().__init__()
        self.s = nn.Parameter(torch.full((dim,), float(init)))

    def forward(self, v: Tensor) -> Tensor:
        return torch.sign(v) * torch.relu(v.abs() - torch.sigmoid(self.s))


class FixedMask(nn.Module):
    def __init__(self, mask: Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask)

    def forward(self, v: Tensor) -> Tensor:
        return v * self.mask


def pep_attach(tables: list[nn.Module], init: float) -> None:
    for t in tables:
        parametrize.register_parametrization(t, "weight", SoftThreshold(t.embedding_dim, init))


def pep_budget_masks(tables: list[nn.Module], budget_bytes: int) -> list[Tensor]:
    """Masks keeping the largest soft-thresholded entries (over all tables) whose values + 1-bit masks fit."""
    with torch.no_grad():
        values = [t.weight.detach().abs() for t in tables]  # soft-thresholded (parametrized) weights
    bitmap = sum(v.numel() for v in values) / 8
    n = max(0, int((budget_bytes - bitmap) // 4))
    flat = torch.cat([v.flatten() for v in values])
    keep = torch.zeros_like(flat, dtype=torch.bool)
    keep[torch.argsort(flat, descending=True, stable=True)[:n]] = True
    keep &= flat > 0
    return [m.view_as(v).float() for m, v in zip(torch.split(keep, [v.numel() for v in values]), values)]


def pep_bytes(masks: list[Tensor]) -> int:
    return int(sum(int(m.sum()) * 4 + m.numel() / 8 for m in masks))


def pep_fix_masks(tables: list[nn.Module], masks: list[Tensor], init_weights: list[Tensor]) -> None:
    """Back to the initial weights (no parametrization), then the fixed mask."""
    for t, m, w in zip(tables, masks, init_weights):
        if parametrize.is_parametrized(t, "weight"):
            parametrize.remove_parametrizations(t, "weight", leave_parametrized=False)
        with torch.no_grad():
            t.weight.copy_(w * m)
        parametrize.register_parametrization(t, "weight", FixedMask(m))
