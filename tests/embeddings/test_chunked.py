"""Chunked (VHPI) embedding storage: equal to the dense modules, pruning frees memory, export, errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from benchmarks._common import tensor_bytes
from lightning_recsys.embeddings.chunked import ChunkedEmbedding, ChunkedEmbeddingBag
from lightning_recsys.embeddings.convert import chunk_modules, export_compact, to_dense_modules


def _dense_grad(table) -> torch.Tensor:
    """The chunked pool's gradient laid out as a dense [rows, d] gradient."""
    rows = torch.arange(table.num_embeddings)
    return F.embedding(table._slots(rows), table.pool.grad).reshape(table.num_embeddings, table.embedding_dim)


@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
@pytest.mark.parametrize("padding_idx", [None, 3])
@pytest.mark.parametrize("include_last_offset", [False, True])
def test_bag_equals_dense_forward_and_grad(mode, padding_idx, include_last_offset):
    dense = nn.EmbeddingBag(50, 16, mode=mode, padding_idx=padding_idx, include_last_offset=include_last_offset)
    table = ChunkedEmbeddingBag.from_dense(dense, chunk_size=4)
    ids = torch.randint(0, 50, (40,))
    ids[5] = 3
    offsets = torch.tensor([0, 3, 3, 10, 20] + ([40] if include_last_offset else []))
    psw = torch.rand(40) if mode == "sum" else None
    a = dense(ids, offsets, per_sample_weights=psw)
    b = table(ids, offsets, per_sample_weights=psw)
    torch.testing.assert_close(b, a, rtol=0, atol=1e-6)
    g = torch.randn_like(a)
    a.backward(g)
    b.backward(g)
    torch.testing.assert_close(_dense_grad(table), dense.weight.grad, rtol=0, atol=1e-6)
    assert table.pool.grad[0].abs().sum() == 0  # the shared zero slot never gets a gradient


def test_bag_2d_input_and_psw_grad():
    dense = nn.EmbeddingBag(30, 12, mode="sum")
    table = ChunkedEmbeddingBag.from_dense(dense, chunk_size=3)
    ids = torch.randint(0, 30, (6, 4))
    w1 = torch.rand(6, 4, requires_grad=True)
    w2 = w1.detach().clone().requires_grad_(True)
    torch.testing.assert_close(table(ids, per_sample_weights=w2), dense(ids, per_sample_weights=w1))
    dense(ids, per_sample_weights=w1).pow(2).sum().backward()
    table(ids, per_sample_weights=w2).pow(2).sum().backward()
    torch.testing.assert_close(w2.grad, w1.grad)
    torch.testing.assert_close(_dense_grad(table), dense.weight.grad)


@pytest.mark.parametrize("dim,chunk", [(8, 2), (32, 2), (12, 12)])  # K = 4 (lookup table), 16 (bit ops), 1
def test_embedding_equals_dense(dim, chunk):
    dense = nn.Embedding(30, dim, padding_idx=2)
    table = ChunkedEmbedding.from_dense(dense, chunk_size=chunk)
    x = torch.randint(0, 30, (4, 5))
    x[0, 0] = 2
    torch.testing.assert_close(table(x), dense(x), rtol=0, atol=0)
    g = torch.randn(4, 5, dim)
    dense(x).backward(g)
    table(x).backward(g)
    torch.testing.assert_close(_dense_grad(table), dense.weight.grad, rtol=0, atol=1e-6)
    assert _dense_grad(table)[2].abs().sum() == 0  # padding row: no gradient, as nn.Embedding


def test_pruned_chunks_read_zero_keep_values_and_get_no_update():
    dense = nn.EmbeddingBag(40, 16, mode="sum")
    table = ChunkedEmbeddingBag.from_dense(dense, chunk_size=4)
    keep = torch.rand(40, 4) < 0.3
    src = table.set_kept(keep)
    assert table.pool.shape == (int(keep.sum()) + 1, 4)
    assert src[0] == 0 and (src[1:] > 0).all()
    w = table.dense_weight().view(40, 4, 4)
    ref = dense.weight.detach().view(40, 4, 4)
    assert torch.equal(w[keep], ref[keep])  # kept chunks keep their values
    assert (w[~keep] == 0).all()  # pruned chunks read zeros
    assert table.kept_mask().equal(keep)
    opt = torch.optim.SGD(table.parameters(), lr=0.5, momentum=0.9, weight_decay=0.1)
    ids = torch.arange(40)
    for _ in range(3):
        table(ids, torch.arange(0, 40, 2)).pow(2).sum().backward()
        opt.step()
        opt.zero_grad()
    w2 = table.dense_weight().view(40, 4, 4)
    assert (w2[~keep] == 0).all()  # still zero: no update reaches pruned chunks
    assert not torch.equal(w2[keep], w[keep])  # kept chunks did train
    assert (table.pool[0] == 0).all()


