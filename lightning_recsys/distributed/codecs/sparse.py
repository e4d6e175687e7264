"""Sparse codecs of the embedding boundary (DCT's sparse boundary): ``"topk"`` and ``"threshold"``.

``"topk"`` keeps each row's (group's) ``ceil(keep_ratio * width)`` largest-magnitude entries;
``"threshold"`` keeps the entries with ``|x| >= tau``, ``tau`` per group, re-estimated every
``refresh_interval`` steps as the ``keep_ratio`` upper quantile of a sample of the current boundary tensor
(in between only a comparison, so each sample keeps as many entries as pass). Both send the kept
positions (``k`` indices per group or a ``ceil(group / 8)``-byte bitmask, whichever is smaller; always the
bitmask for ``"threshold"``, whose payload sizes are exchanged first) and the kept values in ``bits``
(default 32); backward sends only the gradients at the kept positions (the receiver knows the mask) in
``grad_bits``. ``group=G``: select within each run of ``G`` entries (one group per table: every table
keeps some of its pooled vector).

Why top-k loses: a kept position is chosen by magnitude, so the dot interactions see a few coordinates
of each vector, and the other coordinates of an embedding row get no gradient from that sample (the
largest keeps winning); benchmarks/dct.py measures it (>= 0.01 AUC lost even at 50% kept).

Example:
    >>> import torch
    >>> codec = TopKCodec(keep_ratio=0.25)
    >>> x = torch.tensor([[0.1, -3.0, 0.2, 2.0]])
    >>> payload, mask = codec.encode_forward(x)
    >>> codec.decode_forward(payload, 1, 4)[0].tolist()
    [[0.0, -3.0, 0.0, 0.0]]
    >>> per_pair = TopKCodec(keep_ratio=0.5, group=2)
    >>> per_pair.decode_forward(per_pair.encode_forward(x)[0], 1, 4)[0].tolist()
    [[0.0, -3.0, 0.0, 2.0]]
"""

from __future__ import annotations

import math
from abc import abstractmethod

import torch
from torch import Tensor
from typing_extensions import override

from ..dp_hook import sampled_threshold
from .base import BoundaryCodec
from .values import _as_bytes, _from_bytes, _pack_bits, _unpack_bits, dequantize_values, quantize_values, value_bytes

__all__ = ["SparseCodec", "ThresholdCodec", "TopKCodec"]


