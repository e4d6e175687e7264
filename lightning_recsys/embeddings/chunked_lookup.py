"""The autograd functions behind a chunked table's lookup: all chunks kept (one fused pass with a
single ``index_add_`` backward), and pruned (gather from the compact pool, per-chunk gradient norms
for the utilities)."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

if TYPE_CHECKING:
    from .chunked import ChunkedEmbeddingBase

__all__ = ["AllKeptLookup", "DenseForm", "PrunedLookup", "chunk_norms", "kept_positions", "record"]


@functools.cache
def _chunk_indicator(k: int, c: int, device: torch.device) -> Tensor:
    """``[k * c, k]`` 0/1 matrix: column ``j`` sums the ``c`` columns of chunk ``j``."""
    return torch.eye(k, device=device).repeat_interleave(c, dim=0)


def chunk_norms(grad: Tensor, k: int, c: int) -> Tensor:
    """Per-chunk L2 norms ``[N, k]`` of ``grad [N, k * c]`` (``|grad|`` for ``c = 1``; else a matmul with a 0/1
    chunk indicator: far faster on CPU than a reduction over ``c``-wide blocks)."""
    if c == 1:
        return grad.detach().float().abs()
    sq = grad.detach().float().square()
    return (sq @ _chunk_indicator(k, c, sq.device)).sqrt_()


def record(table: ChunkedEmbeddingBase, ids: Tensor, grad: Tensor, bag_of: Tensor | None = None, factor: Tensor | None = None) -> None:
    """Add the per-chunk L2 norms of every access's gradient (``grad [B, d]`` per output row; access ``i`` reads
    row ``bag_of[i]`` scaled by ``|factor[i]|``) and one access per id to ``table``'s accumulators: one
    ``index_add_`` into the fused ``[num_rows, K + 1]`` buffer whose views are ``grad_norm_acc``/``access_acc``."""
    if table._acc is None:
        return
    k = table.num_chunks
    vals = grad.new_empty(grad.shape[0], k + 1, dtype=torch.float32)
    if table.chunk_size == 1:
        torch.abs(grad.detach(), out=vals[:, :k])
    else:
        vals[:, :k] = chunk_norms(grad, k, table.chunk_size)
    vals[:, k] = 1
    if bag_of is not None:
        vals = vals.index_select(0, bag_of)
    if factor is not None:
        vals[:, :k] *= factor.abs().unsqueeze(1)
    table._acc.index_add_(0, ids, vals)


def kept_positions(table: ChunkedEmbeddingBase) -> Tensor:
    """Row-major position (``row * K + chunk``) of every pool slot after the zero slot (the pool is row-major),
    ``[P]`` int32, cached on the table until its index or pool changes."""
    key = (table.mask.data_ptr(), table.mask._version, table.base.data_ptr(), table.base._version, int(table.pool.shape[0]))
    if table._pos_cache is None or table._pos_cache[0] != key:
        table._pos_cache = (key, table.kept_mask().flatten().nonzero().flatten().to(torch.int32))
    return table._pos_cache[1]


class DenseForm(torch.autograd.Function):
    """A small table's dense ``[num_rows, d]`` form from its pool: forward one ``index_copy_`` of ``pool[1:]``
    to the row-major positions ``pos`` of the kept chunks (pruned ones read 0), backward one gather."""

    @staticmethod
    def forward(ctx, pool: Tensor, table: ChunkedEmbeddingBase, pos: Tensor) -> Tensor:
        ctx.save_for_backward(pos)
        ctx.shape, ctx.chunk = pool.shape, table.chunk_size
        out = pool.new_zeros(table.num_embeddings * table.num_chunks, table.chunk_size)
        out.index_copy_(0, pos.long(), pool[1:])
        return out.view(table.num_embeddings, table.embedding_dim)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:
        (pos,) = ctx.saved_tensors
        grad_pool = grad.new_empty(ctx.shape)
        grad_pool[0] = 0
        torch.index_select(grad.reshape(-1, ctx.chunk), 0, pos, out=grad_pool[1:])
        return grad_pool, None, None


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
            table._record(ids, grad, bag_of, factor)
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
            table._record(ids, grad)
        if table.padding_idx is not None:
            grad = grad.masked_fill((ids == table.padding_idx).unsqueeze(1), 0)
        grad_pool = grad.new_zeros(ctx.shape).index_add_(0, ctx.slots.flatten(), grad.reshape(-1, table.chunk_size))
        grad_pool[0] = 0
        return grad_pool, None, None, None
