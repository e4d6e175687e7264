"""Demo step ``quant``: quantize the trained checkpoint to int8, score with the ONNX artifact, then
quantize it again to a 0.1 % relative NE budget (precision searched per table / linear).

What a user does with ``lrs quantize CKPT --out DIR [--budget-ne 0.1%]``, from Python::

    python examples/quant.py [CKPT]
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch

from ..data import SyntheticCTRDataModule
from ..models import RecsysModule
from ..quant import BudgetNotMetError, load, quantize_checkpoint, recipe_from_dict
from ..quant.search.report import eval_metrics

__all__ = ["main", "RECIPE"]

#: the recipe of ``examples/configs/quant.yaml``: row-wise int8 tables, int8 linears with calibrated
#: (static) activation ranges
RECIPE: dict[str, Any] = {"embeddings": {"precision": "int8"}, "linears": {"precision": "int8", "activation": "static", "observer": "mse"}}


def _data(quick: bool) -> SyntheticCTRDataModule:
    return SyntheticCTRDataModule(num_train=24_576 if quick else 49_152, num_val=8192, num_test=2048, batch_size=512, max_rows=2000)


def _train_tiny(workdir: Path, quick: bool) -> Path:
    dm = _data(quick)
    module = RecsysModule(feature_spec=dm.feature_spec, embedding_dim=16, optimizer=lambda p: torch.optim.Adam(p, lr=1e-2))
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_epochs=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    trainer.fit(module, dm)
    path = workdir / "tiny.ckpt"
    trainer.save_checkpoint(path)
    return path


def _budgeted(ckpt: Path, out: Path, datamodule: pl.LightningDataModule | None) -> dict[str, Any]:
    """Precision per module searched for a 0.1 % relative NE budget (fastest plan: tables >= int8)."""
    try:
        report = quantize_checkpoint(ckpt, out, datamodule=datamodule, calib_batches=8, budget_ne=0.001, objective="latency")
    except BudgetNotMetError as err:
        return {"budget_met": False, "message": str(err)}
    plan = report["budget_plan"]
    counts: dict[str, int] = {}
    for precision in plan["plan"].values():
        counts[precision] = counts.get(precision, 0) + 1
    return {
        "budget_met": plan["met"], "precisions": counts, "bytes_ratio": plan["size_ratio"],
        "int8_bytes_fraction": plan["int8_bytes_fraction"],
        "ne_rel_delta_search": plan["search"]["ne_rel_delta"], "ne_rel_delta_confirm": plan["confirm"]["ne_rel_delta"],
        "ne_rel_delta_confirm_ci95": plan["confirm"]["ci95"]["ne_rel_delta"],
        "report": str(out / "plan_report.md"),
    }  # fmt: skip


def main(ckpt_path: str | Path | None = None, out_dir: str | Path | None = None,
         datamodule: pl.LightningDataModule | None = None, budget_out_dir: str | Path | None = None,
         quick: bool = False) -> dict[str, Any]:  # fmt: skip
    """Quantize ``ckpt_path`` (or a freshly trained tiny model) to int8, then again under a 0.1 % NE
    budget; return the key figures. ``datamodule``: calibration data for a checkpoint that does not
    name its own (``lrs fit`` checkpoints do)."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ckpt = Path(ckpt_path) if ckpt_path is not None else _train_tiny(tmp, quick)
        out = Path(out_dir) if out_dir is not None else tmp / "int8"
        dm = datamodule if datamodule is not None or ckpt_path is not None else _data(quick)
        report = quantize_checkpoint(ckpt, out, config=recipe_from_dict(RECIPE), datamodule=dm, calib_batches=8)
        predictor = load(out, threads=2)
        ev = report["evaluation"]
        summary = {
            "bytes_fp32": report["totals"]["float_bytes"], "bytes_int8": report["totals"]["bytes"],
            "bytes_ratio": report["totals"]["bytes_ratio"], "logit_sqnr_db": ev.get("logit_sqnr_db"),
            "ne_fp32": ev.get("ne_fp32"), "ne_int8": ev.get("ne_quant"), "auc_fp32": ev.get("auc_fp32"),
            "auc_int8": ev.get("auc_quant"), "precisions": sorted({m["precision"] for m in report["modules"]}),
            "onnx_parity_max_abs_diff": report["export_parity"]["max_abs_diff"],
        }  # fmt: skip
        source = dm if dm is not None else _data(quick)
        source.setup("test")
        batches = [b for _, b in zip(range(4), source.test_dataloader())]
        task = predictor.tasks[0] if predictor.tasks else next(iter(batches[0].labels))
        logits = torch.cat([predictor(b)[:, 0] for b in batches])
        labels = torch.cat([b.labels[task] for b in batches])
        summary["onnx_test"] = eval_metrics(logits, labels)  # the artifact scoring held-out test rows
        budget = _budgeted(ckpt, Path(budget_out_dir) if budget_out_dir is not None else tmp / "budget", dm)
    print("quantized artifact:", {k: (round(v, 4) if isinstance(v, float) else v) for k, v in summary.items()})
    print("0.1% NE budget:", {k: (round(v, 5) if isinstance(v, float) else v) for k, v in budget.items()})
    summary["budget"] = budget
    return summary
