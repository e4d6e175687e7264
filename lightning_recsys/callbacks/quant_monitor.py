"""QuantizationMonitor: run the quantized twin beside the float model during validation.

At every monitored validation run the callback

1. builds the quantized twin of the current model: ``deepcopy`` + :func:`~lightning_recsys.quant.quantize_`
   with the recipe (default: row-wise int8 tables, int8 linears with *static* activations);
2. gives the twin's static int8 linears their activation ranges: the ranges of the last calibration
   (the "deployed" calibration, kept across runs and checkpoints), or, the first time, a calibration on
   the ``calib_batches`` most recent training batches (``calibrate_on="train"``, the default) or on the
   first validation batches of the run (``calibrate_on="val"``; also the fallback when no training batch
   was seen, e.g. ``trainer.validate``);
3. runs the twin and the float model on the run's first ``max_batches`` validation batches (the batches
   the model itself validated on) and logs, under ``log_prefix``: ``delta_ne`` (relative NE increase,
   ``ne_quant / ne_fp32 - 1``), ``delta_auc`` (absolute AUC drop, ``auc_fp32 - auc_quant``),
   ``pred_drift`` (mean predicted probability, quantized minus float), ``out_of_range_rate`` (share of
   the static int8 linears' input values outside their calibrated uint8 grid, i.e. clipped) and
   ``out_of_range_rate_max`` (the worst layer's share), ``violation`` (1 when over budget);
4. past the budget (``delta_ne > budget_ne``, ``delta_auc > budget_auc`` or the worst layer's
   out-of-range share ``> out_of_range_rate``) it warns and, per ``on_violation``, also recalibrates the
   twin on the most recent data and re-measures (logging the same figures with the suffix ``_after``), or
   raises :class:`QuantizationBudgetError`.

Metrics are torchmetrics (AUROC, NE, means) and the out-of-range counts are summed over ranks, so under
DDP every rank sees the same figures and takes the same decision; calibrated ranges are widened to the
union over ranks. ``history`` holds one dict per monitored run; it, the calibrated ranges and the
counters are checkpointed (``state_dict``), so a resumed run continues with the same deployed ranges.

Example:
    >>> import lightning.pytorch as pl
    >>> from lightning_recsys.callbacks.quant_monitor import QuantizationMonitor
    >>> monitor = QuantizationMonitor(budget_ne=0.01, budget_auc=0.005, on_violation="recalibrate")
    >>> trainer = pl.Trainer(callbacks=[monitor], val_check_interval=100)

YAML (LightningCLI)::

    trainer:
      callbacks:
        - class_path: lightning_recsys.callbacks.quant_monitor.QuantizationMonitor
          init_args:
            recipe: {linears: {precision: int8, activation: static, observer: minmax}}
            budget_ne: 0.01
            on_violation: recalibrate
"""

from __future__ import annotations

import copy
import math
from collections import deque
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn
from torch import Tensor, nn
from typing_extensions import override
from torchmetrics import MeanMetric
from torchmetrics.classification import BinaryAUROC

from ..data.contract import LABEL_KEYS, ModelContract
from .twin import detached_copy
from .._validation import ConfigurationError, check_choice, check_int, check_number
from ..metrics.ne import NormalizedEntropy
from ..quant.core.api import quantize_
from ..quant.calibration.calibrate import calibrate, static_layers
from ..quant.core.config import QuantConfig, config_to_dict, load_recipe, recipe_from_dict

__all__ = ["QuantizationMonitor", "QuantizationBudgetError", "DEFAULT_MONITOR_RECIPE"]

#: int8 tables and int8 linears with calibrated (static) activations: ranges that can go stale
DEFAULT_MONITOR_RECIPE: dict[str, Any] = {
    "embeddings": {"precision": "int8"},
    "linears": {"precision": "int8", "activation": "static", "observer": "minmax"},
}

_OWNER = "QuantizationMonitor: "
_CHOICES = {
    "on_violation": ("warn", "recalibrate", "raise"),
    "calibrate_on": ("train", "val"),
    "outputs": ("logits", "probs"),
}
_FIGURES = ("delta_ne", "delta_auc", "pred_drift", "out_of_range_rate", "out_of_range_rate_max")


