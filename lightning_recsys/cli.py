"""The ``lrs`` command: LightningCLI for training, plus ``quantize``, ``demo`` and ``bench``.

Usage::

    lrs fit --config examples/configs/synthetic.yaml      # train (LightningCLI: fit/validate/test/predict)
    lrs quantize model.ckpt --out artifact/                # quantize a checkpoint for deployment
    lrs demo                                               # the main job (see README)
    lrs bench train --quick                                # run benchmarks/train.py from a source checkout

The data module's ``feature_spec`` (table sizes, dense width, tasks) is linked into
``model.feature_spec`` at instantiation, so configs never repeat table sizes.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from lightning.pytorch import LightningDataModule
from lightning.pytorch.cli import LightningCLI

from .models.module import RecsysModule

__all__ = ["RecsysCLI", "main"]


class RecsysCLI(LightningCLI):
    """LightningCLI over :class:`RecsysModule` and any LightningDataModule (``data.class_path``)."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("data.feature_spec", "model.feature_spec", apply_on="instantiate")


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


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``lrs`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "quantize":
        from .quant.cli import main as quantize_main

        return quantize_main(argv[1:])
    if argv and argv[0] == "demo":
        from .demo import main as demo_main

        demo_main(argv[1:])
        return 0
    if argv and argv[0] == "bench":
        return _bench(argv[1:])
    RecsysCLI(RecsysModule, LightningDataModule, subclass_mode_data=True, args=argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
