"""``CounterSGD``: counter-based frequency-aware SGD for embedding tables (Li et al., arXiv 2110.04844).

Rare ids take larger steps than frequent ones, like Adagrad, but the only state is one counter per
row (``V`` numbers instead of Adagrad's ``V x d``).

Example:
    >>> import torch
    >>> from torch import nn
    >>> from lightning_recsys.optim import CounterSGD
    >>> table = nn.Embedding(1000, 16, sparse=True)
    >>> opt = CounterSGD(table.parameters(), lr=0.1)
    >>> table(torch.tensor([3, 3, 7])).sum().backward()
    >>> opt.step()
    >>> opt.state[table.weight]["count"][[3, 7, 8]].tolist()  # duplicates coalesced: 1 per step present
    [1.0, 1.0, 0.0]
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.optimizer import ParamsT

from .._validation import check_choice, check_number
from ._precision import compute_dtype, restore_state
from ._routing import EMBEDDING_TYPES, check_real, group_tensors, module_of, owned_parameters

__all__ = ["CounterSGD", "counter_sgd_update"]


def counter_sgd_update(
    param: Tensor, grad: Tensor, count: Tensor, *, lr: float, decay: float, weight_decay: float,
    steps: float | None = None,
) -> None:  # fmt: skip
    """One counter-SGD step in place on ``param`` (rows along dim 0) and its per-row ``count``.

    ``grad`` may be sparse COO (duplicate ids are summed, the row counted once) or dense (a row is
    present when any of its gradient entries is non-zero). ``steps``: the (decayed) number of steps
    so far, this one included; when given, the rate is ``lr / sqrt(count / steps)`` (the row's
    estimated frequency, ``mode="frequency"``), otherwise ``lr / sqrt(count)``. Rows of a
    float16 / bfloat16 ``param`` are updated in float32 and rounded once; keep ``count`` in float32
    (a bfloat16 counter stops at 256)."""
    if decay != 1.0:
        count.mul_(decay)
    rows2d = param.view(param.shape[0], -1) if param.ndim else param.view(1, 1)
    dtype = compute_dtype(param)
    norm = 1.0 if steps is None else steps
    if grad.is_sparse:
        g = grad.coalesce()
        idx = g.indices()[0]  # unique after coalesce
        values = g.values().reshape(idx.numel(), -1).to(dtype)
        count.index_add_(0, idx, torch.ones_like(idx, dtype=count.dtype))
        rows = rows2d.index_select(0, idx).to(dtype)
        if weight_decay:
            values = values + weight_decay * rows
        scale = (lr / (count.index_select(0, idx) / norm).sqrt()).to(dtype)
        rows2d.index_copy_(0, idx, rows.addcmul_(values, scale.unsqueeze(1), value=-1).to(param.dtype))
        return
    g = grad.reshape(rows2d.shape).to(dtype)
    present = g.ne(0).any(1)
    count.add_(present)
    rows = rows2d.to(dtype)  # rows2d itself unless param is float16 / bfloat16
    if weight_decay:
        g = g + weight_decay * rows * present.unsqueeze(1)
    # present rows have count >= 1; absent rows' scale is unused
    scale = (lr / (count.clamp_min(1) / norm).sqrt()).to(dtype)
    rows.addcmul_(g, scale.unsqueeze(1), value=-1)
    if rows is not rows2d:
        rows2d.copy_(rows)


class CounterSGD(Optimizer):
    r"""Counter-based frequency-aware SGD: each row of a table has its own learning rate from how
    often it was seen.

    Rule, per step, for every parameter of a ``counter=True`` group (rows are indexed along dim 0):

    1. ``c *= 2 ** (-1 / half_life)`` for all rows (only when ``half_life`` is set);
    2. the rows present in the batch get ``c_r += 1`` once, however many times the id occurs
       (sparse gradients are coalesced; for a dense gradient a row is present when its gradient
       row is non-zero);
    3. ``mode="count"``: ``w_r -= lr / sqrt(c_r) * (g_r + weight_decay * w_r)`` for present rows
       only (FBGEMM's ``COUNTER_SGD`` rate ``lr / sqrt(counter)``: a row seen ``k`` times moves
       with ``lr / sqrt(k)``, so every row's rate decays as it is seen);
       ``mode="frequency"``: the same with ``c_r`` replaced by the row's estimated frequency
       ``p_r = c_r / n`` (``n``: the number of steps so far, decayed like the counters), i.e. rate
       ``lr / sqrt(p_r)``, from a counter-based frequency estimate as in Li et al.'s CF-SGD. A row
       present in every batch moves with ``lr`` throughout; rarer rows move faster.

    State: one float32 per row whatever the table's dtype (``mode="frequency"`` adds one scalar step
    count per table); the rows of a float16 / bfloat16 table are updated in float32, rounded once.

    Groups with ``counter=False`` are plain SGD (``w -= lr * (g + weight_decay * w)``), e.g. for the
    dense layers when :meth:`from_module` builds one optimizer for a whole model.

    Args:
        params: parameters or param groups (group option ``counter``, default ``True``), or an
            ``nn.Module`` / ``module_parameters(model)``: embedding tables get counters, the rest SGD.
        lr: base learning rate. half_life: counter half-life in steps (``None``: no decay).
        weight_decay: L2 penalty, applied to present rows only.
        dense_lr: learning rate of the plain-SGD group built from a module (default ``lr``).
        mode: ``"count"`` (rate from the raw counter) or ``"frequency"`` (rate from counter / steps).

    Example:
        >>> from torch import nn
        >>> model = nn.Sequential(nn.EmbeddingBag(100, 8, sparse=True), nn.Linear(8, 1))
        >>> opt = CounterSGD.from_module(model, lr=0.05, dense_lr=0.01, half_life=1000)
        >>> [g["counter"] for g in opt.param_groups]
        [True, False]
    """

    def __init__(
        self,
        params: ParamsT | nn.Module,
        lr: float = 0.01,
        half_life: float | None = None,
        weight_decay: float = 0.0,
        dense_lr: float | None = None,
        mode: Literal["count", "frequency"] = "count",
    ) -> None:
        check_choice("mode", mode, ("count", "frequency"))
        for name, val, optional in (("lr", lr, False), ("weight_decay", weight_decay, False), ("dense_lr", dense_lr, True)):
            check_number(name, val, low=0.0, optional=optional)
        check_number("half_life", half_life, low=0.0, low_open=True, optional=True)
        module = module_of(params)
        if module is not None:
            tables, dense = [], []
            for _, p, owner in owned_parameters(module):
                (tables if isinstance(owner, EMBEDDING_TYPES) else dense).append(p)
            dense_group = {"params": dense, "counter": False, "lr": lr if dense_lr is None else dense_lr}
            params = [g for g in ({"params": tables, "counter": True}, dense_group) if g["params"]]
        defaults = {"lr": lr, "half_life": half_life, "weight_decay": weight_decay, "mode": mode, "counter": True}
        super().__init__(params, defaults)

    @classmethod
    def from_module(cls, module: nn.Module, **kwargs: Any) -> CounterSGD:
        """Counters for ``nn.Embedding``/``nn.EmbeddingBag`` tables, plain SGD for the rest."""
        if not isinstance(module, nn.Module):
            raise TypeError(f"module must be an nn.Module, got {type(module).__name__}")
        return cls(module, **kwargs)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group (options default to the constructor's); its parameters must be real floating-point."""
        check_real(group_tensors(param_group), "CounterSGD")
        super().add_param_group(param_group)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """As ``torch.optim.Optimizer.load_state_dict``, but counters stay float32 for any parameter dtype."""
        super().load_state_dict(state_dict)
        restore_state(self, state_dict, ("count", "steps"), lambda p: torch.float32)

    def _init_group(self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor], states: list[dict]) -> None:
        """Collect the group's parameters with a gradient; counters (float32) are created here."""
        for p in group["params"]:
            if p.grad is None:
                continue
            params.append(p)
            grads.append(p.grad)
            if not group["counter"]:  # plain SGD: no state
                states.append({})
                continue
            state = self.state[p]
            if "count" not in state:
                state["count"] = torch.zeros(p.shape[0] if p.ndim else 1, dtype=torch.float32, device=p.device)
            if group["mode"] == "frequency" and "steps" not in state:
                state["steps"] = torch.zeros((), dtype=torch.float32, device=p.device)
            states.append(state)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> Any:
        """Performs a single optimization step."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params: list[Tensor] = []
            grads: list[Tensor] = []
            states: list[dict] = []
            self._init_group(group, params, grads, states)
            lr, wd = group["lr"], group["weight_decay"]
            half_life = group["half_life"]
            decay = 1.0 if half_life is None else math.pow(2.0, -1.0 / half_life)
            for p, grad, state in zip(params, grads, states):
                if not group["counter"]:
                    grad = grad.coalesce() if grad.is_sparse else grad
                    if wd:
                        grad = grad + wd * p if not grad.is_sparse else grad + wd * p.sparse_mask(grad)
                    p.add_(grad, alpha=-lr)
                    continue
                steps = None
                if group["mode"] == "frequency":  # n_t = decay * n_{t-1} + 1: the (decayed) step count
                    steps = float(state["steps"].mul_(decay).add_(1.0))
                counter_sgd_update(p, grad, state["count"], lr=lr, decay=decay, weight_decay=wd, steps=steps)
        return loss
