"""The ``"quant"`` codec (``DCTStrategy``'s default): every entry of the boundary, ``bits`` forward
(default 4) and ``grad_bits`` backward (default 2), on Lloyd-Max Gaussian levels (``levels="gaussian"``,
default; or uniform levels under an absmax) times int8 scale codes (``2 ** (e / 4)``, i.e. ~19% steps over
~2**+-32): by default factored (``scales="factored"``): one code per table (group column) of the block
times one per sample (row), i.e. ~4.03 bits forward + ~2.04 backward per entry at 16-wide tables, vs
32 + 32 for fp32; ``scales="group"``: one code per table vector of each sample (+0.5 bit per entry at 16
entries). 1 bit: the sign times the scale group's mean ``|g|``.

Example:
    >>> quant = QuantCodec(group=4)  # 4 bits forward: 1 table + 1 row scale byte, 2 bytes for 4 entries
    >>> quant.forward_bytes(1, 4), quant.backward_bytes(1, 4)
    (4, 3)
"""

from __future__ import annotations

import torch
from torch import Tensor
from typing_extensions import override

from .base import BoundaryCodec
from .values import (
    Levels,
    dequantize_factored,
    dequantize_values,
    factored_bytes,
    quantize_factored,
    quantize_values,
    value_bytes,
)

__all__ = ["QuantCodec"]


class QuantCodec(BoundaryCodec):
    """Dense low-bit values with int8 scale codes (see the module docstring)."""

    name = "quant"
    quantizing = True
    default_bits = 4
    default_grad_bits = 2
    default_levels: Levels = "gaussian"
    default_scales = "factored"
    scale_layouts = ("group", "factored")

    @override
    def _repr_options(self) -> str:
        return (f", bits={self.bits}, grad_bits={self.grad_bits}, group={self.group}"
                f", levels={self.levels!r}, scales={self.scales!r}")  # fmt: skip

    def _all_groups(self, rows: int, width: int) -> tuple[int, int]:
        """(entries per scale group, number of groups) of a dense [rows, width] block."""
        n, g = self._groups(width) if width else (0, 0)
        return g, rows * n

    def _dense_bytes(self, rows: int, width: int, bits: int) -> int:
        """Bytes of a [rows, width] block at ``bits``."""
        if self.scales == "factored":
            return factored_bytes(rows, width, self._groups(width)[1], bits)
        return value_bytes(rows * width, rows * self._groups(width)[0] if width else 0, bits)

    @override
    def forward_bytes(self, rows: int, width: int, kept: int | None = None) -> int:
        return self._dense_bytes(rows, width, self.bits)

    @override
    def backward_bytes(self, rows: int, width: int, kept: int | None = None) -> int:
        return self._dense_bytes(rows, width, self.grad_bits)

    def _quantize(self, x: Tensor, bits: int, generator: torch.Generator | None = None) -> Tensor:
        """A dense [rows, width] block -> bytes (group or factored scales)."""
        rows, width = x.shape
        if self.scales == "factored":
            return quantize_factored(x, self._groups(width)[1], bits, generator, self.levels)
        return quantize_values(x.reshape(-1), *self._all_groups(rows, width), bits, generator, self.levels)

    def _dequantize(self, b: Tensor, rows: int, width: int, bits: int) -> Tensor:
        if self.scales == "factored":
            return dequantize_factored(b, rows, width, self._groups(width)[1], bits, self.levels)
        return dequantize_values(b, *self._all_groups(rows, width), bits, self.levels).reshape(rows, width)

    @override
    def encode_forward(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        return self._quantize(x.detach().float(), self.bits), None

    @override
    def decode_forward(self, b: Tensor, rows: int, width: int) -> tuple[Tensor, Tensor | None]:
        return self._dequantize(b, rows, width, self.bits), None

    @override
    def encode_backward(self, grad: Tensor, mask: Tensor | None, generator: torch.Generator | None = None) -> Tensor:
        return self._quantize(grad, self.grad_bits, generator)

    @override
    def decode_backward(self, b: Tensor, rows: int, width: int, mask: Tensor | None) -> Tensor:
        return self._dequantize(b, rows, width, self.grad_bits)
