import copy
import math

import pytest
import torch
from torch import nn

from lightning_recsys.optim import CounterSGD

# two steps: id 2 is repeated (three times in step 1, again in step 2), ids 5 and 7 are rare
BATCHES = [[2, 2, 5, 2], [2, 7]]


def _hand(weight: torch.Tensor, coefs: list[torch.Tensor], lr: float, half_life: float | None, wd: float, mode: str):
    """Expected table after the BATCHES, computed row by row with plain Python loops.

    Loss per step: sum_i <coef_i, w[id_i]>  =>  grad of row r = sum of coef_i over occurrences of r.
    mode "count": rate lr / sqrt(count); "frequency": lr / sqrt(count / steps) (steps decayed alike)."""
    w = weight.clone()
    count = [0.0] * w.shape[0]
    decay = 1.0 if half_life is None else 2.0 ** (-1.0 / half_life)
    steps = 0.0
    for ids, coef in zip(BATCHES, coefs):
        count = [c * decay for c in count]
        steps = steps * decay + 1.0
        grads: dict[int, torch.Tensor] = {}
        for i, r in enumerate(ids):
            grads[r] = grads.get(r, torch.zeros(w.shape[1])) + coef[i]
        for r, g in grads.items():
            count[r] += 1.0
            freq = count[r] / steps if mode == "frequency" else count[r]
            w[r] = w[r] - lr / math.sqrt(freq) * (g + wd * w[r])
    return w, torch.tensor(count)


@pytest.mark.parametrize("kind", ["embedding_sparse", "embedding_dense", "bag_sparse", "bag_dense"])
@pytest.mark.parametrize("half_life, wd, mode", [(None, 0.0, "count"), (3.0, 0.1, "count"), (None, 0.0, "frequency"),
                                                  (3.0, 0.1, "frequency")])  # fmt: skip
def test_counter_sgd_equals_hand_computation_for_repeated_and_rare_ids(kind, half_life, wd, mode):
    torch.manual_seed(0)
    sparse = kind.endswith("sparse")
    table = nn.Embedding(10, 3, sparse=sparse) if kind.startswith("embedding") else nn.EmbeddingBag(10, 3, mode="sum", sparse=sparse)
    start = table.weight.detach().clone()
    coefs = [torch.randn(len(ids), 3) for ids in BATCHES]
    opt = CounterSGD(table.parameters(), lr=0.3, half_life=half_life, weight_decay=wd, mode=mode)
    for ids, coef in zip(BATCHES, coefs):
        ids_t = torch.tensor(ids)
        if kind.startswith("embedding"):
            out = table(ids_t)
        else:  # one id per bag, so per-occurrence coefficients stay identifiable
            out = table(ids_t, torch.arange(len(ids)))
        opt.zero_grad()
        (out * coef).sum().backward()
        assert table.weight.grad.is_sparse == sparse
        opt.step()
    expected, count = _hand(start, coefs, 0.3, half_life, wd, mode)
    torch.testing.assert_close(table.weight.detach(), expected, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(opt.state[table.weight]["count"], count.float())
    untouched = [r for r in range(10) if r not in {2, 5, 7}]
    assert torch.equal(table.weight[untouched], start[untouched])


def test_rare_rows_take_larger_steps_and_state_is_one_float_per_row():
    table = nn.Embedding(50, 16, sparse=True)
    opt = CounterSGD([table.weight], lr=0.1)
    for _ in range(9):
        opt.zero_grad()
        table(torch.tensor([0, 1])).sum().backward()
        opt.step()
    opt.zero_grad()
    before = table.weight.detach().clone()
    table(torch.tensor([0, 3])).sum().backward()  # same gradient (ones) for row 0 (10th time) and row 3 (1st)
    opt.step()
    step0, step3 = (before[0] - table.weight[0]).abs().max(), (before[3] - table.weight[3]).abs().max()
    torch.testing.assert_close(step3 / step0, torch.tensor(math.sqrt(10.0)))
    count = opt.state[table.weight]["count"]
    assert count.shape == (50,) and count.numel() * count.element_size() * 16 == table.weight.numel() * 4


def test_from_module_routes_tables_to_counters_and_the_rest_to_sgd():
    torch.manual_seed(0)
    model = nn.ModuleDict({"emb": nn.EmbeddingBag(20, 4, sparse=True), "lin": nn.Linear(4, 1)})
    opt = CounterSGD.from_module(model, lr=0.2, dense_lr=0.05)
    assert [(g["counter"], g["lr"]) for g in opt.param_groups] == [(True, 0.2), (False, 0.05)]
    lin_before = model["lin"].weight.detach().clone()
    model["lin"](model["emb"](torch.tensor([1, 2, 3]), torch.tensor([0, 2]))).sum().backward()
    grad = model["lin"].weight.grad.clone()
    opt.step()
    torch.testing.assert_close(model["lin"].weight.detach(), lin_before - 0.05 * grad)
    assert model["lin"].weight not in opt.state


def test_state_dict_round_trip_mid_training_gives_identical_next_steps():
    torch.manual_seed(0)
    table = nn.EmbeddingBag(30, 4, sparse=True)
    opt = CounterSGD(table.parameters(), lr=0.2, half_life=5.0, mode="frequency")

    def run(t: nn.Module, o: torch.optim.Optimizer, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        for _ in range(4):
            o.zero_grad()
            t(torch.randint(0, 30, (12,), generator=g), torch.arange(0, 12, 3)).pow(2).sum().backward()
            o.step()

    run(table, opt, 0)
    saved_table, saved_state = copy.deepcopy(table), copy.deepcopy(opt.state_dict())
    run(table, opt, 1)
    fresh = CounterSGD(saved_table.parameters(), lr=5.0)
    fresh.load_state_dict(saved_state)
    run(saved_table, fresh, 1)
    assert torch.equal(table.weight, saved_table.weight)


def test_clear_errors_for_bad_hyperparameters_and_parameter_kinds():
    params = nn.Embedding(4, 2).parameters()
    for kwargs, match in [({"lr": -0.1}, "lr must be"), ({"half_life": 0}, "half_life must be"),
                          ({"weight_decay": -1}, "weight_decay must be"), ({"mode": "adagrad"}, "mode must be")]:  # fmt: skip
        with pytest.raises(ValueError, match=match):
            CounterSGD(params, **kwargs)
    with pytest.raises(TypeError, match=r"dense_lr must be None or a number >= 0, got 'x' \(str\)"):
        CounterSGD(params, dense_lr="x")
    with pytest.raises(ValueError, match="floating-point"):
        CounterSGD([torch.zeros(3, dtype=torch.long)])
    with pytest.raises(TypeError, match="nn.Module"):
        CounterSGD.from_module("model")
