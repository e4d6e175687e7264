"""Per-module quantization sensitivity: the effect of quantizing ONE table / linear layer alone.

For every embedding table (candidates int4 / int8 / fp16) and linear layer (int8 / fp16) of a float
model, :func:`sensitivity_analysis` swaps that module alone for its quantized version and measures,
on held-out batches, the relative NE increase and the AUC change against the float model, and the
SQNR (dB) of the module's own output. Work done once, not per trial:

* one calibration pass on the float model observes every linear's input (static int8 activations
  take their range from it, as ONNX Runtime's ``quantize_static`` calibrates on the float model);
* held-out batches, labels and float logits are cached;
* every module's float inputs and outputs are cached per batch: in a trial, a float module whose input
  is bit-identical to the cached one returns its cached output (everything upstream of the quantized
  module is replayed, not recomputed), and the module's SQNR comes from the cached inputs alone.

Forward convention: :class:`~lightning_recsys.data.ModelContract`, derived from the model and the
first held-out batch (``model(batch)`` for a RecsysBatch, ``model(*inputs)`` for an
``(inputs..., labels)`` tuple, ``model(features)`` for a dict with a label key; labels from the batch
in the model's ``tasks`` order); ``forward_fn(model, batch)`` and ``label_fn(batch)`` replace its parts. Multi-task models: ``task="mean"`` (default)
averages the per-task relative NE change and AUC change, ``"worst"`` takes the worst task, a task
name or column index picks one.

Example:
    >>> from lightning_recsys.data import SyntheticCTRDataModule
    >>> from lightning_recsys.models import DLRM
    >>> dm = SyntheticCTRDataModule(num_train=512, num_val=512, num_test=256, max_rows=50, num_sparse=3,
    ...                             batch_size=128)
    >>> model = DLRM.from_spec(dm.feature_spec, embedding_dim=8)
    >>> res = sensitivity_analysis(model, dm.train_dataloader(), dm.val_dataloader(), eval_batches=2)
    >>> len(res.modules), res.modules[0].kind
    (8, 'embedding')
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from torch import Tensor, nn

from ..core.config import Int8LinearConfig
from ..core.precisions import LINEAR_LADDER, TABLE_LADDER
from .report import state_bytes
from .options import TrialOptions, resolve_options
from .trials import TrialRunner

__all__ = ["ModuleSensitivity", "SensitivityResult", "sensitivity_with_runner", "sensitivity_analysis"]


@dataclass
class ModuleSensitivity:
    """One module's float bytes and, per candidate precision, its effect when quantized alone:
    ``trials[precision] = {"bytes", "ne_rel_delta", "auc_delta", "sqnr_db"}`` (``ne_rel_delta`` is
    ``(NE_q - NE_fp32) / NE_fp32``; ``auc_delta`` is ``AUC_q - AUC_fp32``, negative = a drop).
    ``unavailable[precision]`` says why a candidate precision cannot hold this module (e.g. values
    beyond int4's fp16 scale range); the search skips it."""

    name: str
    kind: Literal["embedding", "linear"]
    type: str
    fp32_bytes: int
    trials: dict[str, dict[str, float]] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)


