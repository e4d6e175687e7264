"""A per-tensor QuantizeLinear moves above pure data movement (Transpose, Gather, ...) to the concat it
follows, so the selection between them runs in uint8; the graph's output is unchanged."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from lightning_recsys.quant.export.graph_rewrite import quantize_before_concat


def _graph(scale):
    """a [N, 3], b [N, 5] -> Concat -> Transpose -> Gather(rows 0, 2, 7, 4) -> Transpose -> Q -> DQ."""
    nodes = [helper.make_node("Concat", ["a", "b"], ["cat"], axis=1),
             helper.make_node("Transpose", ["cat"], ["t"], perm=[1, 0]),
             helper.make_node("Gather", ["t", "idx"], ["sel"], axis=0),
             helper.make_node("Transpose", ["sel"], ["back"], perm=[1, 0]),
             helper.make_node("QuantizeLinear", ["back", "scale", "zp"], ["q"], axis=1),
             helper.make_node("DequantizeLinear", ["q", "scale", "zp"], ["out"], axis=1)]  # fmt: skip
    zp = np.full(np.shape(scale), 7, dtype=np.uint8)
    inits = [numpy_helper.from_array(np.asarray(scale, np.float32), "scale"), numpy_helper.from_array(zp, "zp"),
             numpy_helper.from_array(np.array([0, 2, 7, 4], np.int64), "idx")]  # fmt: skip
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["n", w]) for n, w in (("a", 3), ("b", 5))],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["n", 4])], inits,
    )  # fmt: skip
    return onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10))


def _run(proto, feeds):
    return ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]


def test_quantize_moves_through_the_selection_to_the_concat():
    rng = np.random.default_rng(0)
    feeds = {"a": rng.normal(0, 2, (6, 3)).astype(np.float32), "b": rng.normal(0, 50, (6, 5)).astype(np.float32)}
    proto = _graph(0.05)
    before = _run(proto, feeds)
    assert quantize_before_concat(proto) == 1
    onnx.checker.check_model(proto, full_check=True)
    ops = [n.op_type for n in proto.graph.node]
    assert ops == ["QuantizeLinear", "QuantizeLinear", "Concat", "Transpose", "Gather", "Transpose", "DequantizeLinear"]
    assert not {"cat", "t", "sel", "back"} & {v.name for v in proto.graph.value_info}  # no stale float shape info
    np.testing.assert_array_equal(_run(proto, feeds), before)


@pytest.mark.parametrize("case", ["per_channel", "selection_read_twice"])
def test_other_graphs_are_left_alone(case):
    proto = _graph(np.linspace(0.01, 0.08, 4) if case == "per_channel" else 0.05)
    if case == "selection_read_twice":
        proto.graph.node.append(helper.make_node("Relu", ["sel"], ["relu"]))
        proto.graph.output.append(helper.make_tensor_value_info("relu", TensorProto.FLOAT, [4, "n"]))
    nodes = [n.SerializeToString() for n in proto.graph.node]
    assert quantize_before_concat(proto) == 0
    if case == "per_channel":
        assert [n.SerializeToString() for n in proto.graph.node] == nodes
    else:  # the quantize moves above the last Transpose only: the Gather's output has a second reader
        assert [n.op_type for n in proto.graph.node][:5] == ["Concat", "Transpose", "Gather", "QuantizeLinear", "Transpose"]
