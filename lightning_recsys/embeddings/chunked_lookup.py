"""The autograd functions behind a chunked table's lookup: all chunks kept (one fused pass with a
single ``index_add_`` backward), and pruned (gather from the compact pool, per-chunk gradient norms
for the utilities)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

if TYPE_CHECKING:
    from .chunked import ChunkedEmbeddingBase

__all__ = ["AllKeptLookup", "PrunedLookup"]


class AllKeptLookup(torch.autograd.Function):
    """Lookup while every chunk is kept (``sum``/``mean`` bags and plain embeddings).

    Forward: ``F.embedding`` / ``F.embedding_bag`` on ``pool[1:]`` seen as the dense ``[num_rows, d]`` table
    (bit-exact with the dense modules). Backward: the gradient of every access (its bag's, times its weight
    or 1 over the bag size) is added straight into a pool-shaped gradient (``index_add_``: no slice round
    trip, no sort), and when tracking, its per-chunk L2 norms go to ``grad_norm_acc``.
    """

    @staticmethod
    def forward(ctx, pool: Tensor, weights: Tensor | None, table: ChunkedEmbeddingBase, input: Tensor, offsets: Tensor | None, dense: bool = False) -> Tensor:
        weight = pool if dense else table._dense_view(pool)  # dense: ``pool`` is a [num_rows, d] table
        if table.is_bag:
            out = F.embedding_bag(
                input, weight, offsets, mode=table.mode, per_sample_weights=weights,
                include_last_offset=table.include_last_offset, padding_idx=table.padding_idx,
            )  # fmt: skip
        else:
            out = F.embedding(input, weight, table.padding_idx)
        ctx.table, ctx.input, ctx.offsets, ctx.acc, ctx.dense = table, input, offsets, table.grad_norm_acc, dense
        ctx.save_for_backward(pool, weights)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:
        pool, weights = ctx.saved_tensors
        table, input, offsets = ctx.table, ctx.input, ctx.offsets
        view = (lambda t: t) if ctx.dense else table._dense_view
        grad = grad.reshape(-1, table.embedding_dim)
        ids, bag_of, factor = table._accesses(input, offsets, weights)
        per_access = grad if bag_of is None else grad.index_select(0, bag_of)
        if ctx.acc is not None:  # per-chunk norms of every access's gradient: the bag's norms times |factor|
            norms = table._chunk_norms(grad)
            norms = norms if bag_of is None else norms.index_select(0, bag_of)
            ctx.acc.index_add_(0, ids, norms if factor is None else norms * factor.abs().unsqueeze(1))
            if table.access_acc is not None:
                table.access_acc.index_add_(0, ids, norms.new_ones(ids.numel()))
        grad_pool = grad_weights = None
        if ctx.needs_input_grad[0]:
            g = per_access if factor is None else per_access * factor.unsqueeze(1).to(grad.dtype)
            if table.padding_idx is not None and not table.is_bag:
                g = g.masked_fill((ids == table.padding_idx).unsqueeze(1), 0)  # the padding row gets no gradient
            grad_pool = pool.new_zeros(pool.shape)
            view(grad_pool).index_add_(0, ids, g.to(pool.dtype))
        if weights is not None and ctx.needs_input_grad[1]:
            gw = (per_access * view(pool).index_select(0, ids)).sum(1)
            if table.padding_idx is not None:
                gw = gw * (ids != table.padding_idx).to(gw.dtype)
            grad_weights = weights.new_zeros(weights.numel())
            grad_weights[: gw.numel()] = gw
            grad_weights = grad_weights.view(weights.shape)
        return grad_pool, grad_weights, None, None, None, None


class PrunedLookup(torch.autograd.Function):
    """Lookup once chunks are pruned: ``pool[slots]`` as ``[N, d]``; backward adds every access's gradient
    into a pool-shaped gradient with one ``index_add_`` (slot 0 and padded ids get none) and records the
    per-chunk norms (and access counts) when tracking: no autograd hook, no sort."""

    @staticmethod
    def forward(ctx, pool: Tensor, table: ChunkedEmbeddingBase, ids: Tensor, track: bool) -> Tensor:
        slots = table._slots(ids)
        ctx.table, ctx.ids, ctx.slots, ctx.track = table, ids, slots, track
        ctx.shape = pool.shape
        return pool.index_select(0, slots.flatten()).view(ids.numel(), table.embedding_dim)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:
        table, ids = ctx.table, ctx.ids
        if ctx.track and table.grad_norm_acc is not None:
            table.grad_norm_acc.index_add_(0, ids, table._chunk_norms(grad))
            if table.access_acc is not None:
                table.access_acc.index_add_(0, ids, grad.new_ones(ids.numel(), dtype=torch.float32))
        if table.padding_idx is not None:
            grad = grad.masked_fill((ids == table.padding_idx).unsqueeze(1), 0)
        grad_pool = grad.new_zeros(ctx.shape).index_add_(0, ctx.slots.flatten(), grad.reshape(-1, table.chunk_size))
        grad_pool[0] = 0
        return grad_pool, None, None, None
