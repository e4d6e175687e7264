"""Boundary codecs of DCT's model-parallel half: quantized ("quant"), sparse ("topk", "threshold") values,
their byte counts, the threshold refresh cadence, and the compressed all-to-all in 2 gloo processes."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_recsys.strategies import DCTStrategy
from lightning_recsys.strategies.mp_boundary import BoundaryCodec
from lightning_recsys.strategies.mp_quant import dequantize_factored, dequantize_values, factored_bytes, quantize_factored, quantize_values
from tests._dist import run_distributed


def _x(rows: int = 6, width: int = 48, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, width, generator=g) * torch.rand(rows, width, generator=g)
    x[:, :16] *= 50  # tables of very different magnitudes
    x[0, 16:32] = 0.0  # an all-zero table vector
    return x


def _quant_reference(x: torch.Tensor, group: int, bits: int) -> torch.Tensor:
    """Written out: per group, scale 2**(ceil(4 log2 absmax) / 4), round to the nearest of 2*qmax+1 levels."""
    out = torch.empty_like(x)
    qmax = 2 ** (bits - 1) - 1
    for r in range(x.shape[0]):
        for j in range(0, x.shape[1], group):
            v = x[r, j : j + group]
            amax = float(v.abs().max())
            s = 2 ** (math.ceil(4 * math.log2(amax)) / 4) if amax > 0 else 0.0
            out[r, j : j + group] = torch.round(v / s * qmax).clamp(-qmax, qmax) / qmax * s if s else 0.0
    return out


_HALF = {2: [0.4528, 1.5104], 3: [0.2451, 0.7560, 1.3439, 2.1520],
         4: [0.1284, 0.3881, 0.6568, 0.9424, 1.2562, 1.6180, 2.0690, 2.7326]}  # Lloyd-Max levels of N(0, 1)  # fmt: skip


def _code(value: float, up: bool) -> float:
    """A positive scale rounded (up, or to nearest) to 2 ** (e / 4); 0 stays 0."""
    if value <= 0:
        return 0.0
    e = 4 * math.log2(value)
    return 2 ** ((math.ceil(e) if up else round(e)) / 4)


def _levels_reference(v: torch.Tensor, bits: int, levels: str) -> torch.Tensor:
    """One scale group written out: Gaussian levels times the RMS, or uniform levels under the absmax."""
    if levels == "gaussian":
        s = _code(float(v.pow(2).mean().sqrt()), up=False)
        lv = torch.tensor([-h for h in reversed(_HALF[bits])] + _HALF[bits])
        return lv[(v.unsqueeze(1) / max(s, 1e-38) - lv).abs().argmin(1)] * s if s else torch.zeros_like(v)
    s, qmax = _code(float(v.abs().max()), up=True), 2 ** (bits - 1) - 1
    return torch.round(v / s * qmax).clamp(-qmax, qmax) / qmax * s if s else torch.zeros_like(v)


def _factored_reference(x: torch.Tensor, group: int, bits: int, levels: str) -> torch.Tensor:
    """Each column group divided by its RMS over the block (a scale code), then each row one scale group."""
    cols = torch.tensor([_code(float(x[:, j : j + group].pow(2).mean().sqrt()), up=False)
                         for j in range(0, x.shape[1], group)]).repeat_interleave(group)  # fmt: skip
    y = torch.where(cols > 0, x / cols.clamp_min(1e-38), torch.zeros_like(x))
    return torch.stack([_levels_reference(row, bits, levels) for row in y]) * cols


def _sign_reference(g: torch.Tensor, group: int) -> torch.Tensor:
    """1 bit: sign times the group's mean |g| (rounded to the nearest 2**(e/4))."""
    out = torch.empty_like(g)
    for r in range(g.shape[0]):
        for j in range(0, g.shape[1], group):
            v = g[r, j : j + group]
            m = float(v.abs().mean())
            s = 2 ** (round(4 * math.log2(m)) / 4) if m > 0 else 0.0
            out[r, j : j + group] = torch.where(v >= 0, s, -s)
    return out


