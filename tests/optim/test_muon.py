import copy

import pytest
import torch
from torch import nn

from lightning_recsys.optim import Muon, module_parameters, route_muon


class TinyRec(nn.Module):
    """Plain embedding table + bag + MLP (no lightning_recsys model code)."""

    def __init__(self) -> None:
        super().__init__()
        self.user = nn.Embedding(20, 8)
        self.items = nn.EmbeddingBag(30, 8, mode="sum")
        self.norm = nn.LayerNorm(16)
        self.hidden = nn.Linear(16, 12)
        self.hidden2 = nn.Linear(12, 12)
        self.head = nn.Linear(12, 1)

    def forward(self, u: torch.Tensor, items: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        h = torch.cat([self.user(u), self.items(items, offsets)], dim=1)
        return self.head(torch.relu(self.hidden2(torch.relu(self.hidden(self.norm(h))))))


def _batch(seed: int) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    u = torch.randint(0, 20, (16,), generator=g)
    items = torch.randint(0, 30, (40,), generator=g)
    offsets = torch.arange(0, 40, 40 // 16)[:16]
    y = torch.rand(16, 1, generator=g)
    return u, items, offsets, y


def _steps(model: TinyRec, opts: list, n: int, seed: int = 0, scheds: list = ()) -> None:
    for i in range(n):
        u, items, offsets, y = _batch(seed + i)
        for o in opts:
            o.zero_grad()
        nn.functional.binary_cross_entropy_with_logits(model(u, items, offsets), y).backward()
        for o in opts:
            o.step()
        for s in scheds:
            s.step()


def _kind(opt: Muon, p: torch.Tensor) -> bool:
    return next(g["use_muon"] for g in opt.param_groups if any(q is p for q in g["params"]))


def test_routing_puts_embedding_tables_norms_biases_and_head_on_adamw():
    torch.manual_seed(0)
    model = TinyRec()
    opt = Muon.from_module(model)
    assert _kind(opt, model.hidden.weight) and _kind(opt, model.hidden2.weight)
    for p in (model.user.weight, model.items.weight, model.norm.weight, model.hidden.bias, model.head.weight):
        assert not _kind(opt, p)
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))
    routes = route_muon(model, adamw_names=r"^hidden2\.", first_layer_adamw=True, last_layer_adamw=False)
    assert routes["head.weight"] and not routes["hidden.weight"] and not routes["hidden2.weight"]
    assert not route_muon(model, muon_names=None)["user.weight"]
    assert route_muon(model, muon_names=r"^user\.weight$")["user.weight"]  # explicit opt-in only


def test_hybrid_updates_equal_torch_muon_and_adamw():
    torch.manual_seed(0)
    model = TinyRec()
    ref = copy.deepcopy(model)
    hp = dict(lr=0.02, weight_decay=0.05, momentum=0.9, adjust_lr_fn="match_rms_adamw")
    ahp = dict(lr=3e-3, betas=(0.8, 0.95), eps=1e-7, weight_decay=0.02)
    opt = Muon.from_module(model, **hp, **{f"adamw_{k}": v for k, v in ahp.items()})
    muon_ps = [ref.hidden.weight, ref.hidden2.weight]
    rest = [p for p in ref.parameters() if all(p is not q for q in muon_ps)]
    pair = [torch.optim.Muon(muon_ps, **hp), torch.optim.AdamW(rest, **ahp)]
    _steps(model, [opt], 5)
    _steps(ref, pair, 5)
    for (name, a), b in zip(model.named_parameters(), ref.parameters()):
        assert torch.equal(a, b), name


def test_lr_scheduler_sees_and_drives_all_groups():
    torch.manual_seed(0)
    model = TinyRec()
    ref = copy.deepcopy(model)
    opt = Muon.from_module(model, lr=0.02, adamw_lr=1e-2)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.1)
    assert len(sched.get_last_lr()) == len(opt.param_groups) == 2
    muon_ps = [ref.hidden.weight, ref.hidden2.weight]
    pair = [torch.optim.Muon(muon_ps, lr=0.02), torch.optim.AdamW([p for p in ref.parameters() if all(p is not q for q in muon_ps)], lr=1e-2)]
    pair_scheds = [torch.optim.lr_scheduler.StepLR(o, step_size=2, gamma=0.1) for o in pair]
    _steps(model, [opt], 5, scheds=[sched])
    _steps(ref, pair, 5, scheds=pair_scheds)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.02 * 0.01, 1e-2 * 0.01])
    for a, b in zip(model.parameters(), ref.parameters()):
        assert torch.equal(a, b)


def test_state_dict_round_trip_mid_training_gives_identical_next_steps():
    torch.manual_seed(0)
    model = TinyRec()
    opt = Muon(module_parameters(model), lr=0.02, adamw_lr=1e-2)
    _steps(model, [opt], 3)
    saved_model, saved_state = copy.deepcopy(model), copy.deepcopy(opt.state_dict())
    _steps(model, [opt], 3, seed=10)
    fresh = Muon(saved_model, lr=9.0, adamw_lr=9.0)  # hyper-parameters come from the state dict
    fresh.load_state_dict(saved_state)
    assert fresh.param_groups[0]["lr"] == 0.02
    _steps(saved_model, [fresh], 3, seed=10)
    for a, b in zip(model.parameters(), saved_model.parameters()):
        assert torch.equal(a, b)


def test_clear_errors_for_unroutable_params_and_bad_hyperparameters():
    model = TinyRec()
    with pytest.raises(TypeError, match="bare parameter list cannot be routed"):
        Muon(model.parameters())
    with pytest.raises(ValueError, match="Muon takes 2-D matrices only"):
        Muon([{"params": [model.hidden.bias], "use_muon": True}])
    with pytest.raises(ValueError, match="needs 'use_muon'"):
        Muon([{"params": [model.hidden.weight]}])
    with pytest.raises(ValueError, match="muon_names=.*2-D"):
        Muon(model, muon_names="bias")
    with pytest.raises(ValueError, match="adamw_names is not a valid regex"):
        Muon(model, adamw_names="(")
    for kwargs, match in [({"lr": -1}, "lr must be"), ({"adamw_lr": -1}, "adamw_lr must be"),
                          ({"ns_steps": 0}, "ns_steps must be"), ({"adjust_lr_fn": "x"}, "adjust_lr_fn must be"),
                          ({"adamw_betas": (0.9, 1.5)}, r"adamw_betas\[1\] must be a number in \[0, 1\)")]:  # fmt: skip
        with pytest.raises(ValueError, match=match):
            Muon(model, **kwargs)
    sparse = nn.Embedding(5, 2, sparse=True)
    opt = Muon([{"params": [sparse.weight], "use_muon": False}])
    sparse(torch.tensor([1])).sum().backward()
    with pytest.raises(RuntimeError, match="sparse"):
        opt.step()
