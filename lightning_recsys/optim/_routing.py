"""Which parameters are embedding tables, norms or hidden matrices: routing by module type and name.

Embedding tables are 2-D like hidden ``nn.Linear`` weights, so shape alone cannot tell them apart.
The optimizers of this package therefore route by the *owning module's type* (and optional name
regexes). They learn the module in one of three ways:

* ``Optimizer.from_module(model, ...)``;
* ``Optimizer(model, ...)`` (an ``nn.Module`` in place of ``params``);
* ``Optimizer(module_parameters(model), ...)``: a plain list of the module's parameters that also
  carries the module. Any torch optimizer treats it as the ordinary parameter list, so a
  ``configure_optimizers`` that passes it works for every optimizer, which is how a LightningCLI
  YAML recipe (where the optimizer is built by ``optimizer(params)``) reaches the routing.

Example:
    >>> from torch import nn
    >>> model = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 4))
    >>> params = module_parameters(model)
    >>> len(params), params.module is model
    (3, True)
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import Tensor, nn

from ..embeddings.chunked import ChunkedEmbeddingBase

__all__ = ["ModuleParameters", "module_parameters", "EMBEDDING_TYPES"]

#: Module types whose weights are lookup tables (rows updated only when their id is present).
EMBEDDING_TYPES: tuple[type[nn.Module], ...] = (nn.Embedding, nn.EmbeddingBag, ChunkedEmbeddingBase)


class ModuleParameters(list):
    """``list(module.parameters())`` that also remembers ``module`` (see the module docstring)."""

    def __init__(self, module: nn.Module) -> None:
        if not isinstance(module, nn.Module):
            raise TypeError(f"module must be an nn.Module, got {type(module).__name__}")
        super().__init__(module.parameters())
        self.module = module


def module_parameters(module: nn.Module) -> ModuleParameters:
    """The module's parameters as a list carrying ``.module``, for optimizers that route by module type."""
    return ModuleParameters(module)


def module_of(params: Any) -> nn.Module | None:
    """The module behind ``params`` (an ``nn.Module`` or a :class:`ModuleParameters`), else ``None``."""
    if isinstance(params, nn.Module):
        return params
    if isinstance(params, ModuleParameters):
        return params.module
    return None


def owned_parameters(module: nn.Module) -> Iterator[tuple[str, Tensor, nn.Module]]:
    """``(qualified name, parameter, owning module)`` for each distinct parameter (shared ones once)."""
    seen: set[int] = set()
    for mod_name, mod in module.named_modules():
        for p_name, p in mod.named_parameters(recurse=False):
            if id(p) in seen:
                continue
            seen.add(id(p))
            yield (f"{mod_name}.{p_name}" if mod_name else p_name), p, mod


def group_tensors(param_group: dict[str, Any]) -> list[Tensor]:
    """The tensors of ``param_group``; its ``params`` becomes a list in place (an iterator is read once).

    A set is left as is for ``Optimizer.add_param_group`` to refuse with torch's own error."""
    params = param_group["params"]
    if isinstance(params, Tensor):
        params = [params]
    elif not isinstance(params, set):
        params = list(params)
    param_group["params"] = params
    return [p[1] if isinstance(p, tuple) else p for p in params]  # (name, tensor) pairs are named params


def check_real(params: Iterable[Tensor], optimizer: str) -> None:
    """Clear errors for parameter kinds none of our optimizers handle."""
    for p in params:
        if not isinstance(p, Tensor):
            raise TypeError(f"{optimizer} params must be tensors, got {type(p).__name__}")
        if torch.is_complex(p):
            raise ValueError(f"{optimizer} does not support complex parameters (got dtype {p.dtype})")
        if not p.is_floating_point():
            raise ValueError(f"{optimizer} needs floating-point parameters, got dtype {p.dtype}")
