"""Normalized entropy (NE): log loss divided by the entropy of the empirical positive rate.

NE < 1 means the model beats always predicting the base rate; lower is better. Sums are kept as
metric states with ``dist_reduce_fx="sum"`` so the value is exact under DDP.

Example:
    >>> import torch
    >>> from lightning_recsys.metrics import NormalizedEntropy
    >>> ne = NormalizedEntropy()
    >>> ne.update(torch.tensor([2.0, -1.0, 0.5]), torch.tensor([1.0, 0.0, 1.0]))
    >>> round(float(ne.compute()), 4)
    0.4823
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import Metric

__all__ = ["NormalizedEntropy"]


class NormalizedEntropy(Metric):
    """Normalized entropy of binary predictions.

    Args:
        from_logits: ``True`` (default) when ``preds`` are logits, ``False`` for probabilities.
        eps: probabilities are clamped to ``[eps, 1 - eps]`` when ``from_logits`` is ``False``.

    ``compute()`` returns NaN when the targets seen so far are all 0 or all 1 (zero base entropy).
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    def __init__(self, from_logits: bool = True, eps: float = 1e-7, **kwargs) -> None:
        super().__init__(**kwargs)
        if not 0 < eps < 0.5:
            raise ValueError(f"eps must lie in (0, 0.5), got {eps}")
        self.from_logits = from_logits
        self.eps = eps
        self.add_state("log_loss", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("positives", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, preds: Tensor, target: Tensor) -> None:
        preds = preds.reshape(-1)
        target = target.reshape(-1)
        if preds.shape != target.shape:
            raise ValueError(f"preds and target must have the same number of elements, got {preds.numel()} and {target.numel()}")
        if not preds.is_floating_point():
            raise TypeError(f"preds must be floating point, got {preds.dtype}")
        target = target.to(torch.float64)
        if target.numel() and bool(((target != 0) & (target != 1)).any()):
            raise ValueError("target must contain only 0 and 1")
        preds = preds.to(torch.float64)
        if self.from_logits:
            loss = F.binary_cross_entropy_with_logits(preds, target, reduction="sum")
        else:
            if preds.numel() and bool(((preds < 0) | (preds > 1)).any()):
                raise ValueError("preds must be probabilities in [0, 1] when from_logits=False")
            loss = F.binary_cross_entropy(preds.clamp(self.eps, 1 - self.eps), target, reduction="sum")
        self.log_loss += loss
        self.positives += target.sum()
        self.count += target.numel()

    def compute(self) -> Tensor:
        if self.count == 0:
            return torch.tensor(math.nan)
        p = self.positives / self.count
        if p <= 0 or p >= 1:
            return torch.tensor(math.nan)
        base = -(p * torch.log(p) + (1 - p) * torch.log1p(-p))
        return (self.log_loss / self.count / base).float()
