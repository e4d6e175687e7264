"""export_onnx / load on models written the usual way, without lightning_recsys types: tensors, lists,
tuples and dicts of them as inputs; nn.EmbeddingBag in each of its input forms; nn.Embedding pooled
by the model's own code. Float and quantize_-d, checked by ONNX Runtime on batches of other sizes and
bag lengths than the export example."""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from lightning_recsys.quant import RecipeConfig, RowwiseEmbeddingConfig, export_onnx, export_torch, load, quantize_
from lightning_recsys.quant.export.parity import Runtime, verify
from lightning_recsys.quant.export.input_spec import tree_feeds

pytestmark = pytest.mark.timeout(240)

CARDS = (50, 30, 40)
DIM = 8


def _mlp(width: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(width, 16), nn.ReLU(), nn.Linear(16, 1))


class BagDLRM(nn.Module):
    """``forward(dense, ids, offsets[, weights])``: one 1-D id tensor and one offsets tensor per table."""

    def __init__(self, mode="mean", include_last_offset=False):
        super().__init__()
        self.bottom = nn.Sequential(nn.Linear(4, DIM), nn.ReLU())
        self.tables = nn.ModuleList(
            nn.EmbeddingBag(c, DIM, mode=mode, include_last_offset=include_last_offset) for c in CARDS
        )
        self.top = _mlp(DIM * (1 + len(CARDS)))

    def forward(self, dense, ids, offsets, weights=None):
        weights = weights if weights is not None else [None] * len(ids)
        pooled = [t(i, o, per_sample_weights=w) for t, i, o, w in zip(self.tables, ids, offsets, weights)]
        return self.top(torch.cat([self.bottom(dense), *pooled], 1))


class FixedBags(nn.Module):
    """2-D ids ``[B, L]`` per table (fixed-length bags): a max-pooled and a sum-pooled table."""

    def __init__(self):
        super().__init__()
        self.maxed = nn.EmbeddingBag(50, DIM, mode="max")
        self.summed = nn.EmbeddingBag(30, DIM, mode="sum")
        self.top = _mlp(4 + 2 * DIM)

    def forward(self, dense, ids):
        return self.top(torch.cat([dense, self.maxed(ids[0]), self.summed(ids[1])], 1))


class PaddedPooling(nn.Module):
    """nn.Embedding on padded ids ``[B, L]`` and a mask, mean over the valid ids (the model's own pooling)."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(50, DIM)
        self.top = _mlp(4 + DIM)

    def forward(self, dense, ids, mask):
        rows = self.emb(ids) * mask.unsqueeze(-1)
        pooled = rows.sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
        return self.top(torch.cat([dense, pooled], 1))


class SegmentPooling(nn.Module):
    """nn.Embedding on 1-D ids pooled by the model's own segment sums: ``index_add_`` with segment ids
    from ``searchsorted`` on offsets, and ``scatter_add`` with segment ids from ``repeat_interleave``
    on lengths."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Embedding(50, DIM), nn.Embedding(30, DIM)
        self.top = _mlp(4 + 2 * DIM)

    def forward(self, dense, ids, offsets, ids_b, lengths_b):
        n, bsz = ids.shape[0], dense.shape[0]
        seg = torch.searchsorted(offsets, torch.arange(n), right=True) - 1
        a = torch.zeros(bsz, DIM).index_add_(0, seg, self.a(ids))
        seg_b = torch.repeat_interleave(torch.arange(bsz), lengths_b, output_size=ids_b.shape[0])
        b = torch.zeros(bsz, DIM).scatter_add(0, seg_b.unsqueeze(1).expand(-1, DIM), self.b(ids_b))
        return self.top(torch.cat([dense, a, b], 1))


class DictBatch(nn.Module):
    """``forward(batch: dict[str, Tensor])``: a single-id nn.Embedding and a CSR bag (``offsets[:-1]``)."""

    def __init__(self):
        super().__init__()
        self.user = nn.Embedding(50, DIM)
        self.items = nn.EmbeddingBag(40, DIM, mode="mean")
        self.top = _mlp(4 + 2 * DIM)

    def forward(self, batch):
        items = self.items(batch["item_ids"], batch["item_offsets"][:-1])
        return self.top(torch.cat([batch["dense"], self.user(batch["user"]), items], 1))


class NestedSparse(nn.Module):
    """``forward(dense, sparse: dict[str, tuple[ids, offsets]])``, called with keyword arguments."""

    def __init__(self):
        super().__init__()
        self.tables = nn.ModuleDict({"user": nn.EmbeddingBag(50, DIM), "item": nn.EmbeddingBag(40, DIM, mode="mean")})
        self.top = _mlp(4 + 2 * DIM)

    def forward(self, dense, sparse):
        return self.top(torch.cat([dense, *(self.tables[k](*sparse[k]) for k in self.tables)], 1))