@pytest.mark.parametrize("bits", [8, 4, 3, 2])
def test_quant_forward_equals_written_out_reference(bits):
    x = _x()
    codec = BoundaryCodec("quant", group=16, bits=bits, levels="uniform", scales="group")
    payload, mask = codec.encode_forward(x)
    dense, _ = codec.decode_forward(payload, 6, 48)
    assert mask is None and payload.dtype == torch.uint8
    torch.testing.assert_close(dense, _quant_reference(x, 16, bits), rtol=1e-6, atol=1e-7)
    # error bound: half a level of the group's (at most 19% rounded-up) scale
    amax = x.view(6, 3, 16).abs().amax(2, keepdim=True)
    assert bool(((dense - x).view(6, 3, 16).abs() <= amax * 2**0.25 / (2 ** bits - 2) + 1e-6).all())


@pytest.mark.parametrize("bits", [4, 3, 2])
def test_gaussian_levels_equal_written_out_reference(bits):
    x = _x(seed=4)
    codec = BoundaryCodec("quant", group=16, bits=bits, grad_bits=bits, levels="gaussian", scales="group")
    half = _HALF[bits]
    levels = torch.tensor([-v for v in reversed(half)] + half)
    ref = torch.empty_like(x)
    for r in range(6):
        for j in range(0, 48, 16):
            v = x[r, j : j + 16]
            rms = float(v.pow(2).mean().sqrt())
            s = 2 ** (round(4 * math.log2(rms)) / 4) if rms > 0 else 0.0
            ref[r, j : j + 16] = levels[(v.unsqueeze(1) / max(s, 1e-38) - levels).abs().argmin(1)] * s if s else 0.0
    dense, _ = codec.decode_forward(codec.encode_forward(x)[0], 6, 48)
    torch.testing.assert_close(dense, ref, rtol=1e-6, atol=1e-7)
    back = codec.decode_backward(codec.encode_backward(x, None), 6, 48, None)
    torch.testing.assert_close(back, ref, rtol=1e-6, atol=1e-7)
    plain = BoundaryCodec("quant", group=16, bits=bits, levels="uniform", scales="group")
    uniform = plain.decode_forward(plain.encode_forward(x)[0], 6, 48)[0]
    assert bits == 4 or (dense - x).norm() < (uniform - x).norm()  # lower error at 2 and 3 bits


@pytest.mark.parametrize(("bits", "levels"), [(4, "gaussian"), (2, "gaussian"), (3, "uniform")])
def test_factored_scales_equal_written_out_reference(bits, levels):
    x = _x(seed=5)
    x[2] *= 30  # samples of different magnitudes, on top of the tables'
    codec = BoundaryCodec("quant", group=16, bits=bits, grad_bits=bits, levels=levels, scales="factored")
    ref = _factored_reference(x, 16, bits, levels)
    payload = codec.encode_forward(x)[0]
    assert payload.numel() == codec.forward_bytes(6, 48) == 3 + 6 + 6 * 48 * bits // 8  # 3 table + 6 row codes
    torch.testing.assert_close(codec.decode_forward(payload, 6, 48)[0], ref, rtol=1e-5, atol=1e-6)
    back = codec.decode_backward(codec.encode_backward(x, None), 6, 48, None)
    torch.testing.assert_close(back, ref, rtol=1e-5, atol=1e-6)
    b = quantize_factored(x, 16, bits, levels=levels)
    assert torch.equal(b, payload) and b.numel() == factored_bytes(6, 48, 16, bits)
    torch.testing.assert_close(dequantize_factored(b, 6, 48, 16, bits, levels), ref, rtol=1e-5, atol=1e-6)


def test_quant_defaults_and_scaled_sign_backward():
    codec = BoundaryCodec("quant", group=16)  # defaults: 4 bits forward, 2 backward, Gaussian, factored
    assert (codec.bits, codec.grad_bits, codec.grad_rounding, codec.levels, codec.scales) == (4, 2, "nearest", "gaussian", "factored")
    topk = BoundaryCodec("topk")
    assert (topk.levels, topk.scales) == ("uniform", "group")
    codec = BoundaryCodec("quant", group=16, grad_bits=1, scales="group")
    g = _x(seed=1)
    back = codec.decode_backward(codec.encode_backward(g, None), 6, 48, None)
    torch.testing.assert_close(back, _sign_reference(g, 16), rtol=1e-6, atol=0)


