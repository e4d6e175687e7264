"""lightning-recsys: industrial recommendation-system training and deployment tricks for Lightning.

Example:
    >>> import lightning_recsys as lrs
    >>> dm = lrs.SyntheticCTRDataModule(num_train=1024, num_val=256, num_test=256, max_rows=100)
    >>> module = lrs.RecsysModule(feature_spec=dm.feature_spec)
"""

from .data import FeatureSpec, RecsysBatch, SparseFeature, SyntheticCTRDataModule
from .metrics import NormalizedEntropy
from .models import DLRM, MultiTaskDLRM, RecsysModule

__version__ = "0.1.0"

__all__ = [
    "DLRM",
    "FeatureSpec",
    "MultiTaskDLRM",
    "NormalizedEntropy",
    "RecsysBatch",
    "RecsysModule",
    "SparseFeature",
    "SyntheticCTRDataModule",
    "__version__",
]