def _bags(g, n, card, max_len=3):
    """1-D ids and bag-start offsets for ``n`` bags of 0..max_len ids (some empty)."""
    lengths = torch.randint(0, max_len + 1, (n,), generator=g)
    lengths[0] = 0  # always an empty bag
    offsets = torch.zeros(n, dtype=torch.long)
    offsets[1:] = torch.cumsum(lengths, 0)[:-1]
    return torch.randint(0, card, (int(lengths.sum()),), generator=g), offsets


def _inputs(kind, n, seed):
    g = torch.Generator().manual_seed(seed)
    dense = torch.rand(n, 4, generator=g)
    if kind in ("mean_bags", "weighted_bags"):
        bags = [_bags(g, n, c) for c in CARDS]
        ids, offsets = [b[0] for b in bags], [b[1] for b in bags]
        if kind == "mean_bags":
            return dense, ids, offsets
        ends = [torch.cat([o, torch.tensor([i.numel()])]) for i, o in zip(ids, offsets)]  # include_last_offset
        return dense, tuple(ids), tuple(ends), tuple(torch.rand(i.numel(), generator=g) for i in ids)
    if kind == "fixed_bags":
        width = 4 if seed == 0 else 2
        return dense, [torch.randint(0, 50, (n, width), generator=g), torch.randint(0, 30, (n, width + 1), generator=g)]
    if kind == "padded":
        width = 5 if seed == 0 else 3
        mask = (torch.rand(n, width, generator=g) < 0.6).float()
        mask[0] = 0.0  # an empty row
        return dense, torch.randint(0, 50, (n, width), generator=g), mask
    if kind == "segments":
        ids, offsets = _bags(g, n, 50)
        ids_b, offsets_b = _bags(g, n, 30)
        return dense, ids, offsets, ids_b, torch.diff(offsets_b, append=torch.tensor([ids_b.numel()]))
    if kind == "dict":
        ids, offsets = _bags(g, n, 40)
        return {"dense": dense, "user": torch.randint(0, 50, (n,), generator=g), "item_ids": ids,
                "item_offsets": torch.cat([offsets, torch.tensor([ids.numel()])]), "label": torch.rand(n)}  # fmt: skip
    sparse = {"user": _bags(g, n, 50), "item": _bags(g, n, 40)}
    return {"dense": dense, "sparse": sparse}  # keyword arguments of forward


MODELS = {
    "mean_bags": lambda: BagDLRM("mean"),
    "weighted_bags": lambda: BagDLRM("sum", include_last_offset=True),
    "fixed_bags": FixedBags,
    "padded": PaddedPooling,
    "segments": SegmentPooling,
    "dict": DictBatch,
    "nested_kwargs": NestedSparse,
}
# roles of the model's own pooling code cannot be told apart: the other size comes from verify_batches
OWN_POOLING = {"segments"}


def _call(model, batch):
    if isinstance(batch, dict) and "sparse" in batch:
        return model(**batch)
    return model(*batch) if isinstance(batch, tuple) else model(batch)


@pytest.mark.parametrize("quantized", [False, True], ids=["float", "int8"])
@pytest.mark.parametrize("kind", list(MODELS))
def test_user_model_export_runs_other_sizes(tmp_path, kind, quantized):
    torch.manual_seed(0)
    model = MODELS[kind]().eval()
    if quantized:  # int8 tables (the max-pooled one too) and dynamic int8 linears
        quantize_(model, RecipeConfig())
    example, other = _inputs(kind, 12, 0), _inputs(kind, 5, 1)
    path = tmp_path / "m.onnx"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        meta = export_onnx(model, path, example, verify_batches=[other] if kind in OWN_POOLING else [])
    assert meta["inputs"]["kind"] == "tree"
    assert not [w for w in caught if "export_onnx checked" in str(w.message)]
    if kind in OWN_POOLING:  # skipped (the inputs' roles are unknown); the given batch is checked instead
        assert "nor the ids / offsets of an nn.EmbeddingBag" in meta["parity"]["other_size"]["skipped"]
        assert meta["parity"]["verify_batches"][0]["rows"] == 5
    else:
        assert meta["parity"]["other_size"]["rows"] == 6  # the example's first half, checked at export
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert "Loop" not in ops
    if quantized:
        assert "DynamicQuantizeLinear" in ops and "MatMulInteger" in ops
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(sess.run(None, tree_feeds(meta["inputs"], (other,)))[0])
    with torch.no_grad():
        ref = _call(model, other)
    assert got.shape == ref.shape == (5, 1)
    if quantized:  # int8 activations on a rounding tie may round the other way: the export's tie-aware check
        verify(model, Runtime("ONNX Runtime", lambda feeds: torch.from_numpy(sess.run(None, feeds)[0])), other, meta, 1e-3, 1e-3)
    else:
        torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    predictor = load(path)
    np.testing.assert_array_equal(predictor(other).numpy(), got.numpy())  # the form example_batch took
    if isinstance(other, tuple):  # and the way the model is called
        np.testing.assert_array_equal(predictor(*other).numpy(), got.numpy())
    elif kind == "nested_kwargs":
        np.testing.assert_array_equal(predictor(**other).numpy(), got.numpy())


