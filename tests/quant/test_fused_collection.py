"""QuantizedEmbeddingBagCollection: one kernel call for the row-wise tables of an EmbeddingBagCollection,
bit-identical to the per-table lookups, with the state dict, copies and swaps users do."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch

from lightning_recsys.data.batch import RecsysBatch, SparseFeature
from lightning_recsys.models import DLRM
from lightning_recsys.quant import (
    FP16Config,
    QuantizedEmbeddingBag,
    QuantizedEmbeddingBagCollection,
    RecipeConfig,
    RowwiseEmbeddingConfig,
    quantize_,
)

CARDS = {"a": 50, "b": 80, "c": 30, "d": 64}


def _model(seed: int = 0, dim: int = 8) -> DLRM:
    torch.manual_seed(seed)
    return DLRM(num_dense=3, cardinalities=CARDS, embedding_dim=dim).eval()


def _per_table(collection: QuantizedEmbeddingBagCollection, sparse) -> torch.Tensor:
    collection.fuse_lookups = False
    try:
        return collection(sparse)
    finally:
        collection.fuse_lookups = True


def _ragged(n: int, batch: int, gen: torch.Generator, weighted: bool = False) -> SparseFeature:
    lengths = torch.randint(0, 4, (batch,), generator=gen)  # empty bags included
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)])
    values = torch.randint(0, n, (int(offsets[-1]),), generator=gen)
    weights = torch.rand(values.numel(), generator=gen) if weighted else None
    return SparseFeature(values, offsets, weights)


def _batches(batch: int = 16):
    gen = torch.Generator().manual_seed(1)
    single = {k: SparseFeature.single_hot(torch.randint(0, n, (batch,), generator=gen)) for k, n in CARDS.items()}
    ragged = {k: _ragged(n, batch, gen, weighted=k == "b") for k, n in CARDS.items()}
    mixed = {**single, "c": _ragged(CARDS["c"], batch, gen)}
    return {"single_hot": single, "ragged_weighted": ragged, "mixed": mixed}


@pytest.mark.parametrize("bits", [8, 4])
def test_quantize_fuses_the_tables_bit_identically(bits: int) -> None:
    model = _model()
    quantize_(model, RowwiseEmbeddingConfig(bits=bits))
    ebc = model.embeddings
    assert type(ebc) is QuantizedEmbeddingBagCollection
    assert [len(g.names) for g in ebc._groups] == [len(CARDS)]
    for name, sparse in _batches().items():
        fused = ebc(sparse)
        assert fused.shape == (16, len(CARDS), 8) and fused.is_contiguous(), name
        assert torch.equal(fused, _per_table(ebc, sparse)), name
    # the whole model too (batch of one and of zero rows included)
    for b in (1, 0):
        sparse = {k: SparseFeature.single_hot(torch.arange(b)) for k in CARDS}
        assert ebc(sparse).shape == (b, len(CARDS), 8)
    batch = RecsysBatch(torch.randn(16, 3), _batches()["ragged_weighted"], {"y": torch.zeros(16)})
    out = model(batch)
    ebc.fuse_lookups = False
    assert torch.equal(out, model(batch))


def test_mixed_precisions_group_per_kernel() -> None:
    model = _model()
    quantize_(model, RecipeConfig(overrides={r".*tables\.a": {"precision": "int4"}, r".*tables\.b": {"precision": "int4"},
                                             r".*tables\.c": FP16Config()}))  # fmt: skip
    ebc = model.embeddings
    assert sorted((g.precision, tuple(g.names)) for g in ebc._groups) == [("int4", ("a", "b"))]  # d alone stays per table
    for name, sparse in _batches().items():
        assert torch.equal(ebc(sparse), _per_table(ebc, sparse)), name


def test_state_dict_keys_save_load_and_deepcopy() -> None:
    model = _model()
    quantize_(model, RowwiseEmbeddingConfig())
    keys = sorted(model.state_dict())
    assert [k for k in keys if "embeddings" in k] == [f"backbone.embeddings.tables.{k}.packed" for k in sorted(CARDS)]
    sparse = _batches()["ragged_weighted"]
    ref = model.embeddings(sparse)

    # a fresh quantized model of other weights loads the state dict into its shared buffer
    other = _model(seed=5)
    quantize_(other, RowwiseEmbeddingConfig())
    other.load_state_dict(model.state_dict())
    assert other.embeddings._intact() and torch.equal(other.embeddings(sparse), ref)

    # torch.save writes the shared storage once (not once per table)
    import io

    buf_fused, buf_plain = io.BytesIO(), io.BytesIO()
    torch.save(model.state_dict(), buf_fused)
    torch.save({k: v.clone() for k, v in model.state_dict().items()}, buf_plain)
    assert buf_fused.getbuffer().nbytes < 1.05 * buf_plain.getbuffer().nbytes

    clone = copy.deepcopy(model)
    assert clone.embeddings._intact() and torch.equal(clone.embeddings(sparse), ref)
    model.embeddings.tables["a"].packed.zero_()  # the copy owns its own buffer
    assert torch.equal(clone.embeddings(sparse), ref)


def test_a_replaced_table_warns_once_and_stays_exact_until_refused() -> None:
    model = _model()
    quantize_(model, RowwiseEmbeddingConfig())
    ebc = model.embeddings
    float_b = torch.nn.EmbeddingBag(CARDS["b"], 8, mode="sum")
    ebc.tables["b"] = QuantizedEmbeddingBag.from_float(float_b, precision="int8")
    sparse = _batches()["ragged_weighted"]
    with pytest.warns(UserWarning, match="no longer share one buffer.*refuse"):
        out = ebc(sparse)
    assert torch.equal(out, _per_table(ebc, sparse))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ebc(sparse)  # once only
        ebc.refuse()
        assert ebc._intact()
        assert torch.equal(ebc(sparse), out)


def test_tied_tables_share_one_block() -> None:
    model = _model()
    model.embeddings.tables["d"] = model.embeddings.tables["b"]  # tied: one module under two names
    quantize_(model, RowwiseEmbeddingConfig())
    ebc = model.embeddings
    assert ebc.tables["d"] is ebc.tables["b"]
    g = ebc._groups[0]
    assert g.fused.shape[0] == sum(n for k, n in CARDS.items() if k != "d")
    for name, sparse in _batches().items():
        sparse = {**sparse, "d": SparseFeature(sparse["d"].values % CARDS["b"], sparse["d"].offsets, sparse["d"].weights)}
        assert torch.equal(ebc(sparse), _per_table(ebc, sparse)), name


def test_missing_feature_and_mismatched_batches_raise_like_the_plain_collection() -> None:
    model = _model()
    quantize_(model, RowwiseEmbeddingConfig())
    sparse = _batches()["single_hot"]
    with pytest.raises(KeyError, match="no sparse feature 'c'"):
        model.embeddings({k: v for k, v in sparse.items() if k != "c"})
    bad = {**sparse, "a": SparseFeature.single_hot(torch.arange(3))}
    with pytest.raises(RuntimeError):
        model.embeddings(bad)


def test_quantize_replaces_a_shared_module_under_every_name() -> None:
    bag, head = torch.nn.EmbeddingBag(40, 8), torch.nn.Linear(8, 8)
    model = torch.nn.ModuleDict({"user": bag, "also_user": bag, "tower": torch.nn.Sequential(head, torch.nn.ReLU(), head)})
    quantize_(model, RecipeConfig())
    assert type(model["user"]).__name__ == "QuantizedEmbeddingBag" and model["also_user"] is model["user"]
    assert type(model["tower"][0]).__name__ == "Int8Linear" and model["tower"][2] is model["tower"][0]


def test_an_id_past_its_table_raises_instead_of_reading_the_next_table() -> None:
    model = _model()
    quantize_(model, RowwiseEmbeddingConfig())
    for batch in _batches().values():
        for bad_id in (CARDS["a"], -1):  # the next table's first row / the previous table's last row
            values = batch["a"].values.clone()
            values[0] = bad_id
            bad = {**batch, "a": SparseFeature(values, batch["a"].offsets, batch["a"].weights)}
            with pytest.raises(IndexError, match=r"feature 'a': ids must be in \[0, 50\)"):
                model.embeddings(bad)


def test_tables_swapped_for_another_kind_are_read_one_by_one_without_warning() -> None:
    model = _model()
    quantize_(model, RowwiseEmbeddingConfig())
    ebc = model.embeddings
    ebc.tables["c"] = torch.nn.EmbeddingBag(CARDS["c"], 8, mode="sum")  # e.g. what an export lowering does
    sparse = _batches()["mixed"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = ebc(sparse)
    assert torch.equal(out, _per_table(ebc, sparse))
