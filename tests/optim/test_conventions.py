"""Every optimizer of lightning_recsys.optim against torch.optim.AdamW's conventions: pickle / deepcopy,
state_dict round trips, add_param_group, LR schedulers and float32 / float64 / bfloat16 parameters.

The models are written here the way a user writes them (plain nn.Embedding / nn.Linear / nn.Sequential).
"""

import copy
import io
import pickle

import pytest
import torch
from torch import nn
from torch.optim import lr_scheduler

from lightning_recsys.optim import CounterSGD, MLorcAdamW, MLorcLion, Muon


class Rec(nn.Module):
    """User embedding -> MLP -> one logit."""

    def __init__(self, sparse: bool = False) -> None:
        super().__init__()
        self.user = nn.Embedding(20, 8, sparse=sparse)
        self.mlp = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 1))

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.user(u)).squeeze(1)


DEFAULTS = {
    "adamw": lambda m, **kw: torch.optim.AdamW(m.parameters(), **{"lr": 1e-2, **kw}),
    "mlorc_adamw": lambda m, **kw: MLorcAdamW.from_module(m, **{"lr": 1e-2, "rank": 2, **kw}),
    "mlorc_lion": lambda m, **kw: MLorcLion.from_module(m, **{"lr": 1e-3, "rank": 2, **kw}),
    "muon": lambda m, **kw: Muon.from_module(m, **{"lr": 0.02, "adamw_lr": 1e-2, **kw}),
    "counter_sgd": lambda m, **kw: CounterSGD.from_module(
        m, **{"lr": 0.1, "dense_lr": 0.05, "half_life": 50.0, "mode": "frequency", **kw}
    ),
}
NAMES = sorted(DEFAULTS)
# hyper-parameters a resumed optimizer is built with; load_state_dict must replace them by the saved ones
OTHER_HP = {"adamw": {"lr": 0.5}, "mlorc_adamw": {"lr": 0.5, "seed": 7}, "mlorc_lion": {"lr": 0.5, "seed": 7},
            "muon": {"lr": 0.5, "adamw_lr": 0.5}, "counter_sgd": {"lr": 0.5, "dense_lr": 0.5}}  # fmt: skip