@pytest.mark.parametrize("kind", list(MODELS))
def test_user_model_torch_program_scores_other_sizes_without_its_class(tmp_path, kind):
    """export_torch: a self-contained torch.export program of the quantized model, verified at export on
    another size, loaded by load() and called in the model's own forms (the class is never imported)."""
    torch.manual_seed(0)
    model = MODELS[kind]().eval()
    quantize_(model, RecipeConfig())
    example, other = _inputs(kind, 12, 0), _inputs(kind, 5, 1)
    meta = export_torch(model, tmp_path / "m.pt2", example, verify_batches=[other] if kind in OWN_POOLING else [])
    parity = meta["parity"]  # rows beyond the tolerance only as int8 rounding ties (they depend on the CPU's kernels)
    assert meta["inputs"]["kind"] == "tree" and parity["rows_beyond_tol"] == parity["rounding_ties"] <= 1
    predictor = load(tmp_path / "m.pt2")
    with torch.no_grad():
        ref = _call(model, other)
    torch.testing.assert_close(predictor(other), ref, atol=1e-5, rtol=1e-5)
    if isinstance(other, tuple):
        torch.testing.assert_close(predictor(*other), ref, atol=1e-5, rtol=1e-5)
    if kind == "weighted_bags":  # include_last_offset: torch.export specialises one bag of batch + 1 offsets
        with pytest.raises(ValueError, match="score at least 2 rows, or export with format='onnx'"):
            predictor(_inputs(kind, 1, 2))
    with pytest.raises(FileExistsError, match="never overwrites"):
        export_torch(model, tmp_path / "m.pt2", example)


class AllBagForms(nn.Module):
    """Every nn.EmbeddingBag input form on the same ids: offsets with and without the last entry, 2-D
    ids, per_sample_weights, padding_idx; sum, mean and max."""

    def __init__(self):
        super().__init__()
        forms = [("sum", False, None), ("mean", True, None), ("max", False, None), ("max", True, 0), ("mean", False, 3),
                 ("sum", False, 3), ("mean", False, 0), ("max", False, 0), ("sum", False, None)]  # fmt: skip
        self.bags = nn.ModuleList(nn.EmbeddingBag(20, 4, mode=m, include_last_offset=last, padding_idx=pad)
                                  for m, last, pad in forms)  # fmt: skip

    def forward(self, ids, offsets, weights, ids2d, weights2d):
        b, starts = self.bags, offsets[:-1]
        one_d = [b[0](ids, starts), b[1](ids, offsets), b[2](ids, starts), b[3](ids, offsets), b[4](ids, starts),
                 b[5](ids, starts, weights)]  # fmt: skip
        return torch.cat([*one_d, b[6](ids2d), b[7](ids2d), b[8](ids2d, per_sample_weights=weights2d)], 1)


def _all_forms_batch(n, seed):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(0, 4, (n,), generator=g)
    lengths[0], lengths[1] = 0, 2  # an empty bag, and a bag of padding ids only
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), torch.cumsum(lengths, 0)])
    ids = torch.randint(0, 6, (int(offsets[-1]),), generator=g)  # small ids: padding ids 0 and 3 are frequent
    ids[0:2] = torch.tensor([3, 3])
    ids2d = torch.randint(0, 5, (n, 3), generator=g)
    ids2d[0] = 0
    return ids, offsets, torch.rand(ids.numel(), generator=g), ids2d, torch.rand(n, 3, generator=g)


