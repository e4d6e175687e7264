"""README "QuantizationMonitor": watch the int8 twin at every validation run."""

import lightning.pytorch as pl

import lightning_recsys as lrs
from lightning_recsys import QuantizationMonitor

datamodule = lrs.SyntheticCTRDataModule(num_train=120_000, num_val=8_192, max_rows=5_000, batch_size=512)
module = lrs.RecsysModule(feature_spec=datamodule.feature_spec)

monitor = QuantizationMonitor(budget_ne=0.01, budget_auc=0.005, out_of_range_rate=0.01,
                              on_violation="recalibrate")    # or "warn" / "raise"
trainer = pl.Trainer(max_epochs=1, callbacks=[monitor], val_check_interval=100)
trainer.fit(module, datamodule)
monitor.history[-1]   # figures, violations, action, after-recalibration figures

print(monitor.history[-1])
assert len(monitor.history) == 2 and "delta_ne" in monitor.history[-1]
