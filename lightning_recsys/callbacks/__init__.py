"""Lightning callbacks: FIITED (in-training embedding dimension pruning), MultiBalance (multi-task
gradient balancing on the shared representation)."""

from .fiited import FIITED, remap_optimizer_state
from .multibalance import MultiBalance

__all__ = ["FIITED", "MultiBalance", "remap_optimizer_state"]
