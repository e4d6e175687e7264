"""Row-wise int8/int4 tables: round-trip bounded by each row's step; lookups match dequantize-then-float."""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from lightning_recsys.quant import QuantizedEmbedding, QuantizedEmbeddingBag, dequantize_rowwise, pack_rowwise, unpack_rowwise


def _rows(max_abs):
    value = st.floats(-max_abs, max_abs, allow_nan=False, allow_infinity=False, width=32)
    return st.integers(1, 6).flatmap(
        lambda n: st.integers(1, 9).flatmap(
            lambda d: st.one_of(
                st.lists(st.lists(value, min_size=d, max_size=d), min_size=n, max_size=n),
                st.lists(value.map(lambda v: [v] * d), min_size=n, max_size=n),  # constant rows
            )
        )
    )


def _check_bound(w, bits):
    packed = pack_rowwise(w, bits)
    q, scale, bias = unpack_rowwise(packed, bits, w.shape[1])
    deq = dequantize_rowwise(packed, bits, w.shape[1])
    err = (deq.double() - w.double()).abs()
    step = scale.double().abs()[:, None]
    # half a step, plus float32 rounding of q * scale + bias
    slack = 4 * torch.finfo(torch.float32).eps * (w.double().abs() + step * (2**bits - 1)).clamp(min=1e-30)
    if bits == 4:  # FBGEMM's fp16 bias / scale are rounded to nearest: the grid can miss the row's ends a little
        slack = slack + 2.0**-10 * (w.double().abs().amax(1, keepdim=True) + step * 15)
    assert bool((err <= step / 2 + slack).all()), (err.max(), scale)
    assert int(q.max()) <= 2**bits - 1
    if bits == 8:  # constant rows are exact: the fp32 bias holds the value (int4's bias is fp16)
        const = w.amax(1) == w.amin(1)
        assert bool((err[const] == 0).all())


@settings(max_examples=30, deadline=None)
@given(_rows(2.0**100))
def test_int8_roundtrip_within_half_step(rows):
    _check_bound(torch.tensor(rows, dtype=torch.float32), 8)


@settings(max_examples=30, deadline=None)
@given(_rows(2000.0))
def test_int4_roundtrip_within_half_step(rows):
    _check_bound(torch.tensor(rows, dtype=torch.float32), 4)


def test_int4_rejects_values_beyond_fp16_qparams_and_nan():
    with pytest.raises(ValueError, match="int4"):
        pack_rowwise(torch.tensor([[1e6, 0.0]]), 4)
    with pytest.raises(ValueError, match="NaN"):
        pack_rowwise(torch.tensor([[float("nan"), 0.0]]), 8)


def test_greedy_int4_clip_reduces_error_on_outlier_rows():
    w = torch.randn(64, 32)
    w[:, 0] = 20.0
    err = {c: (dequantize_rowwise(pack_rowwise(w, 4, clip=c), 4, 32) - w).pow(2).sum() for c in ("minmax", "greedy")}
    assert err["greedy"] < err["minmax"]


