"""QuantizationMonitor on a LightningModule written the usual way: forward(dense, ids, offsets), tuple batches."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from lightning_recsys.callbacks import QuantizationMonitor


def _batches(n: int, seed: int, b: int = 128) -> list[tuple]:
    g = torch.Generator().manual_seed(seed)
    effect = torch.randn(100, generator=torch.Generator().manual_seed(3))
    out = []
    for _ in range(n):
        lengths = torch.randint(1, 4, (b,), generator=g)
        offsets = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)[:-1]])
        ids = torch.randint(0, 100, (int(lengths.sum()),), generator=g)
        dense = torch.randn(b, 3, generator=g)
        pooled = torch.nn.functional.embedding_bag(ids, effect[:, None], offsets, mode="sum")[:, 0]
        click = torch.bernoulli(torch.sigmoid(pooled + dense[:, 0]), generator=g)
        out.append((dense, ids, offsets, click))
    return out


class UserCTR(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.bag = nn.EmbeddingBag(100, 8, mode="sum")
        self.mlp = nn.Sequential(nn.Linear(11, 16), nn.ReLU(), nn.Linear(16, 1))

    def forward(self, dense, ids, offsets):
        return self.mlp(torch.cat([dense, self.bag(ids, offsets)], 1))[:, 0]

    def training_step(self, batch, batch_idx):
        dense, ids, offsets, click = batch
        return F.binary_cross_entropy_with_logits(self(dense, ids, offsets), click)

    def validation_step(self, batch, batch_idx):
        dense, ids, offsets, click = batch
        self.log("val_loss", F.binary_cross_entropy_with_logits(self(dense, ids, offsets), click), batch_size=len(click))

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-2)


def _fit(monitor: QuantizationMonitor) -> None:
    loader = lambda seed: DataLoader(_batches(6, seed), batch_size=None)  # noqa: E731
    trainer = pl.Trainer(max_epochs=2, callbacks=[monitor], logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)  # fmt: skip
    trainer.fit(UserCTR(), loader(0), loader(1))


def test_monitor_calls_a_tuple_batch_model_without_forward_fn():
    monitor = QuantizationMonitor(calib_batches=2, on_violation="warn")
    _fit(monitor)
    assert len(monitor.history) == 2 and monitor.history[-1]["delta_ne"] < 0.05


def test_non_binary_labels_name_label_key():
    with pytest.raises(ValueError, match=r"labels that are not 0/1.*label_key=0.*point label_key="):
        _fit(QuantizationMonitor(calib_batches=2, label_key=0))  # the dense features, not the clicks


class Towers(UserCTR):
    """One tower per task, ``forward -> {"click": [B], "buy": [B]}``, labels ``[B, 2]`` in the same order; no
    ``tasks`` attribute."""

    def __init__(self) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(11, 16), nn.ReLU())
        self.towers = nn.ModuleDict({"click": nn.Linear(16, 1), "buy": nn.Linear(16, 1)})

    def forward(self, dense, ids, offsets):
        h = self.mlp(torch.cat([dense, self.bag(ids, offsets)], 1))
        return {task: tower(h)[:, 0] for task, tower in self.towers.items()}

    def _loss(self, batch):
        dense, ids, offsets, labels = batch
        out = self(dense, ids, offsets)
        return sum(F.binary_cross_entropy_with_logits(out[t], labels[:, i]) for i, t in enumerate(out))

    def training_step(self, batch, batch_idx):
        return self._loss(batch)

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", self._loss(batch), batch_size=len(batch[0]))


def test_towers_per_task_are_monitored_by_task_name():
    """task="buy" reads the "buy" tower and the label column at its position among the output's keys."""
    def two_labels(seed):
        return [(d, i, o, torch.stack([c, c * (d[:, 1] > 0.5).float()], 1)) for d, i, o, c in _batches(6, seed)]

    monitor = QuantizationMonitor(calib_batches=2, on_violation="warn", task="buy")
    trainer = pl.Trainer(max_epochs=1, callbacks=[monitor], logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)  # fmt: skip
    val = two_labels(1)
    trainer.fit(Towers(), DataLoader(two_labels(0), batch_size=None), DataLoader(val, batch_size=None))
    seen = torch.cat([y[:, 1] for *_, y in val])
    assert monitor.history[-1]["label_rate"] == pytest.approx(float(seen.mean()), abs=1e-6)
    assert float(seen.mean()) < float(torch.cat([y[:, 0] for *_, y in val]).mean())  # the buy column, not click