def test_memory_really_drops():
    table = ChunkedEmbeddingBag.from_dense(nn.EmbeddingBag(10_000, 32, mode="sum"), chunk_size=4)
    dense_bytes = 10_000 * 32 * 4
    before = tensor_bytes(table)
    keep = torch.zeros(10_000, 8, dtype=torch.bool)
    keep.view(-1)[torch.randperm(80_000)[:8_000]] = True  # 90% of the chunks pruned
    table.set_kept(keep)
    after = tensor_bytes(table)
    # pool (8000 + 1 chunks of 16 B) + index (uint8 mask + int32 base = 5 B per row)
    assert table.storage_bytes() == {"pool": 8001 * 16, "index": 10_000 * 5}
    assert after == 8001 * 16 + 10_000 * 5
    assert before > dense_bytes and after < 0.15 * dense_bytes


def test_mask_dtypes_and_bit_path():
    assert ChunkedEmbedding(5, 8, chunk_size=1).mask.dtype == torch.uint8
    t = ChunkedEmbedding(20, 30, chunk_size=2)  # K = 15: int16, bit-op lookup
    assert t.mask.dtype == torch.int16
    keep = torch.rand(20, 15) < 0.5
    ref = t.dense_weight().view(20, 15, 2).clone()
    t.set_kept(keep)
    assert t.kept_mask().equal(keep)
    out = t(torch.arange(20)).view(20, 15, 2)
    assert torch.equal(out[keep], ref[keep]) and (out[~keep] == 0).all()


def test_grad_norm_tracking_per_access():
    table = ChunkedEmbeddingBag.from_dense(nn.EmbeddingBag(10, 8, mode="sum"), chunk_size=4)
    table.track_grad_norms()
    ids, offsets = torch.tensor([1, 1, 2]), torch.tensor([0, 2])
    g = torch.randn(2, 8)
    table(ids, offsets).backward(g)
    expected = torch.zeros(10, 2)
    expected[1] = 2 * g[0].view(2, 4).norm(dim=1)  # row 1 accessed twice in bag 0
    expected[2] = g[1].view(2, 4).norm(dim=1)
    torch.testing.assert_close(table.grad_norm_acc, expected)


def test_export_dense_and_compact():
    model = nn.ModuleDict({"user": nn.Embedding(20, 8), "item": nn.EmbeddingBag(30, 8, mode="max"), "lin": nn.Linear(8, 1)})
    tables = chunk_modules(model, chunk_size=4)
    assert sorted(tables) == ["item", "user"] and isinstance(model["item"], ChunkedEmbeddingBag)
    keep = torch.rand(30, 2) < 0.5
    tables["item"].set_kept(keep)
    ids, off = torch.randint(0, 30, (12,)), torch.tensor([0, 5])
    expected = model["item"](ids, off)
    compact = export_compact(model)
    c = compact["item"]
    assert c["pool"].shape == (int(keep.sum()), 4) and c["mask"].dtype == torch.uint8 and c["base"].dtype == torch.int32
    # the compact form alone rebuilds the table: chunk j of row r is pool[base[r] + rank]
    rebuilt = torch.zeros(30, 2, 4)
    for r in range(30):
        rank = 0
        for j in range(2):
            if int(c["mask"][r]) >> j & 1:
                rebuilt[r, j] = c["pool"][int(c["base"][r]) + rank]
                rank += 1
    to_dense_modules(model)
    assert type(model["item"]) is nn.EmbeddingBag and type(model["user"]) is nn.Embedding
    assert torch.equal(model["item"].weight.view(30, 2, 4), rebuilt)
    torch.testing.assert_close(model["item"](ids, off), expected)


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="chunk_size=3 does not divide embedding_dim=8"):
        ChunkedEmbedding(10, 8, chunk_size=3)
    with pytest.raises(ValueError, match="chunk_size must be an integer >= 1, got 0"):
        ChunkedEmbedding(10, 8, chunk_size=0)
    with pytest.raises(ValueError, match="at most 63 chunks"):
        ChunkedEmbedding(10, 128, chunk_size=1)
    with pytest.raises(ValueError, match="mode must be"):
        ChunkedEmbeddingBag(10, 8, mode="median")
    with pytest.raises(ValueError, match="sparse=True is not supported"):
        ChunkedEmbedding.from_dense(nn.Embedding(10, 8, sparse=True))
    with pytest.raises(TypeError, match="int64 or int32"):
        ChunkedEmbedding(10, 8)(torch.tensor([0.5]))
    with pytest.raises(ValueError, match="offsets must be given"):
        ChunkedEmbeddingBag(10, 8)(torch.tensor([1, 2]))
    with pytest.raises(ValueError, match=r"pattern 'nope' matches no embedding module; embedding modules are \['emb'\]"):
        chunk_modules(nn.ModuleDict({"emb": nn.Embedding(4, 4)}), 2, pattern="nope")
    with pytest.raises(ValueError, match="keep must be a bool tensor"):
        ChunkedEmbedding(10, 8).set_kept(torch.ones(10, 3, dtype=torch.bool))


