"""DLRM-style reference models: embedding bags, bottom MLP, dot interaction, top MLP (or task towers).

Example:
    >>> from lightning_recsys.data import SyntheticCTRDataModule
    >>> from lightning_recsys.models import DLRM
    >>> dm = SyntheticCTRDataModule(num_train=512, num_val=256, num_test=256, max_rows=100, batch_size=128)
    >>> model = DLRM.from_spec(dm.feature_spec, embedding_dim=8)
    >>> model(next(iter(dm.train_dataloader()))).shape  # one logit per task
    torch.Size([128, 2])
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from .._validation import check_int
from ..data.batch import FeatureSpec, RecsysBatch
from ..embeddings.collection import EmbeddingBagCollection

__all__ = ["MLP", "EmbeddingBagCollection", "DotInteraction", "DLRMBackbone", "DLRM", "MultiTaskDLRM"]


class MLP(nn.Sequential):
    """``Linear -> ReLU`` layers; the last layer has no activation unless ``final_activation``."""

    def __init__(self, in_features: int, sizes: Sequence[int], final_activation: bool = False) -> None:
        if not sizes:
            raise ValueError("MLP needs at least one layer size")
        layers: list[nn.Module] = []
        for i, out in enumerate(sizes):
            layers.append(nn.Linear(in_features, int(out)))
            if i < len(sizes) - 1 or final_activation:
                layers.append(nn.ReLU())
            in_features = int(out)
        super().__init__(*layers)
        self.out_features = in_features


class DotInteraction(nn.Module):
    """DLRM's pairwise dot products between the dense vector and every pooled embedding.

    Output: ``cat([dense_vec, lower-triangle of (T T^T)])`` where ``T = [dense_vec; embeddings]``; the
    lower triangle is read from the flattened products with one ``index_select`` (a third of the time of
    indexing ``[B, n, n]`` with row and column indices).

    Example:
        >>> inter = DotInteraction(3)                      # a dense vector and 2 embeddings
        >>> x, e = torch.ones(4, 8), torch.ones(4, 2, 8)
        >>> inter(x, e).shape                              # 8 dense columns + 3 pairs
        torch.Size([4, 11])
    """

    def __init__(self, num_vectors: int, include_dense: bool = True) -> None:
        super().__init__()
        rows, cols = torch.tril_indices(num_vectors, num_vectors, offset=-1)
        self.register_buffer("rows", rows, persistent=False)
        self.register_buffer("cols", cols, persistent=False)
        self.register_buffer("pairs", rows * num_vectors + cols, persistent=False)
        self.num_vectors = num_vectors
        self.include_dense = include_dense

    def output_dim(self, embedding_dim: int) -> int:
        return int(self.rows.numel()) + (embedding_dim if self.include_dense else 0)

    def product_index(self, dim: int | None) -> Tensor:
        """Position of every output column in ``[x (dim), E x (F), flat(E E^T) (F*F)]``, ``F`` embeddings
        (``dim=None``, no dense vector: in ``flat(E E^T)`` of all ``num_vectors``)."""
        if dim is None:
            return self.pairs
        f = self.num_vectors - 1
        r, c = self.rows - 1, self.cols - 1  # embedding indices; c == -1 is the dense vector
        pair = torch.where(c < 0, dim + r, dim + f + r * f + c.clamp(min=0))
        head = torch.arange(dim if self.include_dense else 0, device=pair.device)
        return torch.cat([head, pair])

    def forward(self, dense_vec: Tensor | None, embeddings: Tensor) -> Tensor:
        t = embeddings if dense_vec is None else torch.cat([dense_vec.unsqueeze(1), embeddings], dim=1)
        z = torch.bmm(t, t.transpose(1, 2)).flatten(1).index_select(1, self.pairs)
        if dense_vec is None or not self.include_dense:
            return z
        return torch.cat([dense_vec, z], dim=1)


class DLRMBackbone(nn.Module):
    """Embeddings + bottom MLP + dot interaction (+ optional extra MLP): the shared part of a DLRM."""

    def __init__(
        self,
        num_dense: int,
        cardinalities: Mapping[str, int],
        embedding_dim: int = 16,
        bottom_mlp: Sequence[int] = (64,),
        shared_mlp: Sequence[int] = (),
    ) -> None:
        super().__init__()
        if not cardinalities:
            raise ValueError("cardinalities must name at least one sparse feature")
        self.num_dense = num_dense
        self.embeddings = EmbeddingBagCollection(cardinalities, embedding_dim)
        self.bottom_mlp = (
            MLP(num_dense, [*bottom_mlp, embedding_dim], final_activation=True) if num_dense > 0 else None
        )
        n_vec = len(cardinalities) + (1 if num_dense > 0 else 0)
        self.interaction = DotInteraction(n_vec, include_dense=num_dense > 0)
        out = self.interaction.output_dim(embedding_dim)
        self.shared_mlp = MLP(out, shared_mlp, final_activation=True) if shared_mlp else None
        self.out_features = self.shared_mlp.out_features if self.shared_mlp is not None else out

    def forward(self, batch: RecsysBatch) -> Tensor:
        emb = self.embeddings(batch.sparse)
        dense_vec = self.bottom_mlp(batch.dense) if self.bottom_mlp is not None else None
        z = self.interaction(dense_vec, emb)
        return self.shared_mlp(z) if self.shared_mlp is not None else z


class DLRM(nn.Module):
    """DLRM: bottom MLP on dense features, one ``EmbeddingBag`` per sparse feature, dot interaction,
    top MLP with one logit per task. ``forward(batch) -> logits [B, num_tasks]``."""

    def __init__(
        self,
        num_dense: int,
        cardinalities: Mapping[str, int],
        embedding_dim: int = 16,
        bottom_mlp: Sequence[int] = (64,),
        top_mlp: Sequence[int] = (64, 32),
        num_tasks: int = 1,
    ) -> None:
        super().__init__()
        check_int("num_tasks", num_tasks, low=1)
        self.backbone = DLRMBackbone(num_dense, cardinalities, embedding_dim, bottom_mlp)
        self.top_mlp = MLP(self.backbone.out_features, [*top_mlp, num_tasks])

    @classmethod
    def from_spec(cls, spec: FeatureSpec, **kwargs) -> DLRM:
        """Build with table sizes and task count from a data module's :class:`FeatureSpec`."""
        return cls(spec.num_dense, spec.cardinalities, num_tasks=len(spec.tasks), **kwargs)

    @property
    def embeddings(self) -> EmbeddingBagCollection:
        return self.backbone.embeddings

    def forward(self, batch: RecsysBatch) -> Tensor:
        return self.top_mlp(self.backbone(batch))


