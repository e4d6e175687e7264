"""DCT's model-parallel half: codecs for the pooled-embedding all-to-all, as a custom autograd Function.

Rows (one per sample and owner rank) of the boundary tensor are encoded into a fixed number of bytes,
exchanged with one ``all_to_all_single`` on a ``uint8`` buffer, and decoded; the backward pass sends the
gradients the same way in reverse. Codecs:

- ``"fp32"``: uncompressed (4 bytes per entry each way).
- ``"fp16"``, ``"int8"`` (row-wise absmax scale): the qcomms-style anchors, both directions quantized.
- ``"topk"``: DCT. Forward keeps each row's ``k = ceil(keep_ratio * width)`` largest-magnitude entries
  and sends fp32 values + indices in the smallest type that fits (uint8, int16, int32); backward sends
  only the gradients at those positions (values only: the receiver already knows the indices).
  With ``group=G`` the top-k runs within every group of ``G`` consecutive entries of a row instead
  (``ceil(keep_ratio * G)`` per group): the sharded collection uses one group per table, so every
  table keeps some of its pooled vector for every sample, rather than the tables with the largest
  activations taking the whole budget (which starves the others of gradient for good).

Example:
    >>> import torch
    >>> codec = BoundaryCodec("topk", keep_ratio=0.25)
    >>> x = torch.tensor([[0.1, -3.0, 0.2, 2.0]])
    >>> payload, idx = codec.encode_forward(x)
    >>> codec.decode_forward(payload, width=4)[0].tolist()
    [[0.0, -3.0, 0.0, 0.0]]
    >>> per_pair = BoundaryCodec("topk", keep_ratio=0.5, group=2)
    >>> per_pair.decode_forward(per_pair.encode_forward(x)[0], width=4)[0].tolist()
    [[0.0, -3.0, 0.0, 2.0]]
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
    """[N, W] of any dtype -> [N, W * itemsize] uint8."""
    return t.reshape(-1).view(torch.uint8).reshape(t.shape[0], t.shape[1] * t.dtype.itemsize)


def _from_bytes(b: Tensor, dtype: torch.dtype) -> Tensor:
    """[N, B] uint8 -> [N, B / itemsize] of ``dtype`` (``reshape(-1)`` copies column slices, even of one row)."""
    return b.reshape(-1).view(dtype).reshape(b.shape[0], b.shape[1] // dtype.itemsize)


class BoundaryCodec:
    """Row codec of the embedding boundary; ``keep_ratio`` and ``group`` only matter for ``"topk"``
    (``group=None``: top-k over the whole row; ``group=G``: top-k within each run of ``G`` entries)."""

    def __init__(self, name: Codec = "fp32", keep_ratio: float = 0.05, group: int | None = None) -> None:
        if name not in CODECS:
            raise ValueError(f"codec must be one of {CODECS}, got {name!r}")
        if isinstance(keep_ratio, bool) or not isinstance(keep_ratio, (int, float)) or not 0 < keep_ratio <= 1:
            raise ValueError(f"keep_ratio must be a number in (0, 1], got {keep_ratio!r}")
        if group is not None and (isinstance(group, bool) or not isinstance(group, int) or group < 1):
            raise ValueError(f"group must be None or an integer >= 1, got {group!r}")
        self.name = name
        self.keep_ratio = float(keep_ratio)
        self.group = group

    def _groups(self, width: int) -> tuple[int, int]:
        """(groups per row, entries per group) of a row of ``width``."""
        if self.group is None or not width:
            return 1, width
        if width % self.group:
            raise ValueError(f"row width {width} is not a multiple of the codec's group {self.group}")
        return width // self.group, self.group

    def k(self, width: int) -> int:
        """Entries kept per row of ``width``."""
        n, g = self._groups(width)
        return n * min(g, max(1, math.ceil(self.keep_ratio * g))) if g else 0

    def _idx_dtype(self, width: int) -> torch.dtype:
        g = self._groups(width)[1]
        if g <= 256:
            return torch.uint8
        return torch.int16 if g <= 32767 else torch.int32

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
        rows, width = x.shape
        n, g = self._groups(width)
        xg = x.reshape(rows * n, g)  # indices are positions within a group
        idx = torch.topk(xg.detach().abs(), self.k(width) // n, dim=1, sorted=False).indices
        values = xg.gather(1, idx).float()
        payload = torch.cat([_as_bytes(values), _as_bytes(idx.to(self._idx_dtype(width)))], dim=1)
        return payload.reshape(rows, self.forward_row_bytes(width)), idx

    def decode_forward(self, b: Tensor, width: int) -> tuple[Tensor, Tensor | None]:
        """payload [N, P] -> (dense [N, width] float32, kept indices or None)."""
        if self.name != "topk":
            return self._dense_decode(b, width), None
        rows = b.shape[0]
        n, g = self._groups(width)
        k = self.k(width) // n
        b = b.reshape(rows * n, b.shape[1] // n)
        values = _from_bytes(b[:, : 4 * k], torch.float32)
        idx = _from_bytes(b[:, 4 * k :], self._idx_dtype(width)).long()
        out = torch.zeros(rows * n, g, dtype=torch.float32, device=b.device)
        return out.scatter_(1, idx, values).reshape(rows, width), idx

    def encode_backward(self, grad: Tensor, idx: Tensor | None) -> Tensor:
        if self.name != "topk":
            return self._dense_encode(grad)
        rows, width = grad.shape
        n, g = self._groups(width)
        kept = grad.float().reshape(rows * n, g).gather(1, idx)
        return _as_bytes(kept).reshape(rows, self.backward_row_bytes(width))

    def decode_backward(self, b: Tensor, width: int, idx: Tensor | None) -> Tensor:
        if self.name != "topk":
            return self._dense_decode(b, width)
        rows = b.shape[0]
        n, g = self._groups(width)
        out = torch.zeros(rows * n, g, dtype=torch.float32, device=b.device)
        return out.scatter_(1, idx, _from_bytes(b.reshape(rows * n, b.shape[1] // n), torch.float32)).reshape(rows, width)


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
