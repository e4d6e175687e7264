"""Re-export of :mod:`lightning_recsys.distributed.codecs.values` (the former path)."""

from ..distributed.codecs.values import (
    Levels,
    dequantize_factored,
    dequantize_values,
    factored_bytes,
    quantize_factored,
    quantize_values,
    value_bytes,
)

__all__ = ["Levels", "dequantize_factored", "dequantize_values", "factored_bytes", "quantize_factored", "quantize_values",
           "value_bytes"]
