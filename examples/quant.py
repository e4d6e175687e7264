"""Quantize a trained recsys checkpoint to int8 and run the ONNX artifact.

``main(ckpt_path=None)`` trains a tiny DLRM on synthetic data when no checkpoint is given, quantizes it
with ``quantize_checkpoint`` (row-wise int8 tables, int8 linears, the recipe in
``examples/configs/quant.yaml``), loads the ONNX artifact with ``quant.load`` and compares it with the
float model on held-out data. Then it quantizes the same checkpoint to a 0.1 % relative NE budget
(precision searched per table / linear; ``objective="latency"``) and prints the plan. Runs in well under 2 minutes on 2 CPU cores::

    python examples/quant.py [CKPT]
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import lightning.pytorch as pl
import torch

from lightning_recsys.data import SyntheticCTRDataModule
from lightning_recsys.models import RecsysModule
from lightning_recsys.quant import BudgetNotMetError, load, quantize_checkpoint
from lightning_recsys.quant.report import eval_metrics

CONFIG = Path(__file__).resolve().parent / "configs" / "quant.yaml"


def _data() -> SyntheticCTRDataModule:
    return SyntheticCTRDataModule(num_train=49_152, num_val=2048, num_test=2048, batch_size=512, max_rows=2000)


def _adam(params) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=1e-2)


def _train_tiny(workdir: Path) -> Path:
    dm = _data()
    module = RecsysModule(feature_spec=dm.feature_spec, embedding_dim=16, optimizer=_adam)
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_epochs=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    trainer.fit(module, dm)
    path = workdir / "tiny.ckpt"
    trainer.save_checkpoint(path)
    return path


def _budgeted(ckpt: Path, out: Path, datamodule: pl.LightningDataModule | None) -> dict:
    """Precision per module searched for a 0.1 % relative NE budget (fastest plan: tables >= int8)."""
    try:
        report = quantize_checkpoint(ckpt, out, datamodule=datamodule, calib_batches=8, eval_batches=4,
                                     budget_ne=0.001, objective="latency")  # fmt: skip
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
        "report": "plan_report.md (.json, .png) beside the artifact",
    }  # fmt: skip


def main(ckpt_path: str | Path | None = None, out_dir: str | Path | None = None, datamodule: pl.LightningDataModule | None = None,
         budget_out_dir: str | Path | None = None) -> dict:  # fmt: skip
    """Quantize ``ckpt_path`` (or a freshly trained tiny model) to int8, then again with a searched
    precision per module under a 0.1 % NE budget; return key figures.

    ``datamodule`` supplies calibration data for checkpoints not trained on the synthetic data.
    """
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ckpt = Path(ckpt_path) if ckpt_path is not None else _train_tiny(tmp)
        out = Path(out_dir) if out_dir is not None else tmp / "int8"
        report = quantize_checkpoint(ckpt, out, config=CONFIG, datamodule=datamodule, calib_batches=8, eval_batches=4, format="onnx")
        predictor = load(out, threads=2)
        ev = report["evaluation"]
        summary = {
            "bytes_fp32": report["totals"]["float_bytes"],
            "bytes_int8": report["totals"]["bytes"],
            "bytes_ratio": report["totals"]["bytes_ratio"],
            "logit_sqnr_db": ev.get("logit_sqnr_db"),
            "ne_fp32": ev.get("ne_fp32"),
            "ne_int8": ev.get("ne_quant"),
            "auc_fp32": ev.get("auc_fp32"),
            "auc_int8": ev.get("auc_quant"),
            "precisions": sorted({m["precision"] for m in report["modules"]}),
        }
        if ckpt_path is None:  # run the ONNX artifact on fresh synthetic data
            dm = _data()
            batches = [dm.make_batch("test", i)[0] for i in range(4)]
            logits = torch.cat([predictor(b)[:, 0] for b in batches])
            labels = torch.cat([b.labels["click"] for b in batches])
            summary["onnx_test"] = eval_metrics(logits, labels)
        budget = _budgeted(ckpt, Path(budget_out_dir) if budget_out_dir is not None else tmp / "budget", datamodule)
    print("quantized artifact:", {k: (round(v, 4) if isinstance(v, float) else v) for k, v in summary.items()})
    print("0.1% NE budget:", {k: (round(v, 5) if isinstance(v, float) else v) for k, v in budget.items()})
    summary["budget"] = budget
    return summary


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