@pytest.mark.parametrize("bits", [4, 1])
def test_stochastic_rounding_is_unbiased(bits):
    g = torch.randn(4000)
    grp = torch.arange(4000) // 16
    mean = torch.zeros(4000)
    n = 300
    for i in range(n):
        b = quantize_values(g, grp, 250, bits, torch.Generator().manual_seed(i))
        mean += dequantize_values(b, grp, 250, bits) / n
    err = (mean - g).norm() / g.norm()
    assert err < (0.05 if bits == 4 else 0.2)  # noise / sqrt(n) (1 bit: ~1.9 / sqrt(300)), no bias
    nearest = dequantize_values(quantize_values(g, grp, 250, bits), grp, 250, bits)
    assert bits == 4 or (nearest - g).norm() / g.norm() > 0.4  # the deterministic 1 bit is biased


def test_stochastic_rounding_on_gaussian_levels_is_unbiased_inside_the_levels():
    g = torch.rand(4000, generator=torch.Generator().manual_seed(0)) * 2 - 1  # |g| <= 1 < 2.15 x RMS (outer level)
    grp, n = torch.arange(4000) // 16, 300
    mean = torch.zeros(4000)
    for i in range(n):
        b = quantize_values(g, grp, 250, 3, torch.Generator().manual_seed(i), levels="gaussian")
        mean += dequantize_values(b, grp, 250, 3, levels="gaussian") / n
    nearest = dequantize_values(quantize_values(g, grp, 250, 3, levels="gaussian"), grp, 250, 3, levels="gaussian")
    assert (mean - g).norm() / g.norm() < 0.03 < (nearest - g).norm() / g.norm()  # noise / sqrt(n), no bias
    codec = BoundaryCodec("quant", group=16, grad_rounding="stochastic")  # Gaussian 2-bit gradients, decoded alike
    x = _x(seed=6)
    back = codec.decode_backward(codec.encode_backward(x, None, torch.Generator().manual_seed(1)), 6, 48, None)
    assert ((back - x).norm() / x.norm()) < 1.0 and not torch.equal(back, codec.decode_backward(codec.encode_backward(x, None), 6, 48, None))


@pytest.mark.parametrize(("name", "keep", "bits", "grad_bits"), [("topk", 0.25, 8, 4), ("topk", 0.05, 32, 32), ("threshold", 0.3, 4, 1)])
def test_sparse_codecs_send_masked_quantized_values_and_gradients_only_there(name, keep, bits, grad_bits):
    x, g = _x(), _x(seed=2)
    codec = BoundaryCodec(name, keep_ratio=keep, group=16, bits=bits, grad_bits=grad_bits)
    if name == "threshold":
        codec.refresh(x)
    payload, mask = codec.encode_forward(x)
    dense, rmask = codec.decode_forward(payload, 6, 48)
    assert torch.equal(mask, rmask)
    if name == "topk":
        k = math.ceil(keep * 16)
        ref = torch.zeros(6, 3, 16, dtype=torch.bool).scatter_(2, x.view(6, 3, 16).abs().topk(k, dim=2).indices, True)
        assert torch.equal(mask, ref.view(6, 48))
    else:
        assert torch.equal(mask, (x.abs().view(6, 3, 16) >= codec.tau.view(1, 3, 1)).view(6, 48))
    assert not bool(dense[~mask].any())
    if bits == 32:
        assert torch.equal(dense, x * mask)
    else:  # kept values quantized within each (row, table) group: as dense quantization of the masked tensor
        torch.testing.assert_close(dense, _quant_reference(x * mask, 16, bits), rtol=1e-6, atol=1e-7)
    back = codec.decode_backward(codec.encode_backward(g, rmask), 6, 48, mask)
    assert not bool(back[~mask].any())  # gradients only at the kept positions
    if grad_bits == 32:
        assert torch.equal(back, g * mask)
    elif grad_bits > 1:
        torch.testing.assert_close(back, _quant_reference(g * mask, 16, grad_bits), rtol=1e-6, atol=1e-7)
    else:
        assert torch.equal(back[mask].sign(), torch.where(g[mask] >= 0, 1.0, -1.0))


def test_threshold_is_the_sampled_quantile_per_group_and_adapts_per_sample():
    x = _x(rows=64, seed=3)
    x[:8] *= 10  # a few loud samples
    codec = BoundaryCodec("threshold", keep_ratio=0.25, group=16, sample_size=10_000)
    codec.refresh(x)
    for j in range(3):  # exact (<= sample_size entries): the 25% upper quantile of the group's entries
        a = x.view(64, 3, 16)[:, j].abs().flatten()
        assert float(codec.tau[j]) == float(a.topk(math.ceil(0.25 * a.numel())).values.min())
    mask = codec.select(x)
    per_sample = mask.float().mean(1)
    assert 0.2 <= float(mask.float().mean()) <= 0.3
    assert float(per_sample[:8].mean()) > 2 * float(per_sample[8:].mean())  # not a fixed k per sample


