"""README "Your own model": a model written the usual way (one nn.EmbeddingBag per feature, taking
values / offsets) trained through RecsysModule, which passes it the RecsysBatch."""

import lightning.pytorch as pl
import torch
from torch import nn

import lightning_recsys as lrs


class TwoTower(nn.Module):
    def __init__(self, spec: lrs.FeatureSpec, dim: int = 16) -> None:
        super().__init__()
        self.tables = nn.ModuleDict({f: nn.EmbeddingBag(n, dim, mode="sum") for f, n in spec.cardinalities.items()})
        self.mlp = nn.Sequential(nn.Linear(spec.num_dense + dim * len(self.tables), 64), nn.ReLU(), nn.Linear(64, len(spec.tasks)))

    def forward(self, batch: lrs.RecsysBatch) -> torch.Tensor:
        pooled = [t(batch.sparse[f].values, batch.sparse[f].offsets[:-1]) for f, t in self.tables.items()]
        return self.mlp(torch.cat([batch.dense, *pooled], dim=1))


dm = lrs.SyntheticCTRDataModule(num_train=100_000, max_rows=5_000, num_sparse=8)
my_module = TwoTower(dm.feature_spec)
module = lrs.RecsysModule(model=my_module, tasks=["click", "conversion"])
trainer = pl.Trainer(max_epochs=1)
trainer.fit(module, dm)
assert trainer.callback_metrics["val_auc"] > 0.65, trainer.callback_metrics
