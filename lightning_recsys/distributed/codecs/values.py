"""Value quantizers of the embedding boundary (used by the codecs of :mod:`~lightning_recsys.distributed.codecs`).

Flat values, each in a scale group, to and from ``uint8`` bytes: fp32 / fp16, or 1-8 bit integer codes
with one int8 scale code per group (``s = 2 ** (e / 4)``), on uniform levels (absmax scale), Lloyd-Max
Gaussian levels (RMS scale), or 1-bit scaled signs; nearest or stochastic rounding. Factored scales
(:func:`quantize_factored`): a [rows, width] block normalised by one int8 code per column group and one
per row, so the scales cost ``rows + groups`` bytes instead of ``rows * groups``.

Example:
    >>> import torch
    >>> v = torch.tensor([0.5, -1.0, 0.25, 0.0])
    >>> b = quantize_values(v, 4, 1, bits=4)          # one group of 4: 1 scale byte + 2 bytes
    >>> b.numel() == value_bytes(4, 1, 4) == 3
    True
    >>> [round(x, 3) for x in dequantize_values(b, 4, 1, bits=4).tolist()]  # levels of 1 / 7
    [0.571, -1.0, 0.286, 0.0]
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

__all__ = ["Levels", "dequantize_factored", "dequantize_values", "factored_bytes", "quantize_factored", "quantize_values",
           "value_bytes"]

Levels = Literal["uniform", "gaussian"]


def _as_bytes(t: Tensor) -> Tensor:
    """Any tensor -> its bytes, flat ``uint8``."""
    return t.contiguous().reshape(-1).view(torch.uint8)


def _from_bytes(b: Tensor, dtype: torch.dtype) -> Tensor:
    """Flat ``uint8`` -> ``dtype`` (copied where the slice is not aligned to the type's size)."""
    b = b.contiguous()
    return (b if b.storage_offset() % dtype.itemsize == 0 else b.clone()).view(dtype)


def _pack_bits(mask: Tensor) -> Tensor:
    """bool [..., G] -> uint8 [..., ceil(G / 8)] (bit ``i % 8`` of byte ``i // 8``)."""
    g = mask.shape[-1]
    pad = (-g) % 8
    m = torch.nn.functional.pad(mask.to(torch.uint8), (0, pad)).reshape(*mask.shape[:-1], (g + pad) // 8, 8)
    return (m << torch.arange(8, dtype=torch.uint8, device=mask.device)).sum(-1, dtype=torch.uint8)


def _unpack_bits(b: Tensor, g: int) -> Tensor:
    bits = (b.unsqueeze(-1) >> torch.arange(8, dtype=torch.uint8, device=b.device)) & 1
    return bits.reshape(*b.shape[:-1], 8 * b.shape[-1])[..., :g].bool()


def _scale_codes(target: Tensor, up: bool) -> Tensor:
    """Positive scales -> int8 codes ``e`` of ``2 ** (e / 4)`` (rounded up, or to nearest); 0 -> -128."""
    e = 4 * torch.log2(target.clamp_min(1e-38))
    e = (torch.ceil(e) if up else torch.round(e)).clamp_(-127, 127)
    return torch.where(target > 0, e, torch.full_like(e, -128)).to(torch.int8)


def _scales(codes: Tensor) -> Tensor:
    s = torch.exp2(codes.float() / 4)
    return torch.where(codes == -128, torch.zeros_like(s), s)


def value_bytes(count: int, groups: int, bits: int) -> int:
    """Bytes of ``count`` values in ``groups`` scale groups at ``bits`` (see :func:`quantize_values`)."""
    return 4 * count if bits == 32 else 2 * count if bits == 16 else groups + math.ceil(count * bits / 8)


def _reduce(mag: Tensor, grp: Tensor | int, groups: int, how: str) -> Tensor:
    """Per-group ``"amax"`` / ``"mean"`` of ``mag`` (``grp``: group ids, or ``g``: contiguous runs of ``g``)."""
    if isinstance(grp, int):
        m = mag.view(groups, grp)
        return m.amax(1) if how == "amax" else m.mean(1)
    return torch.zeros(groups, device=mag.device).scatter_reduce_(0, grp, mag, how, include_self=how == "amax")


def _per_value(s: Tensor, grp: Tensor | int) -> Tensor:
    return s.repeat_interleave(grp) if isinstance(grp, int) else s[grp]


def _pack_codes(u: Tensor, bits: int) -> Tensor:
    """uint8 codes < 2**bits, flat -> packed, value ``i`` at bits ``[i * bits, (i + 1) * bits)``."""
    if 8 % bits:
        return _pack_bits(((u.unsqueeze(1) >> torch.arange(bits, dtype=torch.uint8, device=u.device)) & 1).reshape(-1))
    per = 8 // bits
    u = torch.nn.functional.pad(u, (0, (-u.numel()) % per)).view(-1, per)
    return (u << (bits * torch.arange(per, dtype=torch.uint8, device=u.device))).sum(1, dtype=torch.uint8)


def _unpack_codes(b: Tensor, count: int, bits: int) -> Tensor:
    if 8 % bits:
        flat = _unpack_bits(b, count * bits).reshape(count, bits).to(torch.uint8)
        return (flat << torch.arange(bits, dtype=torch.uint8, device=b.device)).sum(1, dtype=torch.uint8)
    per = 8 // bits
    u = (b.unsqueeze(1) >> (bits * torch.arange(per, dtype=torch.uint8, device=b.device))) & (2**bits - 1)
    return u.reshape(-1)[:count]


#: Lloyd-Max quantizer levels of a unit Gaussian (positive half), for ``levels="gaussian"``.
_GAUSS = {
    2: (0.4528, 1.5104),
    3: (0.2451, 0.7560, 1.3439, 2.1520),
    4: (0.1284, 0.3881, 0.6568, 0.9424, 1.2562, 1.6180, 2.0690, 2.7326),
}


def _gauss_levels(bits: int, device: torch.device) -> Tensor:
    half = torch.tensor(_GAUSS[bits], device=device)
    return torch.cat([-half.flip(0), half])


def quantize_values(v: Tensor, grp: Tensor | int, groups: int, bits: int, generator: torch.Generator | None = None,
                    levels: Levels = "uniform") -> Tensor:  # fmt: skip
    """Flat values ``v`` -> ``uint8`` bytes; ``grp``: the scale group of each value, or an int ``g``
    (``v`` is ``groups`` contiguous runs of ``g``).

    32 / 16 bits: fp32 / fp16. 2-8 bits: one int8 scale code per group (``s = 2 ** (e / 4) >= absmax``)
    then ``round(v / s * qmax)``, ``qmax = 2 ** (bits - 1) - 1``, packed ``bits`` per value. 1 bit: the
    sign, times a per-group scale ``mean |v|``. With a ``generator`` the rounding is stochastic (unbiased;
    1 bit: ``+-absmax`` with probabilities that keep the mean). ``levels="gaussian"`` (2-4 bits): the
    Lloyd-Max levels of a Gaussian times the group's root mean square instead (stochastic rounding:
    between the two neighbouring levels, unbiased inside the outermost ones).
    """
    v = v.detach().float()
    if bits == 32:
        return _as_bytes(v)
    if bits == 16:
        return _as_bytes(v.half())
    if not groups:
        return v.new_empty(0, dtype=torch.uint8)
    mag = v.abs()
    if levels == "gaussian" and bits in _GAUSS:
        codes = _scale_codes(_reduce(v * v, grp, groups, "mean").sqrt(), up=False)
        s = _per_value(_scales(codes), grp)
        lv = _gauss_levels(bits, v.device)
        y = torch.where(s > 0, v / s.clamp_min(1e-38), torch.zeros_like(v))
        if generator is None:
            u = torch.bucketize(y, (lv[1:] + lv[:-1]) / 2).to(torch.uint8)
        else:  # between the two neighbouring levels, the upper one with the probability that keeps the mean
            lo = (torch.bucketize(y, lv, right=True) - 1).clamp_(0, lv.numel() - 2)
            p = ((y - lv[lo]) / (lv[lo + 1] - lv[lo])).clamp_(0, 1)
            u = (lo + (torch.rand(y.shape, generator=generator, device="cpu").to(y.device) < p)).to(torch.uint8)
    elif bits == 1 and generator is None:
        codes = _scale_codes(_reduce(mag, grp, groups, "mean"), up=False)
        u = (v >= 0).to(torch.uint8)
    else:
        qmax = max(1, 2 ** (bits - 1) - 1)
        codes = _scale_codes(_reduce(mag, grp, groups, "amax"), up=True)
        s = _per_value(_scales(codes), grp)
        y = torch.where(s > 0, v / s.clamp_min(1e-38), torch.zeros_like(v)) * qmax
        if generator is not None:
            noise = torch.rand(y.shape, generator=generator, device="cpu").to(y.device)
            q = torch.floor(y + noise) if bits > 1 else torch.where(noise < (1 + y) / 2, 1.0, -1.0)
        else:
            q = torch.round(y)
        q = q.clamp_(-qmax, qmax)
        u = (q > 0).to(torch.uint8) if bits == 1 else (q + qmax).to(torch.uint8)
    return torch.cat([_as_bytes(codes), _pack_codes(u, bits)])


def dequantize_values(b: Tensor, grp: Tensor | int, groups: int, bits: int, levels: Levels = "uniform") -> Tensor:
    """Inverse of :func:`quantize_values` (``grp`` as there)."""
    count = grp * groups if isinstance(grp, int) else grp.numel()
    if bits == 32:
        return _from_bytes(b[: 4 * count], torch.float32)
    if bits == 16:
        return _from_bytes(b[: 2 * count], torch.float16).float()
    if not groups:
        return torch.zeros(0, device=b.device)
    s = _per_value(_scales(_from_bytes(b[:groups], torch.int8)), grp)
    u = _unpack_codes(b[groups:], count, bits)
    if levels == "gaussian" and bits in _GAUSS:
        return _gauss_levels(bits, b.device)[u.long()] * s
    if bits == 1:
        return torch.where(u > 0, s, -s)
    qmax = 2 ** (bits - 1) - 1
    return (u.float() - qmax) / qmax * s


def factored_bytes(rows: int, width: int, group: int, bits: int) -> int:
    """Bytes of a [rows, width] block from :func:`quantize_factored`."""
    if not rows * width:
        return 0
    if bits >= 16:
        return value_bytes(rows * width, rows, bits)
    return width // group + value_bytes(rows * width, rows, bits)


def quantize_factored(x: Tensor, group: int, bits: int, generator: torch.Generator | None = None,
                      levels: Levels = "uniform") -> Tensor:  # fmt: skip
    """[rows, width] block -> ``uint8`` bytes with factored scales: each run of ``group`` columns (a table's
    vector) is divided by its RMS over the block (one int8 code per column group), then every row is
    quantized as one scale group (:func:`quantize_values`: one int8 code per row). ``bits`` >= 16: as
    :func:`quantize_values` (no scales).

    Example:
        >>> x = torch.tensor([[1.0, -1.0, 100.0, 50.0], [0.5, 0.5, -100.0, 0.0]])
        >>> b = quantize_factored(x, 2, 4, levels="gaussian")   # 2 column codes, 2 row codes, 8 values
        >>> b.numel() == factored_bytes(2, 4, 2, 4) == 2 + 2 + 4
        True
        >>> bool((dequantize_factored(b, 2, 4, 2, 4, "gaussian") - x).abs().le(0.25 * x.abs().amax(1, keepdim=True)).all())
        True
    """
    rows, width = x.shape
    if not rows * width:
        return x.new_empty(0, dtype=torch.uint8)
    if bits >= 16:
        return quantize_values(x.reshape(-1), width, rows, bits, generator, levels)
    x3 = x.detach().float().reshape(rows, width // group, group)
    codes = _scale_codes((x3 * x3).mean((0, 2)).sqrt(), up=False)
    c = _scales(codes).view(1, -1, 1)
    y = torch.where(c > 0, x3 / c.clamp_min(1e-38), torch.zeros_like(x3))
    return torch.cat([_as_bytes(codes), quantize_values(y.reshape(-1), width, rows, bits, generator, levels)])


def dequantize_factored(b: Tensor, rows: int, width: int, group: int, bits: int, levels: Levels = "uniform") -> Tensor:
    """Inverse of :func:`quantize_factored`: [rows, width] float32."""
    if not rows * width:
        return torch.zeros(rows, width, device=b.device)
    if bits >= 16:
        return dequantize_values(b, width, rows, bits, levels).reshape(rows, width)
    n = width // group
    c = _scales(_from_bytes(b[:n], torch.int8)).view(1, n, 1)
    return (dequantize_values(b[n:], width, rows, bits, levels).reshape(rows, n, group) * c).reshape(rows, width)
