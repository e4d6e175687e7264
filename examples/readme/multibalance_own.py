"""README "MultiBalance", your own LightningModule: name the shared representation, store the task losses."""

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn

import lightning_recsys as lrs
from lightning_recsys.callbacks import MultiBalance


class ClickBuy(pl.LightningModule):
    def __init__(self, num_dense: int) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(num_dense, 32), nn.ReLU())
        self.heads = nn.ModuleDict({"click": nn.Linear(32, 1), "buy": nn.Linear(32, 1)})
        self.shared_representation = "encoder"               # in __init__: the submodule whose output the heads use

    def training_step(self, batch: lrs.RecsysBatch, batch_idx: int) -> torch.Tensor:
        z = self.encoder(batch.dense)
        l_click = F.binary_cross_entropy_with_logits(self.heads["click"](z)[:, 0], batch.labels["click"])
        l_buy = F.binary_cross_entropy_with_logits(self.heads["buy"](z)[:, 0], batch.labels["conversion"])
        self.task_losses = {"click": l_click, "buy": l_buy}  # in training_step, then return your total loss
        return l_click + l_buy

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=3e-3)


dm = lrs.SyntheticCTRDataModule(num_train=60_000, max_rows=2_000, num_sparse=4)
mb = MultiBalance(relax_factor=0.7)
trainer = pl.Trainer(max_epochs=1, callbacks=[mb])
trainer.fit(ClickBuy(dm.feature_spec.num_dense), train_dataloaders=dm.train_dataloader())
assert set(mb.tasks) == {"click", "buy"}, mb.tasks
