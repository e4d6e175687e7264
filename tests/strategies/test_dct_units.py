"""Single-process checks of DCT: option validation, registration, CLI class_path, pure compression functions."""

from __future__ import annotations

import math
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.strategies import StrategyRegistry

import lightning_recsys  # noqa: F401
from lightning_recsys.models import RecsysModule
from lightning_recsys.strategies import (
    BoundaryCodec,
    DCTCommState,
    DCTStrategy,
    register_strategies,
    sampled_threshold,
    threshold_compress,
)
from lightning_recsys.strategies.dp_hook import threshold_compress_

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"density": 0.0}, ValueError, r"DCTStrategy: density must be a number in \(0, 1\], got 0.0"),
        ({"density": 1.5}, ValueError, "density"),
        ({"density": "0.1"}, TypeError, "density must be a number"),
        ({"refresh_interval": 0}, ValueError, "refresh_interval must be an integer >= 1"),
        ({"refresh_interval": 2.5}, TypeError, "refresh_interval must be an integer"),
        ({"start_step": 1}, ValueError, "start_step must be an integer >= 2"),
        ({"mp_keep_ratio": 0}, ValueError, "mp_keep_ratio"),
        ({"error_feedback": "yes"}, TypeError, "error_feedback must be True or False"),
        ({"sample_size": 0}, ValueError, "sample_size"),
        ({"mp_codec": "fp8"}, ValueError, "mp_codec must be one of"),
        ({"mp_codec": "topk", "mp_bits": 7}, ValueError, r"DCTStrategy: mp_bits must be one of \[32, 16, 8, 4, 3, 2, 1\], got 7"),
        ({"ddp_comm_hook": lambda s, b: None}, ValueError, "ddp_comm_hook"),
    ],
)
def test_bad_options_raise_clear_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        DCTStrategy(**kwargs)


def test_registered_by_name_and_idempotent():
    register_strategies()
    register_strategies()  # a second registration is a no-op, not an error
    assert "dct" in StrategyRegistry and "dct_spawn" in StrategyRegistry
    t = pl.Trainer(strategy="dct", accelerator="cpu", devices=2, logger=False)
    assert isinstance(t.strategy, DCTStrategy) and t.strategy._start_method == "popen"
    t = pl.Trainer(strategy="dct_spawn", accelerator="cpu", devices=2, logger=False)
    assert isinstance(t.strategy, DCTStrategy) and t.strategy._start_method == "spawn"


def test_example_yaml_class_path_builds_the_strategy():
    cli = LightningCLI(
        RecsysModule, pl.LightningDataModule, subclass_mode_data=True, run=False,
        args=["--config", str(ROOT / "examples/configs/dct.yaml")], save_config_callback=None,
    )  # fmt: skip
    s = cli.trainer.strategy
    assert isinstance(s, DCTStrategy)
    assert (s.density, s.refresh_interval, s.start_step, s.error_feedback) == (0.01, 50, 2, True)
    assert s.num_processes == 2


@pytest.mark.parametrize("seed", range(5))
def test_error_feedback_invariant(seed):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(5000, generator=g) * torch.rand(5000, generator=g) ** 4
    a[::7] = 0.0
    tau = float(a.abs().quantile(0.98))
    idx, values, residual = threshold_compress(a, tau)
    assert torch.equal(residual.index_put((idx,), values), a)  # sent + kept == what was to be sent
    assert bool((values.abs() >= tau).all()) and bool((residual.abs() < tau).all())
    assert torch.equal(residual[idx], torch.zeros_like(values))
    idx0, v0, r0 = threshold_compress(a, 0.0)  # tau 0: every nonzero goes, nothing is kept
    assert idx0.numel() == int((a != 0).sum()) and not r0.any()


def test_sampled_threshold_hits_target_density():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(200_000, generator=g)
    tau = sampled_threshold(a, 0.01, 8192, torch.Generator().manual_seed(1))
    density = float((a.abs() >= tau).float().mean())
    assert 0.006 < density < 0.015
    small = torch.arange(100.0)
    assert sampled_threshold(small, 0.05, 8192, torch.Generator()) == 95.0  # exact top-5 when small


def test_refresh_cadence():
    st = DCTCommState(start_step=2, refresh_interval=3)
    assert [s for s in range(12) if st.refresh_due(s)] == [2, 5, 8, 11]


def test_topk_codec_roundtrip_matches_mask():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(7, 40, generator=g)
    codec = BoundaryCodec("topk", keep_ratio=0.1)
    payload, sent_mask = codec.encode_forward(x)
    assert payload.numel() == codec.forward_bytes(7, 40) and codec.k(40) == 4
    dense, mask = codec.decode_forward(payload, 7, 40)
    ref = torch.zeros_like(x).scatter_(1, torch.topk(x.abs(), 4, dim=1).indices, 1.0)
    assert torch.equal(dense, x * ref) and torch.equal(mask, ref.bool()) and torch.equal(sent_mask, mask)
    grad = torch.randn(7, 40, generator=g)
    back = codec.decode_backward(codec.encode_backward(grad, mask), 7, 40, sent_mask)
    assert torch.equal(back, grad * ref)
    assert codec.forward_bytes(1, 40) == 4 * (4 + 1)  # fp32 values + uint8 indices (4 bytes < a 5-byte bitmask)
    assert codec.forward_bytes(1, 1000) == 125 + 100 * 4  # a 125-byte bitmask beats 100 int16 indices
    with pytest.raises(ValueError, match="codec must be one of"):
        BoundaryCodec("fp8")
    with pytest.raises(ValueError, match="keep_ratio"):
        BoundaryCodec("topk", keep_ratio=1.5)


