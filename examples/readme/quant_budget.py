"""README "Quantize to an accuracy budget" from Python: search_plan and its report."""

import lightning.pytorch as pl

import lightning_recsys as lrs
from lightning_recsys.quant import search_plan, write_plan_report

dm = lrs.SyntheticCTRDataModule(num_train=100_000, num_val=40_000, max_rows=5_000, batch_size=1024)
module = lrs.RecsysModule(feature_spec=dm.feature_spec)
pl.Trainer(max_epochs=1).fit(module, dm)
model = module.model

res = search_plan(model, dm.train_dataloader(), dm.val_dataloader(), budget_ne=0.001)  # a FRACTION: 0.1%
print(res.met, res.plan, res.int8_bytes_fraction)
write_plan_report(res, "report/")
quantized = res.model            # the evaluated model; res.recipe rebuilds it with quantize_()

print(res.message)
assert (res.met and res.confirm["ne_rel_delta"] <= 0.001) or not res.met