@pytest.mark.parametrize("two_d", [False, True])
def test_single_hot_sum_bags_equal_dense_and_track_norms(two_d):
    dense = nn.EmbeddingBag(30, 8, mode="sum")
    table = ChunkedEmbeddingBag.from_dense(dense, chunk_size=4)
    table.track_grad_norms()
    ids = torch.tensor([3, 3, 7, 1])
    args = (ids.view(4, 1),) if two_d else (ids, torch.arange(4))
    w = torch.rand(4)
    g = torch.randn(4, 8)
    a, b = dense(*args, per_sample_weights=w.view_as(args[0])), table(*args, per_sample_weights=w.view_as(args[0]))
    torch.testing.assert_close(b, a)
    a.backward(g)
    b.backward(g)
    torch.testing.assert_close(_dense_grad(table), dense.weight.grad)
    norms = (g * w[:, None]).view(4, 2, 4).norm(dim=2)
    expected = torch.zeros(30, 2).index_add_(0, ids, norms)
    torch.testing.assert_close(table.grad_norm_acc, expected)


def _reference_norms(weight, ids, offsets, mode, psw, padding_idx, include_last_offset, g, chunk):
    """Per-access chunk gradient norms summed per row, from plain autograd through explicitly gathered rows."""
    flat = ids.reshape(-1)
    n, d = flat.numel(), weight.shape[1]
    rows = torch.cat([weight.detach()[flat], torch.zeros(1, d)]).requires_grad_(True)
    pos = torch.where(flat == padding_idx, n, torch.arange(n)) if padding_idx is not None else torch.arange(n)
    out = F.embedding_bag(
        pos.view(ids.shape), rows, offsets, mode=mode, per_sample_weights=psw, include_last_offset=include_last_offset,
        padding_idx=n if padding_idx is not None else None,
    )  # fmt: skip
    out.backward(g)
    norms = rows.grad[:n].view(n, d // chunk, chunk).norm(dim=2)
    return torch.zeros(weight.shape[0], d // chunk).index_add_(0, flat, norms)


@pytest.mark.parametrize("mode", ["sum", "mean"])
@pytest.mark.parametrize("padding_idx", [None, 3])
@pytest.mark.parametrize("layout", ["offsets", "last_offset", "2d", "single_hot"])
def test_all_kept_fast_path_then_pruned_path_match_dense(mode, padding_idx, layout):
    """All chunks kept: the lookup is the dense one on the pool seen as ``[rows, d]`` (exact forward, same
    gradients, same tracked norms); after the first pruning the chunked gather takes over (equal to the dense
    module with pruned chunks zeroed); keeping everything again goes back to the fast path."""
    torch.manual_seed(0)
    last = layout == "last_offset"
    dense = nn.EmbeddingBag(50, 16, mode=mode, padding_idx=padding_idx, include_last_offset=last)
    table = ChunkedEmbeddingBag.from_dense(dense, chunk_size=4)
    table.track_grad_norms()
    if layout == "2d":
        ids, offsets = torch.randint(0, 50, (8, 5)), None
    elif layout == "single_hot":
        ids, offsets = torch.randint(0, 50, (10,)), torch.arange(10)
    else:
        ids = torch.randint(0, 50, (40,))
        offsets = torch.tensor([0, 3, 3, 10, 20] + ([40] if last else []))
    ids.view(-1)[5] = 3
    psw = torch.rand(ids.shape, requires_grad=True) if mode == "sum" else None
    psw_t = psw.detach().clone().requires_grad_(True) if psw is not None else None
    assert table.all_kept
    a, b = dense(ids, offsets, per_sample_weights=psw), table(ids, offsets, per_sample_weights=psw_t)
    assert torch.equal(a, b)  # bit-exact: the same embedding_bag call on the same numbers
    g = torch.randn_like(a)
    a.backward(g)
    b.backward(g)
    torch.testing.assert_close(_dense_grad(table), dense.weight.grad, rtol=0, atol=1e-6)
    assert table.pool.grad[0].abs().sum() == 0
    if psw is not None:
        torch.testing.assert_close(psw_t.grad, psw.grad)
    ref = _reference_norms(dense.weight, ids, offsets, mode, None if psw is None else psw.detach(), padding_idx, last, g, 4)
    torch.testing.assert_close(table.grad_norm_acc, ref)

    # first pruning: the chunked gather path, equal to the dense module with the pruned chunks zeroed
    keep = torch.rand(50, 4) < 0.5
    table.set_kept(keep)
    assert not table.all_kept
    table.track_grad_norms()
    masked = nn.EmbeddingBag(50, 16, mode=mode, padding_idx=padding_idx, include_last_offset=last)
    with torch.no_grad():
        masked.weight.copy_((dense.weight.view(50, 4, 4) * keep.unsqueeze(2)).view(50, 16))
    table.pool.grad = None
    psw = psw.detach().clone().requires_grad_(True) if psw is not None else None
    psw_t = psw.detach().clone().requires_grad_(True) if psw is not None else None
    a, b = masked(ids, offsets, per_sample_weights=psw), table(ids, offsets, per_sample_weights=psw_t)
    torch.testing.assert_close(b, a, rtol=0, atol=1e-6)
    a.backward(g)
    b.backward(g)
    grad = _dense_grad(table).view(50, 4, 4)
    torch.testing.assert_close(grad[keep], masked.weight.grad.view(50, 4, 4)[keep], rtol=0, atol=1e-6)
    assert (grad[~keep] == 0).all() and table.pool.grad[0].abs().sum() == 0  # pruned chunks get nothing
    if psw is not None:
        torch.testing.assert_close(psw_t.grad, psw.grad)
    ref = _reference_norms(masked.weight, ids, offsets, mode, None if psw is None else psw.detach(), padding_idx, last, g, 4)
    torch.testing.assert_close(table.grad_norm_acc, ref)  # pruned chunks too: the gradient they would get

    # everything kept again (re-admission): back to the row-major pool and the fast path
    before = table.dense_weight()
    table.set_kept(torch.ones(50, 4, dtype=torch.bool))
    assert table.all_kept and torch.equal(table.pool[1:].view(50, 16), before)
    assert torch.equal(table(ids, offsets, per_sample_weights=psw_t), masked(ids, offsets, per_sample_weights=psw))


@pytest.mark.parametrize("pruned", [False, True])
def test_embedding_paths_gradients_and_norms(pruned):
    dense = nn.Embedding(30, 8, padding_idx=2)
    table = ChunkedEmbedding.from_dense(dense, chunk_size=4)
    keep = torch.rand(30, 2) < (0.5 if pruned else 2)
    table.set_kept(keep)
    assert table.all_kept is not pruned
    with torch.no_grad():
        dense.weight.copy_(table.dense_weight())
    table.track_grad_norms()
    x = torch.randint(0, 30, (6, 5))
    x[0, 0] = 2
    g = torch.randn(6, 5, 8)
    a, b = dense(x), table(x)
    assert torch.equal(a, b)
    a.backward(g)
    b.backward(g)
    expected = dense.weight.grad.view(30, 2, 4) * keep.unsqueeze(2)
    torch.testing.assert_close(_dense_grad(table).view(30, 2, 4), expected, rtol=0, atol=1e-6)
    norms = torch.zeros(30, 2).index_add_(0, x.flatten(), g.view(-1, 2, 4).norm(dim=2))  # every access recorded
    torch.testing.assert_close(table.grad_norm_acc, norms)


@pytest.mark.parametrize("bag", [False, True])
@pytest.mark.parametrize("rows", [12, 200])  # small (dense lookup path) and large (gather path)
def test_prefix_index_lookup_and_bytes(bag, rows):
    import torch.nn.functional as F
    from torch import nn

    from lightning_recsys.embeddings.chunked import ChunkedEmbedding, ChunkedEmbeddingBag

    torch.manual_seed(0)
    dense = nn.EmbeddingBag(rows, 8, mode="sum") if bag else nn.Embedding(rows, 8)
    table = (ChunkedEmbeddingBag if bag else ChunkedEmbedding).from_dense(dense, chunk_size=2)
    table.use_prefix_index(block=4)
    k = torch.randint(0, 5, (rows,))
    keep = torch.arange(4) < k.unsqueeze(1)
    table.set_kept(keep)
    assert table.storage_bytes()["index"] == rows + 4 * (-(-rows // 4))
    assert table.num_kept == int(k.sum())
    ref = (dense.weight.detach().view(rows, 4, 2) * keep.unsqueeze(2)).view(rows, 8).requires_grad_()
    ids = torch.randint(0, rows, (10, 3))
    out = table(ids) if bag else table(ids)
    want = F.embedding_bag(ids, ref, mode="sum") if bag else F.embedding(ids, ref)
    assert torch.allclose(out, want)
    g = torch.randn_like(out)
    out.backward(g)
    want.backward(g)
    grad = F.embedding(table._slots(torch.arange(rows)), table.pool.grad).reshape(rows, 8)
    assert torch.allclose(grad, ref.grad * keep.repeat_interleave(2, 1))
    assert table.pool.grad[0].abs().sum() == 0
    with pytest.raises(ValueError, match="prefix"):
        table.set_kept(torch.arange(4).flip(0).unsqueeze(0).expand(rows, 4) < 2)


@pytest.mark.parametrize("pruned", [False, True])
def test_small_table_lookup_cache_follows_the_index_and_column_norms(pruned):
    """chunk_size 1: a small table's dense form is rebuilt after every set_kept; norms are |grad| per access."""
    torch.manual_seed(0)
    rows, dim = 12, 4
    dense = nn.EmbeddingBag(rows, dim, mode="sum")
    table = ChunkedEmbeddingBag.from_dense(dense, chunk_size=1)
    table.use_prefix_index(block=4)
    table.track_grad_norms(True)
    ids = torch.randint(0, rows, (16,))
    offsets = torch.arange(16)
    norms, counts = torch.zeros(rows, dim), torch.zeros(rows)
    for step in range(3):
        k = torch.randint(0, dim + 1, (rows,)) if pruned else torch.full((rows,), dim - step)
        keep = torch.arange(dim) < k.unsqueeze(1)
        table.set_kept(keep, torch.randn(int((keep & ~table.kept_mask()).sum()), 1))
        ref = table.dense_weight().clone().requires_grad_()
        table.pool.grad = None
        out = table(ids, offsets)
        want = F.embedding_bag(ids, ref, offsets, mode="sum")
        torch.testing.assert_close(out, want)
        g = torch.randn_like(out)
        out.backward(g)
        want.backward(g)
        torch.testing.assert_close(_dense_grad(table), ref.grad * keep)
        norms.index_add_(0, ids, g.abs())
        counts.index_add_(0, ids, torch.ones(16))
        assert table.cache_bytes() == (0 if table.all_kept and step == 0 else 4 * table.num_kept)
    torch.testing.assert_close(table.grad_norm_acc, norms)  # pruned columns too: the gradient they would get
    torch.testing.assert_close(table.access_acc, counts)


@pytest.mark.parametrize("pruned", [False, True], ids=["all_kept", "pruned"])
@pytest.mark.parametrize("bag", [False, True], ids=["embedding", "bag"])
def test_weight_reads_the_dense_table_with_gradients_to_the_pool(pruned, bag):
    """Code that reads ``table.weight`` (an L2 regulariser, scores against every item) keeps working after
    FIITED swaps the table: the dense table, pruned chunks 0, its gradient landing on the kept chunks."""
    dense = nn.EmbeddingBag(30, 8, mode="sum") if bag else nn.Embedding(30, 8)
    table = (ChunkedEmbeddingBag if bag else ChunkedEmbedding).from_dense(dense, chunk_size=2)
    keep = torch.rand(30, 4, generator=torch.Generator().manual_seed(0)) < 0.5 if pruned else torch.ones(30, 4, dtype=torch.bool)
    table.set_kept(keep)
    assert torch.equal(table.weight.detach(), table.dense_weight())
    probe = torch.randn(30, 8)
    (table.weight * probe).sum().backward()
    expect = probe.view(30, 4, 2)[keep]  # the gradient of each kept chunk, in pool order (row-major)
    torch.testing.assert_close(table.pool.grad[1:], expect)
    assert (table.pool.grad[0] == 0).all()
