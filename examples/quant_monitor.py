"""QuantizationMonitor on a planted distribution shift: detect it, recalibrate, recover.

A small DLRM (``RecsysModule``) trains on synthetic Criteo-like data whose dense features are
re-encoded mid-training (``SyntheticCTRDataModule(shift_at_step=..., shift_dense_scale=4)``: the
same information at 4x the scale). Two monitors watch the int8 twin (row-wise int8 tables, int8
linears with static, calibrated activations) at every validation run:

* ``recalibrate``: over budget, it recalibrates the twin on the most recent training batches;
* ``warn`` (the counterfactual): keeps the stale calibration, to show the gap a deployed model keeps.

``main(quick=False)`` prints a table and returns the figures: ``detects_shift_within`` (validation
runs after the shift until the recalibrating monitor flagged it; ``None`` if never),
``recovered_under_budget`` (its recalibration brought every gap under budget at that run),
``stays_under_budget`` (and every later run too), ``false_alarms_before_shift`` and the per-run gaps.
Runs in under 2 minutes on 2 CPU cores (``--quick``: under 40 s)::

    python examples/quant_monitor.py [--quick]
"""

from __future__ import annotations

import sys
import time
import warnings

import lightning.pytorch as pl
import torch

from lightning_recsys.callbacks.quant_monitor import QuantizationMonitor
from lightning_recsys.data import SyntheticCTRDataModule
from lightning_recsys.models import RecsysModule

BUDGET = {"budget_ne": 0.01, "budget_auc": 0.005, "out_of_range_rate": 0.01}


def _adam(params) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=3e-3)


def _gaps(monitor: QuantizationMonitor, shift_at: int) -> list[dict]:
    rows = []
    for h in monitor.history:
        row = {k: h[k] for k in ("step", "delta_ne", "delta_auc", "pred_drift", "out_of_range_rate", "out_of_range_rate_max")}
        row["action"] = h["action"]
        row["shifted"] = h["step"] >= shift_at
        row["over_budget"] = bool(h["violations"])
        if h["after"] is not None:
            row.update({f"{k}_after": h["after"][k] for k in ("delta_ne", "delta_auc", "pred_drift", "out_of_range_rate_max")})
            row["over_budget_after"] = bool(h["after"]["violations"])
        rows.append(row)
    return rows


def main(quick: bool = False) -> dict:
    """Train with the planted shift and both monitors attached; return the figures."""
    steps, every, shift_at = (400, 100, 250) if quick else (800, 100, 450)
    pl.seed_everything(0, verbose=False)
    dm = SyntheticCTRDataModule(
        num_train=steps * 256, num_val=2048, num_test=256, batch_size=256, max_rows=2000,
        shift_at_step=shift_at, shift_dense_scale=4.0,
    )  # fmt: skip
    module = RecsysModule(feature_spec=dm.feature_spec, embedding_dim=8, optimizer=_adam)
    monitor = QuantizationMonitor(on_violation="recalibrate", max_batches=4 if quick else 8, **BUDGET)
    stale = QuantizationMonitor(on_violation="warn", max_batches=4 if quick else 8, **BUDGET)
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, max_steps=steps, val_check_interval=every, limit_val_batches=4 if quick else 8,
        num_sanity_val_steps=0, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=[monitor, stale],
    )  # fmt: skip
    start = time.perf_counter()
    with warnings.catch_warnings():  # the monitors' over-budget warnings are summarised below
        warnings.filterwarnings("ignore", message="QuantizationMonitor")
        trainer.fit(module, dm)
    seconds = time.perf_counter() - start
    gaps, stale_gaps = _gaps(monitor, shift_at), _gaps(stale, shift_at)
    after_shift = [g for g in gaps if g["shifted"]]
    flagged = next((i for i, g in enumerate(after_shift) if g["over_budget"]), None)
    recovered = flagged is not None and after_shift[flagged].get("over_budget_after") is False
    result = {
        "shift_at_step": shift_at,
        "val_check_interval": every,
        "budget": BUDGET,
        "detects_shift_within": None if flagged is None else flagged + 1,
        "recovered_under_budget": recovered,
        "stays_under_budget": recovered and not any(g["over_budget"] for g in after_shift[flagged + 1 :]),
        "false_alarms_before_shift": sum(g["over_budget"] for g in gaps if not g["shifted"]),
        "stale_twin_over_budget_at_end": bool(stale_gaps and stale_gaps[-1]["over_budget"]),
        "gaps": gaps,
        "stale_gaps": stale_gaps,
        "seconds": seconds,
    }
    print(f"planted shift at step {shift_at} (dense features x4), validation every {every} steps, budget {BUDGET}")
    print(f"{'step':>5} {'dNE':>8} {'dAUC':>8} {'drift':>8} {'oor max':>8}  action        "
          "| after recal: dNE / oor max | stale twin dNE / oor max")  # fmt: skip
    for g, s in zip(gaps, stale_gaps):
        after = f"{g['delta_ne_after']:+.4f} / {g['out_of_range_rate_max_after']:.4f}" if "delta_ne_after" in g else "-"
        print(f"{g['step']:>5} {g['delta_ne']:+.4f} {g['delta_auc']:+.4f} {g['pred_drift']:+.4f} {g['out_of_range_rate_max']:8.4f}  "
              f"{g['action']:<13} | {after:<26} | {s['delta_ne']:+.4f} / {s['out_of_range_rate_max']:.4f}")  # fmt: skip
    print(f"detected within {result['detects_shift_within']} validation run(s); back under budget after recalibration: "
          f"{recovered}; false alarms before the shift: {result['false_alarms_before_shift']}; {seconds:.1f} s")  # fmt: skip
    return result


if __name__ == "__main__":
    main(quick="--quick" in sys.argv[1:])