@pytest.mark.parametrize("precision", ["float", "int8", "int4"])
def test_every_embedding_bag_form_matches_torch(tmp_path, precision):
    """Float and quantized (every mode, padding_idx, include_last_offset): the artifact pools as the model does."""
    torch.manual_seed(2)
    model = AllBagForms().eval()
    if precision != "float":
        quantize_(model, RowwiseEmbeddingConfig(bits=int(precision[-1])))
        assert all(type(b).__name__ == "QuantizedEmbeddingBag" for b in model.bags)
    meta = export_onnx(model, tmp_path / "m.onnx", _all_forms_batch(9, 0))
    assert meta["parity"]["other_size"]["rows"] == 4 and meta["parity"]["max_abs_diff"] < 1e-5
    export_torch(model, tmp_path / "m.pt2", _all_forms_batch(9, 0))
    for path in ("m.onnx", "m.pt2"):
        predictor = load(tmp_path / path)
        for n, seed in ((2, 1), (6, 2), (17, 3)):
            batch = _all_forms_batch(n, seed)
            with torch.no_grad():
                torch.testing.assert_close(predictor(batch), model(*batch), atol=1e-5, rtol=1e-5)


class Towers(nn.Module):
    """Multi-task, written the usual way: a user table and an item table tied to the candidate item's
    table, a shared bottom, one tower per task, ``forward -> {task: logits [B]}``."""

    def __init__(self):
        super().__init__()
        self.user = nn.Embedding(50, DIM)
        self.history = nn.EmbeddingBag(40, DIM, mode="mean")
        self.item = self.history  # tied: the candidate item reads the history's table
        self.shared = nn.Sequential(nn.Linear(4 + 3 * DIM, 32), nn.ReLU())
        self.towers = nn.ModuleDict({"click": _mlp(32), "like": _mlp(32)})

    def forward(self, dense, user, hist, hist_offsets, item):
        h = torch.cat([dense, self.user(user), self.history(hist, hist_offsets), self.item(item[:, None])], 1)
        h = self.shared(h)
        return {task: tower(h).squeeze(-1) for task, tower in self.towers.items()}


def _towers_batch(n, seed):
    g = torch.Generator().manual_seed(seed)
    hist, offsets = _bags(g, n, 40)
    return torch.rand(n, 4, generator=g), torch.randint(0, 50, (n,), generator=g), hist, offsets, torch.randint(0, 40, (n,), generator=g)


@pytest.mark.parametrize("quantized", [False, True], ids=["float", "int8"])
def test_towers_per_task_export_one_logits_column_per_task(tmp_path, quantized):
    """A dict output {task: [B]} exports as logits [B, T] in key order, with the task names in the
    metadata; the tied table stays one table; checked on another size at export."""
    torch.manual_seed(4)
    model = Towers().eval()
    if quantized:
        quantize_(model, RecipeConfig())
        assert model.item is model.history and type(model.item).__name__ == "QuantizedEmbeddingBag"
    for fmt, export in (("onnx", export_onnx), ("pt2", export_torch)):
        meta = export(model, tmp_path / f"m.{fmt}", _towers_batch(12, 0))
        assert meta["tasks"] == ["click", "like"] and meta["parity"]["other_size"]["rows"] == 6
        predictor = load(tmp_path / f"m.{fmt}")
        assert predictor.tasks == ["click", "like"]
        batch = _towers_batch(7, 1)
        with torch.no_grad():
            out = model(*batch)
        got = predictor(*batch)
        assert got.shape == (7, 2)
        torch.testing.assert_close(got, torch.stack([out["click"], out["like"]], 1), atol=1e-3, rtol=1e-3)


def test_single_row_example_and_numpy_inputs(tmp_path):
    """An example of one row still exports every size (checked on the row twice); numpy arrays feed the predictor."""
    torch.manual_seed(1)
    model = BagDLRM("mean").eval()
    dense, ids, offsets = _inputs("mean_bags", 1, 3)
    meta = export_onnx(model, tmp_path / "m.onnx", (dense, ids, offsets))
    assert meta["parity"]["other_size"]["rows"] == 2
    other = _inputs("mean_bags", 7, 4)
    predictor = load(tmp_path / "m.onnx")
    as_numpy = (other[0].numpy(), [i.numpy() for i in other[1]], [o.numpy().astype(np.int32) for o in other[2]])
    with torch.no_grad():
        torch.testing.assert_close(predictor(*as_numpy), model(*other), atol=1e-5, rtol=1e-5)


