"""ONNX translations for :func:`~lightning_recsys.quant.export_onnx`: our custom ops, and aten ops that
``torch.onnx`` cannot translate on its own but a model's own pooling code uses.

* ``lrs_quant::*``: row-wise dequantization, int4 unpacking, int8 linears (see :mod:`.lowering`,
  :mod:`.linear`).
* ``aten::searchsorted`` (segment ids from offsets, ``torch.searchsorted`` / ``bucketize`` style): a
  count of the sorted entries below each value (``[..., M, B]`` comparisons; no ``sorter``).
* ``aten::repeat_interleave.Tensor`` with ``output_size`` (torch.onnx's own refuses the argument): a
  scatter-add of ones at the segment starts and a cumulative sum.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["onnx_translations"]


def _matmul_integer_to_float_schema():
    """Schema of ONNX Runtime's contrib op ``com.microsoft.MatMulIntegerToFloat`` (ONNX has none):
    ``(A - a_zero_point) @ (B - b_zero_point) * a_scale * b_scale + bias`` in float."""
    from onnx.defs import OpSchema

    opt = OpSchema.FormalParameterOption.Optional
    inputs = [("A", "T1", None), ("B", "T2", None), ("a_scale", "T3", None), ("b_scale", "T3", None),
              ("a_zero_point", "T1", opt), ("b_zero_point", "T2", opt), ("bias", "T3", opt)]  # fmt: skip
    return OpSchema(
        "MatMulIntegerToFloat", "com.microsoft", 1,
        inputs=[OpSchema.FormalParameter(n, t, param_option=o) if o else OpSchema.FormalParameter(n, t) for n, t, o in inputs],
        outputs=[OpSchema.FormalParameter("Y", "T3")],
        type_constraints=[("T1", ["tensor(uint8)", "tensor(int8)"], ""), ("T2", ["tensor(uint8)", "tensor(int8)"], ""),
                          ("T3", ["tensor(float)"], "")],
    )  # fmt: skip


def onnx_translations() -> dict:
    """onnxscript functions for our custom ops (imported lazily: onnxscript is heavy)."""
    from onnxscript import FLOAT, INT8, UINT8  # noqa: F401  (type annotations for onnxscript)
    import onnx
    from onnxscript import opset18 as op
    from onnxscript.values import Op, Opset

    matmul_integer_to_float = Op(Opset("com.microsoft", 1), "MatMulIntegerToFloat", _matmul_integer_to_float_schema())

    def ir_uint8(v: int):
        return onnx.numpy_helper.from_array(np.array(v, dtype=np.uint8))

    def int8_linear_dynamic(x, wq_t, w_scale, bias):
        xq, x_scale, x_zp = op.DynamicQuantizeLinear(x)
        acc = op.MatMulInteger(xq, wq_t, x_zp)
        return op.Add(op.Mul(op.Cast(acc, to=1), op.Mul(x_scale, w_scale)), bias)

    def int8_linear_static(x, x_scale, x_zero_point, wq_t, w_scale, bias):
        # ORT's fused integer matmul with the rescale and bias in its epilogue: about 25% faster than
        # MatMulInteger + Cast + Mul + Add, which ORT leaves unfused after a static QuantizeLinear
        zp = op.Cast(x_zero_point, to=2)  # uint8
        xq = op.QuantizeLinear(x, x_scale, zp)
        return matmul_integer_to_float(xq, wq_t, x_scale, w_scale, zp, None, bias)

    def dequantize_rows(codes, scale, zero_point=None):
        flat = op.Reshape(codes, op.Concat(op.Constant(value_ints=[-1]), op.Shape(codes, start=-1), axis=0))
        per_row = op.Constant(value_ints=[-1])
        if zero_point is None:  # zero point 0: DequantizeLinear's default, no input (and no zeros to make)
            rows = op.DequantizeLinear(flat, op.Reshape(scale, per_row), axis=0)
        else:
            zp = op.Cast(op.Reshape(zero_point, per_row), to=2)  # uint8
            rows = op.DequantizeLinear(flat, op.Reshape(scale, per_row), zp, axis=0)
        return op.Reshape(rows, op.Shape(codes))

    def unpack_nibbles(packed):
        low = op.BitwiseAnd(packed, op.Constant(value=ir_uint8(15)))
        high = op.BitShift(packed, op.Constant(value=ir_uint8(4)), direction="RIGHT")
        return op.Concat(low, high, axis=-1)

    def searchsorted(sorted_sequence, values, out_int32=False, right=False, side=None, sorter=None):
        if sorter is not None:
            raise NotImplementedError("torch.searchsorted with sorter= cannot be exported; sort the sequence first")
        s = op.Unsqueeze(sorted_sequence, op.Constant(value_ints=[-2]))
        v = op.Unsqueeze(values, op.Constant(value_ints=[-1]))
        below = op.LessOrEqual(s, v) if (right or side == "right") else op.Less(s, v)
        count = op.ReduceSum(op.Cast(below, to=7), op.Constant(value_ints=[-1]), keepdims=0)  # int64
        return op.Cast(count, to=6) if out_int32 else count  # int32

    def repeat_interleave(repeats, output_size=None):
        r = op.Cast(repeats, to=7)
        axis0, one = op.Constant(value_int=0), op.Constant(value_ints=[1])
        starts = op.Sub(op.CumSum(r, axis0), r)
        total = op.ReduceSum(r, keepdims=1)  # [1]
        zeros = op.ConstantOfShape(op.Add(total, one), value=onnx.helper.make_tensor("zero", 7, [1], [0]))
        marks = op.ScatterElements(zeros, starts, op.Expand(one, op.Shape(starts)), axis=0, reduction="add")
        seg = op.Sub(op.Slice(op.CumSum(marks, axis0), op.Constant(value_ints=[0]), total), one)
        return op.CastLike(seg, repeats)

    return {
        torch.ops.aten.searchsorted.Tensor: searchsorted,
        torch.ops.aten.repeat_interleave.Tensor: repeat_interleave,
        torch.ops.lrs_quant.unpack_nibbles.default: unpack_nibbles,
        torch.ops.lrs_quant.dequantize_rows.default: dequantize_rows,
        torch.ops.lrs_quant.int8_linear_dynamic.default: int8_linear_dynamic,
        torch.ops.lrs_quant.int8_linear_static.default: int8_linear_static,
    }
