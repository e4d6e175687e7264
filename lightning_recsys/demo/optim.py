"""Demo step ``optim``: the reference DLRM under each optimizer of ``lightning_recsys.optim``, with a
Lightning Trainer (``python examples/optim.py``).

* ``Muon`` hybrid: hidden ``nn.Linear`` weights on torch.optim.Muon, embedding tables / biases / the
  output layer on AdamW, in one optimizer (``Muon.from_module`` does the routing; from a YAML config,
  see ``examples/configs/muon.yaml``);
* ``MLorcAdamW``: AdamW with rank-4 moment state for the MLP matrices (embedding tables keep dense state);
* ``CounterSGD``: frequency-aware SGD for sparse embedding tables (one counter per row), plain SGD for the rest.

Prints the validation AUC and optimizer-state bytes of each and returns them.
"""

from __future__ import annotations

from functools import partial

import lightning.pytorch as pl
import torch

from ..data import SyntheticCTRDataModule
from ..models import RecsysModule
from ..optim import CounterSGD, MLorcAdamW, Muon

__all__ = ["main"]


def _state_bytes(opt: torch.optim.Optimizer) -> int:
    return sum(t.numel() * t.element_size() for s in opt.state.values() for t in s.values() if torch.is_tensor(t))


def main(quick: bool = False) -> dict[str, dict[str, float]]:
    """Train once per optimizer on the same data and seed; return validation AUC and state bytes."""
    dm = SyntheticCTRDataModule(num_train=4096 if quick else 16384, num_val=4096, num_test=4096, batch_size=256, max_rows=2000,
                                num_sparse=8, tasks=("click",), base_rates=(0.25,))  # fmt: skip
    recipes = {
        "adam (baseline)": partial(torch.optim.Adam, lr=3e-3),
        "muon hybrid": partial(Muon, lr=0.02, adamw_lr=3e-3),
        "mlorc_adamw r=4": partial(MLorcAdamW, lr=3e-3, rank=4),
        "counter_sgd": partial(CounterSGD, lr=300.0, dense_lr=1.0),
    }
    results: dict[str, dict[str, float]] = {}
    for name, optimizer in recipes.items():
        pl.seed_everything(0, verbose=False)
        module = RecsysModule(feature_spec=dm.feature_spec, optimizer=optimizer)
        if name == "counter_sgd":
            for table in module.model.embeddings.tables.values():
                table.sparse = True  # CounterSGD takes sparse gradients: only the batch's rows are touched
        trainer = pl.Trainer(accelerator="cpu", devices=1, max_epochs=1, logger=False,
                             enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
        trainer.fit(module, dm)
        opt = trainer.optimizers[0]
        results[name] = {"val_auc": float(trainer.callback_metrics["val_auc"]), "state_bytes": _state_bytes(opt)}
    print(f"{'optimizer':<18} {'val AUC':>8} {'state bytes':>12}")
    for name, r in results.items():
        print(f"{name:<18} {r['val_auc']:>8.4f} {r['state_bytes']:>12,d}")
    return results

