"""The main job and its steps: ``lrs demo`` / ``python -m lightning_recsys.demo [--quick]``.

Each capability step is a module with ``main(quick=False) -> dict`` (``quant``, ``optim``, ``fiited``,
``multibalance``, ``dct``), runnable alone, e.g. ``python examples/fiited.py``.

Example:
    >>> from lightning_recsys.demo import main   # doctest: +SKIP
    >>> res = main(["--quick", "--out", "runs/demo"])   # doctest: +SKIP
"""

from .run import STEPS, main
from .train import train_reference

__all__ = ["STEPS", "main", "train_reference"]
