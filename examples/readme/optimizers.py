"""README "Optimizers": the three optimizers on a plain model, and Muon through RecsysModule."""

from functools import partial

import lightning.pytorch as pl
from torch import nn

import lightning_recsys as lrs
from lightning_recsys.optim import CounterSGD, MLorcAdamW, Muon

dm = lrs.SyntheticCTRDataModule(num_train=120_000, max_rows=5_000, num_sparse=8)
model = lrs.models.DLRM.from_spec(dm.feature_spec, embedding_dim=16)

opt = Muon.from_module(model, lr=0.02, adamw_lr=3e-3)   # hidden nn.Linear weights -> torch.optim.Muon;
                                                         # embeddings, biases, norms, output layers -> AdamW
opt = MLorcAdamW.from_module(model, lr=1e-3, rank=4)     # Adam moments of 2-D weights as rank-4 factors
table = nn.EmbeddingBag(10**6, 16, sparse=True)
opt = CounterSGD(table.parameters(), lr=300.0)           # w_r -= lr / sqrt(count_r) * g_r, one counter per row
module = lrs.RecsysModule(feature_spec=dm.feature_spec, optimizer=partial(Muon, lr=0.02, adamw_lr=3e-3))

trainer = pl.Trainer(max_epochs=1)
trainer.fit(module, dm)
assert trainer.callback_metrics["val_auc"] > 0.6, trainer.callback_metrics
