"""Distributed training strategies: ``DCTStrategy`` (``Trainer(strategy="dct")``) and its compression pieces.

Importing this package (``import lightning_recsys`` does) registers the strategy names ``"dct"`` and
``"dct_spawn"`` with Lightning's ``StrategyRegistry``.

Example:
    >>> import lightning.pytorch as pl
    >>> import lightning_recsys.strategies
    >>> "dct" in pl.strategies.StrategyRegistry and "dct_spawn" in pl.strategies.StrategyRegistry
    True
"""

from lightning.pytorch.strategies import StrategyRegistry

from .dct import DCTStrategy
from .dp_hook import DCTCommState, dct_comm_hook, sampled_threshold, threshold_compress
from .mp_boundary import BoundaryCodec, boundary_all_to_all

__all__ = [
    "BoundaryCodec",
    "DCTCommState",
    "DCTStrategy",
    "boundary_all_to_all",
    "dct_comm_hook",
    "register_strategies",
    "sampled_threshold",
    "threshold_compress",
]


def register_strategies() -> None:
    """Register ``"dct"`` and ``"dct_spawn"`` (idempotent)."""
    DCTStrategy.register_strategies(StrategyRegistry)


register_strategies()