class MultiTaskDLRM(nn.Module):
    """Shared-bottom multi-task DLRM: ``shared`` (a :class:`DLRMBackbone`) produces the shared
    representation ``Z`` [B, H]; one tower per task maps ``Z`` to that task's logit.

    ``forward(batch) -> logits [B, num_tasks]`` in the order of ``tasks``.
    """

    def __init__(
        self,
        num_dense: int,
        cardinalities: Mapping[str, int],
        tasks: Sequence[str],
        embedding_dim: int = 16,
        bottom_mlp: Sequence[int] = (64,),
        shared_mlp: Sequence[int] = (64,),
        tower_mlp: Sequence[int] = (32,),
    ) -> None:
        super().__init__()
        if not tasks:
            raise ValueError("tasks must name at least one task")
        self.tasks = list(tasks)
        self.shared = DLRMBackbone(num_dense, cardinalities, embedding_dim, bottom_mlp, shared_mlp)
        self.towers = nn.ModuleDict({t: MLP(self.shared.out_features, [*tower_mlp, 1]) for t in self.tasks})

    @classmethod
    def from_spec(cls, spec: FeatureSpec, **kwargs) -> MultiTaskDLRM:
        return cls(spec.num_dense, spec.cardinalities, spec.tasks, **kwargs)

    @property
    def embeddings(self) -> EmbeddingBagCollection:
        return self.shared.embeddings

    def forward(self, batch: RecsysBatch) -> Tensor:
        z = self.shared(batch)
        return torch.cat([self.towers[t](z) for t in self.tasks], dim=1)
