"""README "Use it in your project": train the reference DLRM on synthetic Criteo-like data, then test it."""

import lightning.pytorch as pl
import lightning_recsys as lrs

dm = lrs.SyntheticCTRDataModule(num_train=200_000, max_rows=20_000)   # or MovieLens100KDataModule
module = lrs.RecsysModule(feature_spec=dm.feature_spec, arch="dlrm")     # or arch="multitask"
trainer = pl.Trainer(max_epochs=1)   # one pass over fresh rows, as CTR models train
trainer.fit(module, dm)
trainer.test(module, dm)          # logs test_auc / test_ne (main task) and test_auc_<task> / test_ne_<task>

assert trainer.callback_metrics["test_auc"] > 0.7, trainer.callback_metrics
