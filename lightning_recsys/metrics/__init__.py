"""Recsys metrics. AUC comes from ``torchmetrics.classification.BinaryAUROC``."""

from .ne import NormalizedEntropy

__all__ = ["NormalizedEntropy"]
