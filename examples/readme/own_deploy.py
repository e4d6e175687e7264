"""README "Your own LightningModule, from training to deployment": a CTR model written the usual way
(``forward(dense, ids, offsets)``, tuple batches, its own data module) trained, quantized to int8,
exported to ONNX and scored in its own call form."""

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset


class Bags(Dataset):
    """Rows of (dense [3], ids of a bag of 0-3 items, click), the click planted from the items."""

    def __init__(self, n, seed):
        g = torch.Generator().manual_seed(seed)
        self.dense = torch.randn(n, 3, generator=g)
        self.lengths = torch.randint(0, 4, (n,), generator=g)
        self.ids = [torch.randint(0, 500, (int(k),), generator=g) for k in self.lengths]
        effect = torch.randn(500, generator=torch.Generator().manual_seed(7))
        logit = torch.stack([effect[i].sum() for i in self.ids]) + self.dense[:, 0]
        self.click = torch.bernoulli(torch.sigmoid(logit), generator=g)

    def __len__(self):
        return len(self.click)

    def __getitem__(self, i):
        return self.dense[i], self.ids[i], self.click[i]


def collate(rows):
    dense, ids, click = zip(*rows)
    offsets = torch.tensor([0] + [len(i) for i in ids[:-1]]).cumsum(0)
    return torch.stack(dense), torch.cat(ids), offsets, torch.stack(click)


class CTRData(pl.LightningDataModule):
    def __init__(self, batch_size: int = 256):
        super().__init__()
        self.batch_size = batch_size

    def setup(self, stage=None):
        self.train, self.val = Bags(20_000, 0), Bags(8_192, 1)

    def train_dataloader(self):
        return DataLoader(self.train, batch_size=self.batch_size, shuffle=True, collate_fn=collate)

    def val_dataloader(self):
        return DataLoader(self.val, batch_size=self.batch_size, collate_fn=collate)


class CTR(pl.LightningModule):
    def __init__(self, rows: int = 500, dim: int = 16):
        super().__init__()
        self.save_hyperparameters()
        self.items = nn.EmbeddingBag(rows, dim, mode="mean")
        self.mlp = nn.Sequential(nn.Linear(dim + 3, 32), nn.ReLU(), nn.Linear(32, 1))

    def forward(self, dense, ids, offsets):
        return self.mlp(torch.cat([dense, self.items(ids, offsets)], 1))[:, 0]

    def training_step(self, batch, batch_idx):
        dense, ids, offsets, click = batch
        loss = F.binary_cross_entropy_with_logits(self(dense, ids, offsets), click)
        self.log("train_loss", loss, batch_size=len(click))
        return loss

    def validation_step(self, batch, batch_idx):
        dense, ids, offsets, click = batch
        self.log("val_loss", F.binary_cross_entropy_with_logits(self(dense, ids, offsets), click), batch_size=len(click))

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-2)


if __name__ == "__main__":
    from lightning_recsys.quant import load, quantize_checkpoint

    trainer = pl.Trainer(max_epochs=1, log_every_n_steps=10)
    trainer.fit(CTR(), CTRData())
    trainer.save_checkpoint("ctr.ckpt")

    report = quantize_checkpoint("ctr.ckpt", "art", module_class=CTR, datamodule=CTRData())  # lrs quantize ctr.ckpt --out art --module-class mymod.CTR --data data.yaml
    dense, ids, offsets, click = collate([Bags(100, 5)[i] for i in range(100)])
    logits = load("art")(dense, ids, offsets)            # the model's own call form, run by ONNX Runtime
    # format="torch" (--format torch): a torch.export program; load("art") then needs no CTR class to score

    print(report["evaluation"], logits.shape)
    assert logits.shape[0] == 100 and report["evaluation"]["auc_quant"] > 0.7
