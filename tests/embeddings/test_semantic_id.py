"""Semantic-ID codes and prefix-ngram tables, the hashing baseline, and the MovieLens item-content data."""

import copy

import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import DataLoader

from lightning_recsys.data import FeatureSpec, RecsysBatch, SparseFeature
from lightning_recsys.data.movielens_items import MovieLens100KItemsDataModule, title_words
from lightning_recsys.embeddings import (
    HashedEmbeddingBag,
    SemanticIdEmbedding,
    chunk_modules,
    fit_semantic_ids,
    prefix_ranges,
    prefix_tokens,
    residual_kmeans,
    rq_vae,
)
from lightning_recsys.models import DLRM, RecsysModule
from lightning_recsys.optim import route_muon
from lightning_recsys.quant import RecipeConfig, export_onnx, load, quantize_

from ..data.test_movielens import ITEMS, write_grouplens

N_ITEMS = 120


def _content(n: int = N_ITEMS, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(6, 5, generator=g) * 3
    return centres[torch.arange(n) % 6] + 0.3 * torch.randn(n, 5, generator=g)


def _table(**kw) -> SemanticIdEmbedding:
    args = dict(num_rows=80, num_levels=3, codebook_size=4, seed=0)
    table = SemanticIdEmbedding(N_ITEMS, 8, **{**args, **kw})
    table.fit_codes(_content())
    return table


def test_residual_kmeans_is_deterministic_per_seed_and_refines():
    x = _content()
    codes, books = residual_kmeans(x, num_levels=3, codebook_size=6, seed=1)
    again, _ = residual_kmeans(x, num_levels=3, codebook_size=6, seed=1)
    assert torch.equal(codes, again) and codes.dtype == torch.int64 and codes.shape == (N_ITEMS, 3)
    assert int(codes.min()) >= 0 and int(codes.max()) < 6
    errors = []
    for level in range(1, 4):  # every level explains more of the content
        recon = sum(books[i][codes[:, i]] for i in range(level))
        errors.append(float((x - recon).square().sum()))
    assert errors[0] > errors[1] > errors[2]
    assert torch.equal(codes[:, 0], residual_kmeans(x, 1, 6, seed=1)[0][:, 0])  # level 1 is plain k-means


def test_rq_vae_codes_are_deterministic_and_follow_the_content():
    x = _content()  # 6 well separated clusters
    codes, books = rq_vae(x, num_levels=2, codebook_size=6, seed=3, epochs=120)
    assert torch.equal(codes, rq_vae(x, num_levels=2, codebook_size=6, seed=3, epochs=120)[0])
    assert codes.shape == (N_ITEMS, 2) and books.shape == (2, 6, 16) and int(codes.max()) < 6
    cluster = torch.arange(N_ITEMS) % 6
    for c in range(6):  # every content cluster gets one first-level code of its own
        assert codes[cluster == c, 0].unique().numel() == 1
    assert codes[:, 0].unique().numel() == 6
    state = torch.random.get_rng_state()
    rq_vae(x, num_levels=1, codebook_size=6, seed=0, epochs=8)
    assert torch.equal(state, torch.random.get_rng_state())  # the global RNG is left alone
    table = _table(code_method="rq_vae")
    assert bool(table.fitted) and table.codes.shape == (N_ITEMS, 3)
    with pytest.raises(ValueError, match=r"code_method must be one of \['residual_kmeans', 'rq_vae'\]"):
        SemanticIdEmbedding(N_ITEMS, 8, code_method="vq")
    with pytest.raises(ValueError, match="codebook_size"):
        rq_vae(x[:4], num_levels=1, codebook_size=6)


def test_prefix_ranges_are_disjoint_and_tokens_stay_in_their_range():
    ranges = prefix_ranges(codebook_size=4, ngram=3, num_rows=80)
    assert ranges == [(0, 4), (4, 16), (20, 60)]  # 4 and 16 fit exactly, 64 > 60 is hashed
    table = _table()
    assert table.range_starts == [0, 4, 20] and table.range_sizes == [4, 16, 60] and table.hashed_lengths == [3]
    assert table.num_rows == 80 and table.bag.num_embeddings == 80
    for n, (start, size) in enumerate(ranges):
        col = table.tokens[:, n]
        assert bool(((col >= start) & (col < start + size)).all())
    # exact ranges: prefix (c1..cn) <-> token one-to-one; no token shared across prefix lengths
    for n in (1, 2):
        prefixes = {tuple(c) for c in table.codes[:, :n].tolist()}
        pairs = {(tuple(c), t) for c, t in zip(table.codes[:, :n].tolist(), table.tokens[:, n - 1].tolist())}
        assert len(pairs) == len(prefixes) == len(set(table.tokens[:, n - 1].tolist()))
    assert torch.equal(table.tokens[:, 0], table.codes[:, 0])


def test_prefix_space_larger_than_the_table_is_hashed():
    codes = torch.stack(torch.meshgrid(torch.arange(8), torch.arange(8), torch.arange(8), indexing="ij"), -1).reshape(-1, 3)
    tokens = prefix_tokens(codes, codebook_size=8, num_rows=30, seed=0)  # 8 + 64 + 512 prefixes, 30 rows
    assert prefix_ranges(8, 3, 30) == [(0, 8), (8, 11), (19, 11)]
    assert int(tokens.max()) < 30
    assert len(set(tokens[:, 1].tolist())) == 11 and len(set(tokens[:, 2].tolist())) == 11  # hashing fills the range
    assert torch.equal(tokens, prefix_tokens(codes, 8, 30, seed=0))
    assert not torch.equal(tokens, prefix_tokens(codes, 8, 30, seed=1))  # the hashing is seeded
    ngram2 = prefix_tokens(codes, 8, 30, ngram=2)
    assert ngram2.shape == (512, 2)


def test_embedding_is_the_sum_of_prefix_rows_for_every_input_layout():
    table = _table()
    w = table.bag.weight
    ids = torch.tensor([3, 7, 9, 0])
    rows = w[table.tokens[ids]].sum(1)  # [4, 8]
    torch.testing.assert_close(table(ids, torch.tensor([0, 1, 3])), torch.stack([rows[0], rows[1] + rows[2], rows[3]]))
    weights = torch.tensor([0.5, 2.0, 1.0, 3.0])
    torch.testing.assert_close(table(ids, torch.tensor([0, 1, 3]), weights),
                               torch.stack([0.5 * rows[0], 2 * rows[1] + rows[2], 3 * rows[3]]))  # fmt: skip
    torch.testing.assert_close(table(ids.reshape(2, 2)), torch.stack([rows[0] + rows[1], rows[2] + rows[3]]))
    empty_bag = table(ids, torch.tensor([0, 2, 2]))  # bags [3, 7], [], [9, 0]
    torch.testing.assert_close(empty_bag, torch.stack([rows[0] + rows[1], torch.zeros(8), rows[2] + rows[3]]))
    out = table(ids, torch.tensor([0, 1, 3]))
    out.sum().backward()
    assert set(w.grad.abs().sum(1).nonzero().flatten().tolist()) == set(table.tokens[ids].flatten().tolist())


def test_codes_are_saved_with_the_model_and_required():
    table = _table()
    fresh = SemanticIdEmbedding(N_ITEMS, 8, num_rows=80, num_levels=3, codebook_size=4)
    with pytest.raises(RuntimeError, match="has no codes yet"):
        fresh(torch.tensor([1]), torch.tensor([0]))
    assert {"codes", "tokens", "fitted", "bag.weight"} <= set(table.state_dict())
    fresh.load_state_dict(copy.deepcopy(table.state_dict()))
    assert torch.equal(fresh.codes, table.codes) and torch.equal(fresh.tokens, table.tokens) and bool(fresh.fitted)
    ids, offsets = torch.tensor([5, 6, 7]), torch.tensor([0, 2])
    torch.testing.assert_close(fresh(ids, offsets), table(ids, offsets))
    same = _table()  # same seed and content: the same codes
    other = SemanticIdEmbedding(N_ITEMS, 8, num_rows=80, num_levels=3, codebook_size=4, seed=5)
    other.fit_codes(_content())
    assert torch.equal(same.codes, table.codes) and not torch.equal(other.tokens, table.tokens)
    given = SemanticIdEmbedding(N_ITEMS, 8, num_rows=80, num_levels=3, codebook_size=4, codes=table.codes)
    assert torch.equal(given.tokens, table.tokens)


def test_hashing_baseline_uses_the_same_rows():
    table = HashedEmbeddingBag(N_ITEMS, 8, num_rows=50, seed=0)
    assert table.tokens.shape == (N_ITEMS, 1) and int(table.tokens.max()) < 50 and table.num_rows == 50
    assert torch.equal(table.tokens, HashedEmbeddingBag(N_ITEMS, 8, num_rows=50, seed=0).tokens)
    assert len(set(table.tokens.flatten().tolist())) > 40  # spread over the rows
    ids = torch.tensor([1, 2])
    torch.testing.assert_close(table(ids, torch.tensor([0])), table.bag.weight[table.tokens[ids, 0]].sum(0, keepdim=True))


def _dlrm_with_semantic_ids() -> tuple[DLRM, RecsysBatch]:
    spec = FeatureSpec(2, {"item": N_ITEMS, "user": 40}, ["like", "five_star"])
    model = DLRM.from_spec(spec, embedding_dim=8, bottom_mlp=(8,), top_mlp=(16,))
    model.embeddings.tables["item"] = _table()
    g = torch.Generator().manual_seed(0)
    batch = RecsysBatch(torch.randn(32, 2, generator=g), {
        "item": SparseFeature.single_hot(torch.randint(0, N_ITEMS, (32,), generator=g)),
        "user": SparseFeature.single_hot(torch.randint(0, 40, (32,), generator=g)),
    })  # fmt: skip
    return model.eval(), batch


@pytest.mark.timeout(180)
def test_quantized_model_with_semantic_ids_exports_to_onnx_with_parity(tmp_path):
    model, batch = _dlrm_with_semantic_ids()
    quantize_(model, RecipeConfig())
    assert type(model.embeddings.tables["item"].bag).__name__ == "QuantizedEmbeddingBag"
    meta = export_onnx(model, tmp_path / "single.onnx", batch)  # item ids fed single-hot
    assert "item" in meta["inputs"]["single_hot"] and meta["parity"]["max_abs_diff"] < 0.05
    multi = RecsysBatch(batch.dense[:3], {"item": SparseFeature.from_lists([[1, 2], [], [5]]),
                                          "user": SparseFeature.from_lists([[3], [4], []])})  # fmt: skip
    export_onnx(model, tmp_path / "multi.onnx", multi, single_hot=[])
    predictor = load(tmp_path / "multi.onnx")
    with torch.no_grad():
        torch.testing.assert_close(predictor(multi), model(multi), atol=0.05, rtol=0.01)


def test_fiited_and_optimizers_see_a_standard_table():
    model, batch = _dlrm_with_semantic_ids()
    routes = route_muon(model)  # the package's optimizers route tables by module type: AdamW, not Muon
    assert routes["backbone.embeddings.tables.item.bag.weight"] is False and routes["backbone.bottom_mlp.0.weight"] is True
    assert "backbone.embeddings.tables.item.bag" in chunk_modules(model, chunk_size=4)
    assert model(batch).shape == (32, 2)  # the chunked inner table serves the same lookups


class _ContentData(pl.LightningDataModule):
    def __init__(self, spec: FeatureSpec) -> None:
        super().__init__()
        self.spec, self.asked = spec, []

    def content_vectors(self, feature: str) -> torch.Tensor:
        self.asked.append(feature)
        return _content(self.spec.cardinalities[feature])

    def train_dataloader(self):
        g = torch.Generator().manual_seed(0)
        batches = []
        for _ in range(4):
            batches.append(RecsysBatch(torch.randn(16, 2, generator=g), {
                "item": SparseFeature.single_hot(torch.randint(0, N_ITEMS, (16,), generator=g)),
                "user": SparseFeature.single_hot(torch.randint(0, 40, (16,), generator=g)),
            }, {"like": torch.randint(0, 2, (16,), generator=g).float()}))  # fmt: skip
        return DataLoader(batches, batch_size=None)


@pytest.mark.timeout(120)
def test_recsys_module_fits_codes_from_the_data_module_and_trains():
    spec = FeatureSpec(2, {"item": N_ITEMS, "user": 40}, ["like"])
    opts = {"num_rows": 80, "num_levels": 3, "codebook_size": 4}
    module = RecsysModule(feature_spec=spec, arch="semantic_id", embedding_dim=8, arch_options=opts)
    table = module.model.embeddings.tables["item"]
    assert isinstance(table, SemanticIdEmbedding) and not bool(table.fitted)
    data = _ContentData(spec)
    before = table.bag.weight.detach().clone()
    pl.Trainer(max_steps=4, logger=False, enable_checkpointing=False, enable_progress_bar=False,
               enable_model_summary=False).fit(module, datamodule=data)  # fmt: skip
    assert data.asked == ["item"] and bool(table.fitted) and not torch.equal(before, table.bag.weight)
    assert torch.equal(table.codes, residual_kmeans(_content(), 3, 4, seed=0)[0])
    restored = RecsysModule(feature_spec=spec, arch="semantic_id", embedding_dim=8, arch_options=opts)
    restored.load_state_dict(module.state_dict())
    assert torch.equal(restored.model.embeddings.tables["item"].codes, table.codes)
    with pytest.raises(ValueError, match="have no codes and no content_vectors"):
        fit_semantic_ids(RecsysModule(feature_spec=spec, arch="semantic_id", arch_options=opts), None)


def test_bad_arguments_name_the_argument():
    with pytest.raises(ValueError, match="num_rows must be an integer >= ngram"):
        SemanticIdEmbedding(N_ITEMS, 8, num_rows=2, num_levels=3)
    with pytest.raises(ValueError, match="ngram must be an integer in"):
        SemanticIdEmbedding(N_ITEMS, 8, num_levels=2, ngram=3)
    with pytest.raises(ValueError, match="codebook_size must be"):
        SemanticIdEmbedding(N_ITEMS, 8, codebook_size=0)
    table = SemanticIdEmbedding(N_ITEMS, 8, num_levels=2, codebook_size=4)
    with pytest.raises(ValueError, match="codes must be a tensor of shape"):
        table.set_codes(torch.zeros(N_ITEMS, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="codes must lie in"):
        table.set_codes(torch.full((N_ITEMS, 2), 4))
    with pytest.raises(ValueError, match="content must be a"):
        table.fit_codes(torch.randn(N_ITEMS + 1, 3))
    with pytest.raises(ValueError, match="codebook_size .* must not exceed"):
        residual_kmeans(torch.randn(5, 2), num_levels=1, codebook_size=6)
    with pytest.raises(ValueError, match="content holds NaN"):
        residual_kmeans(torch.full((5, 2), float("nan")), num_levels=1, codebook_size=2)
    with pytest.raises(ValueError, match="num_rows must be an integer"):
        HashedEmbeddingBag(N_ITEMS, 8, num_rows=0)
    spec = FeatureSpec(0, {"item": N_ITEMS}, ["like"])
    with pytest.raises(ValueError, match=r"arch_options\['feature'\] must name"):
        RecsysModule(feature_spec=spec, arch="semantic_id", arch_options={"feature": "movie"})
    with pytest.raises(ValueError, match=r"arch_options has unknown keys \['levels'\]"):
        RecsysModule(feature_spec=spec, arch="semantic_id", arch_options={"levels": 2})


def test_movielens_items_holds_out_new_items_and_builds_content(tmp_path):
    dm = MovieLens100KItemsDataModule(data_dir=str(write_grouplens(tmp_path / "ml")), new_item_fraction=0.2,
                                      tail_max_ratings=2, split_fractions=(0.5, 0.25, 0.25), batch_size=4)  # fmt: skip
    dm.setup()
    tables = dm.test_dataset.tables
    train_items = set(tables.rating_item[dm.train_dataset.rows].tolist())
    test_items = tables.rating_item[dm.test_dataset.rows]
    new = set(test_items[dm.test_groups["new"]].tolist())
    assert len(new) >= 1 and not new & train_items  # cold-start items never appear in training
    assert len(dm.train_dataset) + len(dm.val_dataset) + len(dm.test_dataset) == len(tables)
    counts = dm.train_item_counts[test_items]
    assert torch.equal(dm.test_groups["tail"], (counts >= 1) & (counts <= 2))
    assert torch.equal(dm.test_groups["head"] | dm.test_groups["tail"] | dm.test_groups["new"], dm.test_groups["all"])
    assert sum(b.batch_size for b in dm.group_dataloader("new")) == int(dm.test_groups["new"].sum())
    content = dm.content_vectors("item")
    assert content.shape == (len(ITEMS) + 1, 20 + 1 + 5 + 64) and torch.equal(content[0], torch.zeros(content.shape[1]))
    assert not torch.equal(content[1], content[2]) and torch.isfinite(content).all()
    again = MovieLens100KItemsDataModule(data_dir=str(tmp_path / "ml"), new_item_fraction=0.2, tail_max_ratings=2,
                                         split_fractions=(0.5, 0.25, 0.25))  # fmt: skip
    again.setup()
    assert torch.equal(again.test_dataset.rows, dm.test_dataset.rows) and torch.equal(again.content_vectors(), content)
    assert title_words("Shawshank Redemption, The (1994)") == ["shawshank", "redemption"]
    with pytest.raises(ValueError, match="new_item_fraction must be"):
        MovieLens100KItemsDataModule(new_item_fraction=1.0)
    with pytest.raises(ValueError, match="group must be one of"):
        dm.group_dataloader("cold")
    with pytest.raises(ValueError, match="only, got feature='user'"):
        dm.content_vectors("user")
