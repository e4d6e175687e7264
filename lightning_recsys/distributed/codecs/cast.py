"""Dense cast codecs of the embedding boundary: ``"fp32"`` (uncompressed), ``"fp16"`` and ``"int8"``
(row-wise fp32 absmax scale): every entry, both directions, the same way (the qcomms-style anchors).

Example:
    >>> import torch
    >>> codec = Int8Codec()
    >>> x = torch.tensor([[1.0, -0.5, 0.25]])
    >>> payload, _ = codec.encode_forward(x)
    >>> payload.numel() == codec.forward_bytes(1, 3) == 4 + 3
    True
"""

from __future__ import annotations

import torch
from torch import Tensor
from typing_extensions import override

from .base import BoundaryCodec
from .values import _as_bytes, _from_bytes

__all__ = ["Fp16Codec", "Fp32Codec", "Int8Codec"]


class Fp32Codec(BoundaryCodec):
    """Uncompressed: 4 bytes per entry each way."""

    name = "fp32"

    @override
    def forward_bytes(self, rows: int, width: int, kept: int | None = None) -> int:
        return 4 * rows * width

    @override
    def encode_forward(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        return _as_bytes(x.detach().float()), None

    @override
    def decode_forward(self, b: Tensor, rows: int, width: int) -> tuple[Tensor, Tensor | None]:
        return _from_bytes(b, torch.float32).reshape(rows, width), None


class Fp16Codec(BoundaryCodec):
    """Half precision: 2 bytes per entry each way."""

    name = "fp16"
    default_bits = 16

    @override
    def forward_bytes(self, rows: int, width: int, kept: int | None = None) -> int:
        return 2 * rows * width

    @override
    def encode_forward(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        return _as_bytes(x.detach().float().half()), None

    @override
    def decode_forward(self, b: Tensor, rows: int, width: int) -> tuple[Tensor, Tensor | None]:
        return _from_bytes(b, torch.float16).float().reshape(rows, width), None


class Int8Codec(BoundaryCodec):
    """int8 entries times one fp32 absmax scale per row: ``width + 4`` bytes per row each way."""

    name = "int8"

    @override
    def forward_bytes(self, rows: int, width: int, kept: int | None = None) -> int:
        return rows * (width + 4) if width else 0

    @override
    def encode_forward(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        x = x.detach().float()
        if not x.shape[1]:
            return x.new_empty(0, dtype=torch.uint8), None
        scale = x.abs().amax(dim=1, keepdim=True).clamp_min(1e-30) / 127.0
        return torch.cat([_as_bytes(scale), _as_bytes(torch.round(x / scale).clamp_(-127, 127).to(torch.int8))]), None

    @override
    def decode_forward(self, b: Tensor, rows: int, width: int) -> tuple[Tensor, Tensor | None]:
        if not width:
            return torch.zeros(rows, 0, device=b.device), None
        scale = _from_bytes(b[: 4 * rows], torch.float32).reshape(rows, 1)
        return _from_bytes(b[4 * rows :], torch.int8).float().reshape(rows, width) * scale, None
