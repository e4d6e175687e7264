"""Reference recsys models and the LightningModule that trains them."""

from .dlrm import DLRM, MLP, DLRMBackbone, DotInteraction, EmbeddingBagCollection, MultiTaskDLRM
from .module import RecsysModule

__all__ = ["DLRM", "MLP", "DLRMBackbone", "DotInteraction", "EmbeddingBagCollection", "MultiTaskDLRM", "RecsysModule"]
