"""Quantized embedding tables (row-wise int8 / int4, fp16) that keep ``nn.Embedding`` /
``nn.EmbeddingBag``'s forward signature.

``QuantizedEmbeddingBag`` reads the packed rows with torch's fused
``quantized::embedding_bag_{byte,4bit}_rowwise_offsets`` kernels (ragged bags, empty bags,
``per_sample_weights``, ``include_last_offset``, sum and mean pooling); ``mode="max"`` gathers and
dequantizes the rows, then pools them. ``padding_idx`` ids are left out of every bag, as in
``nn.EmbeddingBag``.

Example:
    >>> import torch
    >>> from torch import nn
    >>> bag = nn.EmbeddingBag(1000, 16, mode="sum")
    >>> qbag = QuantizedEmbeddingBag.from_float(bag, precision="int8")
    >>> ids, offsets = torch.tensor([3, 7, 9]), torch.tensor([0, 1])
    >>> qbag(ids, offsets).shape
    torch.Size([2, 16])
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .precisions import TABLE_BITS, TablePrecision
from .rowwise import dequantize_rowwise, pack_rowwise, packed_row_bytes, unpack_rowwise

__all__ = ["QuantizedEmbedding", "QuantizedEmbeddingBag", "weight_sqnr_db"]

# resolved overloads, called positionally: the per-call lookup and keyword matching of ``torch.ops``
# cost about a third of a 512-id lookup (~10 us of ~32 us)
_BAG_OPS = {
    "int8": torch.ops.quantized.embedding_bag_byte_rowwise_offsets.default,
    "int4": torch.ops.quantized.embedding_bag_4bit_rowwise_offsets.default,
}


def weight_sqnr_db(reference: Tensor, approx: Tensor) -> float:
    """Signal-to-quantization-noise ratio ``10 log10(sum ref^2 / sum (ref - approx)^2)`` in dB
    (``inf`` when exact)."""
    ref = reference.detach().double()
    noise = float((ref - approx.detach().double()).pow(2).sum())
    signal = float(ref.pow(2).sum())
    if noise == 0.0:
        return float("inf")
    if signal == 0.0:
        return float("-inf")
    return 10.0 * torch.log10(torch.tensor(signal / noise)).item()


class _QuantizedTable(nn.Module):
    """Shared storage: ``packed`` uint8 rows (int8/int4) or an fp16 ``weight``."""

    def __init__(self, num_embeddings: int, embedding_dim: int, precision: TablePrecision) -> None:
        super().__init__()
        if precision not in ("int8", "int4", "fp16"):
            raise ValueError(f"precision must be one of 'int8', 'int4', 'fp16', got {precision!r}")
        self.num_embeddings = int(num_embeddings)
        self.embedding_dim = int(embedding_dim)
        self.precision = precision
        self.sqnr_db: float | None = None
        if precision == "fp16":
            self.register_buffer("weight", torch.zeros(num_embeddings, embedding_dim, dtype=torch.float16))
        else:
            nbytes = packed_row_bytes(TABLE_BITS[precision], embedding_dim)
            self.register_buffer("packed", torch.zeros(num_embeddings, nbytes, dtype=torch.uint8))

    def _set_from_float(self, weight: Tensor, clip: str = "minmax", grid: str = "exact") -> None:
        w = weight.detach().float()
        if self.precision == "fp16":
            if w.numel() and float(w.abs().max()) > 65504.0:
                raise ValueError(f"table values exceed the fp16 range (max |w| = {float(w.abs().max()):g}); use int8")
            self.weight.copy_(w.half())
        else:
            self.packed.copy_(pack_rowwise(w, TABLE_BITS[self.precision], clip=clip, grid=grid))
        self.sqnr_db = weight_sqnr_db(w, self.dequantized_weight())

    def dequantized_weight(self) -> Tensor:
        """The float32 table this module computes with (``[num_embeddings, embedding_dim]``)."""
        if self.precision == "fp16":
            return self.weight.float()
        return dequantize_rowwise(self.packed, TABLE_BITS[self.precision], self.embedding_dim)

    def dequantized_rows(self, ids: Tensor) -> Tensor:
        """Float32 rows ``[*ids.shape, embedding_dim]`` for ``ids`` (only those rows are dequantized)."""
        if self.precision == "fp16":
            return F.embedding(ids, self.weight).float()
        return dequantize_rowwise(F.embedding(ids, self.packed), TABLE_BITS[self.precision], self.embedding_dim)

    def lowering_tensors(self) -> dict[str, Tensor]:
        """Separate ``q``/``scale``/``bias`` (or ``weight``) tensors for graph export."""
        if self.precision == "fp16":
            return {"weight": self.weight}
        bits = TABLE_BITS[self.precision]
        if bits == 8:
            q, scale, bias = unpack_rowwise(self.packed, 8, self.embedding_dim)
        else:
            nb = (self.embedding_dim + 1) // 2
            q = self.packed[:, :nb]
            _, scale, bias = unpack_rowwise(self.packed, 4, self.embedding_dim)
        return {"q": q.contiguous(), "scale": scale.contiguous(), "bias": bias.contiguous()}

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, precision={self.precision}"


class QuantizedEmbedding(_QuantizedTable):
    """Quantized ``nn.Embedding``: ``forward(input) -> [*input.shape, embedding_dim]`` float32."""

    @classmethod
    def from_float(cls, module: nn.Embedding, precision: TablePrecision = "int8", clip: str = "minmax",
                   grid: str = "exact") -> QuantizedEmbedding:  # fmt: skip
        """``clip`` / ``grid``: see :func:`~lightning_recsys.quant.pack_rowwise` (``grid="exact"``: FBGEMM's)."""
        if module.max_norm is not None:
            raise TypeError("nn.Embedding with max_norm renormalises rows in forward; it cannot be quantized")
        q = cls(module.num_embeddings, module.embedding_dim, precision)
        q._set_from_float(module.weight, clip, grid)
        return q

    def forward(self, input: Tensor) -> Tensor:
        return self.dequantized_rows(input)


class QuantizedEmbeddingBag(_QuantizedTable):
    """Quantized ``nn.EmbeddingBag`` (``mode`` ``"sum"``, ``"mean"`` or ``"max"``):
    ``forward(input, offsets=None, per_sample_weights=None) -> [num_bags, embedding_dim]``.
    ``padding_idx`` ids are left out of the bags (a sum reads the padding row as zeros)."""

    padding_idx: int | None = None  # (modules pickled before padding_idx was kept have none)

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        precision: TablePrecision = "int8",
        mode: str = "sum",
        include_last_offset: bool = False,
        padding_idx: int | None = None,
    ) -> None:
        super().__init__(num_embeddings, embedding_dim, precision)
        if mode not in ("sum", "mean", "max"):
            raise ValueError(f"mode must be 'sum', 'mean' or 'max' for quantized bags, got {mode!r}")
        if padding_idx is not None and not -num_embeddings <= padding_idx < num_embeddings:
            raise ValueError(f"padding_idx must be within the {num_embeddings} rows, got {padding_idx}")
        self.mode = mode
        self.include_last_offset = include_last_offset
        self.padding_idx = None if padding_idx is None else padding_idx % num_embeddings

    @classmethod
    def from_float(
        cls, module: nn.EmbeddingBag, precision: TablePrecision = "int8", clip: str = "minmax", grid: str = "exact"
    ) -> QuantizedEmbeddingBag:
        """``clip`` / ``grid``: see :func:`~lightning_recsys.quant.pack_rowwise` (``grid="exact"``: FBGEMM's)."""
        if module.max_norm is not None:
            raise TypeError("nn.EmbeddingBag with max_norm renormalises rows in forward; it cannot be quantized")
        q = cls(module.num_embeddings, module.embedding_dim, precision, module.mode, module.include_last_offset,
                module.padding_idx)  # fmt: skip
        weight = module.weight.detach()
        if module.padding_idx is not None:  # nn.EmbeddingBag leaves padding ids out of the sum
            weight = weight.clone()
            weight[module.padding_idx] = 0.0
        q._set_from_float(weight, clip, grid)
        return q

    def forward(self, input: Tensor, offsets: Tensor | None = None, per_sample_weights: Tensor | None = None) -> Tensor:
        if input.dim() == 2:
            if offsets is not None:
                raise ValueError("offsets must be None when input is 2-D (fixed-length bags), as in nn.EmbeddingBag")
            b, n = input.shape
            offsets = torch.arange(0, b * n, n, dtype=input.dtype, device=input.device) if b else input.new_zeros(0)
            input = input.reshape(-1)
            per_sample_weights = None if per_sample_weights is None else per_sample_weights.reshape(-1)
            include_last = False
        elif input.dim() == 1:
            if offsets is None or offsets.dim() != 1:
                raise ValueError("offsets (1-D) is required when input is 1-D, as in nn.EmbeddingBag")
            include_last = False
            if self.include_last_offset:  # the fused kernels mis-handle it: drop the final offset instead
                offsets = offsets[:-1]
        else:
            raise ValueError(f"input must be 1-D or 2-D, got shape {tuple(input.shape)}")
        if per_sample_weights is not None and self.mode != "sum":
            raise ValueError("per_sample_weights is only supported with mode='sum', as in nn.EmbeddingBag")
        if self.padding_idx is not None and self.mode != "sum":  # (a sum reads the zeroed padding row)
            input, offsets = _drop_ids(input, offsets, input != self.padding_idx)
        if self.precision == "fp16" or self.mode == "max":
            rows = self.dequantized_rows(input)  # gather first: never dequantize the whole table
            local = torch.arange(input.numel(), device=input.device)
            return F.embedding_bag(
                local, rows, offsets, mode=self.mode, per_sample_weights=per_sample_weights,
                include_last_offset=include_last,
            )
        psw = None if per_sample_weights is None else per_sample_weights.float()
        # (weight, indices, offsets, scale_grad_by_freq, mode=sum, pruned_weights, per_sample_weights,
        #  compressed_indices_mapping, include_last_offset)
        out = _BAG_OPS[self.precision](self.packed, input, offsets, False, 0, False, psw, None, include_last)
        if out.shape[1] != self.embedding_dim:  # int4 rows of odd width come out one (padding) column wider
            out = out[:, : self.embedding_dim]
        if self.mode == "mean":
            ends = offsets[1:] if include_last else torch.cat([offsets[1:], offsets.new_tensor([input.numel()])])
            counts = (ends - offsets[: ends.numel()]).clamp(min=1).to(out.dtype)
            out = out / counts[:, None]
        return out


def _drop_ids(input: Tensor, offsets: Tensor, keep: Tensor) -> tuple[Tensor, Tensor]:
    """1-D ``input`` without the ids where ``keep`` is False, and the ``offsets`` of the same bags."""
    kept_before = torch.cat([keep.new_zeros(1, dtype=offsets.dtype), keep.to(offsets.dtype).cumsum(0)])
    return input[keep], kept_before[offsets]
