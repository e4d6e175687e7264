import copy

import pytest
import torch
from torch import nn

from lightning_recsys.optim import MLorcAdamW, MLorcLion, mlorc_adamw_update, module_parameters, randomized_svd
from lightning_recsys.optim.mlorc import _nonnegative, _reconstruct


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3))


def _train(model: nn.Module, opt: torch.optim.Optimizer, steps: int, seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(8, model[0].in_features, generator=g)
        loss = (model(x) - 0.5).pow(2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return [p.detach().clone() for p in model.parameters()]


def _lion_reference(model: nn.Module, lr: float, betas: tuple[float, float], wd: float, steps: int) -> list[torch.Tensor]:
    """Plain dense Lion written out in the test (the trajectory lossless MLorc-Lion must follow)."""
    moms = {p: torch.zeros_like(p) for p in model.parameters()}
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x = torch.randn(8, model[0].in_features, generator=g)
        model.zero_grad()
        (model(x) - 0.5).pow(2).sum().backward()
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(1 - lr * wd)
                p.sub_(lr * torch.sign(betas[0] * moms[p] + (1 - betas[0]) * p.grad))
                moms[p] = betas[1] * moms[p] + (1 - betas[1]) * p.grad
    return [p.detach().clone() for p in model.parameters()]


def test_full_rank_mlorc_adamw_matches_adamw_trajectory():
    ref_model, model = _mlp(), _mlp()
    ref = _train(ref_model, torch.optim.AdamW(ref_model.parameters(), lr=1e-2, weight_decay=0.05), 30)
    opt = MLorcAdamW(model.parameters(), lr=1e-2, weight_decay=0.05, rank=5)  # rank >= min(m, n) of both
    got = _train(model, opt, 30)
    assert "m_u" in opt.state[model[0].weight] and "exp_avg" not in opt.state[model[0].weight]
    for a, b in zip(ref, got):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)


def test_full_rank_mlorc_lion_matches_lion_trajectory():
    ref = _lion_reference(_mlp(), lr=1e-2, betas=(0.9, 0.99), wd=0.1, steps=20)
    model = _mlp()
    got = _train(model, MLorcLion(model.parameters(), lr=1e-2, betas=(0.9, 0.99), weight_decay=0.1, rank=6), 20)
    for a, b in zip(ref, got):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)


