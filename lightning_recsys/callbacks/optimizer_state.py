"""Carrying an optimizer's per-row state over when a parameter is replaced by one with other rows
(FIITED reallocates a table's pool at every pruning event)."""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from torch import Tensor

__all__ = ["remap_optimizer_state"]


def remap_optimizer_state(optimizer: torch.optim.Optimizer, old: Tensor, new: Tensor, src: Tensor) -> bool:
    """Put ``new`` in place of ``old`` in ``optimizer`` and carry its state over, row ``i`` of every per-row
    state tensor (first dimension = ``old``'s) becoming row ``src[i]``; scalars (``step``) are kept. State
    of any other shape cannot be remapped and is dropped (the parameter restarts fresh). Returns whether
    ``optimizer`` held ``old``."""
    found = False
    for group in optimizer.param_groups:
        for i, p in enumerate(group["params"]):
            if p is old:
                group["params"][i] = new
                found = True
    state = optimizer.state.pop(old, None)
    if not found or not state:
        return found
    remapped: dict[str, Any] = {}
    for key, value in state.items():
        if isinstance(value, Tensor) and value.dim() > 0:
            if value.shape[0] != old.shape[0]:
                rank_zero_warn(f"FIITED: optimizer state {key!r} of shape {tuple(value.shape)} cannot be remapped; dropped")
                return found
            remapped[key] = value[src.to(value.device)]
        else:
            remapped[key] = value
    optimizer.state[new] = remapped
    return found
