"""ONNX export: Gather+ReduceSum bags, row-wise tables in the graph, integer matmuls, ORT parity."""

import onnx
import pytest
import torch
from torch import nn

from lightning_recsys.data import RecsysBatch, SparseFeature
from lightning_recsys.models import DLRM
from lightning_recsys.quant import Int8LinearConfig, RecipeConfig, calibrate, export_onnx, layout_feeds, load, pack_rowwise, quantize_
from lightning_recsys.quant.export.lowering import lower_tables

from .test_api_config import UserModel

pytestmark = pytest.mark.timeout(240)

CARDS = {"a": 50, "b": 30, "c": 40}


def _batch(bags_per_feature, dense_rows, weighted=("c",), seed=0):
    g = torch.Generator().manual_seed(seed)
    sparse = {}
    for name, bags in bags_per_feature.items():
        f = SparseFeature.from_lists(bags)
        if name in weighted:
            f.weights = torch.rand(f.values.numel(), generator=g)
        sparse[name] = f
    return RecsysBatch(torch.rand(dense_rows, 4, generator=g), sparse)


def _random_batch(n, seed):
    g = torch.Generator().manual_seed(seed)
    bags = {k: [torch.randint(0, c, (int(torch.randint(0, 4, (1,), generator=g)),), generator=g).tolist() for _ in range(n)]
            for k, c in CARDS.items()}  # fmt: skip
    return _batch(bags, n, seed=seed)


def test_recsys_model_export_matches_ort(tmp_path):
    torch.manual_seed(0)
    model = DLRM(4, CARDS, embedding_dim=6, bottom_mlp=(8,), top_mlp=(8,), num_tasks=2).eval()
    recipe = RecipeConfig(
        linears=Int8LinearConfig(activation="static", observer="percentile", percentile=99.9),
        overrides={r".*tables\.b": {"precision": "int4"}, r".*tables\.c": {"precision": "fp16"}},
    )
    quantize_(model, recipe)
    calibrate(model, [_random_batch(32, s) for s in range(3)], num_batches=3)
    path = tmp_path / "model.onnx"
    meta = export_onnx(model, path, _random_batch(16, 10))
    assert meta["parity"]["max_abs_diff"] <= 1e-3
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    ops = {n.op_type for n in proto.graph.node}
    assert "Loop" not in ops and {"Gather", "ReduceSum", "MatMulIntegerToFloat", "QuantizeLinear"} <= ops
    uint8_tables = [i for i in proto.graph.initializer if i.data_type == onnx.TensorProto.UINT8 and len(i.dims) == 2]
    assert {tuple(i.dims) for i in uint8_tables} >= {(51, 6), (31, 3)}  # row-wise int8 and packed int4 (+ zero row)
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in proto.graph.initializer)
    predictor = load(path)
    with pytest.raises(FileExistsError):
        export_onnx(model, path, _random_batch(4, 1))
    cases = [
        _random_batch(64, 20),
        _batch({"a": [[3]], "b": [[1, 2]], "c": [[4, 5, 6]]}, 1),  # batch size 1
        _batch({"a": [[], [7, 7]], "b": [[], []], "c": [[0], []]}, 2),  # empty bags everywhere
    ]
    with torch.no_grad():
        for batch in cases:
            ref = model(batch)
            got = predictor(batch)
            assert got.shape == ref.shape
            torch.testing.assert_close(got, ref, atol=2e-3, rtol=1e-3)




def test_user_tensor_model_export(tmp_path):
    model = UserModel().eval()
    quantize_(model, RecipeConfig())
    user, items = torch.randint(0, 100, (8,)), torch.randint(0, 200, (8, 3))
    export_onnx(model, tmp_path / "user.onnx", (user, items))
    predictor = load(tmp_path / "user.onnx")
    ops = {n.op_type for n in onnx.load(str(tmp_path / "user.onnx")).graph.node}
    assert "DynamicQuantizeLinear" in ops and "MatMulInteger" in ops
    for n in (1, 33):
        u, i = torch.randint(0, 100, (n,)), torch.randint(0, 200, (n, 3))
        torch.testing.assert_close(predictor((u, i)), model(u, i).detach(), atol=2e-3, rtol=1e-3)


