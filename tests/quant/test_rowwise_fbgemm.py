"""Row-wise tables against torch's FBGEMM prepack ops on the same weights, and int8 linears on
fbgemm's kernels against the integer arithmetic the export uses."""

import os
import subprocess
import sys

import pytest
import torch
from torch import nn

from lightning_recsys.quant import Int8Linear, QuantizedEmbeddingBag, dequantize_rowwise, pack_rowwise, unpack_rowwise
from lightning_recsys.quant.core.linear import fbgemm_is_exact


def _fbgemm(w: torch.Tensor, bits: int) -> torch.Tensor:
    if bits == 8:
        return torch.ops.quantized.embedding_bag_byte_prepack(w)
    return torch.ops.quantized.embedding_bag_4bit_prepack(w, optimized_qparams=False)


def _weights(kind: str, dim: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(dim)
    w = torch.randn(512, dim, generator=g) * 0.05
    if kind == "positive":
        return w.abs() + 0.01
    if kind == "negative":
        return -w.abs() - 0.01
    if kind == "tiny":  # ranges near FBGEMM's 1e-8 epsilon
        return w * 1e-6
    return w


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("dim", [8, 16, 64, 128])
@pytest.mark.parametrize("kind", ["positive", "negative", "mixed", "tiny"])
def test_error_never_above_fbgemm_value_by_value(bits, dim, kind):
    w = _weights(kind, dim)
    ours = pack_rowwise(w, bits)
    ref = _fbgemm(w, bits)
    _, s_ours, b_ours = unpack_rowwise(ours, bits, dim)
    _, s_ref, b_ref = unpack_rowwise(ref, bits, dim)
    assert torch.equal(s_ours, s_ref) and torch.equal(b_ours, b_ref)  # FBGEMM's qparams, bit for bit
    err = (dequantize_rowwise(ours, bits, dim) - w).abs()
    err_ref = (dequantize_rowwise(ref, bits, dim) - w).abs()
    assert bool((err <= err_ref).all())
    assert bool((err.amax(1) <= err_ref.amax(1)).all()) and bool((err.mean(1) <= err_ref.mean(1)).all())
    if kind == "tiny" and bits == 8:  # FBGEMM's epsilon pushes codes a step off; the nearest code does not
        assert float(err.mean()) < 0.9 * float(err_ref.mean())


@pytest.mark.parametrize("kind", ["positive", "negative"])
def test_anchored_grid_is_the_explicit_less_accurate_option(kind):
    w = _weights("mixed", 64) + (0.3 if kind == "positive" else -0.3)  # rows of one sign, far from 0
    exact = (dequantize_rowwise(pack_rowwise(w, 8), 8, 64) - w).abs().amax(1)
    anchored = (dequantize_rowwise(pack_rowwise(w, 8, grid="anchored"), 8, 64) - w).abs().amax(1)
    assert float(anchored.mean()) > 1.5 * float(exact.mean())
    with pytest.raises(ValueError, match="grid"):
        pack_rowwise(w, 4, grid="anchored")
    with pytest.raises(ValueError, match="grid must be"):
        pack_rowwise(w, 8, grid="zero")


@pytest.mark.parametrize("precision", ["int8", "int4"])
def test_quantized_bag_reads_fbgemm_kernels_with_our_rows(precision):
    bag = nn.EmbeddingBag(300, 33 if precision == "int8" else 34, mode="sum")
    q = QuantizedEmbeddingBag.from_float(bag, precision=precision)
    ids, offsets = torch.randint(0, 300, (40,)), torch.tensor([0, 3, 3, 10, 39])
    bits = 8 if precision == "int8" else 4
    ref = nn.functional.embedding_bag(ids, dequantize_rowwise(q.packed, bits, bag.embedding_dim), offsets, mode="sum")
    torch.testing.assert_close(q(ids, offsets), ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("activation", ["dynamic", "static"])
def test_int8_linear_on_fbgemm_matches_the_export_arithmetic(activation):
    torch.manual_seed(0)
    lin = nn.Linear(96, 40)
    q = Int8Linear.from_float(lin, activation=activation)
    if activation == "static":
        q.set_activation_range(-2.0, 3.0)
    x = torch.randn(64, 96)
    got = q(x)
    assert (q._fbgemm.packed is not None) == fbgemm_is_exact()  # on fbgemm's packed GEMM where it is exact
    if activation == "dynamic":
        ref = torch.ops.lrs_quant.int8_linear_dynamic(x, q.wq_t, q.w_scale, q.bias)
    else:
        ref = torch.ops.lrs_quant.int8_linear_static(x, q.x_scale, q.x_zero_point, q.wq_t, q.w_scale, q.bias)
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-5)
    if activation == "static":  # a new calibrated range is picked up by the next call
        q.set_activation_range(-1.0, 1.0)
        ref = torch.ops.lrs_quant.int8_linear_static(x, q.x_scale, q.x_zero_point, q.wq_t, q.w_scale, q.bias)
        torch.testing.assert_close(q(x), ref, atol=1e-4, rtol=1e-5)
    with torch.no_grad():  # new weights (in place) are repacked before the next call
        q.wq_t.zero_()
    torch.testing.assert_close(q(x), q.bias.expand(64, -1), atol=0.0, rtol=0.0)


@pytest.mark.parametrize("activation", ["dynamic", "static"])
def test_int8_linear_takes_every_input_rank_nn_linear_takes(activation):
    """fbgemm's kernels want 2-D or more: a 1-D input (which nn.Linear takes) runs the emulation."""
    lin = nn.Linear(8, 4)
    q = Int8Linear.from_float(lin, activation=activation)
    q.set_activation_range(-3.0, 3.0)
    for shape in [(8,), (2, 3, 8), (0, 8)]:
        x = torch.randn(*shape)
        with torch.no_grad():
            out, ref = q(x), lin(x)
        assert out.shape == ref.shape
        torch.testing.assert_close(out, ref, atol=0.05, rtol=0.0)


def test_int8_linear_quantized_under_inference_mode():
    """Buffers made under torch.inference_mode have no version counter: the module still runs (inside
    and outside it) and a new calibrated range set there is used by the next call."""
    lin = nn.Linear(16, 8)
    x = torch.randn(32, 16)
    with torch.inference_mode():
        q = Int8Linear.from_float(lin, activation="static")
        q.set_activation_range(-3.0, 3.0)
        first = q(x)
        q.set_activation_range(-0.5, 0.5)  # clips most of x: a visibly different output
        ref = torch.ops.lrs_quant.int8_linear_static(x, q.x_scale, q.x_zero_point, q.wq_t, q.w_scale, q.bias)
        torch.testing.assert_close(q(x), ref, atol=1e-4, rtol=1e-5)
        assert not torch.allclose(q(x), first, atol=1e-2)
    torch.testing.assert_close(q(x), ref, atol=1e-4, rtol=1e-5)


SATURATING = """
import torch
from torch import nn
from lightning_recsys.quant import Int8Linear
from lightning_recsys.quant.core.linear import fbgemm_is_exact
lin = nn.Linear(64, 8)
with torch.no_grad():
    lin.weight.abs_().mul_(3.0)  # weights of one sign: activation codes near 255 saturate int16 pair sums
q = Int8Linear.from_float(lin)
x = torch.rand(16, 64) * 5
ref = torch.ops.lrs_quant.int8_linear_dynamic(x, q.wq_t, q.w_scale, q.bias)
print(fbgemm_is_exact(), float((q(x) - ref).abs().max()))
"""


def test_saturating_fbgemm_kernels_are_not_used():
    """On CPUs without VNNI fbgemm's int8 GEMM saturates pairs of u8 x s8 products (here forced with
    FBGEMM_ENABLE_INSTRUCTIONS=AVX2): the probe sees it and eager calls keep the exact emulation."""
    env = {**os.environ, "FBGEMM_ENABLE_INSTRUCTIONS": "AVX2"}
    proc = subprocess.run([sys.executable, "-c", SATURATING], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    exact, diff = proc.stdout.split()
    assert exact == "False" and float(diff) == 0.0