def _setup(name: str, dtype: torch.dtype = torch.float32) -> tuple[Rec, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = Rec(sparse=name == "counter_sgd").to(dtype)
    return model, DEFAULTS[name](model)


def _train(model: nn.Module, opt: torch.optim.Optimizer, steps: int, seed: int, scheds: tuple = ()) -> None:
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        u, y = torch.randint(0, 20, (16,), generator=g), torch.rand(16, generator=g)
        dtype = next(model.parameters()).dtype
        loss = nn.functional.binary_cross_entropy_with_logits(model(u), y.to(dtype))
        opt.zero_grad()
        loss.backward()
        opt.step()
        for s in scheds:
            s.step()


def _params(model: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def _assert_same(a: list[torch.Tensor], b: list[torch.Tensor]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert torch.equal(x, y)


def _pickle_copy(obj):
    return pickle.loads(pickle.dumps(obj))


@pytest.mark.parametrize("how", [copy.deepcopy, _pickle_copy], ids=["deepcopy", "pickle"])
@pytest.mark.parametrize("name", NAMES)
def test_copy_steps_exactly_like_the_original(name, how):
    model, opt = _setup(name)
    _train(model, opt, 3, seed=1)
    model2, opt2 = how((model, opt))  # together, so the copy optimizes the copied parameters
    copied = {id(p) for p in model2.parameters()}
    assert all(id(p) in copied for g in opt2.param_groups for p in g["params"])
    before = _params(model)
    _train(model, opt, 3, seed=2)
    _train(model2, opt2, 3, seed=2)
    _assert_same(_params(model), _params(model2))
    assert not all(torch.equal(a, b) for a, b in zip(before, _params(model)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("name", NAMES)
def test_state_dict_round_trip_continues_exactly(name, dtype):
    model, opt = _setup(name, dtype)
    _train(model, opt, 3, seed=1)
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buf)
    _train(model, opt, 4, seed=2)

    buf.seek(0)
    ckpt = torch.load(buf)
    resumed_model = Rec(sparse=name == "counter_sgd").to(dtype)
    resumed_model.load_state_dict(ckpt["model"])
    resumed = DEFAULTS[name](resumed_model, **OTHER_HP[name])
    resumed.load_state_dict(ckpt["opt"])
    assert [g["lr"] for g in resumed.param_groups] == [g["lr"] for g in opt.param_groups]
    _train(resumed_model, resumed, 4, seed=2)
    _assert_same(_params(model), _params(resumed_model))
    for p, q in zip(model.parameters(), resumed_model.parameters()):  # state of the same dtypes
        for key, value in opt.state[p].items():
            if isinstance(value, torch.Tensor):
                assert resumed.state[q][key].dtype == value.dtype, key


def _extra_groups(name: str) -> tuple[list[dict], list[nn.Parameter]]:
    torch.manual_seed(1)
    if name == "counter_sgd":
        table = nn.Embedding(6, 4, sparse=True)
        return [{"params": table.parameters(), "lr": 0.3}], [table.weight]
    layer = nn.Linear(4, 4)
    if name == "muon":
        groups = [{"params": [layer.weight], "use_muon": True}, {"params": [layer.bias], "use_muon": False}]
        return groups, [layer.weight, layer.bias]
    return [{"params": layer.parameters()}], [layer.weight, layer.bias]


@pytest.mark.parametrize("name", NAMES)
def test_add_param_group_also_on_a_copy(name):
    model, opt = _setup(name)
    _train(model, opt, 1, seed=1)
    model, opt = copy.deepcopy((model, opt))
    n_groups = len(opt.param_groups)
    groups, extra = _extra_groups(name)
    for g in groups:
        opt.add_param_group(g)
    new = opt.param_groups[n_groups:]
    if name == "muon":  # each kind gets its own defaults, and only those
        assert new[0].items() >= opt.defaults.items() and new[1].items() >= opt.adamw_defaults.items()
        assert "momentum" not in new[1] and "betas" not in new[0]
    else:
        assert all(group.items() >= {k: v for k, v in opt.defaults.items() if k != "lr"}.items() for group in new)
    if name == "counter_sgd":
        assert new[0]["lr"] == 0.3 and new[0]["counter"] is True
    before = [p.detach().clone() for p in extra]
    opt.zero_grad()
    if name == "counter_sgd":
        extra[0][torch.tensor([1, 2])].sum().backward()  # a sparse-like dense gradient on rows 1 and 2
    else:
        sum(p.sum() for p in extra).backward()
    opt.step()
    for b, p in zip(before, extra):
        assert not torch.equal(b, p)
        assert opt.state[p]
    if name == "counter_sgd":
        assert opt.state[extra[0]]["count"].tolist() == [0, 1, 1, 0, 0, 0]


SCHEDULERS = {
    "step": lambda o: lr_scheduler.StepLR(o, step_size=2, gamma=0.5),
    "cosine": lambda o: lr_scheduler.CosineAnnealingLR(o, T_max=4),
    "lambda": lambda o: lr_scheduler.LambdaLR(o, lambda epoch: 1.0 / (1 + epoch)),
    "one_cycle": lambda o: lr_scheduler.OneCycleLR(
        o, max_lr=[0.05] * len(o.param_groups), total_steps=6, cycle_momentum=not isinstance(o, CounterSGD)
    ),
    "cyclic": lambda o: lr_scheduler.CyclicLR(o, base_lr=1e-3, max_lr=0.05, step_size_up=2,
                                              cycle_momentum=not isinstance(o, CounterSGD)),  # fmt: skip
}


@pytest.mark.parametrize("sched", sorted(SCHEDULERS))
@pytest.mark.parametrize("name", NAMES)
def test_lr_schedulers_drive_every_group(name, sched):
    model, opt = _setup(name)
    scheduler = SCHEDULERS[sched](opt)
    momentum_key = "momentum" if name == "muon" else "betas"  # group 0 of Muon is a Muon group
    lrs, momenta = [], []
    for seed in range(4):
        _train(model, opt, 1, seed=seed, scheds=(scheduler,))
        lrs.append(tuple(g["lr"] for g in opt.param_groups))
        momenta.append(opt.param_groups[0].get(momentum_key))
        assert list(lrs[-1]) == pytest.approx(scheduler.get_last_lr())
    assert len(set(lrs)) > 1  # the schedule changed the rates
    assert all(torch.isfinite(p).all() for p in model.parameters())
    if sched in ("one_cycle", "cyclic") and name != "counter_sgd":  # momentum / beta1 cycled as well
        assert len(set(momenta)) > 1


def test_counter_sgd_refuses_momentum_cycling_like_torch_adagrad():
    for opt in (torch.optim.Adagrad(Rec().parameters()), CounterSGD.from_module(Rec())):
        with pytest.raises(ValueError, match="momentum or beta1"):
            lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=4)


def test_muon_one_cycle_momentum_matches_torch_muon_and_adamw_pair():
    torch.manual_seed(0)
    model = Rec()
    ref = copy.deepcopy(model)
    opt = Muon.from_module(model, lr=0.02, adamw_lr=1e-2)
    hidden = [ref.mlp[0].weight, ref.mlp[2].weight]
    rest = [p for p in ref.parameters() if all(p is not h for h in hidden)]
    pair = [torch.optim.Muon(hidden, lr=0.02), torch.optim.AdamW(rest, lr=1e-2)]
    kw = {"total_steps": 6, "base_momentum": 0.8, "max_momentum": 0.95}
    sched = lr_scheduler.OneCycleLR(opt, max_lr=[0.05, 0.02], **kw)
    pair_scheds = [lr_scheduler.OneCycleLR(pair[0], max_lr=0.05, **kw),
                   lr_scheduler.OneCycleLR(pair[1], max_lr=0.02, cycle_momentum=False, **kw)]  # fmt: skip
    momenta = []
    for seed in range(5):
        _train(model, opt, 1, seed=seed, scheds=(sched,))
        _train_pair(ref, pair, seed, pair_scheds)
        momenta.append(opt.param_groups[0]["momentum"])
        assert momenta[-1] == pair[0].param_groups[0]["momentum"]
        assert opt.param_groups[1]["betas"] == (0.9, 0.999)  # the AdamW groups keep their betas
    assert min(momenta) < 0.9  # cycled down towards base_momentum
    _assert_same(_params(model), _params(ref))


def _train_pair(model: nn.Module, opts: list, seed: int, scheds: list) -> None:
    g = torch.Generator().manual_seed(seed)
    u, y = torch.randint(0, 20, (16,), generator=g), torch.rand(16, generator=g)
    for o in opts:
        o.zero_grad()
    nn.functional.binary_cross_entropy_with_logits(model(u), y).backward()
    for o in opts:
        o.step()
    for s in scheds:
        s.step()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
@pytest.mark.parametrize("name", NAMES)
def test_parameters_of_every_float_dtype_step(name, dtype):
    model, opt = _setup(name, dtype)
    before = _params(model)
    _train(model, opt, 3, seed=1)
    for b, p in zip(before, model.parameters()):
        assert p.dtype == dtype and torch.isfinite(p).all() and not torch.equal(b, p)
    if name.startswith("mlorc"):  # factors and moments: float32 for bfloat16, the parameter's dtype otherwise
        kept = torch.float32 if dtype == torch.bfloat16 else dtype
        assert opt.state[model.mlp[0].weight]["m_u"].dtype == kept
        assert opt.state[model.user.weight]["exp_avg"].dtype == kept
    if name == "counter_sgd":
        assert opt.state[model.user.weight]["count"].dtype == torch.float32


@pytest.mark.parametrize("sparse", [True, False], ids=["sparse", "dense"])
@pytest.mark.parametrize("resume", [False, True], ids=["straight", "resumed"])
def test_counter_sgd_counts_stay_exact_on_a_bfloat16_table(sparse, resume):
    table = nn.Embedding(5, 2, sparse=sparse, dtype=torch.bfloat16)
    opt = CounterSGD(table.parameters(), lr=1e-3, mode="frequency")
    for step in range(300):
        if resume and step == 150:
            state = copy.deepcopy(opt.state_dict())
            opt = CounterSGD(table.parameters(), lr=1e-3)
            opt.load_state_dict(state)
        opt.zero_grad()
        table(torch.tensor([3, 3, 1] if step % 2 else [3])).sum().backward()
        opt.step()
    state = opt.state[table.weight]
    assert state["count"].dtype == torch.float32 and state["count"].tolist() == [0, 150, 0, 300, 0]
    assert state["steps"].item() == 300  # bfloat16 would stop at 256


def test_counter_sgd_sparse_bfloat16_step_is_the_float32_step_rounded_once():
    torch.manual_seed(0)
    table = nn.Embedding(6, 3, sparse=True, dtype=torch.bfloat16)
    start = table.weight.detach().float()
    opt = CounterSGD(table.parameters(), lr=0.3, weight_decay=0.1)
    table(torch.tensor([1, 1, 4])).sum().backward()
    assert table.weight.grad.is_sparse and table.weight.grad.dtype == torch.bfloat16
    opt.step()
    expected = start.clone()
    for row, g in ((1, 2.0), (4, 1.0)):  # first sighting: rate lr / sqrt(1)
        expected[row] = start[row] - 0.3 * (g + 0.1 * start[row])
    assert torch.equal(table.weight, expected.to(torch.bfloat16))


# ---------------------------------------------------------------------------------------- Muon routing
def _to_muon(model: nn.Module, **kwargs) -> set[str]:
    opt = Muon.from_module(model, **kwargs)
    names = {id(p): n for n, p in model.named_parameters()}
    return {names[id(p)] for g in opt.param_groups if g["use_muon"] for p in g["params"]}


class MultiTask(nn.Module):
    """Shared Sequential trunk, one tower Sequential per task in an nn.ModuleDict."""

    def __init__(self, tasks=("click", "like", "share")) -> None:
        super().__init__()
        self.emb = nn.Embedding(50, 8)
        self.shared = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU())
        self.towers = nn.ModuleDict({t: nn.Sequential(nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 1)) for t in tasks})

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        z = self.shared(self.emb(ids))
        return torch.cat([tower(z) for tower in self.towers.values()], dim=1)


class HeadFirst(nn.Module):
    """Registers its output layer before its hidden layers."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(24, 1)
        self.hidden1 = nn.Linear(10, 24)
        self.hidden2 = nn.Linear(24, 24)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.hidden2(torch.relu(self.hidden1(x)))))


class UserDLRM(nn.Module):
    """Bottom MLP on dense features, embedding tables, pairwise dot interaction, top MLP -> logit."""

    def __init__(self) -> None:
        super().__init__()
        self.tables = nn.ModuleList([nn.EmbeddingBag(30, 8) for _ in range(3)])
        self.bottom = nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 8), nn.ReLU())
        self.top = nn.Sequential(nn.Linear(8 + 6, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 1))

    def forward(self, dense: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        x = self.bottom(dense)
        t = torch.stack([x] + [table(ids[:, i : i + 1]) for i, table in enumerate(self.tables)], 1)
        rows, cols = torch.tril_indices(4, 4, offset=-1)
        return self.top(torch.cat([x, (t @ t.transpose(1, 2))[:, rows, cols]], 1))


def test_every_task_tower_output_goes_to_adamw():
    model = MultiTask()
    assert _to_muon(model) == {"shared.0.weight", "shared.2.weight"} | {f"towers.{t}.0.weight" for t in model.towers}
    Muon.from_module(model)  # and it builds: the ModuleDict order of the towers does not matter
    assert _to_muon(MultiTask(tasks=("b", "a"))) == {"shared.0.weight", "shared.2.weight", "towers.b.0.weight",
                                                     "towers.a.0.weight"}  # fmt: skip


def test_head_registered_first_still_goes_to_adamw_and_hidden_layers_to_muon():
    assert _to_muon(HeadFirst()) == {"hidden1.weight", "hidden2.weight"}
    # the input layer is the one the data reaches first, not the first registered
    assert _to_muon(HeadFirst(), first_layer_adamw=True) == {"hidden2.weight"}


def test_dlrm_style_model_sends_only_the_logit_layer_to_adamw():
    model = UserDLRM()
    assert _to_muon(model) == {"bottom.0.weight", "bottom.2.weight", "top.0.weight", "top.2.weight"}
    assert model(torch.randn(4, 5), torch.randint(0, 30, (4, 3))).shape == (4, 1)


def test_single_linear_model_is_all_adamw_and_steps():
    model = nn.Linear(6, 1)
    opt = Muon.from_module(model, adamw_lr=0.1)
    assert [g["use_muon"] for g in opt.param_groups] == [False]
    before = model.weight.detach().clone()
    model(torch.randn(3, 6)).sum().backward()
    opt.step()
    assert not torch.equal(before, model.weight)


def test_routing_rule_can_be_overridden():
    model = MultiTask()
    towers_out = {f"towers.{t}.2.weight" for t in model.towers}
    assert towers_out <= _to_muon(model, last_layer_adamw=False)
    assert _to_muon(model, muon_names=r"towers\.click\.2\.weight") - _to_muon(model) == {"towers.click.2.weight"}
    assert _to_muon(model, adamw_names=r"^shared\.") == {f"towers.{t}.0.weight" for t in model.towers}
