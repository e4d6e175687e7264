"""Precision of optimizer state: what bfloat16 / float16 parameters keep and compute in float32.

``torch.optim`` keeps moments in the parameter's dtype and ``Optimizer.load_state_dict`` casts every
floating-point state tensor (except ``step``) to it. For bfloat16 that loses state that must stay
exact or fine-grained: a per-row counter stops counting at 256 (8 significant bits), and QR / SVD are
not implemented for bfloat16 on CPU. The optimizers of this package therefore compute and keep such
state in :func:`compute_dtype` and restore it at that precision on load (:func:`restore_state`).

Example:
    >>> import torch
    >>> compute_dtype(torch.zeros(2, dtype=torch.bfloat16)), compute_dtype(torch.zeros(2, dtype=torch.float64))
    (torch.float32, torch.float64)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from itertools import chain
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

__all__ = ["compute_dtype", "restore_state"]


def compute_dtype(t: Tensor) -> torch.dtype:
    """``float32`` for ``float16`` / ``bfloat16`` tensors, else the tensor's own dtype."""
    return torch.float32 if t.dtype in (torch.float16, torch.bfloat16) else t.dtype


def restore_state(
    opt: Optimizer, state_dict: dict[str, Any], keys: Iterable[str], dtype_of: Callable[[Tensor], torch.dtype]
) -> None:
    """After ``Optimizer.load_state_dict(state_dict)``: reload the state entries named in ``keys``
    from ``state_dict`` at ``dtype_of(param)`` instead of the parameter's dtype torch cast them to
    (the ids of ``state_dict`` map to the parameters by group order, as in torch)."""
    saved_ids = chain.from_iterable(g["params"] for g in state_dict["param_groups"])
    params = chain.from_iterable(g["params"] for g in opt.param_groups)
    keys = tuple(keys)
    for pid, p in zip(saved_ids, params):
        if dtype_of(p) == p.dtype:  # torch's cast is right already
            continue
        saved = state_dict["state"].get(pid, {})
        for key in keys:
            if isinstance(saved.get(key), Tensor):
                opt.state[p][key] = saved[key].to(device=p.device, dtype=dtype_of(p), copy=True)
