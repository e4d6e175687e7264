"""``lrs quantize CKPT --out DIR ...``: quantize a Lightning checkpoint from the command line.

Usage::

    lrs quantize last.ckpt --out artifacts/int8 [--config quant.yaml] [--calib-batches 16]
        [--format onnx|torch|tensorrt] [--trt-precision fp32|fp16|int8] [--overwrite] [--unsafe-full-unpickle]
        [--data synthetic|data.yaml] [--batch-size 256] [--eval-batches N] [--module-class pkg.mod.Class]
        [--budget-ne FRACTION|PERCENT%] [--budget-auc DROP] [--budget-task mean|worst|TASK] [--max-size-ratio R]
        [--objective size|latency]

Accuracy budget: ``--budget-ne 0.001`` (or ``--budget-ne 0.1%``) allows a relative NE increase of
0.1 % (``(NE_q - NE_fp32) / NE_fp32 <= 0.001``), the same fraction as ``budget_ne=`` in Python;
``--budget-auc 0.001`` an absolute AUC drop of 0.001. With
either, the precision of every table / linear is searched (smallest plan meeting the budget on held-out
validation batches, confirmed on the next ones) and ``plan_report.{json,md,png}`` is written beside the
artifact. When no plan meets the budget nothing but the report is written and the exit status is 3.

``--data`` names the calibration / evaluation data: a YAML file with a LightningCLI-style data
section, either ``{class_path: ..., init_args: {...}}`` or a whole LightningCLI config with a
``data:`` key, or ``synthetic`` (a SyntheticCTRDataModule sized from the checkpoint's feature spec).
By default it is the data module that ``lrs fit`` saved in the checkpoint, else ``synthetic``.
Also runnable as ``python -m lightning_recsys.quant.cli``. Exit status 0 on success, 2 on bad input,
3 when the artifact is refused because no plan meets the accuracy budget.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path
from typing import Any

__all__ = ["main", "build_parser", "datamodule_from_yaml"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lrs quantize", description="Quantize a Lightning checkpoint (int8/int4/fp16) and export it.")
    p.add_argument("ckpt", type=Path, help="Lightning checkpoint (read with torch's weights-only loader, never modified)")
    p.add_argument("--out", type=Path, required=True, help="new (or empty) output directory for the artifact and report")
    p.add_argument("--config", type=Path, default=None, help="quantization recipe YAML (embeddings / linears / overrides)")
    p.add_argument("--calib-batches", type=int, default=16, help="calibration batches for static activations (default 16)")
    p.add_argument("--eval-batches", type=int, default=None,
                   help="validation batches for the report's accuracy check and for each of a budgeted search's search and "
                        "confirmation sets (default: enough for 16,384 rows, at most half of the validation batches each)")
    p.add_argument("--format", choices=["onnx", "torch", "tensorrt"], default="onnx",
                   help="artifact format (default onnx; tensorrt needs CUDA and the [tensorrt] extra)")
    p.add_argument("--trt-precision", choices=["fp32", "fp16", "int8"], default="fp16",
                   help="precision of a --format tensorrt engine (default fp16; int8 calibrates with ModelOpt)")
    p.add_argument("--overwrite", action="store_true", help="replace the artifact files in a non-empty --out directory")
    p.add_argument("--unsafe-full-unpickle", action="store_true",
                   help="load the checkpoint with full unpickling (runs code from the file: only for trusted files)")
    p.add_argument("--data", default=None,
                   help="calibration / evaluation data: a data YAML (class_path/init_args, or a LightningCLI config with a "
                        "data: key), or 'synthetic'; default: the data module saved in the checkpoint by `lrs fit`, else "
                        "synthetic data sized from the checkpoint's feature spec")
    p.add_argument("--batch-size", type=int, default=256, help="batch size of the default synthetic data (default 256)")
    p.add_argument("--module-class", default=None, help="LightningModule class to rebuild (default lightning_recsys RecsysModule)")
    p.add_argument("--budget-ne", type=budget_fraction, default=None, metavar="FRACTION",
                   help="max relative NE increase as a fraction (0.001) or a percentage (0.1%%), like budget_ne= in "
                        "Python; searches per-module precisions")
    p.add_argument("--budget-auc", type=float, default=None, metavar="DROP",
                   help="max absolute AUC drop (e.g. 0.001); searches per-module precisions")
    p.add_argument("--budget-task", default="mean", help="task the budget applies to: mean (default), worst, or a task name")
    p.add_argument("--max-size-ratio", type=float, default=None, help="cap on the plan's size as a fraction of fp32 (budget only)")
    p.add_argument("--objective", choices=["size", "latency"], default="size",
                   help="budget search: smallest plan ('size', tables down to int4) or fastest ('latency', tables down to int8)")
    return p


#: a bare ``--budget-ne`` at or above this (a 5 % NE increase) is refused as a likely percentage
_LARGEST_BARE_FRACTION = 0.05


def budget_fraction(text: str) -> float:
    """``--budget-ne``'s value as a fraction: ``"0.001"`` or ``"0.1%"`` -> ``0.001``.

    A bare number >= 0.05 is refused (the option used to take percent, so an old ``0.1`` would
    silently become a 10 % budget); write such budgets with ``%``.

    Example:
        >>> budget_fraction("0.1%"), budget_fraction("0.002")
        (0.001, 0.002)
    """
    percent = text.strip().endswith("%")
    try:
        value = float(text.strip().rstrip("%"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a fraction (0.001) or a percentage (0.1%), got {text!r}") from None
    fraction = value / 100.0 if percent else value
    if not 0.0 <= fraction < 1.0:
        raise argparse.ArgumentTypeError(f"the relative NE budget must be in [0, 1) (0 to 100%), got {text!r}")
    if not percent and fraction >= _LARGEST_BARE_FRACTION:
        raise argparse.ArgumentTypeError(
            f"{text} would allow a {fraction:.0%} NE increase; a bare value is a fraction (0.001 = 0.1%): "
            f"write {value:g}% for {value:g} percent, or {fraction:.0%} if you mean it"
        )
    return fraction


def datamodule_from_yaml(path: Path) -> Any:
    """Instantiate a LightningDataModule from ``{class_path, init_args}`` (or a config's ``data:`` key)."""
    import lightning.pytorch as pl
    import yaml

    if not path.is_file():
        raise FileNotFoundError(f"data config not found: {path}")
    data = yaml.safe_load(path.read_text())
    if isinstance(data, dict) and "data" in data and "class_path" not in data:
        data = data["data"]
    if not isinstance(data, dict) or "class_path" not in data:
        raise ValueError(f"{path}: expected a data section with 'class_path' (and optional 'init_args')")
    unknown = sorted(set(data) - {"class_path", "init_args"})
    if unknown:
        raise ValueError(f"{path}: unknown keys {unknown} in the data section; allowed: class_path, init_args")
    module, _, name = str(data["class_path"]).rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as err:
        raise ValueError(f"{path}: cannot import class_path {data['class_path']!r}: {err}") from None
    if not (isinstance(cls, type) and issubclass(cls, pl.LightningDataModule)):
        raise TypeError(f"{path}: class_path {data['class_path']!r} is not a LightningDataModule")
    return cls(**(data.get("init_args") or {}))


def main(argv: list[str] | None = None) -> int:
    """Run ``lrs quantize``; returns the exit status."""
    args = build_parser().parse_args(argv)
    from .pipeline import BudgetNotMetError, quantize_checkpoint

    try:
        dm = args.data if args.data in (None, "synthetic") else datamodule_from_yaml(Path(args.data))
        report = quantize_checkpoint(
            args.ckpt, args.out, config=args.config, datamodule=dm, calib_batches=args.calib_batches,
            eval_batches=args.eval_batches, format=args.format, overwrite=args.overwrite,
            unsafe_full_unpickle=args.unsafe_full_unpickle, module_class=args.module_class, batch_size=args.batch_size,
            budget_ne=args.budget_ne, budget_auc=args.budget_auc,
            budget_task=args.budget_task, max_size_ratio=args.max_size_ratio, objective=args.objective,
            trt_precision=args.trt_precision,
        )  # fmt: skip
    except BudgetNotMetError as err:
        print(f"lrs quantize: {err}", file=sys.stderr)
        return 3
    except (ValueError, TypeError, FileNotFoundError, FileExistsError) as err:
        print(f"lrs quantize: error: {err}", file=sys.stderr)
        return 2
    except (ImportError, RuntimeError) as err:
        if args.format != "tensorrt":
            raise
        print(f"lrs quantize: error: {err}", file=sys.stderr)  # torch_tensorrt or CUDA missing
        return 2
    if report["format"] == "tensorrt":
        print(json.dumps({"out": str(args.out), "format": "tensorrt", "precision": args.trt_precision}))
        return 0
    totals, ev = report["totals"], report.get("evaluation", {})
    summary = {"out": str(args.out), "bytes": totals["bytes"], "bytes_ratio": round(totals.get("bytes_ratio", 1.0), 4)}
    for key in ("logit_sqnr_db", "ne_fp32", "ne_quant", "auc_fp32", "auc_quant"):
        if key in ev:
            summary[key] = ev[key]
    if "budget_plan" in report:
        summary["budget_met"] = report["budget_plan"]["met"]
        summary["int8_bytes_fraction"] = round(report["budget_plan"]["int8_bytes_fraction"], 4)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