@dataclass
class SensitivityResult:
    """Float baseline, per-module sensitivities and settings; ``to_dict()`` is JSON-serialisable."""

    baseline: dict[str, Any]
    modules: list[ModuleSensitivity]
    task: str | int
    tasks: list[str]
    num_rows: int
    calibration_batches: int
    seconds: float

    def module(self, name: str) -> ModuleSensitivity:
        for m in self.modules:
            if m.name == name:
                return m
        raise KeyError(f"no module {name!r} in the sensitivity result; modules: {[m.name for m in self.modules][:12]}")

    def ranking(self, precision: str = "int8", by: Literal["ne", "auc", "sqnr"] = "ne") -> list[str]:
        """Module names, most sensitive first, at ``precision`` (modules without it are left out)."""
        if by not in ("ne", "auc", "sqnr"):
            raise ValueError(f"by must be 'ne', 'auc' or 'sqnr', got {by!r}")
        rows = [m for m in self.modules if precision in m.trials]
        keys = {
            "ne": lambda m: (-m.trials[precision]["ne_rel_delta"], m.trials[precision]["sqnr_db"]),
            "auc": lambda m: (m.trials[precision]["auc_delta"], m.trials[precision]["sqnr_db"]),
            "sqnr": lambda m: (m.trials[precision]["sqnr_db"], -m.trials[precision]["ne_rel_delta"]),
        }
        return [m.name for m in sorted(rows, key=keys[by])]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def sensitivity_with_runner(runner: TrialRunner) -> SensitivityResult:
    """The measuring step of :func:`sensitivity_analysis` (which builds the runner, then calls this), for
    callers that reuse one :class:`~lightning_recsys.quant.search.trials.TrialRunner`: quantize each module
    of ``runner``'s model alone at each of its candidate precisions (float elsewhere); a precision a
    module cannot be stored in is listed in ``unavailable`` with the reason."""
    t0 = time.perf_counter()
    modules = []
    for fqn, kind in runner.kinds.items():
        m = runner.float_modules[fqn]
        row = ModuleSensitivity(fqn, kind, type(m).__name__, state_bytes(m))
        for p in runner.ladders[kind]:
            if p == "fp32":
                continue
            try:
                runner.variant(fqn, p)
            except (ValueError, TypeError) as err:  # this module cannot be stored at p
                row.unavailable[p] = str(err)
                continue
            ev = runner.evaluate({fqn: p})
            row.trials[p] = {"bytes": runner.bytes_of(fqn, p), "ne_rel_delta": ev["ne_rel_delta"], "auc_delta": ev["auc_delta"],
                             "sqnr_db": runner.output_sqnr_db(fqn, p)}  # fmt: skip
        modules.append(row)
    return SensitivityResult(
        baseline=runner.baseline["search"], modules=modules, task=runner.task, tasks=runner.tasks,
        num_rows=int(runner.labels["search"].shape[0]), calibration_batches=runner.calibration_batches,
        seconds=time.perf_counter() - t0,
    )  # fmt: skip


def sensitivity_analysis(
    model: nn.Module,
    calib_loader: Iterable | None,
    eval_loader: Iterable,
    *,
    forward_fn: Callable[[nn.Module, Any], Any] | None = None,
    label_fn: Callable[[Any], Tensor] | None = None,
    task: str | int = "mean",
    calib_batches: int = 16,
    eval_batches: int = 8,
    linear_config: Int8LinearConfig | None = None,
    int4_clip: Literal["minmax", "greedy"] = "minmax",
    table_precisions: Sequence[str] = TABLE_LADDER,
    linear_precisions: Sequence[str] = LINEAR_LADDER,
    options: TrialOptions | None = None,
) -> SensitivityResult:
    """Quantize each table / linear of ``model`` alone and measure ΔNE (relative), ΔAUC and output SQNR
    on the first ``eval_batches`` batches of ``eval_loader``. ``model`` is not modified.

    ``calib_loader`` is read for static int8 activations (``linear_config`` static, or the
    ``"int8_static"`` rung; one pass of ``calib_batches`` batches on the float model); with ``None``
    the rung is left out. See the module docstring for the conventions.

    The trial keywords may instead be given as one :class:`~lightning_recsys.quant.TrialOptions` in
    ``options=`` (giving both raises ``TypeError``); no confirmation batches are read here, whatever
    its ``confirm_batches``.

    Example:
        >>> res = sensitivity_analysis(model, train_loader, val_loader,  # doctest: +SKIP
        ...                            options=TrialOptions(eval_batches=4, task="worst"))
    """
    opts = resolve_options(
        options, sensitivity_analysis, forward_fn=forward_fn, label_fn=label_fn, task=task, calib_batches=calib_batches,
        eval_batches=eval_batches, linear_config=linear_config, int4_clip=int4_clip, table_precisions=table_precisions,
        linear_precisions=linear_precisions,
    )  # fmt: skip
    if opts.confirm_batches:
        opts = opts.replace(confirm_batches=None)
    return sensitivity_with_runner(TrialRunner(model, calib_loader, eval_loader, opts))
