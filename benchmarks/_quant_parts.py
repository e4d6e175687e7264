"""Pieces of benchmarks/quant.py that need none of its state: ORT's stock quantizer, the bytes of
torch's quantized modules, whether two models are the same, the budget-plan summary and the QuantizationMonitor example's figures.

Example::

    ort_stock_int8(Path("fp32.onnx"), Path("stock.onnx"), calib_batches, layout)
    torchao_bytes(fbgemm_model)
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from torch import nn

from lightning_recsys.data import RecsysBatch
from lightning_recsys.quant import layout_feeds
from lightning_recsys.quant.search.report import state_bytes


def same_model(a: nn.Module, b: nn.Module) -> bool:
    """Whether ``a`` and ``b`` have the same modules (types and settings) under the same names and equal
    state (then their exported graphs are the same, and one export serves both)."""
    def layout(model: nn.Module) -> list:
        return [(n, type(m), m.extra_repr()) for n, m in model.named_modules()]

    if layout(a) != layout(b):
        return False
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(
        type(sa[k]) is type(sb[k]) and (sa[k] == sb[k] if not torch.is_tensor(sa[k])
                                        else sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]))
        for k in sa)  # fmt: skip


def ort_stock_int8(fp32_onnx: Path, out: Path, calib_batches: list[RecsysBatch], layout: dict) -> None:
    """ONNX Runtime's ``quantize_static`` (QDQ, its defaults) of the float export, calibrated on ``calib_batches``."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.feeds = iter([layout_feeds(b, layout) for b in calib_batches])

        def get_next(self):
            return next(self.feeds, None)

    quantize_static(str(fp32_onnx), str(out), Reader(), quant_format=QuantFormat.QDQ)


def torchao_bytes(model: nn.Module) -> int:
    """Bytes of a model on torch's quantized modules: int8 weights (+ fp32 biases) of dynamic linears,
    codes + fp32 scale and bias per row of quantized bags, float modules as they are."""
    total = 0
    for m in model.modules():
        if isinstance(m, torch.ao.nn.quantized.dynamic.Linear):
            w, b = m._packed_params._weight_bias()
            total += w.numel() * w.element_size() + (0 if b is None else b.numel() * 4)
        elif isinstance(m, torch.ao.nn.quantized.EmbeddingBag):  # uint8 codes + fp32 scale and bias per row
            w = m.weight()
            total += w.numel() + 8 * w.shape[0]
        elif isinstance(m, (nn.EmbeddingBag, nn.Embedding, nn.Linear)):
            total += state_bytes(m)
    return total


def budget_summary(args, budget, res: dict, name: str) -> dict:
    """The budgeted plan vs all-int8 vs ORT stock on the test split (relative NE change, AUC change)."""
    fp = res["fp32_eager"]
    limit = args.budget_ne
    comparison = {}
    for k in (name, "ours_onnx_int8", "ort_stock_int8"):
        rel = (res[k]["ne"] - fp["ne"]) / fp["ne"]
        comparison[k] = {"ne_rel_delta": rel, "auc_delta": res[k]["auc"] - fp["auc"], "model_bytes": res[k]["model_bytes"],
                         "within_budget": rel <= limit}  # fmt: skip
    counts: dict[str, int] = {}
    for p in budget.plan.values():
        counts[p] = counts.get(p, 0) + 1
    return {
        "budget_ne_relative": limit, "met": budget.met, "message": budget.message, "precision_counts": counts,
        "int8_bytes_fraction": budget.int8_bytes_fraction, "torch_bytes": budget.bytes, "fp32_bytes": budget.fp32_bytes,
        "search_val": {k: budget.search[k] for k in ("ne_rel_delta", "auc_delta")},
        "confirm_test": {k: budget.confirm[k] for k in ("ne_rel_delta", "auc_delta")},
        "kept_higher": budget.reasons, "plans_tried": len(budget.trail), "seconds": budget.seconds,
        "all_int8_on_val": budget.references.get("all_int8"), "comparison_test": comparison,
    }  # fmt: skip


def monitor(args) -> dict:
    """Figures of examples/quant_monitor.py (another capability's demo) when it is there."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "examples" / "quant_monitor.py"
    if args.no_monitor or not path.is_file():
        return {"detects_shift_within": "not available", "recovered_under_budget": "not available",
                "note": "--no-monitor" if args.no_monitor else f"{path.name} not found"}  # fmt: skip
    try:
        spec = importlib.util.spec_from_file_location("lrs_example_quant_monitor", path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        t0 = time.perf_counter()
        out = mod.main(quick=bool(args.quick))
        seconds = time.perf_counter() - t0
    except Exception as err:  # noqa: BLE001 - record why the optional figures are missing, never invent them
        msg = f"failed: {type(err).__name__}: {err}"
        return {"detects_shift_within": "not available", "recovered_under_budget": "not available", "note": msg}
    return {
        "detects_shift_within": out.get("detects_shift_within", "not available"),
        "recovered_under_budget": out.get("recovered_under_budget", "not available"), "seconds": seconds,
    }  # fmt: skip
