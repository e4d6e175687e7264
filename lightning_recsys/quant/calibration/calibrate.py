"""``calibrate(model, dataloader, num_batches)``: fix the activation ranges of static int8 layers.

Runs the (already ``quantize_``-d) model on a few batches with every ``Int8Linear(activation="static")``
feeding its inputs to its observer, then sets each layer's uint8 scale / zero point from the range
the observer picks. Layers see the outputs of the quantized layers before them, so the ranges match
what they get at inference.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from lightning_recsys.quant import quantize_, calibrate, Int8LinearConfig
    >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    >>> quantize_(model, Int8LinearConfig(activation="static", observer="mse"))
    >>> results = calibrate(model, [torch.randn(32, 4) for _ in range(4)], num_batches=4)
    >>> sorted(results)
    ['0', '2']
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from ...data.contract import ModelContract
from ..core.linear import Int8Linear

__all__ = ["calibrate", "static_layers"]


def static_layers(model: nn.Module) -> dict[str, Int8Linear]:
    """The ``Int8Linear(activation="static")`` modules of ``model`` by qualified name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, Int8Linear) and m.activation == "static"}


def _derived_call(model: nn.Module, batch: Any, layers: dict[str, Int8Linear]) -> Callable[[nn.Module, Any], Any]:
    """The model contract's call, probed with the layers observing (uncalibrated static layers refuse
    to run otherwise); the observers are put back as they were, so the probe is not counted."""
    saved = {name: copy.deepcopy(m.observer) for name, m in layers.items()}
    for m in layers.values():
        m.calibrating = True
    try:
        return ModelContract.infer(model, batch).call
    finally:
        for name, m in layers.items():
            m.calibrating = False
            m.observer = saved[name]


@torch.no_grad()
def calibrate(
    model: nn.Module,
    dataloader: Iterable,
    num_batches: int = 16,
    forward_fn: Callable[[nn.Module, Any], Any] | None = None,
    reset: bool = True,
) -> dict[str, dict[str, Any]]:
    """Observe up to ``num_batches`` batches and set every static int8 layer's activation range.

    ``forward_fn(model, batch)`` runs one batch (default: the call :class:`~lightning_recsys.data.ModelContract`
    derives from the model and the first batch: ``model(batch)`` for a RecsysBatch, ``model(*inputs)``
    for an ``(inputs..., labels)`` tuple, ``model(features)`` for a dict with a label key). Returns, per layer, the
    observer's name, observed min/max, chosen range, scale and zero point (JSON-able; saved with
    artifacts by ``quantize_checkpoint``). Each call starts fresh observers (recalibration) unless
    ``reset=False``, which keeps accumulating into the existing ones.
    """
    if not isinstance(num_batches, int) or num_batches < 1:
        raise ValueError(f"num_batches must be an integer >= 1, got {num_batches!r}")
    layers = static_layers(model)
    if not layers:
        return {}
    for m in layers.values():
        if reset or m.observer is None:
            m.reset_observer()
    batches = iter(dataloader)
    first = next(batches, None)
    if first is None:
        raise ValueError("the calibration dataloader produced no batches")
    if forward_fn is None:
        forward_fn = _derived_call(model, first, layers)
    was_training = model.training
    model.eval()
    seen = 0
    try:
        for m in layers.values():
            m.calibrating = True
        for batch in itertools.chain([first], batches):
            if seen >= num_batches:
                break
            forward_fn(model, batch)
            seen += 1
    finally:
        for m in layers.values():
            m.calibrating = False
        model.train(was_training)
    results = {}
    for name, m in layers.items():
        info = m.observer.to_dict()
        m.set_activation_range(*info["range"])
        info.update(num_batches=seen, scale=float(m.x_scale), zero_point=int(m.x_zero_point))
        results[name] = info
    return results