class SegmentReduce(nn.Module):
    """Pooling with an op that has no ONNX translation."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(50, DIM)

    def forward(self, dense, ids, offsets):
        lengths = torch.diff(offsets, append=torch.tensor([ids.shape[0]]))
        return torch.segment_reduce(self.emb(ids), "sum", lengths=lengths, unsafe=True).sum(1, keepdim=True) + dense[:, :1]


def test_clear_errors(tmp_path):
    model = BagDLRM("mean").eval()
    dense, ids, offsets = _inputs("mean_bags", 6, 0)
    with pytest.raises(TypeError, match=r"input 'ids.1' is a set; export_onnx takes tensors"):
        export_onnx(model, tmp_path / "a.onnx", (dense, [ids[0], {1, 2}, ids[2]], offsets))
    with pytest.raises(TypeError, match="takes neither them as its positional arguments"):
        export_onnx(model, tmp_path / "b.onnx", (dense, ids, offsets, None, dense))
    renorm = BagDLRM("mean").eval()
    renorm.tables[1] = nn.EmbeddingBag(30, DIM, mode="mean", max_norm=1.0)
    with pytest.raises(TypeError, match="max_norm"):
        export_onnx(renorm, tmp_path / "c.onnx", (dense, ids, offsets))
    with pytest.raises(ValueError, match="single_hot applies to RecsysBatch examples only"):
        export_onnx(model, tmp_path / "e.onnx", (dense, ids, offsets), single_hot=[])
    own = SegmentPooling().eval()
    with pytest.warns(UserWarning, match=r"not on a batch of another size: inputs \['ids', 'ids_b'\] are neither"):
        export_onnx(own, tmp_path / "f.onnx", _inputs("segments", 6, 0))
    with pytest.raises(RuntimeError, match=r"aten\.segment_reduce.* own pooling exports when written with index_add"):
        export_onnx(SegmentReduce().eval(), tmp_path / "g.onnx", (dense, ids[0], offsets[0]))
    with pytest.raises(ValueError, match=r"cannot take verify_batches\[0\]: input 'dense' has size 3 in dim 1, the graph fixed"):
        export_onnx(model, tmp_path / "h.onnx", (dense, ids, offsets), verify_batches=[(dense[:, :3], ids, offsets)])
    assert not (tmp_path / "h.onnx").exists()
    export_onnx(model, tmp_path / "m.onnx", (dense, ids, offsets))
    predictor = load(tmp_path / "m.onnx")
    with pytest.raises(ValueError, match=r"input 'argument 1' must be a tuple / list of 3 items .* got list of 2"):
        predictor(dense, ids[:2], offsets)
    with pytest.raises(ValueError, match=r"input 'dense' must be float32 \(as at export\), got int64"):
        predictor(dense.long(), ids, offsets)
    with pytest.raises(ValueError, match=r"input 'dense' has size 3 in dim 1, the graph fixed it to 4"):
        predictor(dense[:, :3], ids, offsets)
    batch = _inputs("dict", 6, 0)
    meta = export_onnx(DictBatch().eval(), tmp_path / "d.onnx", batch)
    assert "batch.label" in meta["inputs"]["names"] and "batch.label" not in [t["name"] for t in meta["inputs"]["tensors"]]
    batch.pop("label")  # not read by the model: not needed at inference
    load(tmp_path / "d.onnx")(batch)
    with pytest.raises(ValueError, match=r"the batch lacks inputs \['batch.item_ids'\] that the exported graph reads"):
        load(tmp_path / "d.onnx")({k: v for k, v in batch.items() if k != "item_ids"})


class BareTable(nn.Module):
    """Tables held as bare parameters, read with F.embedding_bag in every mode (torch.onnx's own translation
    is a Loop over the bags)."""

    def __init__(self):
        super().__init__()
        self.tables = nn.ParameterList(nn.Parameter(torch.randn(c, DIM)) for c in CARDS)
        self.top = _mlp(4 + 3 * DIM)

    def forward(self, dense, ids, offsets):
        f = torch.nn.functional.embedding_bag
        pooled = [f(i, t, o, mode=m, padding_idx=p) for i, t, o, m, p in zip(ids, self.tables, offsets, ("sum", "mean", "max"),
                                                                            (None, 0, 1))]  # fmt: skip
        return self.top(torch.cat([dense, *pooled], 1))


def test_bare_tables_read_with_f_embedding_bag_export_without_a_loop(tmp_path):
    torch.manual_seed(5)
    model = BareTable().eval()
    meta = export_onnx(model, tmp_path / "m.onnx", _inputs("mean_bags", 9, 0), verify_batches=[_inputs("mean_bags", 4, 1)])
    assert "Loop" not in {n.op_type for n in onnx.load(str(tmp_path / "m.onnx")).graph.node}
    assert meta["parity"]["verify_batches"][0]["max_abs_diff"] < 1e-5
    other = _inputs("mean_bags", 13, 2)
    with torch.no_grad():
        torch.testing.assert_close(load(tmp_path / "m.onnx")(*other), model(*other), atol=1e-5, rtol=1e-5)
