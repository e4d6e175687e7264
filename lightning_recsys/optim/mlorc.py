"""MLorc (Momentum Low-rank compression, arXiv 2506.01897): AdamW and Lion with rank-r moment state.

For each compressed 2-D weight ``W`` (m x n) the moments live between steps only as rank-r factors
``(U: m x r, s: r, Vh: r x n)`` from a randomized SVD; each step reconstructs them, applies the
ordinary AdamW / Lion update with the fresh gradient, and re-compresses. State is ``r(m + n + 1)``
numbers per moment instead of ``mn``.

Routing (embedding tables are 2-D too, so shape cannot decide): each param group has an ``mlorc``
flag (default ``True``). In a group with ``mlorc=True`` every 2-D parameter is compressed; all other
parameters (biases, norms, any non-2-D tensor, and every parameter of an ``mlorc=False`` group) get
ordinary dense AdamW / Lion state and are updated too. ``from_module(model)`` (or passing the module,
or :func:`~lightning_recsys.optim.module_parameters`) puts ``nn.Embedding`` / ``nn.EmbeddingBag``
weights in an ``mlorc=False`` group. Sparse gradients are refused with a clear error.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from lightning_recsys.optim import MLorcAdamW
    >>> model = nn.Sequential(nn.Embedding(100, 16), nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 1))
    >>> opt = MLorcAdamW.from_module(model, lr=1e-3, rank=4)
    >>> [g["mlorc"] for g in opt.param_groups]  # the embedding table keeps dense state
    [True, False]
    >>> model[3](model[2](model[1](model[0](torch.tensor([1, 2]))))).sum().backward()
    >>> opt.step()
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.optimizer import ParamsT

from .._validation import check_int, check_number
from ._precision import compute_dtype, restore_state
from ._routing import EMBEDDING_TYPES, check_real, group_tensors, module_of, owned_parameters

__all__ = [
    "MLorcAdamW",
    "MLorcLion",
    "randomized_svd",
    "mlorc_adamw_update",
    "mlorc_lion_update",
    "adamw_update",
    "lion_update",
]

LowRank = tuple[Tensor, Tensor, Tensor]  # (U [m, r], s [r], Vh [r, n])


def randomized_svd(
    a: Tensor, rank: int, oversample: int = 4, power_iters: int = 0, generator: torch.Generator | None = None
) -> LowRank:
    """Rank-``rank`` truncated SVD of ``a`` (Halko et al.): Gaussian sketch of ``rank + oversample``
    columns, ``power_iters`` re-orthonormalized power iterations, exact SVD of the small projection
    (taken of its tall ``n x k`` transpose, which LAPACK does several times faster than the wide
    ``k x n`` form). Exact when ``rank >= min(a.shape)``. A float16 / bfloat16 ``a`` is factored in
    float32 (QR and SVD have no bfloat16 CPU kernels); the factors come back in that dtype."""
    a = a.to(compute_dtype(a))
    m, n = a.shape
    k = min(rank + oversample, m, n)
    r = min(rank, k)
    omega = torch.randn(n, k, generator=generator, device=a.device, dtype=a.dtype)
    q = torch.linalg.qr(a @ omega).Q
    for _ in range(power_iters):
        q = torch.linalg.qr(a.T @ q).Q
        q = torch.linalg.qr(a @ q).Q
    # a ~= q (q^T a) and (q^T a)^T = a^T q = w diag(s) zh, so a ~= (q zh^T) diag(s) w^T
    w, s, zh = torch.linalg.svd(a.T @ q, full_matrices=False)
    # copies: slices of the k-wide factors would keep all k of them (and their memory) in the state
    return q @ zh[:r].T, s[:r].clone(), w[:, :r].T.clone(memory_format=torch.contiguous_format)


def _reconstruct(f: LowRank | None, like: Tensor, scale: float = 1.0) -> Tensor:
    """``scale * U diag(s) Vh`` (zeros before the first step); the scale costs nothing on ``s``."""
    if f is None:
        return torch.zeros_like(like)
    u, s, vh = f
    return (u * (s * scale)) @ vh


def _nonnegative(v_hat: Tensor) -> Tensor:
    """Replace negative entries of a reconstructed second moment by the mean magnitude of the negatives
    (the MLorc reference rule: ``relu(v) + [v < 0] * mean |v[v < 0]|``), in place. Branch-free:
    boolean masks, ``torch.where`` and ``count_nonzero`` cost several times more than float ops on CPU."""
    neg = v_hat.clamp(max=0)  # v where v < 0, else 0
    total = neg.sum(dtype=torch.float32)  # -(sum of |negatives|)
    count = neg.sign_().sum(dtype=torch.float32)  # -(number of negatives); neg is now -1 / 0
    fill = total / count.clamp_max(-1)  # mean |negative| (0 when there is none)
    return v_hat.clamp_min_(0).addcmul_(neg, -fill.to(v_hat.dtype))


def _write_back(param: Tensor, work: Tensor) -> None:
    """Store ``work`` (a float32 copy of a float16 / bfloat16 ``param``) in ``param``, rounding once."""
    if work is not param:
        param.copy_(work)


def adamw_update(
    param: Tensor, grad: Tensor, exp_avg: Tensor, exp_avg_sq: Tensor, step: int, *,
    lr: float, beta1: float, beta2: float, eps: float, weight_decay: float,
) -> None:  # fmt: skip
    """Dense AdamW step in place (``torch.optim.AdamW``'s formula: decay first, then the Adam step),
    computed in the moments' dtype (float32 moments for a bfloat16 ``param``: it is rounded once)."""
    w, g = param.to(exp_avg.dtype), grad.to(exp_avg.dtype)
    w.mul_(1 - lr * weight_decay)
    exp_avg.lerp_(g, 1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(g, g, value=1 - beta2)
    denom = (exp_avg_sq.sqrt() / math.sqrt(1 - beta2**step)).add_(eps)
    w.addcdiv_(exp_avg, denom, value=-lr / (1 - beta1**step))
    _write_back(param, w)


def mlorc_adamw_update(
    param: Tensor, grad: Tensor, m: LowRank | None, v: LowRank | None, step: int, *,
    lr: float, beta1: float, beta2: float, eps: float, weight_decay: float,
    rank: int, oversample: int, power_iters: int, generator: torch.Generator | None = None,
) -> tuple[LowRank, LowRank]:  # fmt: skip
    """One MLorc-AdamW step on a 2-D ``param`` in place; returns the new compressed ``(m, v)``.

    ``m``/``v`` are the previous factors (``None`` before the first step). The step itself uses the
    exact new moments ``m_t``, ``v_t`` (reconstruction + fresh gradient); only they are compressed.
    Everything runs in :func:`compute_dtype` of ``param`` (float32 for bfloat16, rounded once)."""
    w, g = param.to(compute_dtype(param)), grad.to(compute_dtype(param))
    m_t = _reconstruct(m, g, beta1).add_(g, alpha=1 - beta1)  # b1 m_hat + (1 - b1) g
    v_t = _reconstruct(v, g, beta2)  # b2 v_hat: the non-negativity fix commutes with the scale
    if v is not None:
        _nonnegative(v_t)
    v_t.addcmul_(g, g, value=1 - beta2)
    new_m = randomized_svd(m_t, rank, oversample, power_iters, generator)
    new_v = randomized_svd(v_t, rank, oversample, power_iters, generator)
    w.mul_(1 - lr * weight_decay)
    denom = v_t.sqrt_().div_(math.sqrt(1 - beta2**step)).add_(eps)  # v_t is compressed already: reuse it
    w.addcdiv_(m_t, denom, value=-lr / (1 - beta1**step))
    _write_back(param, w)
    return new_m, new_v


def lion_update(
    param: Tensor, grad: Tensor, exp_avg: Tensor, *, lr: float, beta1: float, beta2: float, weight_decay: float
) -> None:
    """Dense Lion step in place: ``W -= lr * sign(b1 m + (1 - b1) g)``, then ``m = b2 m + (1 - b2) g``,
    computed in the momentum's dtype (float32 momentum for a bfloat16 ``param``: it is rounded once)."""
    w, g = param.to(exp_avg.dtype), grad.to(exp_avg.dtype)
    w.mul_(1 - lr * weight_decay)
    w.add_(exp_avg.lerp(g, 1 - beta1).sign_(), alpha=-lr)
    exp_avg.lerp_(g, 1 - beta2)
    _write_back(param, w)


def mlorc_lion_update(
    param: Tensor, grad: Tensor, m: LowRank | None, *,
    lr: float, beta1: float, beta2: float, weight_decay: float,
    rank: int, oversample: int, power_iters: int, generator: torch.Generator | None = None,
) -> LowRank:  # fmt: skip
    """One MLorc-Lion step on a 2-D ``param`` in place (in :func:`compute_dtype`); returns the new
    compressed momentum."""
    w, g = param.to(compute_dtype(param)), grad.to(compute_dtype(param))
    m_hat = _reconstruct(m, g)
    w.mul_(1 - lr * weight_decay)
    w.add_(m_hat.lerp(g, 1 - beta1).sign_(), alpha=-lr)
    _write_back(param, w)
    return randomized_svd(m_hat.lerp_(g, 1 - beta2), rank, oversample, power_iters, generator)


_FACTOR_KEYS = ("u", "s", "vh")


def _sketch_generator(p: Tensor, seed: int, step: int) -> torch.Generator:
    """A fresh generator per (parameter seed, step): the sketches replay exactly after a resume or copy."""
    return torch.Generator(device=p.device).manual_seed((seed + step) % (2**63))


class _MLorc(Optimizer):
    """Shared plumbing: validation, routing, lazy state, seeded sketches, state precision on load."""

    #: compressed moment (factor prefix) -> its dense state key for uncompressed parameters
    _moments: dict[str, str] = {}

    def __init__(self, params: ParamsT | nn.Module, defaults: dict[str, Any]) -> None:
        lr, (beta1, beta2), wd = defaults["lr"], defaults["betas"], defaults["weight_decay"]
        if isinstance(lr, Tensor):
            raise TypeError(f"lr must be a float >= 0 (a Tensor lr is not supported), got {lr!r}")
        check_number("lr", lr, low=0.0)
        for name, b in (("betas[0]", beta1), ("betas[1]", beta2)):
            check_number(name, b, low=0.0, high=1.0, high_open=True)
        check_number("weight_decay", wd, low=0.0)
        if "eps" in defaults:
            check_number("eps", defaults["eps"], low=0.0)
        for name, val, lo in (("rank", defaults["rank"], 1), ("oversample", defaults["oversample"], 0),
                              ("power_iters", defaults["power_iters"], 0), ("seed", defaults["seed"], None)):  # fmt: skip
            check_int(name, val, low=lo)
        module = module_of(params)
        if module is not None:
            params = self._route(module)
        super().__init__(params, {**defaults, "mlorc": True})

    @staticmethod
    def _route(module: nn.Module) -> list[dict[str, Any]]:
        """2-D parameters of non-embedding modules -> compressed; embedding tables and the rest -> dense."""
        compressed, dense = [], []
        for _, p, owner in owned_parameters(module):
            (dense if isinstance(owner, EMBEDDING_TYPES) or p.ndim != 2 else compressed).append(p)
        return [g for g in ({"params": compressed, "mlorc": True}, {"params": dense, "mlorc": False}) if g["params"]]

    @classmethod
    def from_module(cls, module: nn.Module, **kwargs: Any) -> _MLorc:
        """Build with embedding tables (``nn.Embedding``/``nn.EmbeddingBag``) on dense state."""
        if not isinstance(module, nn.Module):
            raise TypeError(f"module must be an nn.Module, got {type(module).__name__}")
        return cls(module, **kwargs)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group (options default to the constructor's); its parameters must be real floating-point."""
        check_real(group_tensors(param_group), type(self).__name__)
        super().add_param_group(param_group)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """As ``torch.optim.Optimizer.load_state_dict``, but moments and factors keep
        :func:`compute_dtype` (float32 for bfloat16 parameters) instead of being cast to the parameter's."""
        super().load_state_dict(state_dict)
        factor_keys = [f"{m}_{k}" for m in self._moments for k in _FACTOR_KEYS]
        restore_state(self, state_dict, [*self._moments.values(), *factor_keys], compute_dtype)

    @staticmethod
    def _compressed(group: dict[str, Any], p: Tensor) -> bool:
        return bool(group["mlorc"]) and p.ndim == 2

    def _init_group(
        self, group: dict[str, Any], first_index: int, params: list[Tensor], grads: list[Tensor], seeds: list[int]
    ) -> None:
        """Collect the group's parameters with a gradient and the seed of each one's sketches (from the
        group's ``seed`` and the parameter's position ``first_index + j`` among all parameters). The step
        count and dense moments (in :func:`compute_dtype`) are created here, factors at the first step."""
        for j, p in enumerate(group["params"]):
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                raise ValueError(
                    f"{type(self).__name__} does not support sparse gradients (parameter of shape {tuple(p.shape)}); "
                    "give sparse embedding tables their own optimizer (CounterSGD, torch.optim.SparseAdam) "
                    "or use dense embeddings"
                )
            state = self.state[p]
            if "step" not in state:
                state["step"] = torch.tensor(0.0)
            if not self._compressed(group, p):
                for key in self._moments.values():
                    if key not in state:
                        state[key] = torch.zeros_like(p, dtype=compute_dtype(p), memory_format=torch.preserve_format)
            params.append(p)
            grads.append(p.grad)
            seeds.append(group["seed"] * 1_000_003 + (first_index + j) * 7919)

    def _groups(self) -> Iterator[tuple[dict[str, Any], list[tuple[Tensor, Tensor, int, int]]]]:
        """Each group with ``(param, grad, sketch seed, step number)`` of its parameters with a gradient;
        the step counts are advanced."""
        first = 0
        for group in self.param_groups:
            params: list[Tensor] = []
            grads: list[Tensor] = []
            seeds: list[int] = []
            self._init_group(group, first, params, grads, seeds)
            first += len(group["params"])
            yield group, [(p, g, s, int(self.state[p]["step"].add_(1))) for p, g, s in zip(params, grads, seeds)]

    @staticmethod
    def _load_factors(state: dict[str, Any], prefix: str) -> LowRank | None:
        key = f"{prefix}_u"
        return tuple(state[f"{prefix}_{k}"] for k in _FACTOR_KEYS) if key in state else None  # type: ignore[return-value]

    @staticmethod
    def _store_factors(state: dict[str, Any], prefix: str, f: LowRank) -> None:
        for k, t in zip(_FACTOR_KEYS, f):
            state[f"{prefix}_{k}"] = t

    def _run_closure(self, closure: Callable[[], float] | None) -> Any:
        if closure is None:
            return None
        with torch.enable_grad():
            return closure()


class MLorcAdamW(_MLorc):
    """AdamW whose moments of 2-D weights are kept as rank-``rank`` randomized-SVD factors (MLorc).

    Each step (``t`` = step count): ``m = b1 m_hat + (1 - b1) g``; ``v = b2 v_hat+ + (1 - b2) g^2``
    (``v_hat+``: the reconstruction with negatives replaced by the mean negative magnitude, so
    ``v >= 0``); ``W *= 1 - lr wd``; ``W -= lr / (1 - b1^t) * m / (sqrt(v / (1 - b2^t)) + eps)``;
    the exact ``m`` and ``v`` of this step (not their compressions) make the step, then they are
    compressed. The arithmetic is ``torch.optim.AdamW``'s and the paper's formula (decay of the old
    ``W``, ``eps`` outside the bias-corrected root), so with ``rank >= min(m, n)`` (lossless) the
    trajectory equals AdamW's; the authors' code differs only in second-order terms (it decays after
    the step and adds ``eps`` to ``sqrt(v)`` before bias correction).

    Precision: for float16 / bfloat16 parameters the moments (dense and factors) are kept and the
    step (QR / SVD included) is computed in float32, and the parameter is rounded once per step;
    float32 / float64 parameters use their own dtype throughout.

    Args:
        params: parameters or param groups (group option ``mlorc``: compress this group's 2-D
            parameters, default ``True``), or an ``nn.Module`` / ``module_parameters(model)`` to route
            embedding tables to dense state automatically (see :meth:`from_module`).
        lr, betas, eps, weight_decay: as ``torch.optim.AdamW`` (decoupled weight decay).
        rank: rank ``r`` of the stored factors. oversample: extra sketch columns of the randomized
            SVD (the paper's ``p``). power_iters: power iterations of the randomized SVD. The MLorc
            reference code's AdamW uses ``torch.pca_lowrank(q=rank, niter=1)`` (``oversample=0,
            power_iters=1``), its Lion a plain sketch (``oversample=0, power_iters=0``); the default
            here, ``oversample=4, power_iters=0``, measured the same final loss on the
            low-rank regression task of ``benchmarks/optim.py`` as ``power_iters=1`` at less step time.
        seed: seeds the sketches (one generator per parameter and step, so a resume replays them). A
            group option like the others, so ``state_dict``, pickle and ``deepcopy`` carry it.

    Example:
        >>> from torch import nn
        >>> opt = MLorcAdamW(nn.Linear(64, 64).parameters(), lr=1e-3, rank=4)
    """

    _moments = {"m": "exp_avg", "v": "exp_avg_sq"}

    def __init__(
        self,
        params: ParamsT | nn.Module,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.01,
        rank: int = 4,
        oversample: int = 4,
        power_iters: int = 0,
        seed: int = 0,
    ) -> None:
        defaults = {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay,
                    "rank": rank, "oversample": oversample, "power_iters": power_iters, "seed": seed}  # fmt: skip
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> Any:
        """Performs a single optimization step."""
        loss = self._run_closure(closure)
        for group, items in self._groups():
            beta1, beta2 = group["betas"]
            hp = {"lr": group["lr"], "beta1": beta1, "beta2": beta2, "eps": group["eps"],
                  "weight_decay": group["weight_decay"]}  # fmt: skip
            for p, grad, seed, step in items:
                state = self.state[p]
                if not self._compressed(group, p):
                    adamw_update(p, grad, state["exp_avg"], state["exp_avg_sq"], step, **hp)
                    continue
                m, v = mlorc_adamw_update(
                    p, grad, self._load_factors(state, "m"), self._load_factors(state, "v"), step, **hp,
                    rank=group["rank"], oversample=group["oversample"], power_iters=group["power_iters"],
                    generator=_sketch_generator(p, seed, step),
                )  # fmt: skip
                self._store_factors(state, "m", m)
                self._store_factors(state, "v", v)
        return loss


class MLorcLion(_MLorc):
    """Lion whose momentum of 2-D weights is kept as rank-``rank`` randomized-SVD factors (MLorc).

    Each step: ``W *= 1 - lr wd``; ``W -= lr * sign(b1 m_hat + (1 - b1) g)``; then
    ``m = b2 m_hat + (1 - b2) g`` is re-compressed. Other parameters get dense Lion state.
    Arguments and precision as :class:`MLorcAdamW` (no ``eps``); defaults follow the MLorc reference code.

    Example:
        >>> from torch import nn
        >>> opt = MLorcLion(nn.Linear(64, 64).parameters(), lr=1e-4, rank=4)
    """

    _moments = {"m": "exp_avg"}

    def __init__(
        self,
        params: ParamsT | nn.Module,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.95, 0.98),
        weight_decay: float = 0.05,
        rank: int = 4,
        oversample: int = 4,
        power_iters: int = 0,
        seed: int = 0,
    ) -> None:
        defaults = {"lr": lr, "betas": tuple(betas), "weight_decay": weight_decay,
                    "rank": rank, "oversample": oversample, "power_iters": power_iters, "seed": seed}  # fmt: skip
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> Any:
        """Performs a single optimization step."""
        loss = self._run_closure(closure)
        for group, items in self._groups():
            beta1, beta2 = group["betas"]
            hp = {"lr": group["lr"], "beta1": beta1, "beta2": beta2, "weight_decay": group["weight_decay"]}
            for p, grad, seed, step in items:
                state = self.state[p]
                if not self._compressed(group, p):
                    lion_update(p, grad, state["exp_avg"], **hp)
                    continue
                m = mlorc_lion_update(
                    p, grad, self._load_factors(state, "m"), **hp,
                    rank=group["rank"], oversample=group["oversample"], power_iters=group["power_iters"],
                    generator=_sketch_generator(p, seed, step),
                )  # fmt: skip
                self._store_factors(state, "m", m)
        return loss
