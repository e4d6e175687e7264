"""Every touch of private Lightning / torch API, each behind a small named function or alias.

Checked against lightning 2.6.6 and torch 2.13.0. When either is upgraded, re-check each entry:

- :data:`StrategyRegistryType`: ``lightning.fabric.strategies._StrategyRegistry``, the type of the
  registry that Lightning passes to ``Strategy.register_strategies`` (the public ``StrategyRegistry`` is
  an instance of it); needed to type that override.
- :data:`PathLike`: ``lightning.fabric.utilities.types._PATH``, the path type of
  ``Strategy.save_checkpoint`` / ``load_checkpoint``; needed to type those overrides.
- :func:`ddp_ignore_parameters`: ``DistributedDataParallel._set_params_and_buffers_to_ignore_for_model``,
  the only way to make DDP skip parameters (the sharded embedding tables, which live on one rank each and
  must not be all-reduced); it sets ``module._ddp_params_and_buffers_to_ignore``, read when DDP wraps it.

No longer touched: ``DDPStrategy._register_ddp_hooks`` (``DCTStrategy`` overrides the public
``configure_ddp`` instead, whose private callee registers nothing when no ``ddp_comm_hook`` is given).
"""

from __future__ import annotations

from collections.abc import Sequence

from lightning.fabric.strategies import _StrategyRegistry
from lightning.fabric.utilities.types import _PATH
from torch import nn
from torch.nn.parallel import DistributedDataParallel

__all__ = ["PathLike", "StrategyRegistryType", "ddp_ignore_parameters"]

StrategyRegistryType = _StrategyRegistry
PathLike = _PATH


def ddp_ignore_parameters(module: nn.Module, names: Sequence[str]) -> None:
    """Make a later ``DistributedDataParallel(module)`` skip the parameters and buffers ``names``
    (qualified names; an empty list clears the setting)."""
    DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(module, list(names))