def test_int8_and_fp16_codecs_are_close():
    x = torch.randn(5, 33)
    for name, tol in (("fp16", 1e-2), ("int8", 0.03)):
        c = BoundaryCodec(name)
        out, _ = c.decode_forward(c.encode_forward(x)[0], 5, 33)
        assert (out - x).abs().max() < tol * math.ceil(float(x.abs().max()))


def test_per_table_topk_codec_keeps_every_group():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(5, 3 * 16, generator=g)
    x[:, :16] *= 100  # the first table dominates: a whole-row top-k would keep only its entries
    codec = BoundaryCodec("topk", keep_ratio=0.1, group=16)
    assert codec.k(48) == 3 * 2 and codec.forward_bytes(1, 48) == 6 * (4 + 1)
    payload, sent_mask = codec.encode_forward(x)
    dense, mask = codec.decode_forward(payload, 5, 48)
    ref = torch.zeros(5, 3, 16).scatter_(2, torch.topk(x.view(5, 3, 16).abs(), 2, dim=2).indices, 1.0).view(5, 48)
    assert torch.equal(dense, x * ref) and bool((ref.view(5, 3, 16).sum(2) == 2).all())
    grad = torch.randn(5, 48, generator=g)
    back = codec.decode_backward(codec.encode_backward(grad, mask), 5, 48, sent_mask)
    assert torch.equal(back, grad * ref)  # backward: exactly the forward's positions
    with pytest.raises(ValueError, match="not a multiple of the codec's group 16"):
        codec.encode_forward(torch.randn(2, 40))
    with pytest.raises(ValueError, match="group must be None or an integer >= 1"):
        BoundaryCodec("topk", group=0)


@pytest.mark.parametrize("seed", range(3))
def test_capped_compress_sends_the_largest_and_keeps_the_rest(seed):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(4001, generator=g)  # not a multiple of 8: the word-wise selection handles the tail
    tau = 1.0
    over = int((a.abs() >= tau).sum())
    residual = a.clone()
    idx, values = threshold_compress_(residual, tau, cap=100)
    assert idx.numel() == 100 < over
    assert torch.equal(residual.index_put((idx,), values), a)  # error-feedback invariant still holds
    assert float(values.abs().min()) >= float(residual.abs().max())  # the 100 largest went
    assert idx.unique().numel() == 100
    full = a.clone()
    idx_all, _ = threshold_compress_(full, tau)
    assert torch.equal(idx_all, (a.abs() >= tau).nonzero().flatten())


def test_capacity_is_fixed_by_layout_and_options():
    st = DCTCommState(density=0.01, capacity_factor=1.5)
    assert st.capacity(320_000) == 4800 and st.capacity(10) == 1
    with pytest.raises(ValueError, match="DCTStrategy: capacity_factor must be a number >= 1, got 0.5"):
        DCTStrategy(capacity_factor=0.5)


@pytest.mark.parametrize("rows", [0, 1])
@pytest.mark.parametrize(
    ("name", "group"),
    [("topk", None), ("topk", 4), ("threshold", 4), ("quant", 4), ("quant", None), ("fp16", None), ("int8", None), ("fp32", None)],
)
def test_codecs_handle_one_and_zero_rows(rows, name, group):
    # a rank may hold a single sample (or none) of a batch: column slices of a one-row payload have odd strides
    codec = BoundaryCodec(name, keep_ratio=0.25, group=group)
    x = torch.arange(1.0, 1.0 + rows * 8).reshape(rows, 8)
    if name == "threshold":
        codec.refresh(torch.arange(1.0, 9.0).reshape(1, 8))
    payload, sent_mask = codec.encode_forward(x)
    dense, mask = codec.decode_forward(payload, rows, 8)
    back = codec.decode_backward(codec.encode_backward(torch.ones(rows, 8), mask), rows, 8, sent_mask)
    assert dense.shape == back.shape == (rows, 8)
    if rows and codec.sparse:
        assert torch.equal(dense != 0, back != 0) and torch.equal(dense[dense != 0], x[dense != 0])


def test_touched_only_update_equals_full_scan():
    # between refreshes the hook adds and compares only where g is nonzero (plus what the cap left over)
    from lightning_recsys.distributed.dp_hook import _compress_touched, _threshold_compress

    g = torch.Generator().manual_seed(3)
    n, cap, tau = 4000, 30, 1.5
    full, fast = torch.zeros(n), torch.zeros(n)
    scratch, mask = torch.empty(n), torch.empty(n, dtype=torch.bool)
    left = None
    for step in range(6):
        grad = torch.zeros(n)
        rows = torch.randperm(n // 8, generator=g)[:40]
        grad.view(-1, 8)[rows] = torch.randn(40, 8, generator=g) * 1.5
        i1, v1, l1 = _threshold_compress(full.add_(grad), tau, scratch, mask, cap)
        if left is None:
            i2, v2, left = _threshold_compress(fast.add_(grad), tau, scratch, mask, cap)
        else:
            i2, v2, left = _compress_touched(fast, grad, tau, mask, cap, left)
        assert torch.equal(i1.sort().values, i2.sort().values) and torch.equal(full, fast)
        assert torch.equal(l1, left)
    assert left.numel() > 0  # the cap did leave entries over the threshold on the way
