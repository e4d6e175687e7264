"""Training throughput of RecsysModule under a Lightning Trainer vs a plain PyTorch loop, and the
trained model's test AUC vs the planted (Bayes-optimal) model's AUC.

    python benchmarks/train.py [--quick] [--out PATH] [--threads 1]

Ratios: ``lightning_over_plain`` (samples/s, Lightning / plain loop; same model init, data, optimizer),
``auc_gap_to_bayes`` (planted AUC - model AUC on the test split, main task).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks._common import parse_args, write_results  # noqa: E402
from lightning_recsys.data import SyntheticCTRDataModule  # noqa: E402
from lightning_recsys.models import RecsysModule  # noqa: E402


class _Timer(pl.Callback):
    """Samples/s over the training batches after ``warmup`` batches."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.samples = 0
        self.t0 = None
        self.elapsed = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == self.warmup:
            self.t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if batch_idx >= self.warmup:
            self.samples += batch.batch_size
            self.elapsed = time.perf_counter() - self.t0


def _trainer(**kw) -> pl.Trainer:
    return pl.Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **kw,
    )


def lightning_throughput(dm, batches, warmup: int, seed: int) -> float:
    torch.manual_seed(seed)
    module = RecsysModule(feature_spec=dm.feature_spec)
    timer = _Timer(warmup)
    _trainer(max_epochs=1, callbacks=[timer], num_sanity_val_steps=0, limit_val_batches=0).fit(
        module, train_dataloaders=DataLoader(batches, batch_size=None)
    )
    return timer.samples / timer.elapsed


def plain_throughput(dm, batches, warmup: int, seed: int) -> float:
    torch.manual_seed(seed)
    module = RecsysModule(feature_spec=dm.feature_spec)
    model, tasks = module.model, module.tasks
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    samples, t0 = 0, None
    for i, batch in enumerate(DataLoader(batches, batch_size=None)):
        if i == warmup:
            t0 = time.perf_counter()
        logits = model(batch)
        loss = sum(F.binary_cross_entropy_with_logits(logits[:, j], batch.labels[t]) for j, t in enumerate(tasks))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i >= warmup:
            samples += batch.batch_size
    return samples / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args("train", argv)
    cfg = (
        dict(num_train=300_000, num_val=20_000, num_test=50_000, max_rows=5_000, epochs=1, tp_batches=60, repeats=2)
        if args.quick
        else dict(num_train=6_000_000, num_val=50_000, num_test=200_000, max_rows=20_000, epochs=1, tp_batches=300, repeats=3)
    )
    cfg.update(batch_size=1024, seed=0, warmup=10)
    dm = SyntheticCTRDataModule(
        num_train=cfg["num_train"], num_val=cfg["num_val"], num_test=cfg["num_test"],
        batch_size=cfg["batch_size"], max_rows=cfg["max_rows"], seed=cfg["seed"],
        num_workers=1,  # batches are generated in a worker while the main process trains
    )  # fmt: skip

    # throughput: the same pre-generated batches for both loops, run in turn
    batches = [dm.make_batch("train", i)[0] for i in range(cfg["tp_batches"])]
    tput = {"lightning": [], "plain": []}
    for r in range(cfg["repeats"]):
        tput["plain"].append(plain_throughput(dm, batches, cfg["warmup"], cfg["seed"] + r))
        tput["lightning"].append(lightning_throughput(dm, batches, cfg["warmup"], cfg["seed"] + r))
    med = {k: sorted(v)[len(v) // 2] for k, v in tput.items()}

    # accuracy: train with Lightning, compare with the planted model on the test split
    torch.manual_seed(cfg["seed"])
    module = RecsysModule(feature_spec=dm.feature_spec)
    trainer = _trainer(max_epochs=cfg["epochs"], num_sanity_val_steps=0)
    t0 = time.perf_counter()
    trainer.fit(module, dm)
    fit_s = time.perf_counter() - t0
    test = trainer.test(module, dm, verbose=False)[0]
    bayes = dm.bayes_auc("test")
    main_task = dm.feature_spec.tasks[0]
    metrics = {
        "samples_per_s_lightning": med["lightning"],
        "test_auc": test["test_auc"],
        "test_ne": test["test_ne"],
        "test_auc_per_task": {t: test[f"test_auc_{t}"] for t in dm.feature_spec.tasks},
        "bayes_auc_per_task": bayes,
        "fit_seconds": fit_s,
    }
    anchors = {"plain_loop": {"samples_per_s": med["plain"]}, "planted_model": {"test_auc": bayes[main_task]}}
    ratios = {
        "lightning_over_plain": med["lightning"] / med["plain"],
        "auc_gap_to_bayes": bayes[main_task] - test["test_auc"],
    }
    return write_results(args, "train", cfg, metrics, anchors, ratios)


if __name__ == "__main__":
    main()
