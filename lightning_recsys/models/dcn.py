"""DCNv2 (Wang et al., arXiv 2008.13535): a cross network of ``x_{l+1} = x0 * (W x_l + b) + x_l`` layers
(full-rank ``W`` or low-rank ``W = U V^T``) and a deep MLP, stacked (cross, then deep) or parallel
(both on ``x0``, concatenated), with one logit per task.

``x0`` is the concatenation of the pooled sparse embeddings (one ``nn.EmbeddingBag`` per feature, the
same :class:`~lightning_recsys.models.EmbeddingBagCollection` as DLRM, so FIITED and quantization see
standard tables) and the raw dense features. :class:`CrossLayer` is also DHEN's cross module.

Example:
    >>> from lightning_recsys.data import SyntheticCTRDataModule
    >>> from lightning_recsys.models import DCNv2
    >>> dm = SyntheticCTRDataModule(num_train=512, num_val=256, num_test=256, max_rows=100, batch_size=128)
    >>> model = DCNv2.from_spec(dm.feature_spec, embedding_dim=8, cross_rank=(None, 16))
    >>> model(next(iter(dm.train_dataloader()))).shape  # one logit per task
    torch.Size([128, 2])
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from .._validation import check_choice, check_int
from ..data.batch import FeatureSpec, RecsysBatch
from .dlrm import MLP, EmbeddingBagCollection

__all__ = ["CrossLayer", "CrossNetwork", "DCNv2"]


class CrossLayer(nn.Module):
    """One DCNv2 cross layer on ``[..., dim]``: ``x0 * (W x + b) + x`` (``residual=True``) or the cross
    term ``x0 * (W x + b)`` alone (DHEN's cross module, whose layer adds its own shortcut).

    ``rank=None``: full-rank ``W`` (one ``nn.Linear(dim, dim)``); ``rank=r``: ``W = U V^T`` as
    ``nn.Linear(dim, r, bias=False)`` then ``nn.Linear(r, dim)`` (``2 * dim * r`` weights).
    """

    def __init__(self, dim: int, rank: int | None = None, residual: bool = True) -> None:
        super().__init__()
        check_int("cross_rank", rank, low=1, optional=True)
        check_int("dim", dim, low=1)
        self.residual = residual
        self.proj = nn.Linear(dim, dim) if rank is None else nn.Sequential(nn.Linear(dim, rank, bias=False), nn.Linear(rank, dim))

    def forward(self, x0: Tensor, x: Tensor | None = None) -> Tensor:
        x = x0 if x is None else x
        out = x0 * self.proj(x)
        return out + x if self.residual else out


class CrossNetwork(nn.Module):
    """Stacked :class:`CrossLayer` s on ``[B, dim]``; ``ranks`` holds one entry per layer (``None`` = full rank)."""

    def __init__(self, dim: int, ranks: Sequence[int | None]) -> None:
        super().__init__()
        if len(ranks) < 1:
            raise ValueError("cross_rank must name at least one cross layer")
        self.layers = nn.ModuleList([CrossLayer(dim, r) for r in ranks])

    def forward(self, x0: Tensor) -> Tensor:
        x = x0
        for layer in self.layers:
            x = layer(x0, x)
        return x


class DCNv2(nn.Module):
    """DCNv2: embeddings + dense features -> cross network and deep MLP -> one logit per task.

    Args:
        num_dense: dense feature count (fed raw into ``x0``).
        cardinalities: table size per sparse feature.
        embedding_dim: width of every table.
        num_cross_layers: cross layers (used when ``cross_rank`` is a single value).
        cross_rank: ``None`` (full rank), an integer (low rank, every layer) or one entry per layer
            (mixing full-rank and low-rank layers; overrides ``num_cross_layers``).
        deep_mlp: sizes of the deep network (ReLU after every layer).
        structure: ``"stacked"`` (deep MLP on the cross output) or ``"parallel"`` (both on ``x0``).
        num_tasks: logits per sample.
    """

    def __init__(
        self,
        num_dense: int,
        cardinalities: Mapping[str, int],
        embedding_dim: int = 16,
        num_cross_layers: int = 3,
        cross_rank: int | None | Sequence[int | None] = None,
        deep_mlp: Sequence[int] = (64, 32),
        structure: Literal["stacked", "parallel"] = "stacked",
        num_tasks: int = 1,
    ) -> None:
        super().__init__()
        if not cardinalities:
            raise ValueError("cardinalities must name at least one sparse feature")
        check_int("num_tasks", num_tasks, low=1)
        check_choice("structure", structure, ("stacked", "parallel"))
        check_int("num_cross_layers", num_cross_layers, low=1)
        if not deep_mlp:
            raise ValueError("deep_mlp must hold at least one layer size")
        ranks = list(cross_rank) if isinstance(cross_rank, Sequence) else [cross_rank] * num_cross_layers
        self.structure = structure
        self.embeddings = EmbeddingBagCollection(cardinalities, embedding_dim)
        dim = len(cardinalities) * embedding_dim + num_dense
        self.cross = CrossNetwork(dim, ranks)
        self.deep = MLP(dim, deep_mlp, final_activation=True)
        head_in = self.deep.out_features + (dim if structure == "parallel" else 0)
        self.head = nn.Linear(head_in, num_tasks)

    @classmethod
    def from_spec(cls, spec: FeatureSpec, **kwargs) -> DCNv2:
        """Build with table sizes and task count from a data module's :class:`FeatureSpec`."""
        return cls(spec.num_dense, spec.cardinalities, num_tasks=len(spec.tasks), **kwargs)

    def forward(self, batch: RecsysBatch) -> Tensor:
        x0 = torch.cat([self.embeddings(batch.sparse).flatten(1), batch.dense], dim=1)
        crossed = self.cross(x0)
        if self.structure == "stacked":
            return self.head(self.deep(crossed))
        return self.head(torch.cat([crossed, self.deep(x0)], dim=1))
