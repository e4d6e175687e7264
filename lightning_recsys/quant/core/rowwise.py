"""Row-wise (per-table-row) int8 / int4 quantization of embedding tables, in FBGEMM's fused layout.

Each row ``x`` is stored as codes ``q`` with its own ``scale`` and ``bias`` (``x ~ q * scale + bias``).
By default (``grid="exact"``) this is FBGEMM's scheme: ``bias`` = the row minimum, ``scale`` = the
row range / 255 (int8) or / 15 (int4), so every value is within about half a step of the original
and no value is further from it than with torch's FBGEMM prepack ops. ``grid="anchored"`` (int8) keeps
an integer zero point (``bias = -zp * scale``, range extended to 0) that graph runtimes dequantize in
one fused op, at up to 2-3x the error on rows of one sign. The packed rows use the layout that torch's
``quantized::embedding_bag_{byte,4bit}_rowwise_offsets`` lookups read:

* int8: ``[D bytes of q][fp32 scale][fp32 bias]`` -> ``D + 8`` bytes per row;
* int4: ``[ceil(D/2) bytes, even column in the low nibble][fp16 scale][fp16 bias]`` -> ``ceil(D/2) + 4``.

Example:
    >>> import torch
    >>> w = torch.randn(100, 16)
    >>> packed = pack_rowwise(w, bits=8)
    >>> packed.shape, packed.dtype
    (torch.Size([100, 24]), torch.uint8)
    >>> q, scale, bias = unpack_rowwise(packed, bits=8, dim=16)
    >>> bool(((dequantize_rowwise(packed, 8, 16) - w).abs() <= scale[:, None] / 2 + 1e-6).all())
    True
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["pack_rowwise", "unpack_rowwise", "dequantize_rowwise", "packed_row_bytes", "FP16_MAX"]

FP16_MAX = 65504.0


def packed_row_bytes(bits: int, dim: int) -> int:
    """Bytes per packed row for ``bits`` in (8, 4) and ``dim`` columns."""
    if bits == 8:
        return dim + 8
    if bits == 4:
        return (dim + 1) // 2 + 4
    raise ValueError(f"bits must be 8 or 4, got {bits!r}")


def _check_weight(weight: Tensor, bits: int) -> Tensor:
    if not isinstance(weight, Tensor) or weight.dim() != 2 or not weight.is_floating_point():
        raise TypeError(f"weight must be a 2-D floating-point tensor, got {getattr(weight, 'shape', type(weight))}")
    w = weight.detach().float().cpu()
    if not bool(torch.isfinite(w).all()):
        raise ValueError("weight contains NaN or infinite values; row-wise quantization needs finite values")
    if bits == 4 and w.numel() and float(w.abs().max()) > FP16_MAX / 32:
        raise ValueError(
            f"int4 row-wise quantization stores scale and bias in fp16: |weight| must be <= {FP16_MAX / 32:g}, "
            f"got max |w| = {float(w.abs().max()):g}; use bits=8 for this table"
        )
    if bits == 8 and w.numel():
        rng = w.amax(1).double() - w.amin(1).double()
        if float(rng.max()) > 3.0e38:
            raise ValueError("a row's value range overflows float32; cannot quantize it row-wise")
    return w


def _qparams_anchored(w: Tensor) -> tuple[Tensor, Tensor]:
    """``grid="anchored"``: scale and integer zero point per row. The grid ``(q - zp) * scale``, ``q``
    in 0..255, spans ``[min(row, 0), max(row, 0)]`` in 254 steps, so rounding ``zp`` still leaves every
    value within half a step of a grid point, and the stored bias ``-zp * scale`` lets graph runtimes
    dequantize with a plain zero point (ONNX ``DequantizeLinear``) instead of a float bias add. The
    steps are up to 2-3x FBGEMM's on rows of one sign."""
    lo = w.amin(1).double().clamp(max=0.0)
    hi = w.amax(1).double().clamp(min=0.0)
    scale = ((hi - lo) / 254.0).float()
    zp = torch.round(-lo / torch.where(scale > 0, scale, 1.0).double()).clamp(0, 254)
    # a constant row c is stored exactly: scale |c|, code 1 (zp 0) for c > 0, code 0 (zp 1) for c < 0
    first = w[:, 0]
    const = w.amax(1) == w.amin(1)
    scale = torch.where(const, first.abs(), scale)
    zp = torch.where(const, (first < 0).double(), zp)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return scale, zp.float()


def _nearest_codes(w: Tensor, q: Tensor, scale: Tensor, bias: Tensor, top: int) -> Tensor:
    """For each value, whichever of FBGEMM's code ``q`` and the codes ``r - 1, r, r + 1`` around
    ``r = round((w - bias) / scale)`` (in ``0..top``) dequantizes closest to it (``code * scale + bias``
    in float32, as :func:`dequantize_rowwise`; ``q`` wins ties). FBGEMM picks ``q`` with
    ``(x - bias) * 255 / (range + 1e-8)`` (steps off on rows with tiny ranges), so the result is never
    further from ``w`` than FBGEMM's code, value by value."""
    s, b = scale.float()[:, None], bias.float()[:, None]
    sd = s.double()
    r = torch.round((w.double() - b.double()) / torch.where(sd != 0, sd, 1.0)).clamp_(-1, top + 1).to(torch.int16)
    best = q.to(torch.int16)
    err = (best.float() * s + b - w).abs()
    for delta in (-1, 0, 1):
        cand = (r + delta).clamp_(0, top)
        cand_err = (cand.float() * s + b - w).abs()
        better = cand_err < err
        best = torch.where(better, cand, best)
        err = torch.where(better, cand_err, err)
    return best.to(torch.uint8)


_CHUNK_ROWS = 1 << 16  # rows quantized at a time


