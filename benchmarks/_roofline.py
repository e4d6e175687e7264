"""Figures of benchmarks/quant.py that measure against the machine and against FBGEMM, not a candidate:

* :func:`int8_peak`: this CPU's int8 multiply-accumulate rate (a large GEMM on fbgemm's packed int8
  kernels, ``quantized::linear_dynamic``, and on ``torch._int_mm``; VNNI where the CPU has it);
* :func:`onnx_int8_macs`: the integer multiply-accumulates an exported graph runs per call;
* :func:`gather_figures`: the bytes a batch's row lookups read, and their time at this machine's
  measured random-row gather rate;
* :func:`rowwise_error_study`: per-row max / mean |error| of our row-wise tables vs torch's FBGEMM
  prepack ops on the same weights (int8 and int4, rows of one sign and of both signs, D 8..128, and
  the trained model's tables), and of the anchored int8 grid.

Example::

    peak = int8_peak(threads=2)["macs_per_s"]
    macs = onnx_int8_macs(Path("ours.onnx"), batch=512)
    print(macs / peak, "s at peak")
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from benchmarks._common import median_time
from lightning_recsys.quant import dequantize_rowwise, pack_rowwise
from lightning_recsys.quant.core.linear import fbgemm_pack_int8_weight, int8_weight_per_channel

_INT_MATMULS = {"MatMulInteger", "MatMulIntegerToFloat", "DynamicQuantizeMatMul", "QLinearMatMul"}


def int8_peak(threads: int, size: int = 2048, repeats: int = 5) -> dict:
    """int8 GEMM rate of ``[size, size] x [size, size]`` with ``threads`` threads: the faster of fbgemm's
    packed kernels and ``torch._int_mm`` (multiply-accumulates per second)."""
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        g = torch.Generator().manual_seed(0)
        x = torch.rand(size, size, generator=g)
        wq, scale = int8_weight_per_channel(torch.randn(size, size, generator=g))
        packed = fbgemm_pack_int8_weight(wq, scale, None)
        fb = median_time(lambda: torch.ops.quantized.linear_dynamic(x, packed, False), repeats, warmup=2)
        xi, wt = torch.randint(-128, 128, (size, size), dtype=torch.int8, generator=g), wq.t().contiguous()
        mm = median_time(lambda: torch._int_mm(xi, wt), repeats, warmup=2)
    finally:
        torch.set_num_threads(old)
    macs = size**3
    return {"gemm": [size, size, size], "threads": threads, "fbgemm_macs_per_s": macs / fb, "int_mm_macs_per_s": macs / mm,
            "macs_per_s": macs / min(fb, mm)}  # fmt: skip


def onnx_int8_macs(path: Path, batch: int) -> int:
    """Integer multiply-accumulates per call of the ONNX graph at ``path`` for ``batch`` rows: every integer
    matmul whose second input is a constant ``[K, N]`` weight counts ``batch * K * N``."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    dims = {i.name: list(i.dims) for i in graph.initializer}
    total = 0
    for n in graph.node:
        if n.op_type in _INT_MATMULS and len(n.input) > 1:
            w = dims.get(n.input[3] if n.op_type == "QLinearMatMul" else n.input[1])
            if w is not None and len(w) == 2:
                total += batch * w[0] * w[1]
    return total


def gather_figures(batch: int, tables: int, dim: int, threads: int, table_rows: int = 1_000_000) -> dict:
    """Bytes the row lookups of one call read (int8: ``D`` codes + fp32 scale and bias per row; fp32:
    ``4 D``), and the int8 lookups' time at the rate measured for ``batch * tables`` random rows of a
    ``table_rows``-row uint8 table (``index_select``)."""
    lookups = batch * tables
    int8_bytes, fp32_bytes = lookups * (dim + 8), lookups * dim * 4
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        table = torch.randint(0, 255, (table_rows, dim + 8), dtype=torch.uint8)
        ids = [torch.randint(0, table_rows, (lookups,)) for _ in range(8)]
        k = iter(range(10**9))
        t = median_time(lambda: torch.index_select(table, 0, ids[next(k) % 8]), 15, warmup=2)
    finally:
        torch.set_num_threads(old)
    return {"lookups": lookups, "int8_bytes": int8_bytes, "fp32_bytes": fp32_bytes,
            "int8_gather_ms_at_measured_rate": t * 1e3, "measured_gather_bytes_per_s": int8_bytes / t}  # fmt: skip


def _row_errors(w: torch.Tensor, packed: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    err = (dequantize_rowwise(packed, bits, w.shape[1]).double() - w.double()).abs()
    return err.amax(1), err.mean(1)


def _compare(w: torch.Tensor) -> dict:
    """Ours vs FBGEMM on the rows ``w``: mean over rows of the per-row max / mean error, their ratios,
    and how many rows have a larger error than FBGEMM's (int8, int4, int8 anchored)."""
    out = {}
    fb = {8: torch.ops.quantized.embedding_bag_byte_prepack(w),
          4: torch.ops.quantized.embedding_bag_4bit_prepack(w, optimized_qparams=False)}  # fmt: skip
    for tag, bits, kw in (("int8", 8, {}), ("int4", 4, {}), ("int8_anchored", 8, {"grid": "anchored"})):
        ours_max, ours_mean = _row_errors(w, pack_rowwise(w, bits, **kw), bits)
        fb_max, fb_mean = _row_errors(w, fb[bits], bits)
        out[tag] = {
            "max_error_ratio": float(ours_max.mean() / fb_max.mean()),
            "mean_error_ratio": float(ours_mean.mean() / fb_mean.mean()),
            "rows_with_larger_max_error": int((ours_max > fb_max).sum()),
            "rows_with_larger_mean_error": int((ours_mean > fb_mean).sum()), "rows": w.shape[0],
        }  # fmt: skip
    return out


def rowwise_error_study(trained: nn.Module, rows: int = 4096, dims: tuple[int, ...] = (8, 16, 32, 64, 128)) -> dict:
    """:func:`_compare` on random rows (``one_sign``: ``|N(0, 1)| + 0.5`` times a random sign per row;
    ``two_sign``: ``N(0, 1)``; scaled by 0.05) for every ``D`` in ``dims``, and on the first ``rows``
    rows of each of ``trained``'s ``nn.EmbeddingBag`` tables. ``worst``: the largest ratio over all cases."""
    g = torch.Generator().manual_seed(0)
    cases = {}
    for d in dims:
        base = torch.randn(rows, d, generator=g) * 0.05
        sign = torch.where(torch.rand(rows, 1, generator=g) < 0.5, -1.0, 1.0)
        cases[f"one_sign_d{d}"] = _compare((base.abs() + 0.025) * sign)
        cases[f"two_sign_d{d}"] = _compare(base)
    tables = [m.weight.detach()[:rows].float().contiguous() for m in trained.modules() if type(m) is nn.EmbeddingBag]
    if tables:
        cases["trained_tables"] = _compare(torch.cat(tables, 0))
    worst = {tag: {k: max(c[tag][k] for c in cases.values()) for k in ("max_error_ratio", "mean_error_ratio",
                                                                         "rows_with_larger_max_error")}
             for tag in ("int8", "int4", "int8_anchored")}  # fmt: skip
    return {"cases": cases, "worst": worst}
