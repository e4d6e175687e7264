"""Copying a LightningModule mid-training (the QuantizationMonitor's int8 twin)."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

__all__ = ["detached_copy"]


def detached_copy(module: nn.Module) -> nn.Module:
    """``deepcopy(module)``, with tensors that are not graph leaves (e.g. a loss kept as an attribute,
    which ``deepcopy`` refuses) copied detached."""
    memo: dict[int, Any] = {}

    def visit(value: Any, depth: int) -> None:
        if isinstance(value, Tensor):
            if not value.is_leaf:
                memo[id(value)] = value.detach().clone()
        elif depth < 3 and isinstance(value, Mapping):
            for v in value.values():
                visit(v, depth + 1)
        elif depth < 3 and isinstance(value, (list, tuple)):
            for v in value:
                visit(v, depth + 1)

    for m in module.modules():
        for v in vars(m).values():
            visit(v, 0)
    return copy.deepcopy(module, memo)