def test_threshold_refresh_cadence_and_state_round_trip():
    codec = BoundaryCodec("threshold", start_step=3, refresh_interval=4)
    assert [s for s in range(16) if codec.refresh_due(s)] == [3, 7, 11, 15]
    assert not any(BoundaryCodec("topk").refresh_due(s) for s in range(5))
    codec.step = 7
    codec.refresh(_x())
    other = BoundaryCodec("threshold", start_step=3, refresh_interval=4)
    other.load_state_dict(codec.state_dict())
    assert other.step == 7 and other.refresh_steps == [7] and torch.equal(other.tau, codec.tau)


def test_bytes_equal_hand_computation():
    x = _x(rows=5)
    quant = BoundaryCodec("quant", group=16, levels="uniform", grad_bits=1, scales="group")  # 3 groups of 16 per row
    # forward: 5 rows x 3 groups x (1 scale byte + 16 * 4 bits = 8 bytes); backward: x (1 + 16 bits = 2 bytes)
    assert quant.forward_bytes(5, 48) == 5 * 3 * (1 + 8) == quant.encode_forward(x)[0].numel()
    assert quant.backward_bytes(5, 48) == 5 * 3 * (1 + 2) == quant.encode_backward(x, None).numel()
    default = BoundaryCodec("quant", group=16)  # factored: 3 table + 5 row scale bytes, 4 bits / 2 bits per entry
    assert default.forward_bytes(5, 48) == 3 + 5 + 5 * 48 // 2 == default.encode_forward(x)[0].numel()
    assert default.backward_bytes(5, 48) == 3 + 5 + 5 * 48 // 4 == default.encode_backward(x, None).numel()
    topk = BoundaryCodec("topk", keep_ratio=0.25, group=16, bits=8, grad_bits=4)
    # 4 of 16 kept: bitmask (2 bytes) beats 4 uint8 indices; + 1 scale byte + 4 int8 values per group
    assert topk.forward_bytes(5, 48) == 5 * 3 * (2 + 1 + 4) == topk.encode_forward(x)[0].numel()
    assert topk.backward_bytes(5, 48) == 5 * 3 * (1 + 2) == topk.encode_backward(x, topk.select(x)).numel()
    top1 = BoundaryCodec("topk", keep_ratio=0.05, group=16)  # 1 of 16: a uint8 index beats the bitmask
    assert top1.forward_bytes(5, 48) == 5 * 3 * (1 + 4) and top1.backward_bytes(5, 48) == 5 * 3 * 4
    th = BoundaryCodec("threshold", keep_ratio=0.3, group=16, bits=4, grad_bits=1)
    th.refresh(x)
    payload, mask = th.encode_forward(x)
    kept = int(mask.sum())
    assert payload.numel() == th.forward_bytes(5, 48, kept) == 5 * 3 * 2 + 5 * 3 + math.ceil(kept * 4 / 8)
    assert th.encode_backward(x, mask).numel() == th.backward_bytes(5, 48, kept) == 5 * 3 + math.ceil(kept / 8)


