"""lightning-recsys: industrial recommendation-system training and deployment tricks for Lightning.

Example:
    >>> import lightning_recsys as lrs
    >>> dm = lrs.SyntheticCTRDataModule(num_train=1024, num_val=256, num_test=256, max_rows=100)
    >>> module = lrs.RecsysModule(feature_spec=dm.feature_spec)
"""

from . import distributed, quant, strategies  # importing distributed registers "dct" and "dct_spawn"
from ._validation import ConfigurationError
from .callbacks import FIITED, MultiBalance, QuantizationMonitor
from .data import FeatureSpec, MovieLens100KDataModule, RecsysBatch, SparseFeature, SyntheticCTRDataModule, TabularDataModule
from .embeddings import ChunkedEmbedding, ChunkedEmbeddingBag
from .metrics import NormalizedEntropy
from .models import DLRM, MultiTaskDLRM, RecsysModule
from .optim import CounterSGD, MLorcAdamW, MLorcLion, Muon, module_parameters
from .distributed import DCTStrategy

__version__ = "0.1.0"

__all__ = [
    "DLRM",
    "FIITED",
    "ChunkedEmbedding",
    "ChunkedEmbeddingBag",
    "ConfigurationError",
    "CounterSGD",
    "DCTStrategy",
    "FeatureSpec",
    "MLorcAdamW",
    "MLorcLion",
    "MovieLens100KDataModule",
    "MultiBalance",
    "MultiTaskDLRM",
    "Muon",
    "NormalizedEntropy",
    "QuantizationMonitor",
    "RecsysBatch",
    "RecsysModule",
    "SparseFeature",
    "SyntheticCTRDataModule",
    "TabularDataModule",
    "__version__",
    "distributed",
    "module_parameters",
    "quant",
    "strategies",
]
