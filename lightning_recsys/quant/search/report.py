"""Per-module and whole-model quantization report (precision, bytes, error).

Example:
    >>> import copy
    >>> from torch import nn
    >>> from lightning_recsys.quant import quantize_, RecipeConfig
    >>> model = nn.Sequential(nn.Embedding(100, 8), nn.Linear(8, 1))
    >>> ref = copy.deepcopy(model)
    >>> quantize_(model, RecipeConfig())
    >>> rep = module_report(model, ref)
    >>> [(m["name"], m["precision"]) for m in rep["modules"]]
    [('0', 'int8'), ('1', 'int8')]
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from ..core.api import is_linear, is_table, is_quantized_module
from ..core.embedding import weight_sqnr_db

__all__ = ["module_report", "state_bytes", "output_errors"]


def state_bytes(module: nn.Module) -> int:
    """Bytes of every parameter and persistent buffer (what a saved model holds)."""
    return sum(t.numel() * t.element_size() for t in module.state_dict().values() if isinstance(t, Tensor))


def _float_bytes(m: nn.Module) -> int:
    if hasattr(m, "num_embeddings"):
        return int(m.num_embeddings) * int(m.embedding_dim) * 4
    return (int(m.in_features) * int(m.out_features) + int(m.out_features)) * 4


def _finite(x: float | None) -> float | str | None:
    if x is None or math.isfinite(x):
        return x
    return "inf" if x > 0 else "-inf"


def module_report(model: nn.Module, reference: nn.Module | None = None) -> dict[str, Any]:
    """One row per table / linear layer: name, type, precision, float and quantized bytes, weight SQNR
    (dB), plus model totals. ``reference`` (the float model) adds its total bytes."""
    rows = []
    for name, m in model.named_modules():
        if not name:
            continue
        if is_quantized_module(m):
            rows.append({
                "name": name, "type": type(m).__name__, "precision": m.precision,
                "activation": getattr(m, "activation", None),
                "float_bytes": _float_bytes(m), "bytes": state_bytes(m), "weight_sqnr_db": _finite(m.sqnr_db),
            })  # fmt: skip
        elif (is_table(m) or is_linear(m)) and not any(name.startswith(r["name"] + ".") for r in rows):
            rows.append({
                "name": name, "type": type(m).__name__, "precision": "fp32", "activation": None,
                "float_bytes": state_bytes(m), "bytes": state_bytes(m), "weight_sqnr_db": "inf",
            })  # fmt: skip
    totals = {"bytes": state_bytes(model)}
    if reference is not None:
        totals["float_bytes"] = state_bytes(reference)
        totals["bytes_ratio"] = totals["bytes"] / max(totals["float_bytes"], 1)
    return {"modules": rows, "totals": totals}


def output_errors(reference: Tensor, quantized: Tensor) -> dict[str, Any]:
    """Logit SQNR (dB) and max / mean absolute difference between two model outputs."""
    diff = (reference.double() - quantized.double()).abs()
    return {
        "logit_sqnr_db": _finite(weight_sqnr_db(reference, quantized)),
        "max_abs_logit_diff": float(diff.max()) if diff.numel() else 0.0,
        "mean_abs_logit_diff": float(diff.mean()) if diff.numel() else 0.0,
    }


@torch.no_grad()
def eval_metrics(logits: Tensor, labels: Tensor) -> dict[str, float]:
    """AUC and normalized entropy of logits ``[N]`` against labels ``[N]``."""
    from torchmetrics.functional.classification import binary_auroc

    from ...metrics.ne import NormalizedEntropy

    ne = NormalizedEntropy()
    ne.update(logits.float(), labels.float())
    return {"auc": float(binary_auroc(torch.sigmoid(logits.float()), labels.long())), "ne": float(ne.compute())}
