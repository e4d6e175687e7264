"""Distributed training: ``DCTStrategy`` (``Trainer(strategy="dct")``), its DP comm hook, the table-wise
sharded embedding collection and the boundary codecs of its compressed all-to-all.

Importing this package (``import lightning_recsys`` does) registers the strategy names ``"dct"`` and
``"dct_spawn"`` with Lightning's ``StrategyRegistry``.

Example:
    >>> import lightning.pytorch as pl
    >>> import lightning_recsys.distributed
    >>> "dct" in pl.strategies.StrategyRegistry and "dct_spawn" in pl.strategies.StrategyRegistry
    True
"""

from lightning.pytorch.strategies import StrategyRegistry

from .codecs import CODECS, VALUE_BITS, BoundaryCodec, boundary_all_to_all
from .dct import DCTStrategy
from .dp_hook import DCTCommState, dct_comm_hook, sampled_threshold, threshold_compress, threshold_compress_
from .sharded import (
    ShardedEmbeddingBagCollection,
    ignore_sharded_parameters,
    make_codec,
    plan_placement,
    shard_embeddings,
    unshard_embeddings,
)

__all__ = [
    "CODECS",
    "VALUE_BITS",
    "BoundaryCodec",
    "DCTCommState",
    "DCTStrategy",
    "ShardedEmbeddingBagCollection",
    "boundary_all_to_all",
    "dct_comm_hook",
    "ignore_sharded_parameters",
    "make_codec",
    "plan_placement",
    "register_strategies",
    "sampled_threshold",
    "shard_embeddings",
    "threshold_compress",
    "threshold_compress_",
    "unshard_embeddings",
]


def register_strategies() -> None:
    """Register ``"dct"`` and ``"dct_spawn"`` (idempotent)."""
    DCTStrategy.register_strategies(StrategyRegistry)


register_strategies()