@pytest.mark.parametrize("precision", ["int8", "int4", "fp16"])
@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
def test_bag_matches_dequantized_reference(precision, mode):
    bag = nn.EmbeddingBag(50, 7, mode=mode)
    q = QuantizedEmbeddingBag.from_float(bag, precision)
    ref_w = q.dequantized_weight()
    ids = torch.tensor([1, 4, 4, 49, 0, 7])
    offsets = torch.tensor([0, 2, 2, 5])  # includes an empty bag
    psw = torch.rand(6) if mode == "sum" else None
    expect = F.embedding_bag(ids, ref_w, offsets, mode=mode, per_sample_weights=psw)
    torch.testing.assert_close(q(ids, offsets, per_sample_weights=psw), expect, atol=1e-5, rtol=1e-5)
    assert bool((q(ids, offsets)[1] == 0).all())
    ids2 = torch.randint(0, 50, (3, 4))
    torch.testing.assert_close(q(ids2), F.embedding_bag(ids2, ref_w, mode=mode), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("precision", ["int8", "int4", "fp16"])
@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
@pytest.mark.parametrize("last", [False, True], ids=["offsets", "include_last_offset"])
def test_padding_idx_is_left_out_of_every_bag_as_in_nn_embedding_bag(precision, mode, last):
    """padding ids count in no bag: not in a mean's count, not in a max; a bag of padding only reads 0."""
    bag = nn.EmbeddingBag(20, 6, mode=mode, padding_idx=3, include_last_offset=last)
    q = QuantizedEmbeddingBag.from_float(bag, precision)
    twin = nn.EmbeddingBag(20, 6, mode=mode, padding_idx=3, include_last_offset=last)
    with torch.no_grad():  # the float bag on the quantized values: the same pooling must come out
        twin.weight.copy_(q.dequantized_weight())
    ids = torch.tensor([3, 1, 3, 5, 3, 3, 7, 3, 9, 2])
    offsets = torch.tensor([0, 1, 1, 4, 6, 8] + ([10] if last else []))  # [3] [] [1 3 5] [3 3] [7 3] [9 2]
    torch.testing.assert_close(q(ids, offsets), twin(ids, offsets), atol=1e-6, rtol=1e-6)
    assert bool((q(ids, offsets)[[0, 3]] == 0).all())
    ids2 = torch.tensor([[3, 3], [1, 3], [4, 5]])
    torch.testing.assert_close(q(ids2), twin(ids2), atol=1e-6, rtol=1e-6)
    # and close to the float table
    assert (q(ids, offsets) - bag(ids, offsets)).abs().max() < {"int8": 0.05, "int4": 0.5, "fp16": 1e-2}[precision]


def test_include_last_offset_and_embedding():
    bag = nn.EmbeddingBag(20, 4, mode="sum", include_last_offset=True)
    q = QuantizedEmbeddingBag.from_float(bag, "int8")
    ids, offsets = torch.tensor([1, 2, 3]), torch.tensor([0, 1, 3])
    torch.testing.assert_close(q(ids, offsets), F.embedding_bag(ids, q.dequantized_weight(), offsets, mode="sum", include_last_offset=True))
    emb = nn.Embedding(20, 5)
    for precision in ("int8", "int4", "fp16"):
        qe = QuantizedEmbedding.from_float(emb, precision)
        x = torch.randint(0, 20, (3, 2))
        torch.testing.assert_close(qe(x), F.embedding(x, qe.dequantized_weight()))
        assert qe(x).shape == emb(x).shape


def test_unsupported_tables_are_clear():
    with pytest.raises(ValueError, match="mode must be 'sum', 'mean' or 'max'"):
        QuantizedEmbeddingBag(5, 2, mode="min")
    with pytest.raises(TypeError, match="max_norm"):
        QuantizedEmbeddingBag.from_float(nn.EmbeddingBag(5, 2, max_norm=1.0))
    with pytest.raises(TypeError, match="max_norm"):
        QuantizedEmbedding.from_float(nn.Embedding(5, 2, max_norm=1.0))


@pytest.mark.parametrize("bits,grid", [(8, "exact"), (4, "exact"), (8, "anchored")])
def test_large_tables_are_packed_in_row_chunks_with_the_same_result(monkeypatch, bits, grid):
    """Tables are quantized a chunk of rows at a time (bounded memory); the result is the same."""
    import lightning_recsys.quant.core.rowwise as rowwise

    w = torch.randn(100, 7) * torch.linspace(0.01, 3.0, 100)[:, None]
    whole = pack_rowwise(w, bits, grid=grid)
    monkeypatch.setattr(rowwise, "_CHUNK_ROWS", 16)
    assert torch.equal(pack_rowwise(w, bits, grid=grid), whole)
