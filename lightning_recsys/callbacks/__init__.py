"""Lightning callbacks: FIITED (in-training embedding dimension pruning)."""

from .fiited import FIITED, remap_optimizer_state

__all__ = ["FIITED", "remap_optimizer_state"]
