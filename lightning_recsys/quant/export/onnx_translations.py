"""ONNX translations for :func:`~lightning_recsys.quant.export_onnx`: our custom ops, and aten ops that
``torch.onnx`` cannot translate on its own but a model's own pooling code uses.

* ``lrs_quant::*``: row-wise dequantization, int4 unpacking, int8 linears (see :mod:`.lowering`,
  :mod:`.linear`).
* ``aten::searchsorted`` (segment ids from offsets, ``torch.searchsorted`` / ``bucketize`` style): a
  count of the sorted entries below each value (``[..., M, B]`` comparisons; no ``sorter``).
* ``aten::repeat_interleave.Tensor`` with ``output_size`` (torch.onnx's own refuses the argument): a
  scatter-add of ones at the segment starts and a cumulative sum.
* ``aten::embedding_bag`` / ``aten::_embedding_bag`` (``F.embedding_bag`` on a table held as a bare
  tensor; ``nn.EmbeddingBag`` modules are lowered before export): the rows gathered and scattered into
  their bags, instead of torch.onnx's ``Loop``, which ONNX Runtime runs one bag at a time.
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

    def embedding_bag(weight, indices, offsets, scale_grad_by_freq=False, mode=0, sparse=False,
                      per_sample_weights=None, include_last_offset=False, padding_idx=-1):
        # bag of id p: the number of offsets <= p, minus one (a scatter-add of ones at the offsets, then a
        # cumulative sum); ids past an include_last_offset end and padding ids go to an extra bag, dropped
        axis0, one, start = op.Constant(value_int=0), op.Constant(value_ints=[1]), op.Constant(value_ints=[0])
        n, slots = op.Shape(indices), op.Shape(offsets)
        zero_ints = op.ConstantOfShape(op.Add(n, one), value=onnx.helper.make_tensor("zero", 7, [1], [0]))
        marks = op.ScatterElements(zero_ints, op.Cast(offsets, to=7), op.Expand(one, slots), axis=0, reduction="add")
        seg = op.Sub(op.Slice(op.CumSum(marks, axis0), start, n), one)
        if padding_idx is not None and padding_idx >= 0:
            pad = op.CastLike(op.Constant(value_int=padding_idx), indices)
            seg = op.Where(op.Equal(indices, pad), op.Expand(slots, n), seg)
        rows = op.Gather(weight, indices, axis=0)
        if per_sample_weights is not None:
            rows = op.Mul(rows, op.Unsqueeze(per_sample_weights, one))
        width = op.Shape(weight, start=1)
        target = op.Expand(op.Unsqueeze(seg, one), op.Concat(n, width, axis=0))
        zeros = op.Expand(op.CastLike(op.Constant(value_float=0.0), weight), op.Concat(op.Add(slots, one), width, axis=0))
        if mode == 2:  # max; a bag without rows keeps 0, as in torch
            low = op.Expand(op.CastLike(op.Constant(value_float=-3.0e38), weight), op.Shape(zeros))
            pooled = op.ScatterElements(low, target, rows, axis=0, reduction="max")
            out = op.Where(op.Equal(pooled, low), zeros, pooled)
        else:
            out = op.ScatterElements(zeros, target, rows, axis=0, reduction="add")
            if mode == 1:  # mean over each bag's ids (padding ids not counted)
                counts = op.ConstantOfShape(op.Add(slots, one), value=onnx.helper.make_tensor("zero", 1, [1], [0.0]))
                ones = op.Expand(op.Constant(value_floats=[1.0]), n)
                count = op.ScatterElements(counts, seg, ones, axis=0, reduction="add")
                out = op.Div(out, op.CastLike(op.Unsqueeze(op.Max(count, op.Constant(value_float=1.0)), one), weight))
        out = op.Slice(out, start, op.Sub(slots, one) if include_last_offset else slots)
        nothing = op.Constant(value_ints=[0])  # offset2bag, bag_size, max_indices: read by no inference graph
        return out, nothing, nothing, nothing

    return {
        torch.ops.aten.embedding_bag.padding_idx: embedding_bag,
        torch.ops.aten.embedding_bag.default: embedding_bag,
        torch.ops.aten._embedding_bag.default: embedding_bag,
        torch.ops.aten._embedding_bag_forward_only.default: embedding_bag,
        torch.ops.aten.searchsorted.Tensor: searchsorted,
        torch.ops.aten.repeat_interleave.Tensor: repeat_interleave,
        torch.ops.lrs_quant.unpack_nibbles.default: unpack_nibbles,
        torch.ops.lrs_quant.dequantize_rows.default: dequantize_rows,
        torch.ops.lrs_quant.int8_linear_dynamic.default: int8_linear_dynamic,
        torch.ops.lrs_quant.int8_linear_static.default: int8_linear_static,
    }