def test_single_hot_features_use_one_fused_gather(tmp_path):
    torch.manual_seed(1)
    model = DLRM(4, CARDS, embedding_dim=6, bottom_mlp=(8,), top_mlp=(8,)).eval()
    quantize_(model, RecipeConfig())
    single = _batch({k: [[i % c] for i in range(8)] for k, c in CARDS.items()}, 8, weighted=())
    meta = export_onnx(model, tmp_path / "sh.onnx", single)
    assert meta["inputs"]["single_hot"] == meta["inputs"]["stacked"] == list(CARDS)
    proto = onnx.load(str(tmp_path / "sh.onnx"))
    assert [i.name for i in proto.graph.input] == ["dense", "sparse_ids"]  # one [B, 3] id matrix
    ops = [n.op_type for n in proto.graph.node]
    # codes and [scale, zero point] pairs: one Gather each for all tables; the int8 top layer reads every
    # pairwise product, so the interaction selects nothing (no Gather; the one Transpose is E^T in E E^T,
    # which ONNX Runtime fuses into its matmul)
    assert ops.count("Gather") == 2 and ops.count("Transpose") == 1
    assert "GatherND" not in ops and "Where" not in ops and "ReduceSum" not in ops
    assert ops.count("Unsqueeze") <= 1  # the dense vector's; none per feature
    predictor = load(tmp_path / "sh.onnx")
    with torch.no_grad():
        for batch in (_batch({"a": [[3]], "b": [[29]], "c": [[0]]}, 1, weighted=()),
                      _batch({"a": [[1], []], "b": [[], [2]], "c": [[5], [6]]}, 2, weighted=())):  # fmt: skip
            torch.testing.assert_close(predictor(batch), model(batch), atol=2e-3, rtol=1e-3)
    with pytest.raises(ValueError, match="exported single-hot"):
        predictor(_batch({"a": [[1, 2]], "b": [[1]], "c": [[1]]}, 1, weighted=()))


