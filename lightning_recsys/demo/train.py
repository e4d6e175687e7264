"""Demo step 0: train the reference DLRM (hybrid Muon) on synthetic Criteo-like data, keep the best
checkpoint by validation AUC and evaluate it on held-out test rows against the planted model."""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint

from ..data import SyntheticCTRDataModule
from ..models import RecsysModule
from ..optim import Muon

__all__ = ["train_reference"]


def train_reference(out_dir: Path, quick: bool = False) -> dict[str, Any]:
    """Train the reference DLRM into ``out_dir``; return test metrics, planted AUCs, the checkpoint
    path, the CSV log path and the data module."""
    n = 60_000 if quick else 2_000_000
    dm = SyntheticCTRDataModule(
        num_train=n, num_val=40_960, num_test=n // 5, batch_size=1024, max_rows=2_000 if quick else 20_000, seed=0,
        num_workers=0 if quick else 1,  # one core generates batches while the other trains
    )  # fmt: skip
    pl.seed_everything(0, verbose=False)
    # hybrid Muon: hidden MLP matrices on torch.optim.Muon, tables/biases/output layer on AdamW
    module = RecsysModule(feature_spec=dm.feature_spec, optimizer=partial(Muon, lr=0.02, adamw_lr=1e-3))
    ckpt = ModelCheckpoint(dirpath=out_dir / "checkpoints", filename="dlrm-{epoch}", monitor="val_auc", mode="max")
    logger = pl.loggers.CSVLogger(out_dir, name="logs")
    trainer = pl.Trainer(
        accelerator="cpu", devices=1,
        max_epochs=1,  # one pass over fresh rows, as CTR models train (more epochs overfit the id tables)
        val_check_interval=0.25, callbacks=[ckpt], logger=logger, enable_progress_bar=not quick,
        enable_model_summary=False,
    )  # fmt: skip
    t0 = time.perf_counter()
    trainer.fit(module, dm)
    fit_s = time.perf_counter() - t0
    test = trainer.test(module, dm, ckpt_path=ckpt.best_model_path, verbose=False)[0]
    return {
        "checkpoint": ckpt.best_model_path, "test": test, "bayes_auc": dm.bayes_auc("test"), "fit_seconds": fit_s,
        "train_rows": n, "metrics_csv": str(Path(logger.log_dir) / "metrics.csv"), "datamodule": dm,
    }  # fmt: skip
