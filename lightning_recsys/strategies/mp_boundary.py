"""DCT's model-parallel half: codecs for the pooled-embedding all-to-all, as a custom autograd Function.

Rows (one per sample and owner rank) of the boundary tensor are encoded into a fixed number of bytes,
exchanged with one ``all_to_all_single`` on a ``uint8`` buffer, and decoded; the backward pass sends the
gradients the same way in reverse. Codecs:

- ``"fp32"``: uncompressed (4 bytes per entry each way).
- ``"fp16"``, ``"int8"`` (row-wise absmax scale): the qcomms-style anchors, both directions quantized.
- ``"topk"``: DCT. Forward keeps each row's ``k = ceil(keep_ratio * width)`` largest-magnitude entries
  and sends fp32 values + indices in the smallest type that fits (uint8, int16, int32); backward sends
  only the gradients at those positions (values only: the receiver already knows the indices).

Example:
    >>> import torch
    >>> codec = BoundaryCodec("topk", keep_ratio=0.25)
    >>> x = torch.tensor([[0.1, -3.0, 0.2, 2.0]])
    >>> payload, idx = codec.encode_forward(x)
    >>> codec.decode_forward(payload, width=4)[0].tolist()
    [[0.0, -3.0, 0.0, 0.0]]
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["BoundaryCodec", "boundary_all_to_all", "CODECS"]

Codec = Literal["fp32", "fp16", "int8", "topk"]
CODECS: tuple[str, ...] = ("fp32", "fp16", "int8", "topk")


def _as_bytes(t: Tensor) -> Tensor:
    return t.contiguous().view(torch.uint8).reshape(t.shape[0], -1)


def _from_bytes(b: Tensor, dtype: torch.dtype) -> Tensor:
    return b.contiguous().view(dtype)


class BoundaryCodec:
    """Row codec of the embedding boundary; ``keep_ratio`` only matters for ``"topk"``."""

    def __init__(self, name: Codec = "fp32", keep_ratio: float = 0.05) -> None:
        if name not in CODECS:
            raise ValueError(f"codec must be one of {CODECS}, got {name!r}")
        if isinstance(keep_ratio, bool) or not isinstance(keep_ratio, (int, float)) or not 0 < keep_ratio <= 1:
            raise ValueError(f"keep_ratio must be a number in (0, 1], got {keep_ratio!r}")
        self.name = name
        self.keep_ratio = float(keep_ratio)

    def k(self, width: int) -> int:
        return min(width, max(1, math.ceil(self.keep_ratio * width))) if width else 0

    def _idx_dtype(self, width: int) -> torch.dtype:
        if width <= 256:
            return torch.uint8
        return torch.int16 if width <= 32767 else torch.int32

    def forward_row_bytes(self, width: int) -> int:
        if self.name == "topk":
            return self.k(width) * (4 + torch.empty(0, dtype=self._idx_dtype(width)).element_size())
        return {"fp32": 4 * width, "fp16": 2 * width, "int8": width + 4}[self.name]

    def backward_row_bytes(self, width: int) -> int:
        return 4 * self.k(width) if self.name == "topk" else self.forward_row_bytes(width)

    def _dense_encode(self, x: Tensor) -> Tensor:
        x = x.float()
        if self.name == "fp32":
            return _as_bytes(x)
        if self.name == "fp16":
            return _as_bytes(x.half())
        scale = x.abs().amax(dim=1, keepdim=True).clamp_min(1e-30) / 127.0
        q = torch.round(x / scale).clamp_(-127, 127).to(torch.int8)
        return torch.cat([_as_bytes(scale), _as_bytes(q)], dim=1)

    def _dense_decode(self, b: Tensor, width: int) -> Tensor:
        if self.name == "fp32":
            return _from_bytes(b, torch.float32)
        if self.name == "fp16":
            return _from_bytes(b, torch.float16).float()
        scale = _from_bytes(b[:, :4], torch.float32)
        return _from_bytes(b[:, 4:], torch.int8).float() * scale

    def encode_forward(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """``x`` [N, W] -> (payload uint8 [N, forward_row_bytes(W)], kept indices [N, k] or None)."""
        if self.name != "topk":
            return self._dense_encode(x), None
        width = x.shape[1]
        idx = torch.topk(x.detach().abs(), self.k(width), dim=1, sorted=False).indices
        values = x.gather(1, idx).float()
        return torch.cat([_as_bytes(values), _as_bytes(idx.to(self._idx_dtype(width)))], dim=1), idx

    def decode_forward(self, b: Tensor, width: int) -> tuple[Tensor, Tensor | None]:
        """payload [N, P] -> (dense [N, width] float32, kept indices or None)."""
        if self.name != "topk":
            return self._dense_decode(b, width), None
        k = self.k(width)
        values = _from_bytes(b[:, : 4 * k], torch.float32)
        idx = _from_bytes(b[:, 4 * k :], self._idx_dtype(width)).long()
        out = torch.zeros(b.shape[0], width, dtype=torch.float32, device=b.device)
        return out.scatter_(1, idx, values), idx

    def encode_backward(self, grad: Tensor, idx: Tensor | None) -> Tensor:
        if self.name != "topk":
            return self._dense_encode(grad)
        return _as_bytes(grad.float().gather(1, idx))

    def decode_backward(self, b: Tensor, width: int, idx: Tensor | None) -> Tensor:
        if self.name != "topk":
            return self._dense_decode(b, width)
        out = torch.zeros(b.shape[0], width, dtype=torch.float32, device=b.device)
        return out.scatter_(1, idx, _from_bytes(b, torch.float32))


def _exchange(payloads: Tensor, send_rows: list[int], recv_rows: list[int], send_row_bytes: int,
              recv_row_bytes: list[int], group: Any) -> Tensor:
    out = torch.empty(sum(r * w for r, w in zip(recv_rows, recv_row_bytes)), dtype=torch.uint8, device=payloads.device)
    dist.all_to_all_single(
        out,
        payloads.reshape(-1),
        output_split_sizes=[r * w for r, w in zip(recv_rows, recv_row_bytes)],
        input_split_sizes=[r * send_row_bytes for r in send_rows],
        group=group,
    )
    return out


class _BoundaryAllToAll(torch.autograd.Function):
    @staticmethod
    def forward(ctx, local: Tensor, codec: BoundaryCodec, send_rows: list[int], batch: int,
                widths: list[int], group: Any, stats: dict[str, int]) -> Tensor:
        rank = dist.get_rank(group)
        world = len(widths)
        width = widths[rank]
        payload, sent_idx = codec.encode_forward(local)
        recv_bytes = [codec.forward_row_bytes(w) for w in widths]
        raw = _exchange(payload, send_rows, [batch] * world, codec.forward_row_bytes(width), recv_bytes, group)
        stats["forward_bytes"] += payload.numel()
        stats["dense_forward_bytes"] += local.numel() * 4
        blocks, recv_idx, start = [], [], 0
        for w, nb in zip(widths, recv_bytes):
            dense, idx = codec.decode_forward(raw[start : start + batch * nb].reshape(batch, nb), w)
            blocks.append(dense)
            recv_idx.append(idx)
            start += batch * nb
        ctx.codec, ctx.send_rows, ctx.batch, ctx.widths, ctx.group, ctx.stats = codec, send_rows, batch, widths, group, stats
        ctx.sent_idx, ctx.recv_idx, ctx.dtype = sent_idx, recv_idx, local.dtype
        return torch.cat(blocks, dim=1).to(local.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:
        codec, widths, batch = ctx.codec, ctx.widths, ctx.batch
        rank = dist.get_rank(ctx.group)
        parts, start = [], 0
        for w, idx in zip(widths, ctx.recv_idx):
            parts.append(codec.encode_backward(grad[:, start : start + w], idx))
            start += w
        payload = torch.cat([p.reshape(-1) for p in parts]) if parts else grad.new_empty(0, dtype=torch.uint8)
        send_bytes = [codec.backward_row_bytes(w) for w in widths]
        out = torch.empty(sum(ctx.send_rows) * send_bytes[rank], dtype=torch.uint8, device=grad.device)
        dist.all_to_all_single(
            out,
            payload,
            output_split_sizes=[r * send_bytes[rank] for r in ctx.send_rows],
            input_split_sizes=[batch * b for b in send_bytes],
            group=ctx.group,
        )
        ctx.stats["backward_bytes"] += payload.numel()
        ctx.stats["dense_backward_bytes"] += grad.numel() * 4
        rows = out.reshape(sum(ctx.send_rows), send_bytes[rank])
        local_grad = codec.decode_backward(rows, widths[rank], ctx.sent_idx).to(ctx.dtype)
        return local_grad, None, None, None, None, None, None


def boundary_all_to_all(local: Tensor, codec: BoundaryCodec, send_rows: list[int], batch: int,
                        widths: list[int], group: Any, stats: dict[str, int]) -> Tensor:
    """Send row block ``r`` of ``local`` [sum(send_rows), widths[rank]] to rank ``r``; receive this rank's
    ``batch`` rows from every owner and return them side by side: [batch, sum(widths)].

    ``stats`` (a dict of byte counters) is incremented with the bytes handed to the collectives.
    """
    return _BoundaryAllToAll.apply(local, codec, send_rows, batch, widths, group, stats)
