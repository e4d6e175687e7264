"""DCT's model-parallel half: codecs for the pooled-embedding all-to-all, as a custom autograd Function.

A rank's block of the boundary tensor (one row per sample, ``width`` entries: the pooled vectors of the
tables this rank owns, side by side) is encoded into a ``uint8`` payload, exchanged with one
``all_to_all_single`` and decoded; the backward pass sends the gradients the same way in reverse.
Every byte handed to the collectives is counted (values, index bitmasks, scales, sizes).

Codecs:

- ``"fp32"``: uncompressed (4 bytes per entry each way); ``"fp16"``, ``"int8"`` (row-wise fp32 absmax
  scale): every entry, both directions (the qcomms-style anchors).
- ``"quant"`` (``DCTStrategy``'s default): every entry, ``bits`` forward (default 4) and ``grad_bits``
  backward (default 2), on Lloyd-Max Gaussian levels (``levels="gaussian"``, default; or uniform levels
  under an absmax) times int8 scale codes (``2 ** (e / 4)``, i.e. ~19% steps over ~2**+-32): by default
  factored (``scales="factored"``): one code per table (group column) of the block times one per sample
  (row), i.e. ~4.03 bits forward + ~2.04 backward per entry at 16-wide tables, vs 32 + 32 for fp32;
  ``scales="group"``: one code per table vector of each sample (+0.5 bit per entry at 16 entries).
  1 bit: the sign times the scale group's mean ``|g|``.
- ``"topk"`` (DCT's sparse boundary): forward keeps each row's (group's) ``ceil(keep_ratio * width)``
  largest-magnitude entries; ``"threshold"``: the entries with ``|x| >= tau``, ``tau`` per group,
  re-estimated every ``refresh_interval`` steps as the ``keep_ratio`` upper quantile of a sample of the
  current boundary tensor (in between only a comparison, so each sample keeps as many entries as pass).
  Both send the kept positions (``k`` indices per group or a ``ceil(group / 8)``-byte bitmask, whichever
  is smaller; always the bitmask for ``"threshold"``, whose payload sizes are exchanged first) and the
  kept values in ``bits`` (default 32); backward sends only the gradients at the kept positions (the
  receiver knows the mask) in ``grad_bits``. ``group=G``: select within each run of ``G`` entries (one
  group per table: every table keeps some of its pooled vector).

Every codec but ``"fp32"`` starts at ``start_step``: earlier training steps send fp32 (a warm-up). The
step counter, thresholds and refresh steps are the codec's state (``state_dict`` / ``load_state_dict``).
Why top-k loses: a kept position is chosen by magnitude, so the dot interactions see a few coordinates
of each vector, and the other coordinates of an embedding row get no gradient from that sample (the
largest keeps winning); benchmarks/dct.py measures it (>= 0.01 AUC lost even at 50% kept).

Example:
    >>> import torch
    >>> codec = BoundaryCodec("topk", keep_ratio=0.25)
    >>> x = torch.tensor([[0.1, -3.0, 0.2, 2.0]])
    >>> payload, mask = codec.encode_forward(x)
    >>> codec.decode_forward(payload, 1, 4)[0].tolist()
    [[0.0, -3.0, 0.0, 0.0]]
    >>> per_pair = BoundaryCodec("topk", keep_ratio=0.5, group=2)
    >>> per_pair.decode_forward(per_pair.encode_forward(x)[0], 1, 4)[0].tolist()
    [[0.0, -3.0, 0.0, 2.0]]
    >>> quant = BoundaryCodec("quant", group=4)  # 4 bits forward: 1 table + 1 row scale byte, 2 bytes for 4 entries
    >>> quant.forward_bytes(1, 4), quant.backward_bytes(1, 4)
    (4, 3)
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
import torch.distributed as dist
from torch import Tensor

from .dp_hook import sampled_threshold
from .mp_quant import (
    Levels,
    _as_bytes,
    _from_bytes,
    _pack_bits,
    _unpack_bits,
    dequantize_factored,
    dequantize_values,
    factored_bytes,
    quantize_factored,
    quantize_values,
    value_bytes,
)

__all__ = ["BoundaryCodec", "boundary_all_to_all", "CODECS", "VALUE_BITS"]

Codec = Literal["fp32", "fp16", "int8", "quant", "topk", "threshold"]
Rounding = Literal["stochastic", "nearest"]
Scales = Literal["group", "factored"]
CODECS: tuple[str, ...] = ("fp32", "fp16", "int8", "quant", "topk", "threshold")
SPARSE: tuple[str, ...] = ("topk", "threshold")
QUANTIZING: tuple[str, ...] = ("quant", "topk", "threshold")
VALUE_BITS: tuple[int, ...] = (32, 16, 8, 4, 3, 2, 1)


class BoundaryCodec:
    """Codec of the embedding boundary (see the module docstring).

    Args:
        name: one of :data:`CODECS`.
        keep_ratio: fraction of entries kept by ``"topk"`` / targeted by ``"threshold"``, in (0, 1].
        group: ``None``: select (and scale) over the whole row; ``G``: within each run of ``G`` entries.
        bits: precision of the values sent forward, one of :data:`VALUE_BITS` (``"quant"``: default 4;
            ``"topk"`` / ``"threshold"``: default 32); only for those three codecs.
        grad_bits: precision of the gradients sent backward (``"quant"``: default 2; 1 is a scale
            ``mean |g|`` times the sign; the sparse codecs: default ``bits``).
        grad_rounding: ``"nearest"`` (default) or ``"stochastic"`` (unbiased, but noisier: it cost AUC
            in benchmarks/dct.py) rounding of quantized gradients; forward values always go to nearest.
        levels: 2-4 bit values on ``"uniform"`` levels under the group's absmax (the sparse codecs'
            default) or on the ``"gaussian"`` Lloyd-Max levels times the group's RMS (``"quant"``'s
            default: lower error, e.g. 3x for 2 bits).
        scales: ``"quant"``'s scale layout: ``"factored"`` (its default: one int8 scale code per group
            column of the block, i.e. per table, times one per row, i.e. per sample: ``rows + groups``
            scale bytes, see :func:`~lightning_recsys.strategies.mp_quant.quantize_factored`) or
            ``"group"`` (one per group, i.e. per table vector of every sample: ``rows * groups`` bytes).
        start_step: training steps before this one send fp32 (warm-up).
        refresh_interval: ``"threshold"``: steps between threshold refreshes.
        sample_size: ``"threshold"``: entries sampled (per group) to estimate each threshold.
        seed: seed of that sampling and of stochastic rounding.
    """

    def __init__(self, name: Codec = "fp32", keep_ratio: float = 0.05, group: int | None = None, bits: int | None = None,
                 grad_bits: int | None = None, grad_rounding: Rounding = "nearest", levels: Levels | None = None,
                 scales: Scales | None = None, start_step: int = 0, refresh_interval: int = 100, sample_size: int = 8192, seed: int = 0) -> None:  # fmt: skip
        if name not in CODECS:
            raise ValueError(f"codec must be one of {CODECS}, got {name!r}")
        if isinstance(keep_ratio, bool) or not isinstance(keep_ratio, (int, float)) or not 0 < keep_ratio <= 1:
            raise ValueError(f"keep_ratio must be a number in (0, 1], got {keep_ratio!r}")
        if group is not None and (isinstance(group, bool) or not isinstance(group, int) or group < 1):
            raise ValueError(f"group must be None or an integer >= 1, got {group!r}")
        for arg, value in (("bits", bits), ("grad_bits", grad_bits)):
            if value is None:
                continue
            if name not in QUANTIZING:
                raise ValueError(f"{arg} applies to the codecs {QUANTIZING} only, not {name!r}")
            if isinstance(value, bool) or value not in VALUE_BITS:
                raise ValueError(f"{arg} must be one of {VALUE_BITS}, got {value!r}")
        levels = levels if levels is not None else "gaussian" if name == "quant" else "uniform"
        scales = scales if scales is not None else "factored" if name == "quant" else "group"
        if levels not in ("uniform", "gaussian"):
            raise ValueError(f"levels must be 'uniform' or 'gaussian', got {levels!r}")
        if scales not in ("group", "factored"):
            raise ValueError(f"scales must be 'group' or 'factored', got {scales!r}")
        if scales == "factored" and name != "quant":
            raise ValueError(f"scales='factored' applies to the 'quant' codec only, not {name!r}")
        if grad_rounding not in ("stochastic", "nearest"):
            raise ValueError(f"grad_rounding must be 'stochastic' or 'nearest', got {grad_rounding!r}")
        for arg, value, lo in (("start_step", start_step, 0), ("refresh_interval", refresh_interval, 1),
                               ("sample_size", sample_size, 1), ("seed", seed, 0)):  # fmt: skip
            if isinstance(value, bool) or not isinstance(value, int) or value < lo:
                raise ValueError(f"{arg} must be an integer >= {lo}, got {value!r}")
        self.name, self.keep_ratio, self.group = name, float(keep_ratio), group
        self.bits = bits if bits is not None else {"quant": 4, "fp16": 16}.get(name, 32)
        self.grad_bits = grad_bits if grad_bits is not None else 2 if name == "quant" else self.bits
        self.grad_rounding, self.levels, self.scales = grad_rounding, levels, scales
        self.start_step, self.refresh_interval, self.sample_size, self.seed = start_step, refresh_interval, sample_size, seed
        self.step = 0
        self.tau: Tensor | None = None  # "threshold": one per group of this rank's block
        self.refresh_steps: list[int] = []

    def __repr__(self) -> str:
        opts = f", bits={self.bits}, grad_bits={self.grad_bits}, group={self.group}" if self.name in QUANTIZING else ""
        opts += f", levels={self.levels!r}, scales={self.scales!r}" if self.name == "quant" else ""
        opts += f", keep_ratio={self.keep_ratio}" if self.sparse else ""
        return f"BoundaryCodec({self.name!r}{opts})"

    @property
    def sparse(self) -> bool:
        return self.name in SPARSE

    # ------------------------------------------------------------------ layout
    def _groups(self, width: int) -> tuple[int, int]:
        """(groups per row, entries per group) of a row of ``width``."""
        if self.group is None or not width:
            return 1, width
        if width % self.group:
            raise ValueError(f"row width {width} is not a multiple of the codec's group {self.group}")
        return width // self.group, self.group

    def k(self, width: int) -> int:
        """Entries kept per row of ``width`` by ``"topk"`` (the target for ``"threshold"``)."""
        n, g = self._groups(width)
        return n * min(g, max(1, math.ceil(self.keep_ratio * g))) if g else 0

    def _idx_dtype(self, g: int) -> torch.dtype | None:
        """Index type of ``"topk"`` positions, or ``None`` where a bitmask is smaller."""
        size, dtype = (1, torch.uint8) if g <= 256 else (2, torch.int16) if g <= 32767 else (4, torch.int32)
        k = min(g, max(1, math.ceil(self.keep_ratio * g)))
        return dtype if self.name == "topk" and k * size < (g + 7) // 8 else None

    def _index_bytes(self, width: int) -> int:
        n, g = self._groups(width)
        dtype = self._idx_dtype(g)
        return n * (self.k(width) // max(n, 1)) * dtype.itemsize if dtype is not None else n * ((g + 7) // 8)

    def forward_bytes(self, rows: int, width: int, kept: int | None = None) -> int:
        """Payload bytes of ``rows`` rows of ``width`` (``kept``: entries kept, needed for ``"threshold"``)."""
        if self.name == "fp32":
            return 4 * rows * width
        if self.name == "fp16":
            return 2 * rows * width
        if self.name == "int8":
            return rows * (width + 4) if width else 0
        groups = rows * self._groups(width)[0] if width else 0
        if self.name == "quant":
            return self._dense_bytes(rows, width, self.bits)
        kept = rows * self.k(width) if kept is None else kept
        return rows * self._index_bytes(width) + value_bytes(kept, groups, self.bits)

    def backward_bytes(self, rows: int, width: int, kept: int | None = None) -> int:
        if self.name not in QUANTIZING:
            return self.forward_bytes(rows, width)
        if self.name == "quant":
            return self._dense_bytes(rows, width, self.grad_bits)
        groups = rows * self._groups(width)[0] if width else 0
        return value_bytes(rows * self.k(width) if kept is None else kept, groups, self.grad_bits)

    def _dense_bytes(self, rows: int, width: int, bits: int) -> int:
        """``"quant"``: bytes of a [rows, width] block at ``bits``."""
        if self.scales == "factored":
            return factored_bytes(rows, width, self._groups(width)[1], bits)
        return value_bytes(rows * width, rows * self._groups(width)[0] if width else 0, bits)

    # ------------------------------------------------------------------ selection
    def select(self, x: Tensor) -> Tensor:
        """Kept positions of ``x`` [N, W] (bool mask) for the sparse codecs."""
        rows, width = x.shape
        n, g = self._groups(width)
        a = x.detach().abs().reshape(rows, n, g)
        if self.name == "threshold":
            if self.tau is None:
                raise RuntimeError("threshold codec has no threshold yet: call refresh(x) on a training step first")
            return (a >= self.tau.to(a.device).view(1, n, 1)).reshape(rows, width)
        idx = torch.topk(a, self.k(width) // max(n, 1), dim=2, sorted=False).indices
        return torch.zeros_like(a, dtype=torch.bool).scatter_(2, idx, True).reshape(rows, width)

    def refresh_due(self, step: int) -> bool:
        return self.name == "threshold" and step >= self.start_step and (step - self.start_step) % self.refresh_interval == 0

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

    # ------------------------------------------------------------------ encode / decode
    def _all_groups(self, rows: int, width: int) -> tuple[int, int]:
        """(entries per scale group, number of groups) of a dense [rows, width] block."""
        n, g = self._groups(width) if width else (0, 0)
        return g, rows * n

    def _mask_groups(self, mask: Tensor) -> tuple[Tensor, int]:
        """Scale group of every kept entry (row-major order), and the number of groups."""
        rows, width = mask.shape
        n, g = self._groups(width) if width else (0, 0)
        nz = mask.reshape(rows, n, g).nonzero()
        return nz[:, 0] * n + nz[:, 1], rows * n

    def encode_forward(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """``x`` [N, W] -> (flat uint8 payload, kept mask [N, W] or None for dense codecs)."""
        rows, width = x.shape
        x = x.detach().float()
        if self.name == "fp32":
            return _as_bytes(x), None
        if self.name == "fp16":
            return _as_bytes(x.half()), None
        if self.name == "int8":
            if not width:
                return x.new_empty(0, dtype=torch.uint8), None
            scale = x.abs().amax(dim=1, keepdim=True).clamp_min(1e-30) / 127.0
            return torch.cat([_as_bytes(scale), _as_bytes(torch.round(x / scale).clamp_(-127, 127).to(torch.int8))]), None
        if self.name == "quant":
            return self._quantize(x, self.bits), None
        mask = self.select(x)
        n, g = self._groups(width)
        m3 = mask.reshape(rows, n, g)
        dtype = self._idx_dtype(g)
        index = m3.nonzero()[:, 2].to(dtype) if dtype is not None else _pack_bits(m3)  # sorted indices or bitmask
        values = quantize_values(x[mask], *self._mask_groups(mask), self.bits, levels=self.levels)
        return torch.cat([_as_bytes(index), values]), mask

    def decode_forward(self, b: Tensor, rows: int, width: int) -> tuple[Tensor, Tensor | None]:
        """payload -> (dense [rows, width] float32, kept mask or None)."""
        if self.name == "fp32":
            return _from_bytes(b, torch.float32).reshape(rows, width), None
        if self.name == "fp16":
            return _from_bytes(b, torch.float16).float().reshape(rows, width), None
        if self.name == "int8":
            if not width:
                return torch.zeros(rows, 0, device=b.device), None
            scale = _from_bytes(b[: 4 * rows], torch.float32).reshape(rows, 1)
            return _from_bytes(b[4 * rows :], torch.int8).float().reshape(rows, width) * scale, None
        if self.name == "quant":
            return self._dequantize(b, rows, width, self.bits), None
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

    def _quantize(self, x: Tensor, bits: int, generator: torch.Generator | None = None) -> Tensor:
        """``"quant"``: a dense [rows, width] block -> bytes (group or factored scales)."""
        rows, width = x.shape
        if self.scales == "factored":
            return quantize_factored(x, self._groups(width)[1], bits, generator, self.levels)
        return quantize_values(x.reshape(-1), *self._all_groups(rows, width), bits, generator, self.levels)

    def _dequantize(self, b: Tensor, rows: int, width: int, bits: int) -> Tensor:
        if self.scales == "factored":
            return dequantize_factored(b, rows, width, self._groups(width)[1], bits, self.levels)
        return dequantize_values(b, *self._all_groups(rows, width), bits, self.levels).reshape(rows, width)

    def _generator(self, rank: int) -> torch.Generator | None:
        if self.grad_bits >= 16 or self.grad_rounding == "nearest":
            return None
        return torch.Generator().manual_seed((self.seed * 1_000_003 + self.step) * 4099 + rank)

    def encode_backward(self, grad: Tensor, mask: Tensor | None, generator: torch.Generator | None = None) -> Tensor:
        """Gradient [N, W] -> payload: every entry (``"quant"``), only the kept positions (sparse codecs),
        or as forward (the other dense codecs). ``generator``: stochastic rounding of quantized gradients."""
        if self.name not in QUANTIZING:
            return self.encode_forward(grad)[0]
        rows, width = grad.shape
        if mask is None:
            return self._quantize(grad, self.grad_bits, generator)
        return quantize_values(grad[mask], *self._mask_groups(mask), self.grad_bits, generator, self.levels)

    def decode_backward(self, b: Tensor, rows: int, width: int, mask: Tensor | None) -> Tensor:
        if self.name not in QUANTIZING:
            return self.decode_forward(b, rows, width)[0]
        if mask is None:
            return self._dequantize(b, rows, width, self.grad_bits)
        out = torch.zeros(rows, width, device=b.device)
        out[mask] = dequantize_values(b, *self._mask_groups(mask), self.grad_bits, self.levels)
        return out

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        tau = None if self.tau is None else self.tau.clone()
        return {"step": self.step, "tau": tau, "refresh_steps": list(self.refresh_steps)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])
        self.tau = None if state["tau"] is None else state["tau"].clone()
        self.refresh_steps = list(state["refresh_steps"])


_FP32 = BoundaryCodec("fp32")


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
        if codec.name == "threshold":  # variable payloads: exchange their sizes first (counted too)
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
        ctx.codec, ctx.send_rows, ctx.batch, ctx.widths, ctx.group, ctx.stats = codec, send_rows, batch, widths, group, stats
        ctx.sent_masks, ctx.recv_masks, ctx.dtype = sent_masks, recv_masks, local.dtype
        return torch.cat(outs, dim=1).to(local.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:
        codec, widths, batch = ctx.codec, ctx.widths, ctx.batch
        rank = dist.get_rank(ctx.group)
        gen = codec._generator(rank)
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
    ready = codec.step >= codec.start_step and (codec.name != "threshold" or codec.tau is not None)
    active = codec if ready else _FP32
    out = _BoundaryAllToAll.apply(local, active, send_rows, batch, widths, group, stats)
    if training:
        codec.step += 1
    return out
