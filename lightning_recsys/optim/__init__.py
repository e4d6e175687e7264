"""Optimizers for recsys models: MLorc (low-rank moment state), a Muon + AdamW hybrid, counter SGD.

Each one is a single ``torch.optim.Optimizer`` usable from ``configure_optimizers`` and from a
LightningCLI YAML (``class_path: lightning_recsys.optim.Muon``). Those that route parameters by
module type (embedding tables are 2-D like hidden matrices) learn the module from
``Optimizer.from_module(model)``, from ``Optimizer(model)``, or from :func:`module_parameters`.

Example:
    >>> from torch import nn
    >>> from lightning_recsys.optim import Muon
    >>> model = nn.Sequential(nn.Embedding(100, 16), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 1))
    >>> opt = Muon.from_module(model, lr=0.02, adamw_lr=1e-3)
"""

from ._routing import ModuleParameters, module_parameters
from .frequency_sgd import CounterSGD, counter_sgd_update
from .mlorc import (
    MLorcAdamW,
    MLorcLion,
    adamw_update,
    lion_update,
    mlorc_adamw_update,
    mlorc_lion_update,
    randomized_svd,
)
from .muon import Muon, route_muon

__all__ = [
    "CounterSGD",
    "MLorcAdamW",
    "MLorcLion",
    "ModuleParameters",
    "Muon",
    "adamw_update",
    "counter_sgd_update",
    "lion_update",
    "mlorc_adamw_update",
    "mlorc_lion_update",
    "module_parameters",
    "randomized_svd",
    "route_muon",
]
