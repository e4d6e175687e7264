"""README "MultiBalance": balance the task gradients of a multi-task DLRM on its shared representation."""

import lightning.pytorch as pl

import lightning_recsys as lrs
from lightning_recsys.callbacks import MultiBalance

dm = lrs.SyntheticCTRDataModule(num_train=100_000, max_rows=2_000, num_sparse=8, base_rates=(0.25, 0.01))

trainer = pl.Trainer(max_epochs=1, callbacks=[MultiBalance(relax_factor=0.7, beta=0.9, anchor="max")])
trainer.fit(lrs.RecsysModule(feature_spec=dm.feature_spec, arch="multitask"), dm)

assert "multibalance/weight_conversion" in trainer.callback_metrics, sorted(trainer.callback_metrics)
