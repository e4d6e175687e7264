"""Demo step ``multibalance``: a click + conversion model whose task gradients differ ~10x in scale
(``python examples/multibalance.py``).

Trains the same multi-task DLRM on the same synthetic data twice (plain sum of the task losses, then
with ``MultiBalance``), prints test NE/AUC per task and the effective per-task weights MultiBalance
applied to the gradients on the shared representation. Your own LightningModule needs two lines::

    self.shared_representation = "encoder"              # __init__: submodule the task heads consume
    self.task_losses = {"click": l_click, "conv": l_conv}  # training_step
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch

from ..callbacks import MultiBalance
from ..data import SyntheticCTRDataModule
from ..models import RecsysModule

__all__ = ["main"]


def _fit(dm: SyntheticCTRDataModule, callbacks: list) -> dict[str, float]:
    pl.seed_everything(0, verbose=False)
    module = RecsysModule(
        feature_spec=dm.feature_spec, arch="multitask", embedding_dim=16, shared_mlp=(128, 64),
        optimizer=lambda p: torch.optim.Adam(p, lr=3e-3),
    )  # fmt: skip
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, max_epochs=1, callbacks=callbacks, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
    )  # fmt: skip
    trainer.fit(module, dm)
    return {k: float(v) for k, v in trainer.test(module, dm, verbose=False)[0].items()}


def main(quick: bool = False) -> dict[str, Any]:
    """Train with a plain sum of losses, then with MultiBalance; return test NE per task and the weights."""
    dm = SyntheticCTRDataModule(
        num_train=8_192 if quick else 32_768, num_val=2_048, num_test=16_384, batch_size=512, max_rows=2_000, num_sparse=8,
        base_rates=(0.25, 0.01),
    )  # fmt: skip
    plain = _fit(dm, [])
    mb = MultiBalance(relax_factor=0.7, beta=0.9, anchor="target", target_task="conversion")
    balanced = _fit(dm, [mb])
    norms = dict(zip(mb.tasks, mb.norms.tolist()))
    print("task        sum NE   MultiBalance NE   sum AUC   MultiBalance AUC")
    for t in dm.feature_spec.tasks:
        print(
            f"{t:<10} {plain[f'test_ne_{t}']:8.4f} {balanced[f'test_ne_{t}']:17.4f} "
            f"{plain[f'test_auc_{t}']:9.4f} {balanced[f'test_auc_{t}']:18.4f}"
        )
    print(f"gradient norms on the shared representation (moving average): {norms}")
    print(f"effective task weights of the last batch: {mb.last_weights}")
    return {
        "sum": {t: plain[f"test_ne_{t}"] for t in dm.feature_spec.tasks},
        "multibalance": {t: balanced[f"test_ne_{t}"] for t in dm.feature_spec.tasks},
        "grad_norms": norms,
        "weights": mb.last_weights,
    }

