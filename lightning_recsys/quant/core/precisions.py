"""The precision names used across ``lightning_recsys.quant``, in one place: what a recipe accepts per
module kind, the row-wise bit widths of tables, the ladders the sensitivity analysis and the plan search
walk (most compressed first), and the precisions of a TensorRT engine.

Example:
    >>> from lightning_recsys.quant.core.precisions import TABLE_LADDER, LINEAR_LADDER
    >>> TABLE_LADDER, LINEAR_LADDER
    (('int4', 'int8', 'fp16', 'fp32'), ('int8', 'int8_static', 'fp16', 'fp32'))
"""

from __future__ import annotations

from typing import Literal

__all__ = [
    "TablePrecision", "TABLE_BITS", "PRECISION_OPTIONS", "TABLE_LADDER", "LINEAR_LADDER", "LATENCY_TABLE_LADDER",
    "LOW_PRECISIONS", "TRIAL_PRECISIONS", "TensorRTPrecision", "TENSORRT_PRECISIONS",
]  # fmt: skip

#: precisions of a quantized table module (fp32 tables stay ``nn.Embedding`` / ``nn.EmbeddingBag``)
TablePrecision = Literal["int8", "int4", "fp16"]
#: bits per code of the row-wise quantized table precisions
TABLE_BITS: dict[str, int] = {"int8": 8, "int4": 4}

#: the precisions a recipe dict accepts per module kind, each with the option keys it allows
PRECISION_OPTIONS: dict[str, dict[str, tuple[str, ...]]] = {
    "embedding": {"int8": ("int8_grid",), "int4": ("int4_clip",), "fp16": (), "fp32": ()},
    "linear": {"int8": ("activation", "observer", "percentile", "bins"), "fp16": (), "fp32": ()},
}

#: a table's trial precisions, most compressed first
TABLE_LADDER: tuple[str, ...] = ("int4", "int8", "fp16", "fp32")
# "int8": the runner's ``linear_config`` (dynamic activations by default); "int8_static": int8 with
# activation ranges calibrated by a percentile observer, which clips the rare outliers that widen a
# dynamic range (e.g. a DLRM top layer reading the dense vector beside large dot products)
#: a linear's trial precisions, most compressed first
LINEAR_LADDER: tuple[str, ...] = ("int8", "int8_static", "fp16", "fp32")
#: tables' precisions for ``objective="latency"``: int4 lookups are slower than int8 ones in the graph
LATENCY_TABLE_LADDER: tuple[str, ...] = ("int8", "fp16", "fp32")
#: the precisions counted as int8/int4 bytes
LOW_PRECISIONS: tuple[str, ...] = ("int4", "int8", "int8_static")
#: the below-fp32 trial precisions a plan report lists per module
TRIAL_PRECISIONS: tuple[str, ...] = ("int4", "int8", "int8_static", "fp16")

#: precisions of a TensorRT engine
TensorRTPrecision = Literal["fp32", "fp16", "int8"]
TENSORRT_PRECISIONS: tuple[str, ...] = ("fp32", "fp16", "int8")
