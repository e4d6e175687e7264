"""README "MovieLens-100K (real data)": the real ratings, fetched once from the recbole wheel on PyPI."""

import lightning.pytorch as pl
import lightning_recsys as lrs

dm = lrs.data.MovieLens100KDataModule(download=True, batch_size=512, seed=0)
module = lrs.RecsysModule(feature_spec=dm.feature_spec)   # files are read here, on first use
pl.Trainer(max_epochs=3).fit(module, dm)                   # val_auc (like) ~0.77, test ~0.79

assert module.trainer.callback_metrics["val_auc"] > 0.72, module.trainer.callback_metrics
