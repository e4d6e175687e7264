"""Checkpoint format of chunked tables: the dense weight of the replaced module, optimizer state alike."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_recsys.embeddings.checkpoint import dense_optimizer_state, pool_optimizer_state
from lightning_recsys.embeddings.chunked import ChunkedEmbedding, ChunkedEmbeddingBag

IDS, OFFSETS = torch.tensor([1, 4, 4, 7, 9, 0, 3]), torch.tensor([0, 2, 5])


def _pruned_bag(seed: int = 0) -> ChunkedEmbeddingBag:
    torch.manual_seed(seed)
    table = ChunkedEmbeddingBag.from_dense(nn.EmbeddingBag(10, 8, mode="sum"), chunk_size=2)
    table.set_kept(torch.rand(10, 4) < 0.4)
    return table


@pytest.mark.parametrize("kind", ["bag", "embedding"])
def test_state_dict_is_the_dense_weight_and_loads_into_the_plain_module(kind):
    if kind == "bag":
        table, plain = _pruned_bag(), nn.EmbeddingBag(10, 8, mode="sum")
        args = (IDS, OFFSETS)
    else:
        table, plain = ChunkedEmbedding.from_dense(nn.Embedding(10, 8, padding_idx=0), chunk_size=4), nn.Embedding(10, 8, padding_idx=0)
        table.set_kept(torch.rand(10, 2) < 0.5)
        args = (IDS.view(1, -1),)
    state = table.state_dict()
    assert list(state) == ["weight"] and state["weight"].shape == (10, 8)
    keep = table.kept_mask()
    assert (state["weight"].view(10, keep.shape[1], -1)[~keep] == 0).all()  # pruned chunks read 0
    plain.load_state_dict(state)  # strict: exactly the plain module's keys
    torch.testing.assert_close(plain(*args), table(*args), rtol=0, atol=1e-6)


def test_loading_keeps_the_layout_in_place_when_the_weight_fits():
    a, b = _pruned_bag(0), _pruned_bag(0)
    with torch.no_grad():
        b.pool.mul_(3)
    pool = b.pool
    b.load_state_dict(a.state_dict())
    assert b.pool is pool and torch.equal(b.pool, a.pool)  # same parameter: an optimizer holding it is unaffected
    # values where b stores nothing (a plain module's weight): every chunk is kept, nothing is lost
    dense = nn.EmbeddingBag(10, 8, mode="sum")
    b.load_state_dict(dense.state_dict())
    assert b.all_kept and torch.equal(b.dense_weight(), dense.weight.detach())
    torch.testing.assert_close(b(IDS, OFFSETS), dense(IDS, OFFSETS))


def test_compact_state_dicts_written_before_still_load():
    a = _pruned_bag()
    legacy = {"pool": a.pool.detach().clone(), "mask": a.mask.clone(), "base": a.base.clone()}
    b = ChunkedEmbeddingBag(10, 8, chunk_size=2, mode="sum")
    b.load_state_dict(legacy)
    assert torch.equal(b.mask, a.mask) and torch.equal(b.pool, a.pool) and torch.equal(b(IDS, OFFSETS), a(IDS, OFFSETS))


def test_load_errors_name_the_keys():
    table = ChunkedEmbeddingBag(10, 8, chunk_size=2)
    with pytest.raises(RuntimeError, match=r"size mismatch for weight: copying a param with shape \(10, 6\)"):
        table.load_state_dict({"weight": torch.zeros(10, 6)})
    with pytest.raises(RuntimeError, match=r'Missing key\(s\) in state_dict: "weight"'):
        table.load_state_dict({})
    with pytest.raises(RuntimeError, match=r'Unexpected key\(s\) in state_dict: "extra"'):
        table.load_state_dict({"weight": torch.zeros(10, 8), "extra": torch.zeros(1)})
    result = table.load_state_dict({"weight": torch.zeros(10, 8), "extra": torch.zeros(1)}, strict=False)
    assert result.unexpected_keys == ["extra"] and result.missing_keys == []  # reported, not raised, as nn.Module does


@pytest.mark.parametrize("name", ["adam", "adagrad"])
def test_optimizer_state_dense_round_trip_is_exact(name):
    table = _pruned_bag()
    opt = {"adam": lambda p: torch.optim.Adam(p, lr=0.1), "adagrad": lambda p: torch.optim.Adagrad(p, initial_accumulator_value=0.3)}[name](
        [table.pool]
    )
    for _ in range(2):
        table(IDS, OFFSETS).pow(2).sum().backward()
        opt.step()
    state = opt.state[table.pool]
    dense, slot0 = dense_optimizer_state(table, state)
    keep = table.kept_mask()
    for key, value in dense.items():
        if key in slot0:
            assert value.shape == (10, 8)
            assert (value.view(10, 4, 2)[~keep] == slot0[key]).all()  # pruned: a never-updated chunk's
    back = pool_optimizer_state(table, dense, keep, slot0)
    assert back.keys() == state.keys()
    for key in state:
        assert torch.equal(back[key], state[key]), key
    assert dense_optimizer_state(table, {"count": torch.zeros(table.pool.shape[0])}) == (None, {})  # no dense form
    with pytest.raises(ValueError, match="expected the dense layout of the weight"):
        pool_optimizer_state(table, state, keep, slot0)