class SparseCodec(BoundaryCodec):
    """Kept positions + their values forward, the gradients at those positions backward."""

    quantizing = True
    sparse = True

    @override
    def _repr_options(self) -> str:
        return f", bits={self.bits}, grad_bits={self.grad_bits}, group={self.group}, keep_ratio={self.keep_ratio}"

    def k(self, width: int) -> int:
        """Entries kept per row of ``width`` by ``"topk"`` (the target for ``"threshold"``)."""
        n, g = self._groups(width)
        return n * min(g, max(1, math.ceil(self.keep_ratio * g))) if g else 0

    def _idx_dtype(self, g: int) -> torch.dtype | None:
        """Index type of kept positions, or ``None`` where a bitmask is sent."""
        return None

    def _index_bytes(self, width: int) -> int:
        n, g = self._groups(width)
        dtype = self._idx_dtype(g)
        return n * (self.k(width) // max(n, 1)) * dtype.itemsize if dtype is not None else n * ((g + 7) // 8)

    @override
    def forward_bytes(self, rows: int, width: int, kept: int | None = None) -> int:
        groups = rows * self._groups(width)[0] if width else 0
        kept = rows * self.k(width) if kept is None else kept
        return rows * self._index_bytes(width) + value_bytes(kept, groups, self.bits)

    @override
    def backward_bytes(self, rows: int, width: int, kept: int | None = None) -> int:
        groups = rows * self._groups(width)[0] if width else 0
        return value_bytes(rows * self.k(width) if kept is None else kept, groups, self.grad_bits)

    @abstractmethod
    def select(self, x: Tensor) -> Tensor:
        """Kept positions of ``x`` [N, W] (bool mask)."""

    def _mask_groups(self, mask: Tensor) -> tuple[Tensor, int]:
        """Scale group of every kept entry (row-major order), and the number of groups."""
        rows, width = mask.shape
        n, g = self._groups(width) if width else (0, 0)
        nz = mask.reshape(rows, n, g).nonzero()
        return nz[:, 0] * n + nz[:, 1], rows * n

    @override
    def encode_forward(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        rows, width = x.shape
        x = x.detach().float()
        mask = self.select(x)
        n, g = self._groups(width)
        m3 = mask.reshape(rows, n, g)
        dtype = self._idx_dtype(g)
        index = m3.nonzero()[:, 2].to(dtype) if dtype is not None else _pack_bits(m3)  # sorted indices or bitmask
        values = quantize_values(x[mask], *self._mask_groups(mask), self.bits, levels=self.levels)
        return torch.cat([_as_bytes(index), values]), mask

    @override
    def decode_forward(self, b: Tensor, rows: int, width: int) -> tuple[Tensor, Tensor | None]:
        n, g = self._groups(width)
        ib = rows * self._index_bytes(width)
        dtype = self._idx_dtype(g)
        if dtype is not None:
            idx = _from_bytes(b[:ib], dtype).long().reshape(rows * n, -1)
            m3 = torch.zeros(rows * n, g, dtype=torch.bool, device=b.device).scatter_(1, idx, True)
        else:
            m3 = _unpack_bits(b[:ib].reshape(rows, n, (g + 7) // 8), g)
        mask = m3.reshape(rows, width)
        out = torch.zeros(rows, width, device=b.device)
        out[mask] = dequantize_values(b[ib:], *self._mask_groups(mask), self.bits, self.levels)
        return out, mask

    @override
    def encode_backward(self, grad: Tensor, mask: Tensor | None, generator: torch.Generator | None = None) -> Tensor:
        if mask is None:
            raise ValueError(f"the {self.name!r} codec sends gradients at the kept positions: pass the forward mask")
        return quantize_values(grad[mask], *self._mask_groups(mask), self.grad_bits, generator, self.levels)

    @override
    def decode_backward(self, b: Tensor, rows: int, width: int, mask: Tensor | None) -> Tensor:
        if mask is None:
            raise ValueError(f"the {self.name!r} codec receives gradients at the kept positions: pass the forward mask")
        out = torch.zeros(rows, width, device=b.device)
        out[mask] = dequantize_values(b, *self._mask_groups(mask), self.grad_bits, self.levels)
        return out


class TopKCodec(SparseCodec):
    """Each row's (group's) largest-magnitude entries; positions as indices where smaller than a bitmask."""

    name = "topk"

    @override
    def _idx_dtype(self, g: int) -> torch.dtype | None:
        size, dtype = (1, torch.uint8) if g <= 256 else (2, torch.int16) if g <= 32767 else (4, torch.int32)
        k = min(g, max(1, math.ceil(self.keep_ratio * g)))
        return dtype if k * size < (g + 7) // 8 else None

    @override
    def select(self, x: Tensor) -> Tensor:
        rows, width = x.shape
        n, g = self._groups(width)
        a = x.detach().abs().reshape(rows, n, g)
        idx = torch.topk(a, self.k(width) // max(n, 1), dim=2, sorted=False).indices
        return torch.zeros_like(a, dtype=torch.bool).scatter_(2, idx, True).reshape(rows, width)


class ThresholdCodec(SparseCodec):
    """Entries over a per-group threshold refreshed every ``refresh_interval`` steps; variable payloads."""

    name = "threshold"
    variable_size = True

    @override
    def select(self, x: Tensor) -> Tensor:
        rows, width = x.shape
        n, g = self._groups(width)
        a = x.detach().abs().reshape(rows, n, g)
        if self.tau is None:
            raise RuntimeError("threshold codec has no threshold yet: call refresh(x) on a training step first")
        return (a >= self.tau.to(a.device).view(1, n, 1)).reshape(rows, width)

    @override
    def refresh_due(self, step: int) -> bool:
        return step >= self.start_step and (step - self.start_step) % self.refresh_interval == 0

    @property
    @override
    def ready(self) -> bool:
        return self.step >= self.start_step and self.tau is not None

    def refresh(self, x: Tensor) -> None:
        """Re-estimate the per-group thresholds from ``x`` [N, W]: the ``keep_ratio`` upper quantile of a
        sample of each group's entries (exact where a group has at most ``sample_size`` entries)."""
        rows, width = x.shape
        n, g = self._groups(width)
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.step)
        a = x.detach().float().reshape(rows, n, g).transpose(0, 1).reshape(n, rows * g)
        self.tau = torch.tensor([sampled_threshold(a[j], self.keep_ratio, self.sample_size, gen) if a.shape[1] else 0.0
                                 for j in range(n)], dtype=torch.float32)  # fmt: skip
        self.refresh_steps.append(self.step)
