"""Lightning callbacks: FIITED (in-training embedding dimension pruning), MultiBalance (multi-task
gradient balancing on the shared representation), QuantizationMonitor (the int8 twin checked beside
fp32 at every validation run)."""

from .fiited import FIITED
from .multibalance import MultiBalance
from .optimizer_state import remap_optimizer_state
from .quant_monitor import DEFAULT_MONITOR_RECIPE, QuantizationBudgetError, QuantizationMonitor

__all__ = [
    "DEFAULT_MONITOR_RECIPE",
    "FIITED",
    "MultiBalance",
    "QuantizationBudgetError",
    "QuantizationMonitor",
    "remap_optimizer_state",
]
