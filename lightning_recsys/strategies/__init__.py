"""Former home of the distributed strategy, kept as a re-export of :mod:`lightning_recsys.distributed`
(YAML configs name ``lightning_recsys.strategies.DCTStrategy``). Importing it registers ``"dct"`` and
``"dct_spawn"``, as importing :mod:`lightning_recsys.distributed` does."""

from ..distributed import (
    BoundaryCodec,
    DCTCommState,
    DCTStrategy,
    boundary_all_to_all,
    dct_comm_hook,
    register_strategies,
    sampled_threshold,
    threshold_compress,
)

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
