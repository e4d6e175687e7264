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
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.optimizer import ParamsT

from ._routing import EMBEDDING_TYPES, check_real, module_of, owned_parameters

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
    ``k x n`` form). Exact when ``rank >= min(a.shape)``."""
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


def adamw_update(
    param: Tensor, grad: Tensor, exp_avg: Tensor, exp_avg_sq: Tensor, step: int, *,
    lr: float, beta1: float, beta2: float, eps: float, weight_decay: float,
) -> None:  # fmt: skip
    """Dense AdamW step in place (``torch.optim.AdamW``'s formula: decay first, then the Adam step)."""
    param.mul_(1 - lr * weight_decay)
    exp_avg.lerp_(grad, 1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    denom = (exp_avg_sq.sqrt() / math.sqrt(1 - beta2**step)).add_(eps)
    param.addcdiv_(exp_avg, denom, value=-lr / (1 - beta1**step))


def mlorc_adamw_update(
    param: Tensor, grad: Tensor, m: LowRank | None, v: LowRank | None, step: int, *,
    lr: float, beta1: float, beta2: float, eps: float, weight_decay: float,
    rank: int, oversample: int, power_iters: int, generator: torch.Generator | None = None,
) -> tuple[LowRank, LowRank]:  # fmt: skip
    """One MLorc-AdamW step on a 2-D ``param`` in place; returns the new compressed ``(m, v)``.

    ``m``/``v`` are the previous factors (``None`` before the first step). The step itself uses the
    exact new moments ``m_t``, ``v_t`` (reconstruction + fresh gradient); only they are compressed."""
    m_t = _reconstruct(m, grad, beta1).add_(grad, alpha=1 - beta1)  # b1 m_hat + (1 - b1) g
    v_t = _reconstruct(v, grad, beta2)  # b2 v_hat: the non-negativity fix commutes with the scale
    if v is not None:
        _nonnegative(v_t)
    v_t.addcmul_(grad, grad, value=1 - beta2)
    new_m = randomized_svd(m_t, rank, oversample, power_iters, generator)
    new_v = randomized_svd(v_t, rank, oversample, power_iters, generator)
    param.mul_(1 - lr * weight_decay)
    denom = v_t.sqrt_().div_(math.sqrt(1 - beta2**step)).add_(eps)  # v_t is compressed already: reuse it
    param.addcdiv_(m_t, denom, value=-lr / (1 - beta1**step))
    return new_m, new_v


def lion_update(
    param: Tensor, grad: Tensor, exp_avg: Tensor, *, lr: float, beta1: float, beta2: float, weight_decay: float
) -> None:
    """Dense Lion step in place: ``W -= lr * sign(b1 m + (1 - b1) g)``, then ``m = b2 m + (1 - b2) g``."""
    param.mul_(1 - lr * weight_decay)
    param.add_(exp_avg.lerp(grad, 1 - beta1).sign_(), alpha=-lr)
    exp_avg.lerp_(grad, 1 - beta2)


def mlorc_lion_update(
    param: Tensor, grad: Tensor, m: LowRank | None, *,
    lr: float, beta1: float, beta2: float, weight_decay: float,
    rank: int, oversample: int, power_iters: int, generator: torch.Generator | None = None,
) -> LowRank:  # fmt: skip
    """One MLorc-Lion step on a 2-D ``param`` in place; returns the new compressed momentum."""
    m_hat = _reconstruct(m, grad)
    param.mul_(1 - lr * weight_decay)
    param.add_(m_hat.lerp(grad, 1 - beta1).sign_(), alpha=-lr)
    return randomized_svd(m_hat.lerp_(grad, 1 - beta2), rank, oversample, power_iters, generator)


_FACTOR_KEYS = ("u", "s", "vh")


class _MLorc(Optimizer):
    """Shared plumbing: validation, routing, per-parameter generators, compressed-state bookkeeping."""

    def __init__(self, params: ParamsT | nn.Module, defaults: dict[str, Any], seed: int) -> None:
        lr, (beta1, beta2), wd = defaults["lr"], defaults["betas"], defaults["weight_decay"]
        if isinstance(lr, Tensor) or not (isinstance(lr, (int, float)) and lr >= 0):
            raise ValueError(f"lr must be a float >= 0, got {lr!r}")
        for name, b in (("betas[0]", beta1), ("betas[1]", beta2)):
            if not 0.0 <= b < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {b!r}")
        if not wd >= 0:
            raise ValueError(f"weight_decay must be >= 0, got {wd!r}")
        if "eps" in defaults and not defaults["eps"] >= 0:
            raise ValueError(f"eps must be >= 0, got {defaults['eps']!r}")
        for name, val, lo in (("rank", defaults["rank"], 1), ("oversample", defaults["oversample"], 0),
                              ("power_iters", defaults["power_iters"], 0)):  # fmt: skip
            if isinstance(val, bool) or not isinstance(val, int) or val < lo:
                raise ValueError(f"{name} must be an integer >= {lo}, got {val!r}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seed must be an integer, got {seed!r}")
        self.seed = seed
        module = module_of(params)
        if module is not None:
            params = self._route(module)
        super().__init__(params, {**defaults, "mlorc": True})
        self._index = {p: i for i, p in enumerate(p for g in self.param_groups for p in g["params"])}
        for group in self.param_groups:
            check_real(group["params"], type(self).__name__)

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

    def _generator(self, p: Tensor, step: int) -> torch.Generator:
        # a fresh generator per (seed, parameter, step): the sketches replay exactly after a resume
        if p not in self._index:  # a group added after construction
            self._index = {q: i for i, q in enumerate(q for g in self.param_groups for q in g["params"])}
        return torch.Generator(device=p.device).manual_seed(
            (self.seed * 1_000_003 + self._index[p] * 7919 + step) % (2**63)
        )

    def _grads(self, group: dict[str, Any]) -> list[tuple[Tensor, Tensor, bool]]:
        out = []
        for p in group["params"]:
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                raise ValueError(
                    f"{type(self).__name__} does not support sparse gradients (parameter of shape {tuple(p.shape)}); "
                    "give sparse embedding tables their own optimizer (CounterSGD, torch.optim.SparseAdam) "
                    "or use dense embeddings"
                )
            out.append((p, p.grad, bool(group["mlorc"]) and p.ndim == 2))
        return out

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
        seed: seeds the sketches (one generator per parameter and step, so a resume replays them).

    Example:
        >>> from torch import nn
        >>> opt = MLorcAdamW(nn.Linear(64, 64).parameters(), lr=1e-3, rank=4)
    """

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
                    "rank": rank, "oversample": oversample, "power_iters": power_iters}  # fmt: skip
        super().__init__(params, defaults, seed)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> Any:
        """Performs a single optimization step."""
        loss = self._run_closure(closure)
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            hp = {"lr": group["lr"], "beta1": beta1, "beta2": beta2, "eps": group["eps"],
                  "weight_decay": group["weight_decay"]}  # fmt: skip
            for p, grad, compressed in self._grads(group):
                state = self.state[p]
                step = int(state.get("step", 0)) + 1
                state["step"] = torch.tensor(float(step))
                if not compressed:
                    if "exp_avg" not in state:
                        state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                        state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    adamw_update(p, grad, state["exp_avg"], state["exp_avg_sq"], step, **hp)
                    continue
                m, v = mlorc_adamw_update(
                    p, grad, self._load_factors(state, "m"), self._load_factors(state, "v"), step, **hp,
                    rank=group["rank"], oversample=group["oversample"], power_iters=group["power_iters"],
                    generator=self._generator(p, step),
                )  # fmt: skip
                self._store_factors(state, "m", m)
                self._store_factors(state, "v", v)
        return loss


class MLorcLion(_MLorc):
    """Lion whose momentum of 2-D weights is kept as rank-``rank`` randomized-SVD factors (MLorc).

    Each step: ``W *= 1 - lr wd``; ``W -= lr * sign(b1 m_hat + (1 - b1) g)``; then
    ``m = b2 m_hat + (1 - b2) g`` is re-compressed. Other parameters get dense Lion state.
    Arguments as :class:`MLorcAdamW` (no ``eps``); defaults follow the MLorc reference code.

    Example:
        >>> from torch import nn
        >>> opt = MLorcLion(nn.Linear(64, 64).parameters(), lr=1e-4, rank=4)
    """

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
                    "rank": rank, "oversample": oversample, "power_iters": power_iters}  # fmt: skip
        super().__init__(params, defaults, seed)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> Any:
        """Performs a single optimization step."""
        loss = self._run_closure(closure)
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            hp = {"lr": group["lr"], "beta1": beta1, "beta2": beta2, "weight_decay": group["weight_decay"]}
            for p, grad, compressed in self._grads(group):
                state = self.state[p]
                step = int(state.get("step", 0)) + 1
                state["step"] = torch.tensor(float(step))
                if not compressed:
                    if "exp_avg" not in state:
                        state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    lion_update(p, grad, state["exp_avg"], **hp)
                    continue
                m = mlorc_lion_update(
                    p, grad, self._load_factors(state, "m"), **hp,
                    rank=group["rank"], oversample=group["oversample"], power_iters=group["power_iters"],
                    generator=self._generator(p, step),
                )  # fmt: skip
                self._store_factors(state, "m", m)
        return loss
