"""The main job (``make demo`` / ``lrs demo``): train the reference DLRM on synthetic Criteo-like data,
evaluate AUC and NE on held-out data against the planted (Bayes-optimal) model, save a checkpoint and
print a summary. Later steps show each capability on the trained model or the same data.

    python -m lightning_recsys.demo [--quick] [--out runs/demo]

Every run writes into a new directory ``<out>/<timestamp>``; nothing is overwritten.
"""

from __future__ import annotations

import argparse
import importlib.util
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from .data import SyntheticCTRDataModule
from .models import RecsysModule
from .optim import Muon

__all__ = ["main", "train_reference"]


def train_reference(out_dir: Path, quick: bool = False) -> dict[str, Any]:
    """Train the reference DLRM; return test metrics, planted AUCs and the checkpoint path."""
    n = 60_000 if quick else 1_500_000
    dm = SyntheticCTRDataModule(
        num_train=n, num_val=n // 10, num_test=n // 5, batch_size=1024, max_rows=2_000 if quick else 20_000, seed=0,
        num_workers=0 if quick else 1,  # one core generates batches while the other trains
    )
    pl.seed_everything(0, verbose=False)
    # hybrid Muon: hidden MLP matrices on torch.optim.Muon, tables/biases/output layer on AdamW
    module = RecsysModule(feature_spec=dm.feature_spec, optimizer=partial(Muon, lr=0.02, adamw_lr=1e-3))
    ckpt = ModelCheckpoint(dirpath=out_dir / "checkpoints", filename="dlrm-{epoch}", monitor="val_auc", mode="max")
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=1,  # one pass over fresh rows, as CTR models train (more epochs overfit the id tables)
        callbacks=[ckpt],
        logger=pl.loggers.CSVLogger(out_dir, name="logs"),
        enable_progress_bar=True,
        enable_model_summary=False,
    )
    t0 = time.perf_counter()
    trainer.fit(module, dm)
    fit_s = time.perf_counter() - t0
    test = trainer.test(module, dm, ckpt_path=ckpt.best_model_path, verbose=False)[0]
    return {
        "checkpoint": ckpt.best_model_path,
        "test": test,
        "bayes_auc": dm.bayes_auc("test"),
        "fit_seconds": fit_s,
        "train_rows": n,
        "datamodule": dm,
    }


def _summary(res: dict[str, Any]) -> str:
    t = res["test"]
    lines = [
        "",
        "lightning-recsys demo: DLRM (hybrid Muon optimizer) on synthetic Criteo-like data",
        f"  trained on {res['train_rows']:,} rows in {res['fit_seconds']:.0f} s; checkpoint: {res['checkpoint']}",
        f"  {'task':<12} {'test AUC':>9} {'planted AUC':>12} {'gap':>7} {'test NE':>8}",
    ]
    for task, bayes in res["bayes_auc"].items():
        auc, ne = t[f"test_auc_{task}"], t[f"test_ne_{task}"]
        lines.append(f"  {task:<12} {auc:>9.4f} {bayes:>12.4f} {bayes - auc:>7.4f} {ne:>8.4f}")
    return "\n".join(lines)


EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _example(name: str) -> Callable[..., Any]:
    """``main`` of ``examples/<name>.py`` (the capability steps live there, runnable on their own)."""
    path = EXAMPLES / f"{name}.py"
    if not path.is_file():
        raise FileNotFoundError(f"demo step {name!r} needs {path} (run the demo from a source checkout)")
    spec = importlib.util.spec_from_file_location(f"lightning_recsys_example_{name}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.main


STEPS = ("quant", "optim", "fiited", "multibalance", "dct")


def _steps(res: dict[str, Any], out_dir: Path) -> dict[str, Callable[[], Any]]:
    """The capability steps, in order; each returns a dict of figures and prints its own summary."""
    steps = {
        # quantize the checkpoint just trained (int8 tables and linears), run the ONNX artifact, and
        # quantize it again with a precision per module searched for a 0.1% NE budget
        "quant": lambda: _example("quant")(
            ckpt_path=res["checkpoint"], out_dir=out_dir / "quant-int8", datamodule=res["datamodule"],
            budget_out_dir=out_dir / "quant-budget",
        ),
        # the same DLRM under each optimizer of lightning_recsys.optim
        "optim": lambda: _example("optim")(),
        # prune 90% of the embedding chunks during training; the tables really shrink
        "fiited": lambda: _example("fiited")(),
        # two tasks of very different base rates, balanced on the shared representation
        "multibalance": lambda: _example("multibalance")(),
        # 2 processes on gloo with Trainer(strategy=DCTStrategy(...)): thresholded gradients
        "dct": lambda: _example("dct")(),
    }
    return {name: steps[name] for name in STEPS}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small data, one epoch, no capability steps (smoke test)")
    parser.add_argument("--out", type=Path, default=Path("runs/demo"), help="parent directory of the run directory")
    parser.add_argument("--skip", default="", help="comma-separated capability steps to skip")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # the second core runs the data worker; oversubscribed threads stall
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    unknown = skip - set(STEPS)
    if unknown:
        raise ValueError(f"--skip names unknown steps {sorted(unknown)}; steps are {list(STEPS)}")
    out_dir = args.out / time.strftime("%Y%m%d-%H%M%S")
    suffix = 0
    while out_dir.exists():
        suffix += 1
        out_dir = args.out / f"{time.strftime('%Y%m%d-%H%M%S')}-{suffix}"
    out_dir.mkdir(parents=True)
    res = train_reference(out_dir, quick=args.quick)
    print(_summary(res))
    steps = {} if args.quick else _steps(res, out_dir)
    res["steps"] = {}
    for name, step in steps.items():
        if name in skip:
            continue
        print(f"\n=== demo step: {name} ===")
        t0 = time.perf_counter()
        res["steps"][name] = step()
        print(f"(step {name}: {time.perf_counter() - t0:.0f} s)")
    print(f"\nrun directory: {out_dir}")
    return res


if __name__ == "__main__":
    main()