@pytest.mark.parametrize("num_dense", [4, 0])
def test_lowered_interaction_matches_dot_interaction(num_dense):
    from lightning_recsys.models.dlrm import DotInteraction

    torch.manual_seed(2)
    for n_emb in (1, 2, 5):
        for include_dense in (True, False):
            ref = DotInteraction(n_emb + (1 if num_dense else 0), include_dense=include_dense)
            low = lower_tables(nn.ModuleDict({"inter": ref}))["inter"]
            assert type(low).__name__ == "LoweredDotInteraction"
            x = torch.randn(3, 6) if num_dense else None
            e = torch.randn(3, n_emb, 6)
            torch.testing.assert_close(low(x, e), ref(x, e), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("precision", ["int8", "int4"])
def test_single_hot_export_parity_batch1_and_empty_bags(tmp_path, precision):
    """The fused row-wise gather + lowered interaction graph against ORT: batch 1, all-empty bags, and a
    batch size never seen at export."""
    torch.manual_seed(3)
    model = DLRM(4, CARDS, embedding_dim=8, bottom_mlp=(8,), top_mlp=(8,), num_tasks=2).eval()
    quantize_(model, RecipeConfig(overrides={r".*tables\.[abc]": {"precision": precision}}))
    single = _batch({k: [[(3 * i) % c] for i in range(8)] for k, c in CARDS.items()}, 8, weighted=())
    export_onnx(model, tmp_path / "m.onnx", single)
    predictor = load(tmp_path / "m.onnx")
    g = torch.Generator().manual_seed(4)
    many = {k: [[int(torch.randint(0, c, (1,), generator=g))] if i % 3 else [] for i in range(37)] for k, c in CARDS.items()}
    with torch.no_grad():
        for batch in (_batch({"a": [[49]], "b": [[0]], "c": [[39]]}, 1, weighted=()),
                      _batch({"a": [[]], "b": [[]], "c": [[]]}, 1, weighted=()),
                      _batch(many, 37, weighted=())):  # fmt: skip
            torch.testing.assert_close(predictor(batch), model(batch), atol=2e-3, rtol=1e-3)


@pytest.mark.parametrize("grid", ["exact", "anchored"])
def test_int8_table_grids_export_exactly(tmp_path, grid):
    """Default (FBGEMM's exact-range) int8 rows carry a float bias: the graph dequantizes with one
    ``DequantizeLinear`` and a bias add; anchored rows (integer zero points) need no add."""
    torch.manual_seed(3)
    model = DLRM(4, CARDS, embedding_dim=6, bottom_mlp=(8,), top_mlp=(8,)).eval()
    floats = {k: t.weight.detach().clone() + 0.5 for k, t in model.backbone.embeddings.tables.items()}
    quantize_(model, RecipeConfig())
    for k, table in model.backbone.embeddings.tables.items():
        table.packed.copy_(pack_rowwise(floats[k], 8, grid=grid))
    single = _batch({k: [[i % c] for i in range(8)] for k, c in CARDS.items()}, 8, weighted=())
    meta = export_onnx(model, tmp_path / "m.onnx", single)  # raises unless ORT matches the PyTorch model
    assert meta["parity"]["max_abs_diff"] <= 1e-3
    assert sum(n.op_type == "DequantizeLinear" for n in onnx.load(str(tmp_path / "m.onnx")).graph.node) == 1
    fused = lower_tables(model).backbone.embeddings.fused
    assert hasattr(fused, "scale_bias") == (grid == "exact") and hasattr(fused, "scale_zp") == (grid == "anchored")


def _big_rows(model):
    """Scale the tables so that |e_i|^2 (the unused diagonal of E E^T) dwarfs the used products."""
    with torch.no_grad():
        for t in model.embeddings.tables.values():
            t.weight.mul_(40.0)
    return model


@pytest.mark.parametrize("kind", ["dlrm", "dlrm_shared", "multitask", "multitask_shared", "static"])
def test_folded_interaction_matches_quantized_model_exactly(kind):
    """The int8 consumer widened to read all of ``[x, E x, E E^T]`` computes the same integer sums, also when
    the diagonal would widen a dynamic activation range (it is masked; unmasked, the outputs move by
    more than 1e-2 here)."""
    from lightning_recsys.models import MultiTaskDLRM
    from lightning_recsys.models.dlrm import DLRMBackbone
    from lightning_recsys.quant.export.lowerings.dlrm import FoldedDotInteraction

    torch.manual_seed(5)
    if kind.startswith("multitask"):
        model = MultiTaskDLRM(4, CARDS, ["click", "like"], embedding_dim=6, bottom_mlp=(8,),
                              shared_mlp=(8,) if kind.endswith("shared") else (), tower_mlp=(4,))  # fmt: skip
    elif kind == "dlrm_shared":
        model = DLRM(4, CARDS, embedding_dim=6, bottom_mlp=(8,), top_mlp=(8,))
        model.backbone = DLRMBackbone(4, CARDS, 6, (8,), shared_mlp=(16,))
        model.top_mlp[0] = nn.Linear(16, 8)
    else:
        model = DLRM(4, CARDS, embedding_dim=6, bottom_mlp=(8,), top_mlp=(8,), num_tasks=2)
    _big_rows(model).eval()
    batch = _batch({k: [[(7 * i) % c] for i in range(16)] for k, c in CARDS.items()}, 16, weighted=())
    static = kind == "static"
    quantize_(model, RecipeConfig(linears=Int8LinearConfig(activation="static" if static else "dynamic")))
    if static:
        calibrate(model, [batch], num_batches=1)
    lowered = lower_tables(model).eval()
    inter = [m for m in lowered.modules() if isinstance(m, FoldedDotInteraction)]
    assert len(inter) == 1 and inter[0].masked != static
    with torch.no_grad():
        ee = torch.stack([model.embeddings.tables[k](batch.sparse[k].values, batch.sparse[k].offsets[:-1])
                          for k in CARDS], 1)  # fmt: skip
        assert float(torch.linalg.vector_norm(ee, dim=-1).max()) ** 2 > 10 * float(ee.abs().max())
        # the same integer sums; only float rounding of the dot products may differ (E E^T and E x apart)
        torch.testing.assert_close(lowered(batch), model(batch), atol=1e-5, rtol=1e-5)


def test_float_consumers_and_custom_forwards_keep_the_selection():
    """Only int8 consumers are widened (a widened float matmul costs more than the selection), and only in
    the project's own model classes, whose forward is known."""
    from lightning_recsys.quant.export.lowerings.dlrm import LoweredDotInteraction

    class MyDLRM(DLRM):
        def forward(self, batch):
            return self.top_mlp(self.backbone(batch) * 2.0)

    float_model = DLRM(4, CARDS, embedding_dim=6, bottom_mlp=(8,), top_mlp=(8,)).eval()
    assert isinstance(lower_tables(float_model).backbone.interaction, LoweredDotInteraction)
    torch.manual_seed(6)
    custom = MyDLRM(4, CARDS, embedding_dim=6, bottom_mlp=(8,), top_mlp=(8,)).eval()
    quantize_(custom, RecipeConfig())
    lowered = lower_tables(custom)
    assert isinstance(lowered.backbone.interaction, LoweredDotInteraction)
    batch = _batch({k: [[(5 * i) % c] for i in range(8)] for k, c in CARDS.items()}, 8, weighted=())
    with torch.no_grad():
        torch.testing.assert_close(lowered(batch), custom(batch), atol=1e-5, rtol=1e-5)


def test_stacked_ids_input_with_weighted_and_multi_hot_features(tmp_path):
    """Single-hot unweighted features come as one ``sparse_ids`` matrix; weighted or multi-hot ones keep
    their own inputs; ORT matches the model on batches with empty bags."""
    torch.manual_seed(7)
    model = DLRM(4, CARDS, embedding_dim=6, bottom_mlp=(8,), top_mlp=(8,)).eval()
    quantize_(model, RecipeConfig())
    example = _batch({"a": [[i % 50] for i in range(8)], "b": [[i, i + 1] for i in range(8)], "c": [[i] for i in range(8)]},
                     8, weighted=("c",))  # fmt: skip
    meta = export_onnx(model, tmp_path / "m.onnx", example)
    assert meta["inputs"]["single_hot"] == ["a", "c"] and meta["inputs"]["stacked"] == ["a"]
    names = [i.name for i in onnx.load(str(tmp_path / "m.onnx")).graph.input]
    assert names == ["dense", "sparse_ids", "b__ids", "c__ids", "c__weights"]
    predictor = load(tmp_path / "m.onnx")
    batch = _batch({"a": [[3], [], [49]], "b": [[1], [2, 3, 4], []], "c": [[], [5], [6]]}, 3, weighted=("c",))
    with torch.no_grad():
        torch.testing.assert_close(predictor(batch), model(batch), atol=2e-3, rtol=1e-3)
    with pytest.raises(ValueError, match="layout must be the 'inputs' entry"):
        layout_feeds(batch, {"kind": "tensors", "names": ["input_0"]})
    with pytest.raises(ValueError, match="stacked features"):
        from lightning_recsys.quant import flatten_batch

        flatten_batch(batch, list(CARDS), ["c"], single_hot=["a", "c"], stacked=["c"])


def test_relu_before_static_int8_linear_is_dropped_exactly(tmp_path):
    """A calibrated static int8 layer after a ReLU has zero point 0: its quantization clamps negatives to
    code 0 already, so the export drops the ReLU and computes exactly the same."""
    torch.manual_seed(8)
    model = DLRM(4, CARDS, embedding_dim=6, bottom_mlp=(8, 8), top_mlp=(8, 8)).eval()
    batch = _batch({k: [[(3 * i) % c] for i in range(32)] for k, c in CARDS.items()}, 32, weighted=())
    quantize_(model, RecipeConfig(linears=Int8LinearConfig(activation="static", observer="percentile")))
    calibrate(model, [batch], num_batches=1)
    lowered = lower_tables(model).eval()
    # bottom 4-8-8-6: the ReLUs before layers 2 and 4 go, the last one feeds the interaction; top: all go
    assert [type(m).__name__ for m in lowered.backbone.bottom_mlp] == ["Int8Linear", "Identity", "Int8Linear", "Identity",
                                                                       "Int8Linear", "ReLU"]  # fmt: skip
    assert not any(isinstance(m, nn.ReLU) for m in lowered.top_mlp)
    with torch.no_grad():  # (the folded interaction may round its dot products differently: 1e-5)
        torch.testing.assert_close(lowered(batch), model(batch), atol=1e-5, rtol=1e-5)
    export_onnx(model, tmp_path / "m.onnx", batch)
    assert sum(n.op_type == "Relu" for n in onnx.load(str(tmp_path / "m.onnx")).graph.node) == 1