def pack_rowwise(weight: Tensor, bits: int = 8, clip: str = "minmax", grid: str = "exact") -> Tensor:
    """Quantize ``weight`` [N, D] row-wise and pack it (uint8 [N, packed_row_bytes(bits, D)]).

    ``grid="exact"`` (default): FBGEMM's scheme, each row's exact range (``bias`` = the row minimum,
    ``scale`` = range / (2**bits - 1)), with the qparams of torch's FBGEMM prepack ops
    (``quantized::embedding_bag_byte_prepack`` / ``embedding_bag_4bit_prepack``) and each code then
    re-chosen as the nearest one (:func:`_nearest_codes`): per value, never a larger error than FBGEMM's.
    ``grid="anchored"`` (int8 only): the range extended to 0 with an integer zero point
    (:func:`_qparams_anchored`), one fused dequantize in graph runtimes (no bias add) at up to 2-3x
    FBGEMM's error.
    ``clip="greedy"`` (int4 only) searches a per-row clipping range that minimises the row's L2
    error (Guan et al. 2019, FBGEMM's ``optimized_qparams``); values outside it are clipped, so the
    half-step error bound then holds only inside the range.

    Example:
        >>> import torch
        >>> w = torch.rand(4, 8) + 1.0  # rows of one sign
        >>> ours = dequantize_rowwise(pack_rowwise(w), 8, 8)
        >>> fbgemm = dequantize_rowwise(torch.ops.quantized.embedding_bag_byte_prepack(w), 8, 8)
        >>> bool(((ours - w).abs() <= (fbgemm - w).abs()).all())
        True
    """
    if bits not in (8, 4):
        raise ValueError(f"bits must be 8 or 4, got {bits!r}")
    if clip not in ("minmax", "greedy"):
        raise ValueError(f"clip must be 'minmax' or 'greedy', got {clip!r}")
    if grid not in ("exact", "anchored"):
        raise ValueError(f"grid must be 'exact' or 'anchored', got {grid!r}")
    if grid == "anchored" and (bits != 8 or clip != "minmax"):
        raise ValueError("grid='anchored' is only available for bits=8 with clip='minmax'")
    w = _check_weight(weight, bits).contiguous()
    n, d = w.shape
    if clip == "greedy":
        if bits != 4:
            raise ValueError("clip='greedy' is only available for bits=4")
        return torch.ops.quantized.embedding_bag_4bit_prepack(w, optimized_qparams=True)
    if n > _CHUNK_ROWS:  # bounded temporaries: the code search holds about 30 bytes per value
        return torch.cat([pack_rowwise(w[i : i + _CHUNK_ROWS], bits, clip, grid) for i in range(0, n, _CHUNK_ROWS)])
    if grid == "anchored":
        scale, zp = _qparams_anchored(w)
        q = (torch.round(w.double() / scale.double()[:, None]) + zp.double()[:, None]).clamp_(0, 255).to(torch.uint8)
        tail = torch.stack([scale, -zp * scale], 1).contiguous().view(torch.uint8)  # [N, 8]
        return torch.cat([q, tail], 1).contiguous()
    if n == 0:
        return torch.zeros(0, packed_row_bytes(bits, d), dtype=torch.uint8)
    if bits == 8:
        packed = torch.ops.quantized.embedding_bag_byte_prepack(w)
        q, scale, bias = unpack_rowwise(packed, 8, d)
        packed[:, :d] = _nearest_codes(w, q, scale, bias, 255)
        return packed
    # the 4-bit prepack needs an even width: an odd row gets a copy of its first value (same range)
    even = torch.cat([w, w[:, :1]], 1) if d % 2 else w
    packed = torch.ops.quantized.embedding_bag_4bit_prepack(even, optimized_qparams=False)
    q, scale, bias = unpack_rowwise(packed, 4, d)
    q = _nearest_codes(w, q, scale, bias, 15)
    if d % 2:
        q = torch.cat([q, torch.zeros(n, 1, dtype=torch.uint8)], 1)
    packed[:, : (d + 1) // 2] = q[:, 0::2] | (q[:, 1::2] << 4)
    return packed


def _bytes_as(tail: Tensor, dtype: torch.dtype) -> Tensor:
    """Reinterpret the last-dim bytes as ``dtype`` (copied into a fresh, aligned buffer first)."""
    flat = tail.reshape(-1).clone().view(dtype)
    return flat.reshape(*tail.shape[:-1], -1)


def unpack_rowwise(packed: Tensor, bits: int, dim: int) -> tuple[Tensor, Tensor, Tensor]:
    """Split packed rows (any leading shape ``[..., P]``) into ``q`` [..., dim] uint8, ``scale`` and
    ``bias`` [...] float32."""
    if packed.dtype != torch.uint8 or packed.shape[-1] != packed_row_bytes(bits, dim):
        raise ValueError(
            f"packed rows must be uint8 with {packed_row_bytes(bits, dim)} bytes per row for bits={bits}, "
            f"dim={dim}; got {packed.dtype} with {packed.shape[-1]}"
        )
    if bits == 8:
        q = packed[..., :dim]
        tail = _bytes_as(packed[..., dim:], torch.float32)
    else:
        nb = (dim + 1) // 2
        data = packed[..., :nb]
        q = torch.stack([data & 15, data >> 4], -1).flatten(-2)[..., :dim]
        tail = _bytes_as(packed[..., nb:], torch.float16).float()
    return q, tail[..., 0], tail[..., 1]


def dequantize_rowwise(packed: Tensor, bits: int, dim: int) -> Tensor:
    """Float32 rows ``q * scale + bias`` (the reference every quantized lookup must match)."""
    q, scale, bias = unpack_rowwise(packed, bits, dim)
    return q.float() * scale[..., None] + bias[..., None]
