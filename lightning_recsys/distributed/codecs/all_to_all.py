"""The pooled-embedding all-to-all of the sharded collection, through a boundary codec (an autograd Function).

A rank's block of the boundary tensor (one row per sample, ``width`` entries: the pooled vectors of the
tables this rank owns, side by side) is encoded into a ``uint8`` payload, exchanged with one
``all_to_all_single`` and decoded; the backward pass sends the gradients the same way in reverse.
Every byte handed to the collectives is counted (values, index bitmasks, scales, sizes). Every codec
but ``"fp32"`` starts at its ``start_step``: earlier training steps send fp32 (a warm-up).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from .base import BoundaryCodec
from .cast import Fp32Codec

__all__ = ["boundary_all_to_all"]

_FP32 = Fp32Codec()


def _exchange(payload: Tensor, send_sizes: list[int], recv_sizes: list[int], group: Any) -> Tensor:
    out = torch.empty(sum(recv_sizes), dtype=torch.uint8, device=payload.device)
    dist.all_to_all_single(out, payload, output_split_sizes=recv_sizes, input_split_sizes=send_sizes, group=group)
    return out


class _BoundaryAllToAll(torch.autograd.Function):
    @staticmethod
    def forward(ctx, local: Tensor, codec: BoundaryCodec, send_rows: list[int], batch: int,
                widths: list[int], group: Any, stats: dict[str, int]) -> Tensor:  # fmt: skip
        payloads, sent_masks = zip(*(codec.encode_forward(blk) for blk in local.split(send_rows)))
        send_sizes = [p.numel() for p in payloads]
        if codec.variable_size:  # variable payloads: exchange their sizes first (counted too)
            sizes = torch.tensor(send_sizes, dtype=torch.int64, device=local.device)
            got = torch.empty_like(sizes)
            dist.all_to_all_single(got, sizes, group=group)
            recv_sizes = got.tolist()
            stats["forward_bytes"] += sizes.numel() * 8
        else:
            recv_sizes = [codec.forward_bytes(batch, w) for w in widths]
        raw = _exchange(torch.cat(payloads), send_sizes, recv_sizes, group)
        stats["forward_bytes"] += sum(send_sizes)
        stats["dense_forward_bytes"] += local.numel() * 4
        outs, recv_masks = [], []
        for w, chunk in zip(widths, raw.split(recv_sizes)):
            dense, mask = codec.decode_forward(chunk, batch, w)
            outs.append(dense)
            recv_masks.append(mask)
        ctx.codec, ctx.send_rows, ctx.widths, ctx.group, ctx.stats = codec, send_rows, widths, group, stats
        ctx.sent_masks, ctx.recv_masks, ctx.dtype = sent_masks, recv_masks, local.dtype
        return torch.cat(outs, dim=1).to(local.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:
        codec, widths = ctx.codec, ctx.widths
        rank = dist.get_rank(ctx.group)
        gen = codec.generator(rank)
        parts = [codec.encode_backward(g, m, gen) for g, m in zip(grad.float().split(widths, dim=1), ctx.recv_masks)]
        send_sizes = [p.numel() for p in parts]
        recv_sizes = [codec.backward_bytes(r, widths[rank], None if m is None else int(m.sum()))
                      for r, m in zip(ctx.send_rows, ctx.sent_masks)]  # fmt: skip
        raw = _exchange(torch.cat(parts), send_sizes, recv_sizes, ctx.group)
        ctx.stats["backward_bytes"] += sum(send_sizes)
        ctx.stats["dense_backward_bytes"] += grad.numel() * 4
        blocks = zip(raw.split(recv_sizes), ctx.send_rows, ctx.sent_masks)
        local = [codec.decode_backward(c, r, widths[rank], m) for c, r, m in blocks]
        return torch.cat(local).to(ctx.dtype), None, None, None, None, None, None


def boundary_all_to_all(local: Tensor, codec: BoundaryCodec, send_rows: list[int], batch: int,
                        widths: list[int], group: Any, stats: dict[str, int], training: bool = False) -> Tensor:  # fmt: skip
    """Send row block ``r`` of ``local`` [sum(send_rows), widths[rank]] to rank ``r``; receive this rank's
    ``batch`` rows from every owner and return them side by side: [batch, sum(widths)].

    ``stats`` (a dict of byte counters) is incremented with the bytes handed to the collectives. With
    ``training=True`` this call is one training step of ``codec``: fp32 before its ``start_step``, a
    threshold refresh when one is due, and the step counter advances (every rank must agree).
    """
    if training and codec.refresh_due(codec.step):
        codec.refresh(local)
    active = codec if codec.ready else _FP32
    out = _BoundaryAllToAll.apply(local, active, send_rows, batch, widths, group, stats)
    if training:
        codec.step += 1
    return out