def test_low_rank_state_is_smaller_and_training_still_progresses():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 32))
    opt = MLorcAdamW(model.parameters(), lr=3e-3, rank=2)
    x, y = torch.randn(64, 32), torch.randn(64, 32)
    first = None
    for _ in range(40):
        loss = (model(x) - y).pow(2).mean()
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.8 * first
    state = opt.state[model[0].weight]
    assert state["m_u"].shape == (64, 2) and state["m_s"].shape == (2,) and state["m_vh"].shape == (2, 32)
    # the factors own exactly r(m + n + 1) numbers per moment (no views into the wider sketch)
    for moment in ("m", "v"):
        numel = sum(state[f"{moment}_{k}"].untyped_storage().nbytes() // 4 for k in ("u", "s", "vh"))
        assert numel == 2 * (64 + 32 + 1)


def test_randomized_svd_exact_at_full_rank_and_near_optimal_at_low_rank():
    torch.manual_seed(0)
    a = torch.randn(20, 7)
    u, s, vh = randomized_svd(a, rank=7, oversample=0, power_iters=0)
    torch.testing.assert_close((u * s) @ vh, a, atol=1e-5, rtol=1e-5)
    low = torch.randn(40, 3) @ torch.randn(3, 30) + 1e-3 * torch.randn(40, 30)
    u, s, vh = randomized_svd(low, rank=3, power_iters=1, generator=torch.Generator().manual_seed(0))
    best = torch.linalg.svdvals(low)[3:].pow(2).sum().sqrt()
    assert torch.linalg.norm(low - (u * s) @ vh) <= 1.05 * best


def test_second_moment_stays_nonnegative_under_aggressive_compression():
    torch.manual_seed(0)
    p = torch.randn(24, 16)
    m = v = None
    for step in range(1, 25):
        grad = torch.randn(24, 16) * torch.rand(24, 1) * 3  # rows of very different scales
        if v is not None:
            v_hat = _reconstruct(v, grad)
            fixed = _nonnegative(v_hat.clone())  # works in place
            assert (fixed >= 0).all()
            assert torch.equal(fixed[v_hat >= 0], v_hat[v_hat >= 0])  # non-negative entries untouched
            if (v_hat < 0).any():  # every negative is replaced by the mean negative magnitude
                expected = (-v_hat[v_hat < 0]).mean()
                torch.testing.assert_close(fixed[v_hat < 0], expected.expand(int((v_hat < 0).sum())))
        m, v = mlorc_adamw_update(p, grad, m, v, step, lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8,
                                  weight_decay=0.0, rank=1, oversample=0, power_iters=0)  # fmt: skip
        assert torch.isfinite(p).all()
    assert (_reconstruct(v, p) < 0).any(), "rank-1 reconstructions of v should produce negatives to fix"


@pytest.mark.parametrize("cls", [MLorcAdamW, MLorcLion])
def test_non_2d_params_move_and_embeddings_keep_dense_state(cls):
    torch.manual_seed(0)
    emb, conv, norm, lin = nn.Embedding(10, 4), nn.Conv1d(4, 4, 3), nn.LayerNorm(4), nn.Linear(4, 4)
    model = nn.ModuleList([emb, conv, norm, lin])
    opt = cls.from_module(model, lr=1e-2, rank=2)
    before = [p.detach().clone() for p in model.parameters()]
    h = emb(torch.tensor([[1, 2, 3, 4, 5]])).transpose(1, 2)  # [1, 4, 5]
    (lin(norm(conv(h).transpose(1, 2))).pow(2).sum()).backward()
    opt.step()
    for b, p in zip(before, model.parameters()):
        assert not torch.equal(b, p), f"parameter of shape {tuple(p.shape)} did not move"
    assert opt.state[emb.weight]["exp_avg"].shape == emb.weight.shape  # dense, not compressed
    assert "m_u" in opt.state[lin.weight] and "exp_avg" not in opt.state[lin.weight]
    assert "exp_avg" in opt.state[conv.weight] and "exp_avg" in opt.state[lin.bias]
    # module_parameters (what RecsysModule.configure_optimizers passes) routes the same way
    assert [g["mlorc"] for g in cls(module_parameters(model)).param_groups] == [True, False]


@pytest.mark.parametrize("cls", [MLorcAdamW, MLorcLion])
def test_state_dict_round_trip_mid_training_gives_identical_next_steps(cls):
    model = _mlp()
    opt = cls(model.parameters(), lr=1e-2, rank=2)
    _train(model, opt, 4, seed=3)
    saved_model, saved_state = copy.deepcopy(model), copy.deepcopy(opt.state_dict())
    straight = _train(model, opt, 4, seed=4)
    resumed_opt = cls(saved_model.parameters(), lr=0.5, rank=2)  # hyper-parameters come from the state
    resumed_opt.load_state_dict(saved_state)
    resumed = _train(saved_model, resumed_opt, 4, seed=4)
    for a, b in zip(straight, resumed):
        assert torch.equal(a, b)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"lr": -1.0}, "lr must be"),
        ({"betas": (0.9, 1.0)}, r"betas\[1\] must be a number in \[0, 1\)"),
        ({"weight_decay": -0.1}, "weight_decay must be"),
        ({"rank": 0}, "rank must be an integer >= 1"),
        ({"oversample": -1}, "oversample must be"),
        ({"power_iters": -1}, "power_iters must be"),
        ({"eps": -1e-8}, "eps must be"),
    ],
)
def test_bad_hyperparameters_raise_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MLorcAdamW(nn.Linear(3, 3).parameters(), **kwargs)


def test_wrong_types_raise_type_errors():
    with pytest.raises(TypeError, match=r"rank must be an integer >= 1, got 2.5 \(float\)"):
        MLorcAdamW(nn.Linear(3, 3).parameters(), rank=2.5)


def test_unsupported_parameter_kinds_raise_clear_errors():
    with pytest.raises(ValueError, match="complex"):
        MLorcAdamW([nn.Parameter(torch.zeros(3, 3, dtype=torch.complex64))])
    emb = nn.Embedding(10, 4, sparse=True)
    opt = MLorcLion(emb.parameters())
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(ValueError, match="sparse gradients"):
        opt.step()
    with pytest.raises(TypeError, match="nn.Module"):
        MLorcAdamW.from_module([nn.Parameter(torch.zeros(2, 2))])
