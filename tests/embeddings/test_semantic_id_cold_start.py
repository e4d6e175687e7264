"""Semantic-ID cold start: back-off to the prefixes shared with trained ids, prefix dropout, and the
``seen`` state (checkpoints, export, 2-process gloo)."""

import copy

import pytest
import torch

from lightning_recsys.data import FeatureSpec, RecsysBatch, SparseFeature
from lightning_recsys.embeddings import SemanticIdEmbedding
from lightning_recsys.models import DLRM
from lightning_recsys.quant import RecipeConfig, export_onnx, quantize_

from .._dist import run_distributed

N = 64
# 4 levels of 2 values: ids 0..15 own every 4-code prefix once, ids 16..63 repeat them
CODES = torch.stack([(torch.arange(N) >> b) & 1 for b in (3, 2, 1, 0)], 1)


def _table(**kw) -> SemanticIdEmbedding:
    torch.manual_seed(0)
    return SemanticIdEmbedding(N, 4, num_rows=40, num_levels=4, codebook_size=2, codes=CODES, **kw)


def _rows(table: SemanticIdEmbedding, ids: list[int], depth: list[int]) -> torch.Tensor:
    """Expected lookups: the sum of each id's first ``depth`` token rows."""
    w = table.bag.weight.detach()
    return torch.stack([w[table.tokens[i, :d]].sum(0) for i, d in zip(ids, depth)])


def _train_on(table: SemanticIdEmbedding, ids: list[int]) -> None:
    table.train()
    table(torch.tensor(ids), torch.arange(len(ids)))
    table.eval()


def test_unseen_ids_read_only_the_prefixes_shared_with_trained_ids():
    table = _table()
    ids = [0, 1, 3, 8]  # codes 0000, 0001, 0011, 1000
    offsets = torch.arange(len(ids))
    table.eval()
    torch.testing.assert_close(table(torch.tensor(ids), offsets), _rows(table, ids, [4] * 4))  # nothing trained yet: all
    _train_on(table, [0])  # only code 0000 is seen
    assert table.seen.tolist() == [i == 0 for i in range(N)]
    # 0001 shares (0, 0, 0); 0011 shares (0, 0); 1000 shares nothing
    torch.testing.assert_close(table(torch.tensor(ids), offsets), _rows(table, ids, [4, 3, 2, 0]))
    assert table.served_tokens()[3].tolist()[2:] == [-1, -1]
    torch.testing.assert_close(table(torch.tensor([[3, 1]])), _rows(table, [3], [2]) + _rows(table, [1], [3]))  # 2-D bags
    weights = torch.tensor([2.0, 0.5, 1.0, 1.0])
    torch.testing.assert_close(table(torch.tensor(ids), offsets, weights), _rows(table, ids, [4, 3, 2, 0]) * weights[:, None])
    plain = _table(backoff=False)
    _train_on(plain, [0])
    torch.testing.assert_close(plain(torch.tensor(ids), offsets), _rows(plain, ids, [4] * 4))


def test_prefix_dropout_leaves_out_the_deepest_prefixes_in_training_only():
    table = _table(prefix_dropout=0.999)
    ids = torch.arange(32)
    table.train()
    torch.manual_seed(1)
    out = table(ids, ids.clone())
    w = table.bag.weight.detach()
    depths = []
    for i in range(32):  # each output is the sum of a prefix of its rows, at least one kept, at most three
        prefix_sums = [w[table.tokens[i, :d]].sum(0) for d in range(1, 5)]
        depths.append(next(d for d, s in enumerate(prefix_sums, 1) if torch.allclose(out[i], s)))
    assert max(depths) <= 3 and len(set(depths)) == 3
    table.eval()  # every id was trained: all prefixes, no dropout
    torch.testing.assert_close(table(ids, ids.clone()), _rows(table, list(range(32)), [4] * 32))
    with pytest.raises(ValueError, match="prefix_dropout"):
        _table(prefix_dropout=1.0)
    with pytest.raises(TypeError, match="backoff must be True or False"):
        _table(backoff="no")


def test_seen_is_checkpointed_and_old_checkpoints_load_without_back_off():
    table = _table()
    _train_on(table, [0, 5])
    state = copy.deepcopy(table.state_dict())
    assert "seen" in state and "served" not in state
    fresh = _table()
    fresh.load_state_dict(state)
    fresh.eval()
    ids, offsets = torch.tensor([1, 9, 12]), torch.arange(3)
    torch.testing.assert_close(fresh(ids, offsets), table(ids, offsets))
    del state["seen"]  # a checkpoint written before the table tracked seen ids
    old = _table()
    old.load_state_dict(state)  # strict: no missing key
    assert "seen" not in state and bool(old.seen.all())
    old.eval()
    torch.testing.assert_close(old(ids, offsets), _rows(old, [1, 9, 12], [4] * 3))


@pytest.mark.timeout(180)
def test_backed_off_model_exports_to_onnx_with_parity(tmp_path):
    spec = FeatureSpec(2, {"item": N, "user": 10}, ["like"])
    model = DLRM.from_spec(spec, embedding_dim=4, bottom_mlp=(8,), top_mlp=(8,))
    model.embeddings.tables["item"] = table = _table(prefix_dropout=0.5)
    _train_on(table, list(range(0, 16, 3)))
    g = torch.Generator().manual_seed(0)
    batch = RecsysBatch(torch.randn(32, 2, generator=g), {
        "item": SparseFeature.single_hot(torch.randint(0, N, (32,), generator=g)),
        "user": SparseFeature.single_hot(torch.randint(0, 10, (32,), generator=g)),
    })  # fmt: skip
    model.eval()
    assert bool((table.served_tokens()[batch.sparse["item"].values] < 0).any())  # the batch has backed-off ids
    quantize_(model, RecipeConfig())
    meta = export_onnx(model, tmp_path / "m.onnx", batch)
    assert meta["parity"]["max_abs_diff"] < 0.05


def _mark_per_rank(rank: int, world_size: int, out: str) -> None:
    table = _table()
    table.train()
    mine = torch.tensor([rank, 10 + rank, 20 + rank] if rank == 0 else [rank, 30])  # ranks see different counts
    table(mine, torch.arange(mine.numel()))
    torch.save(table.seen.nonzero().flatten(), f"{out}.{rank}")


@pytest.mark.timeout(180)
def test_seen_ids_are_gathered_from_every_rank(tmp_path):
    run_distributed(_mark_per_rank, str(tmp_path / "seen"), timeout=150)
    for rank in range(2):
        assert torch.load(tmp_path / f"seen.{rank}").tolist() == [0, 1, 10, 20, 30]
