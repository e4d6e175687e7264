"""Plain (unsharded) embedding collection: one sum-pooled ``nn.EmbeddingBag`` per sparse feature.

Its table-wise sharded twin is :class:`~lightning_recsys.distributed.sharded.ShardedEmbeddingBagCollection`.

Example:
    >>> from lightning_recsys.data.batch import SparseFeature
    >>> ebc = EmbeddingBagCollection({"user": 10, "item": 20}, embedding_dim=4)
    >>> ids = SparseFeature.from_lists([[1, 2], [3]])
    >>> ebc({"user": ids, "item": ids}).shape
    torch.Size([2, 2, 4])
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from ..data.batch import SparseFeature

__all__ = ["EmbeddingBagCollection"]


class EmbeddingBagCollection(nn.Module):
    """One sum-pooled ``nn.EmbeddingBag`` per sparse feature; output ``[B, num_features, dim]``.

    ``tables`` is an ``nn.ModuleDict`` keyed by feature name, so FIITED, quantization and sharding
    can swap single tables. Any module with ``EmbeddingBag``'s ``forward(input, offsets,
    per_sample_weights)`` signature works as a table.
    """

    def __init__(self, cardinalities: Mapping[str, int], embedding_dim: int) -> None:
        super().__init__()
        if embedding_dim < 1:
            raise ValueError(f"embedding_dim must be >= 1, got {embedding_dim}")
        self.embedding_dim = embedding_dim
        self.tables = nn.ModuleDict(
            {name: nn.EmbeddingBag(int(n), embedding_dim, mode="sum") for name, n in cardinalities.items()}
        )
        for t in self.tables.values():
            # DLRM's initialisation: uniform(+-1/sqrt(n)) keeps the initial dot products small
            nn.init.uniform_(t.weight, -(t.num_embeddings**-0.5), t.num_embeddings**-0.5)

    @property
    def feature_names(self) -> list[str]:
        return list(self.tables.keys())

    def forward(self, sparse: Mapping[str, SparseFeature]) -> Tensor:
        pooled = []
        for name, table in self.tables.items():
            if name not in sparse:
                raise KeyError(f"batch has no sparse feature {name!r}; it has {sorted(sparse)}")
            f = sparse[name]
            pooled.append(table(f.values, f.offsets[:-1], per_sample_weights=f.weights))
        return torch.stack(pooled, dim=1)
