"""int8/fp16 linears against a dequantize-then-float reference; observers on known distributions."""

import math

import pytest
import torch
from torch import nn

from lightning_recsys.quant import FP16Linear, Int8Linear, Int8LinearConfig, calibrate, make_observer, quantize_
from lightning_recsys.quant.core.linear import quantize_activation_params


def _reference(x, lin, scale, zp):
    """Quantize x to uint8, dequantize, multiply by the dequantized weight in float64."""
    xq = torch.clamp(torch.round(x / scale) + zp, 0, 255)
    x_deq = ((xq - zp) * scale).double()
    return x_deq @ lin.dequantized_weight().double().T + lin.bias.double()


def test_dynamic_int8_linear_matches_reference():
    lin = nn.Linear(24, 10)
    q = Int8Linear.from_float(lin, "dynamic")
    x = torch.randn(16, 24) * 3
    scale, zp = quantize_activation_params(x.amin(), x.amax())
    torch.testing.assert_close(q(x).double(), _reference(x, q, scale, zp), atol=1e-4, rtol=1e-5)
    assert (q(x) - lin(x)).abs().max() < 0.1
    assert q.wq_t.dtype == torch.int8 and q.sqnr_db > 30


def test_static_int8_needs_calibration_then_uses_fixed_range():
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
    ref = nn.Sequential(*[m for m in model])  # same float weights, kept before conversion
    ref_out = ref(torch.ones(1, 8)).detach()
    quantize_(model, Int8LinearConfig(activation="static", observer="minmax"))
    with pytest.raises(RuntimeError, match="not calibrated"):
        model(torch.randn(2, 8))
    data = [torch.randn(64, 8) for _ in range(3)]
    results = calibrate(model, data, num_batches=3)
    assert set(results) == {"0", "2"}
    lo = min(float(d.min()) for d in data)
    assert results["0"]["range"][0] == pytest.approx(lo, rel=1e-6)
    first = model[0]
    x = torch.randn(5, 8)
    torch.testing.assert_close(first(x).double(), _reference(x, first, first.x_scale, first.x_zero_point), atol=1e-4, rtol=1e-5)
    assert (model(torch.ones(1, 8)) - ref_out).abs().max() < 0.1


def test_fp16_linear():
    lin = nn.Linear(6, 3)
    q = FP16Linear.from_float(lin)
    x = torch.randn(4, 6)
    torch.testing.assert_close(q(x), x @ lin.weight.half().float().T + lin.bias, atol=1e-6, rtol=1e-6)


def _observe(name, data, **kw):
    obs = make_observer(name, **kw)
    for chunk in data.split(25_000):
        obs.observe(chunk)
    return obs.compute_range()


def _quant_mse(data, lo, hi):
    scale, zp = quantize_activation_params(torch.tensor(lo), torch.tensor(hi))
    deq = (torch.clamp(torch.round(data / scale) + zp, 0, 255) - zp) * scale
    return float((deq - data).pow(2).mean())


def test_observers_on_known_distributions():
    g = torch.Generator().manual_seed(0)
    uniform = torch.rand(100_000, generator=g) * 4 - 1
    lo, hi = _observe("minmax", uniform)
    assert lo == pytest.approx(float(uniform.min())) and hi == pytest.approx(float(uniform.max()))
    normal = torch.randn(100_000, generator=g)
    lo, hi = _observe("percentile", normal, percentile=99.0)
    assert lo == pytest.approx(-2.326, abs=0.06) and hi == pytest.approx(2.326, abs=0.06)
    # uniform data: the MSE-optimal range is (nearly) the full range
    lo, hi = _observe("mse", uniform)
    assert lo == pytest.approx(-1, abs=0.02) and hi == pytest.approx(3, abs=0.02)
    # half-normal (post-ReLU) data: MSE clips the long tail, and really has a lower error than min-max
    relu = torch.relu(torch.randn(100_000, generator=g))
    lo_m, hi_m = _observe("minmax", relu)
    lo_e, hi_e = _observe("mse", relu)
    assert 2.5 < hi_e < hi_m
    assert _quant_mse(relu, lo_e, hi_e) < _quant_mse(relu, lo_m, hi_m)
    # entropy (KL) clips the tail of the half-normal harder, but keeps the bulk of the mass
    lo_k, hi_k = _observe("entropy", relu)
    assert 1.5 < hi_k < hi_m and lo_k == pytest.approx(0.0, abs=1e-3)
    # on uniform data KL keeps (almost) everything
    assert _observe("entropy", uniform)[1] > 2.8


def test_observer_errors():
    with pytest.raises(ValueError, match="observer must be one of"):
        make_observer("median")
    with pytest.raises(RuntimeError, match="no data"):
        make_observer("minmax").compute_range()
    with pytest.raises(ValueError, match="percentile"):
        make_observer("percentile", percentile=20)
    assert math.isfinite(_observe("mse", torch.zeros(1000))[1])
