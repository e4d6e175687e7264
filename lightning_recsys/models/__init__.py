"""Reference recsys models (DLRM, multi-task DLRM, DHEN, DCNv2) and the LightningModule that trains them."""

from .dcn import DCNv2, CrossLayer, CrossNetwork
from .dhen import DHEN, DHENLayer, INTERACTIONS, SlotLinear
from .dlrm import DLRM, MLP, DLRMBackbone, DotInteraction, EmbeddingBagCollection, MultiTaskDLRM
from .module import RecsysModule

__all__ = [
    "CrossLayer",
    "CrossNetwork",
    "DCNv2",
    "DHEN",
    "DHENLayer",
    "DLRM",
    "DLRMBackbone",
    "DotInteraction",
    "EmbeddingBagCollection",
    "INTERACTIONS",
    "MLP",
    "MultiTaskDLRM",
    "RecsysModule",
    "SlotLinear",
]