@pytest.mark.parametrize("name", ["quant", "topk", "threshold", "int8", "fp16"])
@pytest.mark.parametrize("rows", [0, 3])
def test_a_rank_without_tables_sends_nothing(name, rows):
    codec = BoundaryCodec(name, group=16)
    x = torch.zeros(rows, 0)
    if name == "threshold":
        codec.refresh(x)
    payload, mask = codec.encode_forward(x)
    assert payload.numel() == codec.forward_bytes(rows, 0) == 0
    assert codec.decode_forward(payload, rows, 0)[0].shape == (rows, 0)
    assert codec.encode_backward(x, mask).numel() == codec.backward_bytes(rows, 0) == 0


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"bits": 5}, ValueError, "bits must be one of"),
        ({"grad_bits": 0}, ValueError, "grad_bits must be one of"),
        ({"name": "fp16", "bits": 8}, ValueError, r"bits applies to codec in \('quant', 'topk', 'threshold'\), not 'fp16'"),
        ({"grad_rounding": "up"}, ValueError, "grad_rounding must be"),
        ({"levels": "log"}, ValueError, r"levels must be one of \[None, 'uniform', 'gaussian'\], got 'log'"),
        ({"scales": "row"}, ValueError, r"scales must be one of \[None, 'group', 'factored'\]"),
        ({"name": "topk", "scales": "factored"}, ValueError, "scales='factored' applies to codec='quant' only, not 'topk'"),
        ({"refresh_interval": 0}, ValueError, "refresh_interval must be an integer >= 1"),
        ({"start_step": -1}, ValueError, "start_step must be an integer >= 0"),
        ({"name": "int4"}, ValueError, "codec must be one of"),
    ],
)
def test_codec_options_are_validated(kwargs, error, match):
    kwargs = {"name": "quant", **kwargs}
    with pytest.raises(error, match=match):
        BoundaryCodec(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"mp_bits": 6}, r"mp_bits must be one of \[32, 16, 8, 4, 3, 2, 1\], got 6"),
        ({"mp_codec": "fp32", "mp_grad_bits": 1}, "mp_grad_bits applies to mp_codec in"),
        ({"mp_grad_rounding": "down"}, r"DCTStrategy: mp_grad_rounding must be one of \['nearest', 'stochastic'\], got 'down'"),
        ({"mp_levels": "nf4"}, r"mp_levels must be one of \[None, 'uniform', 'gaussian'\]"),
        ({"mp_scales": "row"}, r"mp_scales must be one of \[None, 'group', 'factored'\]"),
        ({"mp_codec": "threshold", "mp_scales": "factored"}, "mp_scales='factored' applies to mp_codec='quant' only"),
        ({"mp_refresh_interval": 0}, "mp_refresh_interval must be an integer >= 1"),
        ({"mp_start_step": -2}, "mp_start_step must be an integer >= 0"),
        ({"mp_codec": "int4"}, "mp_codec must be one of"),
    ],
)
def test_strategy_mp_options_are_validated(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DCTStrategy(**kwargs)
    s = DCTStrategy(mp_codec="threshold", mp_bits=8, mp_refresh_interval=7, mp_start_step=3)
    assert s.mp_codec_options["bits"] == 8 and s.mp_codec_options["refresh_interval"] == 7


# ---------------------------------------------------------------------- 2 gloo processes
def _per_owner(t: torch.Tensor, owned: list[list[str]], feats: list[str], backward: bool = False) -> torch.Tensor:
    """``t`` [batch, features, dim] through the default "quant" codec, one block per owner rank's tables
    (as the all-to-all sends it: factored scales are per block)."""
    batch, _, dim = t.shape
    codec, out = BoundaryCodec("quant", group=dim), torch.empty_like(t)
    for names in owned:
        idx = [feats.index(n) for n in names]
        blk = t[:, idx].reshape(batch, -1)
        if backward:
            got = codec.decode_backward(codec.encode_backward(blk, None), batch, blk.shape[1], None)
        else:
            got = codec.decode_forward(codec.encode_forward(blk)[0], batch, blk.shape[1])[0]
        out[:, idx] = got.reshape(batch, len(idx), dim)
    return out


def _boundary_worker(rank: int, world: int, out: str) -> None:
    from lightning_recsys.data import SparseFeature
    from lightning_recsys.distributed import ShardedEmbeddingBagCollection

    cards = {"a": 50, "b": 40, "c": 30}  # placement: a -> rank 0, b and c -> rank 1
    dim, batch = 8, 5 + rank  # ranks hold different batch sizes
    g = torch.Generator().manual_seed(10 + rank)
    sparse = {}
    for n, c in cards.items():
        lengths = torch.randint(1, 4, (batch,), generator=g)
        offsets = torch.zeros(batch + 1, dtype=torch.long)
        offsets[1:] = lengths.cumsum(0)
        sparse[n] = SparseFeature(torch.randint(0, c, (int(offsets[-1]),), generator=g), offsets)
    w = torch.randn(batch, 3, dim, generator=g)
    ref = ShardedEmbeddingBagCollection(cards, dim, codec="fp32", seed=1)
    out_ref = ref(sparse)
    res = {"batch": batch, "owned": ref.owned}
    for tag, opts in {
        "quant": {"codec": "quant"},
        "topk": {"codec": "topk", "keep_ratio": 0.25, "bits": 8, "grad_bits": 16},
        "threshold": {"codec": "threshold", "keep_ratio": 0.3, "bits": 32, "refresh_interval": 2, "start_step": 1},
    }.items():
        cmp = ShardedEmbeddingBagCollection(cards, dim, seed=1, **opts)
        steps = []
        for step in range(4):
            cmp.zero_grad()
            before = dict(cmp.stats)
            o = cmp(sparse)
            (o * w).sum().backward()
            steps.append({
                "out": o.detach(), "grads": {n: t.weight.grad.clone() for n, t in cmp.tables.items()},
                "fwd": cmp.stats["forward_bytes"] - before["forward_bytes"], "bwd": cmp.stats["backward_bytes"] - before["backward_bytes"],
            })  # fmt: skip
        with torch.no_grad():
            steps.append({"eval_out": cmp.eval()(sparse)})
        res[tag] = {"steps": steps, "codec": cmp.codec.state_dict()}
    # references on this rank: the fp32 output, and fp32 grads for the upstream gradient each codec sends
    res["ref_out"] = out_ref.detach()

    def ref_grads(upstream: torch.Tensor) -> dict[str, torch.Tensor]:
        ref.zero_grad()
        (ref(sparse) * upstream).sum().backward()
        return {n: t.weight.grad.clone() for n, t in ref.tables.items()}

    res["ref_grads"] = {"quant": ref_grads(_per_owner(w, ref.owned, list(cards), backward=True))}
    for tag in ("topk", "threshold"):
        res["ref_grads"][tag] = ref_grads(w * (res[tag]["steps"][-2]["out"] != 0))
    torch.save(res, f"{out}/rank{rank}.pt")


@pytest.mark.timeout(90)
def test_compressed_all_to_all_in_two_processes(tmp_path):
    run_distributed(_boundary_worker, str(tmp_path), timeout=80)
    for rank in range(2):
        r = torch.load(tmp_path / f"rank{rank}.pt", weights_only=False)
        batch, ref = r["batch"], r["ref_out"]
        expect = _per_owner(ref, r["owned"], ["a", "b", "c"])
        q = r["quant"]["steps"]
        torch.testing.assert_close(q[-2]["out"], expect, rtol=1e-5, atol=1e-6)  # dequantized fp32 output
        for name, grad in q[-2]["grads"].items():  # owner's grads: upstream gradient sent in 2 bits
            torch.testing.assert_close(grad, r["ref_grads"]["quant"][name], rtol=1e-5, atol=1e-6)
        # bytes by hand: rank r sends its tables' vectors for both ranks' samples (a block of 5 and one of
        # 6 rows), receives vectors of all 3 tables for its own samples (a block per owner); per block one
        # scale byte per table and one per row, 4 bits per entry forward, 2 backward
        own = len(r["owned"][rank])
        assert q[-2]["fwd"] == sum(own + rows + rows * own * 8 * 4 // 8 for rows in (5, 6))
        assert q[-2]["bwd"] == sum(len(names) + batch + batch * len(names) * 8 * 2 // 8 for names in r["owned"])
        t = r["topk"]["steps"]
        out, mask = t[-2]["out"], t[-2]["out"] != 0
        assert bool((mask.sum(2) == 2).all())  # 2 of each table's 8 entries per sample
        topk = BoundaryCodec("topk", keep_ratio=0.25, group=8, bits=8)
        exp = topk.decode_forward(topk.encode_forward(ref.reshape(-1, 8))[0], batch * 3, 8)[0].reshape(batch, 3, 8)
        torch.testing.assert_close(out, exp, rtol=1e-6, atol=1e-7)
        # backward: fp16 gradients at the kept positions only -> the masked fp32 reference, to fp16 precision
        for name, grad in t[-2]["grads"].items():
            torch.testing.assert_close(grad, r["ref_grads"]["topk"][name], rtol=2e-3, atol=2e-3 * float(grad.abs().max()))
        th = r["threshold"]
        assert th["codec"]["refresh_steps"] == [1, 3] and th["codec"]["step"] == 4  # start 1, every 2 steps
        assert torch.equal(th["steps"][0]["out"], ref)  # warm-up step: fp32
        assert th["steps"][0]["fwd"] == (5 + 6) * own * 8 * 4
        o = th["steps"][-2]["out"]
        kept = o != 0
        assert torch.equal(o[kept], ref[kept]) and 0.1 < float(kept.float().mean()) < 0.6
        for name, grad in th["steps"][-2]["grads"].items():
            torch.testing.assert_close(grad, r["ref_grads"]["threshold"][name], rtol=1e-5, atol=1e-6)
        assert torch.equal(th["steps"][-1]["eval_out"] != 0, kept)  # eval uses the same (last) thresholds
