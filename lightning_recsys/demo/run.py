"""The main job (``make demo`` / ``lrs demo`` / ``python -m lightning_recsys.demo``): train the
reference DLRM on synthetic Criteo-like data, evaluate AUC and NE on held-out data against the
planted (Bayes-optimal) model and save a checkpoint; then show each capability on the trained model
or the same data: quantization (int8 and to a 0.1% NE budget), the optimizers, FIITED, MultiBalance
and DCT (2 processes). Ends with a summary table, ``summary.json`` and ``summary.png``.

    python -m lightning_recsys.demo [--quick] [--out runs/demo] [--skip dct,...]

Every run writes into a new directory ``<out>/<timestamp>``; nothing is overwritten.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from . import dct, fiited, multibalance, optim, quant
from .summary import write_summary
from .train import train_reference

__all__ = ["main", "STEPS"]

STEPS = ("quant", "optim", "fiited", "multibalance", "dct")


def _steps(res: dict[str, Any], out_dir: Path, quick: bool) -> dict[str, Callable[[], Any]]:
    """The capability steps, in order; each returns a dict of figures and prints its own summary."""
    return {
        # quantize the checkpoint just trained (int8 tables and linears), score with the ONNX artifact,
        # and quantize it again with a precision per module searched for a 0.1% NE budget
        "quant": lambda: quant.main(ckpt_path=res["checkpoint"], out_dir=out_dir / "quant-int8",
                                    datamodule=res["datamodule"], budget_out_dir=out_dir / "quant-budget", quick=quick),
        "optim": lambda: optim.main(quick=quick),  # the same DLRM under each optimizer of lightning_recsys.optim
        "fiited": lambda: fiited.main(quick=quick),  # prune 90% of the embedding chunks; the tables really shrink
        "multibalance": lambda: multibalance.main(quick=quick),  # two tasks of very different base rates
        "dct": lambda: dct.main(quick=quick),  # 2 processes on gloo: thresholded gradients
    }  # fmt: skip


def _new_run_dir(parent: Path) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out_dir, suffix = parent / stamp, 0
    while out_dir.exists():
        suffix += 1
        out_dir = parent / f"{stamp}-{suffix}"
    out_dir.mkdir(parents=True)
    return out_dir


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the demo; returns every figure (also written to ``summary.json``)."""
    parser = argparse.ArgumentParser(prog="lrs demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small data: every step in about 2 minutes (smoke test)")
    parser.add_argument("--out", type=Path, default=Path("runs/demo"), help="parent directory of the run directory")
    parser.add_argument("--skip", default="", help=f"comma-separated steps to skip, of {', '.join(STEPS)}")
    args = parser.parse_args(argv)
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    unknown = skip - set(STEPS)
    if unknown:
        parser.error(f"--skip names unknown steps {sorted(unknown)}; steps are {list(STEPS)}")
    torch.set_num_threads(1)  # the second core runs the data worker; oversubscribed threads stall
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # no "GPU available" / tips per step
    out_dir = _new_run_dir(args.out)
    t_start = time.perf_counter()
    res = train_reference(out_dir, quick=args.quick)
    res["steps"], res["step_seconds"] = {}, {}
    for name, step in _steps(res, out_dir, args.quick).items():
        if name in skip:
            continue
        print(f"\n=== demo step: {name} ===")
        t0 = time.perf_counter()
        res["steps"][name] = step()
        res["step_seconds"][name] = time.perf_counter() - t0
        print(f"(step {name}: {res['step_seconds'][name]:.0f} s)")
    res["total_seconds"] = time.perf_counter() - t_start
    res["run_dir"] = str(out_dir)
    res["summary_files"] = {k: str(v) for k, v in write_summary(res, out_dir).items()}
    print(f"  run directory: {out_dir} ({res['total_seconds']:.0f} s in all)")
    return res
