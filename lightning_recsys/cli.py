"""The ``lrs`` command: LightningCLI for training, plus ``quantize``, ``demo`` and ``bench``.

Usage::

    lrs fit --config examples/configs/synthetic.yaml      # train (LightningCLI: fit/validate/test/predict)
    lrs test --config examples/configs/synthetic.yaml --ckpt_path runs/synthetic/checkpoints/last.ckpt
    lrs quantize model.ckpt --out artifact/                # quantize a checkpoint for deployment
    lrs demo                                               # the main job (see README)
    lrs bench train --quick                                # run benchmarks/train.py from a source checkout

The model is :class:`RecsysModule` unless ``model.class_path`` (or ``--model mymod.MyModule``) names your
own LightningModule. The data module's ``feature_spec`` (table sizes, dense width, tasks) is linked into
the model's ``feature_spec`` argument at instantiation, so configs never repeat table sizes.

Exit status: 0 on success; 2 on bad input (a usage error, a missing file, an invalid option); 3 when
``lrs quantize`` refuses the artifact because no precision plan meets the accuracy budget.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import LightningCLI

from .models.module import RecsysModule

__all__ = ["RecsysCLI", "main", "USAGE"]

USAGE = """usage: lrs COMMAND [options]

Training (LightningCLI over lightning_recsys.RecsysModule, or your LightningModule with --model, and any
LightningDataModule):
  fit        train a model:           lrs fit --config examples/configs/synthetic.yaml
  validate   evaluate on validation:  lrs validate --config CONFIG --ckpt_path CKPT
  test       evaluate on test data:   lrs test --config CONFIG --ckpt_path CKPT
  predict    predict:                 lrs predict --config CONFIG --ckpt_path CKPT

Deployment and more:
  quantize   quantize a checkpoint (int8 / int4 / fp16, or to an accuracy budget) and export it
  demo       the main job: train, evaluate, quantize and show every capability (~6 min on 2 cores)
  bench      run a benchmark of a source checkout: lrs bench NAME [--quick]

`lrs COMMAND --help` shows the options of a command. Exit status: 0 success, 2 bad input,
3 `lrs quantize` refused the artifact (no plan meets the accuracy budget).
"""


class RecsysCLI(LightningCLI):
    """LightningCLI over any LightningModule (``model.class_path``; :class:`RecsysModule` when the config
    gives only its arguments) and any LightningDataModule (``data.class_path``)."""

    def add_arguments_to_parser(self, parser) -> None:
        if not self.subclass_mode_model:  # RecsysCLI(RecsysModule, ...): the model's arguments only
            parser.link_arguments("data.feature_spec", "model.feature_spec", apply_on="instantiate")
            return
        parser.set_defaults({"model": {"class_path": f"{RecsysModule.__module__}.{RecsysModule.__qualname__}"}})
        parser.link_arguments("data.feature_spec", "model.init_args.feature_spec", apply_on="instantiate")


def _bench(argv: list[str]) -> int:
    root = Path(__file__).resolve().parent.parent / "benchmarks"
    if not argv or argv[0] in ("-h", "--help"):
        names = sorted(p.stem for p in root.glob("[a-z]*.py")) if root.is_dir() else []
        print(f"usage: lrs bench NAME [--quick] [--out PATH]; benchmarks: {', '.join(names) or 'none found'}")
        return 0 if argv else 2
    script = root / f"{argv[0]}.py"
    if not script.is_file():
        print(f"lrs bench: no benchmark {argv[0]!r} in {root} (benchmarks ship with a source checkout)", file=sys.stderr)
        return 2
    return subprocess.call([sys.executable, str(script), *argv[1:]])


def _quiet_known_warnings() -> None:
    """Silence two warnings that Lightning 2.6 prints on every run and that no user can act on: the
    note that TensorBoard is not installed (the CSV logger is used) and a torch pytree deprecation
    inside Lightning. Only the ``lrs`` process is affected, never a program importing the package."""
    known = ("Starting from v1.9.0", "`isinstance(treespec")  # starts of the messages (no comma: PYTHONWARNINGS splits on it)
    for text in known:
        warnings.filterwarnings("ignore", message=re.escape(text))
    # the same for the processes a run starts (DDP / DCT workers)
    extra = ",".join(f"ignore:{text}" for text in known)
    os.environ["PYTHONWARNINGS"] = ",".join(filter(None, [os.environ.get("PYTHONWARNINGS"), extra]))


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``lrs`` console script; returns the exit status."""
    from_sys = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE, end="")
        return 0 if argv else 2
    _quiet_known_warnings()
    if argv[0] == "quantize":
        from .quant.cli import main as quantize_main

        return quantize_main(argv[1:])
    if argv[0] == "demo":
        from .demo import main as demo_main

        demo_main(argv[1:])
        return 0
    if argv[0] == "bench":
        return _bench(argv[1:])
    try:  # LightningCLI reads sys.argv itself; passing args too would make it warn
        RecsysCLI(LightningModule, LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
                  args=None if from_sys else argv)  # fmt: skip
    except SystemExit as err:  # jsonargparse exits 2 on a usage error, 0 after --help
        return err.code if isinstance(err.code, int) else 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
