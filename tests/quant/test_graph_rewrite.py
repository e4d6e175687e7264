"""Exact ONNX rewrites: quantize a concat's inputs and concatenate in uint8."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from lightning_recsys.models import DLRM
from lightning_recsys.quant import Int8LinearConfig, RecipeConfig, calibrate, export_onnx, layout_feeds, quantize_
from lightning_recsys.quant.export.graph_rewrite import quantize_before_concat

from .test_export import CARDS, _batch

pytestmark = pytest.mark.timeout(240)


def _graph(scale, extra_reader=False):
    """a [N, 3], b [N, 5] -> Concat -> QuantizeLinear(scale, zp 7) -> DequantizeLinear (-> float out)."""
    nodes = [helper.make_node("Concat", ["a", "b"], ["cat"], axis=1),
             helper.make_node("QuantizeLinear", ["cat", "scale", "zp"], ["q"], axis=1),
             helper.make_node("DequantizeLinear", ["q", "scale", "zp"], ["out"], axis=1)]  # fmt: skip
    outputs = [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["n", 8])]
    if extra_reader:
        nodes.append(helper.make_node("Relu", ["cat"], ["relu"]))
        outputs.append(helper.make_tensor_value_info("relu", TensorProto.FLOAT, ["n", 8]))
    zp = np.full(np.shape(scale), 7, dtype=np.uint8)
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["n", w]) for n, w in (("a", 3), ("b", 5))],
        outputs, [numpy_helper.from_array(np.asarray(scale, np.float32), "scale"), numpy_helper.from_array(zp, "zp")],
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)


def _run(proto, feeds):
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def test_quantize_before_concat_is_exact():
    rng = np.random.default_rng(0)
    feeds = {"a": rng.normal(0, 2, (6, 3)).astype(np.float32), "b": rng.normal(0, 50, (6, 5)).astype(np.float32)}  # b saturates
    proto = onnx.shape_inference.infer_shapes(_graph(0.05))
    assert "cat" in {v.name for v in proto.graph.value_info}
    before = _run(proto, feeds)
    assert quantize_before_concat(proto) == 1
    assert "cat" not in {v.name for v in proto.graph.value_info}  # no shape info left for the float concat
    onnx.checker.check_model(proto, full_check=True)
    ops = [(n.op_type, n.input[0]) for n in proto.graph.node]
    assert ops[:3] == [("QuantizeLinear", "a"), ("QuantizeLinear", "b"), ("Concat", "q_part0")]
    assert not any(n.op_type == "Concat" and n.output[0] == "cat" for n in proto.graph.node)
    np.testing.assert_array_equal(_run(proto, feeds)[0], before[0])


@pytest.mark.parametrize("case", ["per_channel", "concat_read_twice"])
def test_quantize_before_concat_leaves_other_graphs_alone(case):
    proto = _graph(np.linspace(0.01, 0.08, 8), False) if case == "per_channel" else _graph(0.05, extra_reader=True)
    nodes = [n.SerializeToString() for n in proto.graph.node]
    assert quantize_before_concat(proto) == 0
    assert [n.SerializeToString() for n in proto.graph.node] == nodes


def test_static_int8_dlrm_export_concatenates_uint8(tmp_path):
    """The folded DLRM interaction feeding a calibrated static int8 top layer is concatenated after its
    QuantizeLinear; ONNX Runtime reproduces the PyTorch model."""
    torch.manual_seed(3)
    model = DLRM(4, CARDS, embedding_dim=6, bottom_mlp=(8, 6), top_mlp=(8, 1)).eval()
    batch = _batch({k: [[(5 * i + 1) % c] for i in range(32)] for k, c in CARDS.items()}, 32, weighted=())
    quantize_(model, RecipeConfig(linears=Int8LinearConfig(activation="static", observer="minmax")))
    calibrate(model, [batch], num_batches=1)
    meta = export_onnx(model, tmp_path / "m.onnx", batch)
    graph = onnx.load(str(tmp_path / "m.onnx")).graph
    producers = {o: n for n in graph.node for o in n.output}
    concats = [n for n in graph.node if n.op_type == "Concat" and all(
        producers.get(i) is not None and producers[i].op_type == "QuantizeLinear" for i in n.input)]  # fmt: skip
    assert len(concats) == 1 and len(concats[0].input) == 3  # [x, E x, E E^T]
    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    got = sess.run(None, layout_feeds(batch, meta["inputs"]))[0]
    with torch.no_grad():
        np.testing.assert_allclose(got, model(batch).numpy(), atol=1e-5, rtol=1e-5)