class QuantizationBudgetError(RuntimeError):
    """The quantized twin is over budget and ``QuantizationMonitor(on_violation="raise")``."""


class QuantizationMonitor(Callback):
    """Monitor the accuracy gap of the quantized twin during validation; warn / recalibrate / raise.

    Args:
        recipe: quantization recipe: the dict a YAML file holds (``{"linears": {"precision": "int8",
            "activation": "static"}}``), a path to such a YAML file, or a ``QuantConfig``
            (default :data:`DEFAULT_MONITOR_RECIPE`). Out-of-range rates need static int8 linears.
        budget_ne: largest allowed relative NE increase (0.01 = 1 %); ``None`` disables the check.
        budget_auc: largest allowed absolute AUC drop; ``None`` disables the check.
        out_of_range_rate: largest allowed share of a static layer's input values outside its
            calibrated range (worst layer); ``None`` disables the check.
        on_violation: ``"warn"``, ``"recalibrate"`` (warn, recalibrate on recent data, re-measure) or
            ``"raise"`` (:class:`QuantizationBudgetError`).
        calibrate_on: ``"train"``: the ``calib_batches`` most recent training batches (kept by
            reference); ``"val"``: the first ``calib_batches`` validation batches of the run (the
            re-measurement after recalibration is then in-sample).
        calib_batches: batches per calibration.
        max_batches: validation batches (of the first validation dataloader) measured per run and rank.
        every_n_val_epochs: monitor every n-th validation run (sanity checks are skipped).
        forward_fn: name of a LightningModule method ``fn(batch) -> outputs`` (default: the call form of
            :class:`~lightning_recsys.data.ModelContract`: ``module(batch)`` for a RecsysBatch,
            ``module(*inputs)`` for an ``(inputs..., labels)`` tuple, ``module(features)`` for a dict).
        task: which output to monitor: an index (column of a ``[B, T]`` tensor, item of a tuple/list or
            of a dict's values) or a name (dict key, or an entry of the module's ``tasks`` list).
        label_key: where the labels are: ``None`` (``batch.labels[task name]`` for ``RecsysBatch``,
            ``batch["label"|"labels"|"y"|"target"]`` for dicts, the last item of a tuple/list), a key
            or an index.
        outputs: whether the outputs are ``"logits"`` or ``"probs"``.
        log_prefix: prefix of the logged names.

    Attributes:
        history: one dict per monitored run: ``step``, the float and quantized NE / AUC / mean
            prediction, the logged figures, ``out_of_range_by_layer``, ``violations`` (messages),
            ``action`` (``"none"``, ``"warned"``, ``"recalibrated"``, ``"raised"``) and ``after`` (the
            figures after recalibration, or ``None``).
        ranges: the calibrated activation range per static layer (``None`` before the first calibration);
            ``calibration_step``: the global step it was taken at.
        twin: the quantized twin of the last run (for inspection or export).

    Recipe override patterns match the twin's module names, which are the LightningModule's
    (``"model.backbone.bottom_mlp.0"`` for ``RecsysModule``): ``".*bottom_mlp\\.0"`` style patterns work.
    """

    def __init__(
        self,
        recipe: Mapping[str, Any] | str | QuantConfig | None = None,
        budget_ne: float | None = 0.01,
        budget_auc: float | None = 0.005,
        out_of_range_rate: float | None = 0.01,
        on_violation: Literal["warn", "recalibrate", "raise"] = "recalibrate",
        calibrate_on: Literal["train", "val"] = "train",
        calib_batches: int = 8,
        max_batches: int = 16,
        every_n_val_epochs: int = 1,
        forward_fn: str | None = None,
        task: int | str = 0,
        label_key: int | str | None = None,
        outputs: Literal["logits", "probs"] = "logits",
        log_prefix: str = "quant_monitor/",
    ) -> None:
        for arg, val in (("calib_batches", calib_batches), ("max_batches", max_batches), ("every_n_val_epochs", every_n_val_epochs)):
            check_int(arg, val, low=1, owner=_OWNER)
        limits = (("budget_ne", budget_ne, None), ("budget_auc", budget_auc, 1.0), ("out_of_range_rate", out_of_range_rate, 1.0))
        for arg, val, hi in limits:
            check_number(arg, val, low=0.0, high=hi, optional=True, owner=_OWNER)
        for arg, val in (("on_violation", on_violation), ("calibrate_on", calibrate_on), ("outputs", outputs)):
            check_choice(arg, val, _CHOICES[arg], owner=_OWNER)
        if not isinstance(task, str):
            check_int("task", task, low=0, owner=_OWNER)
        if label_key is not None and (isinstance(label_key, bool) or not isinstance(label_key, (int, str))):
            raise TypeError(f"{_OWNER}label_key must be None, a key (str) or an index (int), got {label_key!r}")
        if forward_fn is not None and not isinstance(forward_fn, str):
            raise TypeError(f"{_OWNER}forward_fn must be None or the name of a LightningModule method, got {forward_fn!r}")
        if forward_fn is not None and not forward_fn.isidentifier():
            raise ConfigurationError(f"{_OWNER}forward_fn must be the name of a LightningModule method, got {forward_fn!r}")
        self.recipe = _resolve_recipe(recipe)
        self.budget_ne, self.budget_auc, self.out_of_range_rate = budget_ne, budget_auc, out_of_range_rate
        self.on_violation, self.calibrate_on, self.outputs = on_violation, calibrate_on, outputs
        self.calib_batches, self.max_batches, self.every_n_val_epochs = calib_batches, max_batches, every_n_val_epochs
        self.forward_fn, self.task, self.label_key = forward_fn, task, label_key
        self._call: Callable[[nn.Module, Any], Any] | None = None  # derived from the model and a batch on first use
        self._output_keys: list[str] = []  # a dict output's keys: the task names when the model has no `tasks`
        self.log_prefix = log_prefix
        self.history: list[dict[str, Any]] = []
        self.ranges: dict[str, list[float]] | None = None
        self.calibration_step: int | None = None
        self.num_calibrations = 0
        self.num_val_runs = 0
        self.num_violations = 0
        self.twin: nn.Module | None = None
        self._recent: deque = deque(maxlen=calib_batches)
        self._val_batches: list[Any] = []
        self._active = False

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(recipe=config_to_dict(self.recipe), task=self.task, on_violation=self.on_violation)

    # ------------------------------------------------------------------ hooks
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.forward_fn is not None and not callable(getattr(pl_module, self.forward_fn, None)):
            raise ConfigurationError(f"{_OWNER}forward_fn={self.forward_fn!r}: {type(pl_module).__name__} has no such method")
        self._call = None

    @override
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.calibrate_on == "train":
            self._recent.append(batch)

    @override
    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._val_batches = []
        self._active = not trainer.sanity_checking and (self.num_val_runs + 1) % self.every_n_val_epochs == 0

    @override
    def on_validation_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        if self._active and dataloader_idx == 0 and len(self._val_batches) < self.max_batches:
            self._val_batches.append(batch)

    @override
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        if self._active:
            with torch.inference_mode(False), torch.no_grad():
                self._monitor(trainer, pl_module)
        self.num_val_runs += 1
        self._val_batches = []

    # ------------------------------------------------------------------ state
    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "history": copy.deepcopy(self.history),
            "ranges": copy.deepcopy(self.ranges),
            "calibration_step": self.calibration_step,
            "num_calibrations": self.num_calibrations,
            "num_val_runs": self.num_val_runs,
            "num_violations": self.num_violations,
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = copy.deepcopy(list(state_dict["history"]))
        self.ranges = copy.deepcopy(state_dict["ranges"])
        self.calibration_step = state_dict["calibration_step"]
        self.num_calibrations = int(state_dict["num_calibrations"])
        self.num_val_runs = int(state_dict["num_val_runs"])
        self.num_violations = int(state_dict["num_violations"])

    # ------------------------------------------------------------------ worker
    def _monitor(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        batches = self._val_batches
        if not batches:
            rank_zero_warn("QuantizationMonitor: the validation run produced no batches; nothing measured")
            return
        fp32 = [self._predict(pl_module, b) for b in batches]
        labels = [self._labels(b, pl_module, p.numel()) for b, p in zip(batches, fp32)]
        ref = self._scores(fp32, labels)
        twin = detached_copy(pl_module)
        quantize_(twin, self.recipe)
        twin.eval()
        layers = static_layers(twin)
        calibrated_now = False
        if layers and (self.ranges is None or set(self.ranges) != set(layers)):
            if self.ranges is not None:
                rank_zero_warn("QuantizationMonitor: the stored calibration does not match the twin's layers; recalibrating")
            self._calibrate(trainer, twin, batches)
            calibrated_now = True
        for name, m in layers.items():
            m.set_activation_range(*self.ranges[name])
        entry: dict[str, Any] = {
            "val_run": self.num_val_runs, "step": trainer.global_step, "epoch": trainer.current_epoch,
            "num_batches": len(batches), "calibrated_this_run": calibrated_now,
            "calibration_step": self.calibration_step, "ne_fp32": ref["ne"], "auc_fp32": ref["auc"],
            "pred_mean_fp32": ref["pred_mean"], "label_rate": ref["label_rate"],
        }  # fmt: skip
        entry.update(self._measure(trainer, twin, batches, ref, labels))
        entry["violations"] = self._violations(entry)
        entry["action"], entry["after"] = "none", None
        violated = trainer.strategy.reduce_boolean_decision(bool(entry["violations"]), all=False)
        if violated:
            self.num_violations += 1
            msg = f"QuantizationMonitor (step {trainer.global_step}): quantized twin over budget: {'; '.join(entry['violations'])}"
            if self.on_violation == "raise":
                entry["action"] = "raised"
                self._record(pl_module, entry)
                raise QuantizationBudgetError(msg)
            if self.on_violation == "recalibrate" and not calibrated_now:
                self._calibrate(trainer, twin, batches)
                for name, m in layers.items():
                    m.set_activation_range(*self.ranges[name])
                after = self._measure(trainer, twin, batches, ref, labels)
                after["violations"] = self._violations(after)
                after["calibration_step"] = self.calibration_step
                entry["action"], entry["after"] = "recalibrated", after
                msg += f"; recalibrated on {self._source_name()} data: " + (
                    f"still over budget: {'; '.join(after['violations'])}" if after["violations"] else "back under budget"
                )
            else:
                entry["action"] = "warned"
                if self.on_violation == "recalibrate":
                    msg += " (calibrated in this run already: no fresher data to recalibrate on)"
            rank_zero_warn(msg)
        self.twin = twin
        self._record(pl_module, entry)

    def _record(self, pl_module: pl.LightningModule, entry: dict[str, Any]) -> None:
        self.history.append(entry)
        log = {k: entry[k] for k in _FIGURES}
        log["violation"] = float(bool(entry["violations"]))
        if entry["after"] is not None:
            log.update({f"{k}_after": entry["after"][k] for k in _FIGURES})
        for k, v in log.items():
            pl_module.log(self.log_prefix + k, float(v), on_step=False, on_epoch=True, sync_dist=True, batch_size=1)

    def _calibration_data(self, batches: list[Any]) -> list[Any]:
        if self.calibrate_on == "train" and self._recent:
            return list(self._recent)
        return batches[: self.calib_batches]

    def _source_name(self) -> str:
        return "recent training" if self.calibrate_on == "train" and self._recent else "validation"

    def _calibrate(self, trainer: pl.Trainer, twin: nn.Module, batches: list[Any]) -> None:
        data = self._calibration_data(batches)
        if self.calibrate_on == "train" and not self._recent:
            rank_zero_info("QuantizationMonitor: no training batch seen yet; calibrating on validation batches")
        info = calibrate(twin, data, num_batches=len(data), forward_fn=self._forward)
        names = sorted(info)
        ranges = torch.tensor([info[n]["range"] for n in names], dtype=torch.float64).reshape(-1, 2)
        if trainer.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            both = torch.stack([-ranges[:, 0], ranges[:, 1]]).to(trainer.strategy.root_device)
            torch.distributed.all_reduce(both, op=torch.distributed.ReduceOp.MAX)  # union of the ranks' ranges
            ranges = torch.stack([-both[0], both[1]], dim=1).cpu()
        self.ranges = {n: [float(lo), float(hi)] for n, (lo, hi) in zip(names, ranges.tolist())}
        self.calibration_step = trainer.global_step
        self.num_calibrations += 1

    # ------------------------------------------------------------------ measurement
    def _measure(
        self, trainer: pl.Trainer, twin: nn.Module, batches: list[Any], ref: dict[str, float], labels: list[Tensor]
    ) -> dict[str, Any]:
        layers = static_layers(twin)
        names = sorted(layers)
        counts = torch.zeros(2, len(names), dtype=torch.float64)  # values outside, values seen

        def hook(i: int, lo: float, hi: float):
            def count(module: nn.Module, args: tuple) -> None:
                x = args[0].detach()
                counts[0, i] += float(((x < lo) | (x > hi)).sum())
                counts[1, i] += x.numel()

            return count

        handles = [layers[n].register_forward_pre_hook(hook(i, *layers[n].calibrated_range())) for i, n in enumerate(names)]
        try:
            quant = [self._predict(twin, b) for b in batches]
        finally:
            for h in handles:
                h.remove()
        if trainer.world_size > 1:
            counts = trainer.strategy.reduce(counts.to(trainer.strategy.root_device), reduce_op="sum").cpu()
        q = self._scores(quant, labels)
        by_layer = {n: float(counts[0, i] / counts[1, i]) if counts[1, i] > 0 else 0.0 for i, n in enumerate(names)}
        total = float(counts[1].sum())
        return {
            "ne_quant": q["ne"], "auc_quant": q["auc"], "pred_mean_quant": q["pred_mean"],
            "delta_ne": q["ne"] / ref["ne"] - 1.0 if ref["ne"] else math.nan,
            "delta_auc": ref["auc"] - q["auc"],
            "pred_drift": q["pred_mean"] - ref["pred_mean"],
            "out_of_range_rate": float(counts[0].sum()) / total if total > 0 else 0.0,
            "out_of_range_rate_max": max(by_layer.values(), default=0.0),
            "out_of_range_by_layer": by_layer,
        }  # fmt: skip

    def _scores(self, preds: list[Tensor], labels: list[Tensor]) -> dict[str, float]:
        """NE, AUC, mean predicted probability and label rate (synced over ranks by torchmetrics)."""
        device = preds[0].device
        ne = NormalizedEntropy(from_logits=self.outputs == "logits").to(device)
        auc, pred_mean, label_rate = BinaryAUROC().to(device), MeanMetric().to(device), MeanMetric().to(device)
        for p, y in zip(preds, labels):
            prob = torch.sigmoid(p) if self.outputs == "logits" else p
            ne.update(p, y)
            auc.update(prob, y.long())
            pred_mean.update(prob)
            label_rate.update(y)
        return {
            "ne": float(ne.compute()), "auc": float(auc.compute()),
            "pred_mean": float(pred_mean.compute()), "label_rate": float(label_rate.compute()),
        }  # fmt: skip

    # ------------------------------------------------------------------ model outputs and labels
    def _forward(self, module: nn.Module, batch: Any) -> Any:
        if self.forward_fn is not None:
            return getattr(module, self.forward_fn)(batch)
        if self._call is None:  # the model contract's call form: model(batch), model(*inputs), model(features)
            self._call = ModelContract.infer(module, batch, label_key=self.label_key).call
        return self._call(module, batch)

    def _predict(self, module: nn.Module, batch: Any) -> Tensor:
        out = self._forward(module, batch)
        if isinstance(out, Mapping):
            keys = self._output_keys = [str(k) for k in out]
            if isinstance(self.task, str):
                if self.task not in out:
                    raise ConfigurationError(f"{_OWNER}task={self.task!r} is not among the model's outputs {keys}")
                out = out[self.task]
            else:
                out = out[keys[self._index(len(keys), module, "outputs")]]
        elif isinstance(out, (tuple, list)):
            out = out[self._index(len(out), module, "outputs")]
        elif isinstance(out, Tensor) and out.dim() == 2 and out.shape[1] > 1:
            out = out[:, self._index(out.shape[1], module, "output columns")]
        if not isinstance(out, Tensor):
            raise TypeError(f"{_OWNER}the monitored output must be a tensor, got {type(out).__name__}; set task= or forward_fn=")
        return out.detach().float().reshape(-1)

    def _index(self, n: int, module: nn.Module, what: str) -> int:
        if isinstance(self.task, str):
            tasks = list(getattr(module, "tasks", None) or self._output_keys)
            if self.task not in tasks:
                raise ConfigurationError(
                    f"{_OWNER}task={self.task!r}: the model gives {n} positional {what} and its `tasks` are {tasks}; pass an index"
                )
            return tasks.index(self.task)
        if self.task >= n:
            raise ConfigurationError(f"{_OWNER}task={self.task} is out of range: the model gives {n} {what}")
        return self.task

    def _labels(self, batch: Any, module: nn.Module, n: int) -> Tensor:
        key, y = self.label_key, None
        labels = getattr(batch, "labels", None)
        if isinstance(labels, Mapping):
            if key is None:
                if isinstance(self.task, str):
                    key = self.task
                else:
                    tasks = list(getattr(module, "tasks", None) or labels)
                    key = tasks[self.task] if self.task < len(tasks) else None
            y = labels.get(key) if isinstance(key, str) else None
        elif isinstance(batch, Mapping):
            keys = [key] if key is not None else LABEL_KEYS
            y = next((batch[k] for k in keys if k in batch), None)
        elif isinstance(batch, (tuple, list)) and batch:
            if key is None:
                y = batch[-1]
            elif isinstance(key, int) and -len(batch) <= key < len(batch):
                y = batch[key]
        if not isinstance(y, Tensor):
            raise ConfigurationError(
                f"QuantizationMonitor cannot find the labels in a {type(batch).__name__} batch "
                f"(label_key={self.label_key!r}); set label_key="
            )
        if y.dim() == 2 and y.shape[1] > 1:
            y = y[:, self._index(y.shape[1], module, "label columns")]
        y = y.detach().float().reshape(-1)
        if y.numel() != n:
            raise ConfigurationError(f"{_OWNER}labels hold {y.numel()} values for {n} predictions; check task= / label_key=")
        if not bool(((y == 0) | (y == 1)).all()):
            raise ConfigurationError(f"QuantizationMonitor found labels that are not 0/1 in a {type(batch).__name__} batch "
                             f"(e.g. {y[(y != 0) & (y != 1)][:3].tolist()}; label_key={self.label_key!r}): point label_key= "
                             "at the binary labels")  # fmt: skip
        return y

    def _violations(self, m: dict[str, Any]) -> list[str]:
        out = []
        if self.budget_ne is not None and m["delta_ne"] > self.budget_ne:
            out.append(f"delta NE {m['delta_ne']:.4%} > budget {self.budget_ne:.4%}")
        if self.budget_auc is not None and m["delta_auc"] > self.budget_auc:
            out.append(f"AUC drop {m['delta_auc']:.5f} > budget {self.budget_auc:.5f}")
        if self.out_of_range_rate is not None and m["out_of_range_rate_max"] > self.out_of_range_rate:
            worst = max(m["out_of_range_by_layer"], key=m["out_of_range_by_layer"].get)
            out.append(
                f"{m['out_of_range_rate_max']:.2%} of the inputs of {worst!r} outside the calibrated range "
                f"> {self.out_of_range_rate:.2%}"
            )
        return out


def _resolve_recipe(recipe: Mapping[str, Any] | str | QuantConfig | None) -> QuantConfig:
    if recipe is None:
        return recipe_from_dict(DEFAULT_MONITOR_RECIPE)
    if isinstance(recipe, QuantConfig):
        return recipe
    if isinstance(recipe, Mapping):
        return recipe_from_dict(recipe)
    if isinstance(recipe, (str, Path)):
        return load_recipe(recipe)
    raise TypeError(f"recipe must be None, a recipe dict, a YAML path or a QuantConfig, got {type(recipe).__name__}")
