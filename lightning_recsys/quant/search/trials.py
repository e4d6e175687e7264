"""``TrialRunner``: evaluate per-module precision plans of a float model on cached held-out batches.

The engine behind :func:`~lightning_recsys.quant.sensitivity_analysis` and
:func:`~lightning_recsys.quant.search_plan`. Done once: a calibration pass on the float model
(static int8 activations), the held-out batches, labels and float logits, and every table / linear's
float inputs and outputs per batch. A plan (``{module name: precision}``, others float) swaps cached
quantized variants into a working copy; float modules whose input equals the cached float input
return their cached output, so a trial recomputes only what the quantized modules change.

Example:
    >>> from lightning_recsys.data import SyntheticCTRDataModule
    >>> from lightning_recsys.models import DLRM
    >>> dm = SyntheticCTRDataModule(num_train=512, num_val=512, num_test=256, max_rows=50, num_sparse=3,
    ...                             batch_size=128)
    >>> runner = TrialRunner(DLRM.from_spec(dm.feature_spec, embedding_dim=8), None, dm.val_dataloader(),
    ...                      TrialOptions(eval_batches=2))
    >>> sorted(runner.evaluate({"top_mlp.0": "int8"}))
    ['auc_delta', 'ne_rel_delta', 'per_task']
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...data.contract import ModelContract, as_logits
from ..calibration.observers import Observer, make_observer
from ..core.api import apply_config, is_linear, is_table, set_submodule, is_quantized_module
from ..core.config import FP16Config, Int8LinearConfig, QuantConfig, RowwiseEmbeddingConfig
from ..core.precisions import LINEAR_LADDER, TABLE_LADDER
from .options import TrialOptions
from .report import eval_metrics, state_bytes

__all__ = ["TrialOptions", "TrialRunner", "precision_config", "static_linear_config"]

_DB_CAP = 200.0  # SQNR of an exact result (JSON has no inf)


def precision_config(kind: str, precision: str, linear_config: Int8LinearConfig, int4_clip: str = "minmax") -> QuantConfig:
    """The config quantizing a module of ``kind`` ("embedding" / "linear") to ``precision``."""
    if precision == "fp16":
        return FP16Config()
    if kind == "embedding" and precision in ("int8", "int4"):
        return RowwiseEmbeddingConfig(bits=int(precision[3]), clip=int4_clip if precision == "int4" else "minmax")
    if kind == "linear" and precision == "int8":
        return linear_config
    if kind == "linear" and precision == "int8_static":
        return static_linear_config(linear_config)
    raise ValueError(f"no {precision!r} quantization for {kind} modules; expected one of {_ladder(kind)[:-1]}")


def static_linear_config(linear_config: Int8LinearConfig) -> Int8LinearConfig:
    """The ``"int8_static"`` rung: ``linear_config`` itself when it is static, else static activations
    with a percentile observer (same percentile and bins)."""
    if linear_config.activation == "static":
        return linear_config
    return dataclasses.replace(linear_config, activation="static", observer="percentile")


def _ladder(kind: str) -> tuple[str, ...]:
    return TABLE_LADDER if kind == "embedding" else LINEAR_LADDER


def _detach(x: Any) -> Any:
    if isinstance(x, Tensor):
        return x.detach().clone()
    if isinstance(x, (tuple, list)):
        return type(x)(_detach(v) for v in x)
    if isinstance(x, Mapping):
        return {k: _detach(v) for k, v in x.items()}
    return x


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, Tensor) or isinstance(b, Tensor):
        return isinstance(a, Tensor) and isinstance(b, Tensor) and a.shape == b.shape and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, (tuple, list)):
        return isinstance(b, (tuple, list)) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, Mapping):
        return isinstance(b, Mapping) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    try:
        return a is b or bool(a == b)
    except Exception:  # noqa: BLE001 - objects without a boolean ==: treat as different
        return False


class _ReplayState:
    def __init__(self) -> None:
        self.batch: int | None = None  # index into the cached search batches, None = no replay
        self.enabled = True
        self.calls: dict[str, int] = {}
        self.hits = 0
        self.handed_out: list[tuple[Tensor, int]] = []  # cached outputs returned, with their version counters

    def intact(self) -> bool:
        """False when the model modified a replayed (cached) output in place."""
        ok = all(t._version == v for t, v in self.handed_out)
        self.handed_out.clear()
        return ok


def _tensors(x: Any) -> list[Tensor]:
    if isinstance(x, Tensor):
        return [x]
    if isinstance(x, (tuple, list)):
        return [t for v in x for t in _tensors(v)]
    if isinstance(x, Mapping):
        return [t for v in x.values() for t in _tensors(v)]
    return []


class _Replay(nn.Module):
    """A float module that returns its cached output when its input equals the cached float input."""

    def __init__(self, inner: nn.Module, fqn: str, records: list[list[tuple]], state: _ReplayState) -> None:
        super().__init__()
        self.inner = inner
        self._fqn, self._records, self._state = fqn, records, state

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        st = self._state
        if st.batch is not None and st.enabled:
            k = st.calls.get(self._fqn, 0)
            st.calls[self._fqn] = k + 1
            calls = self._records[st.batch]
            if k < len(calls) and _same(args, calls[k][0]) and _same(kwargs, calls[k][1]):
                st.hits += 1
                out = calls[k][2]  # not copied: an in-place change is caught by the version check
                st.handed_out.extend((t, t._version) for t in _tensors(out))
                return out
        return self.inner(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["inner"], name)


def _recorder(rec: list[list[tuple]]) -> Callable:
    """Forward hook appending ``(args, kwargs, output)`` copies to the current batch's call list."""
    return lambda mod, args, kwargs, out: rec[-1].append((_detach(args), _detach(kwargs), _detach(out)))


def _as_2d(x: Any, what: str) -> Tensor:
    if isinstance(x, (tuple, list)):
        x = x[0]
    if not isinstance(x, Tensor):
        raise TypeError(f"{what} must be a tensor [B] or [B, T], got {type(x).__name__}")
    x = x.detach().float()
    return x[:, None] if x.dim() == 1 else x.reshape(x.shape[0], -1)


class TrialRunner:
    """Caches batches, float logits and module activations once; evaluates any per-module precision
    plan (``{module name: precision}``, unnamed modules stay float) on the cached held-out batches.

    Used by :func:`~lightning_recsys.quant.sensitivity_analysis` and
    :func:`~lightning_recsys.quant.search_plan`.
    The model passed in is never modified (the runner works on a copy). ``calib_loader`` calibrates
    static int8 activations (``linear_config`` static, or the ``"int8_static"`` rung); without it the
    linear ladder of a dynamic ``linear_config`` leaves ``"int8_static"`` out. ``options``
    (:class:`~lightning_recsys.quant.search.options.TrialOptions`, default ``TrialOptions()``) holds
    the settings; ``confirm_batches`` come from ``confirm_loader`` or else the next batches of
    ``eval_loader``.

    Example:
        >>> runner = TrialRunner(model, train_loader, val_loader,              # doctest: +SKIP
        ...                      TrialOptions(eval_batches=4, confirm_batches=4, task="worst"))
        >>> runner.evaluate({"top_mlp.0": "int8"})["ne_rel_delta"]            # doctest: +SKIP
    """

    def __init__(
        self,
        model: nn.Module,
        calib_loader: Iterable | None,
        eval_loader: Iterable,
        options: TrialOptions | None = None,
        *,
        confirm_loader: Iterable | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        if options is None:
            options = TrialOptions()
        if not isinstance(options, TrialOptions):
            raise TypeError(f"options must be a TrialOptions, got {type(options).__name__}")
        self.options = options
        calib_batches, eval_batches = options.calib_batches, options.eval_batches
        confirm_batches = options.confirm_batches or 0
        self.linear_config: Int8LinearConfig = options.linear_config  # type: ignore[assignment]  # never None once validated
        self.int4_clip = options.int4_clip
        linear_ladder = tuple(options.linear_precisions)
        if self.linear_config.activation == "static" and "int8" in linear_ladder:  # "int8" is already static
            linear_ladder = tuple(p for p in linear_ladder if p != "int8_static")
        if calib_loader is None and self.linear_config.activation == "dynamic":  # nothing to calibrate on
            linear_ladder = tuple(p for p in linear_ladder if p != "int8_static") or linear_ladder
        self.ladders = {"embedding": tuple(options.table_precisions), "linear": linear_ladder}
        t0 = time.perf_counter()
        self.model = model  # the caller's float model: read, never modified
        self.work = copy.deepcopy(model).eval()
        self.fp32_bytes = state_bytes(self.work)
        self.kinds = self._find_candidates()
        self.float_modules = {n: self.work.get_submodule(n) for n in self.kinds}
        self.batches: dict[str, list] = {"search": [], "confirm": []}
        rest = self._take(eval_loader, eval_batches, self.batches["search"], "eval_loader")
        if confirm_loader is not None and confirm_batches:
            self._take(iter(confirm_loader), confirm_batches, self.batches["confirm"], "confirm_loader")
        elif confirm_batches:
            self._take(rest, confirm_batches, self.batches["confirm"], None)  # the next, disjoint batches
        contract = ModelContract.infer(self.work, self.batches["search"][0], forward_fn=options.forward_fn,
                                       label_key=options.label_fn)  # fmt: skip
        self.forward_fn, self.label_fn, self.tasks = contract.call, contract.labels, list(contract.tasks)
        self.observers: dict[str, Observer] = {}
        self.calibration_batches = 0
        static = self.linear_config.activation == "static" or "int8_static" in self.ladders["linear"]
        if static and any(k == "linear" for k in self.kinds.values()):
            if calib_loader is None:
                raise ValueError("static int8 activations need calibration data: pass calib_loader")
            self._calibrate(calib_loader, calib_batches)
        self.labels = {s: torch.cat([_as_2d(self.label_fn(b), "label_fn(batch)") for b in bs]) if bs else None
                       for s, bs in self.batches.items()}  # fmt: skip
        self.records: dict[str, list[list[tuple]]] = {n: [] for n in self.kinds}
        self.state = _ReplayState()
        self.fp32_logits = {"search": self._record()}
        for fqn, m in self.float_modules.items():  # float modules replay their cached outputs from now on
            set_submodule(self.work, fqn, _Replay(m, fqn, self.records[fqn], self.state))
        self.fp32_logits["confirm"] = self._run("confirm")[0] if self.batches["confirm"] else None
        self.task = _check_task(options.task, self.tasks, self.fp32_logits["search"].shape[1])
        self.baseline = {s: self._per_task(self.fp32_logits[s], s) for s in self.batches if self.batches[s]}
        self._variants: dict[tuple[str, str], nn.Module] = {}
        self.setup_seconds = time.perf_counter() - t0

    # ----------------------------------------------------------------- set-up
    def _find_candidates(self) -> dict[str, str]:
        kinds: dict[str, str] = {}
        for fqn, m in self.work.named_modules():
            if not fqn or any(fqn.startswith(p + ".") for p in kinds):
                continue
            if is_quantized_module(m):
                raise ValueError(f"module {fqn!r} is already quantized ({type(m).__name__}): pass the float model")
            if is_table(m) or is_linear(m):
                kinds[fqn] = "embedding" if is_table(m) else "linear"
        if not kinds:
            raise ValueError("the model has no embedding table or linear layer to quantize")
        return kinds

    @torch.no_grad()
    def _calibrate(self, loader: Iterable, num_batches: int) -> None:
        lin = static_linear_config(self.linear_config)
        handles = []
        for fqn, kind in self.kinds.items():
            if kind == "linear":
                obs = self.observers[fqn] = make_observer(lin.observer, percentile=lin.percentile, bins=lin.bins)
                handles.append(self.float_modules[fqn].register_forward_pre_hook(lambda m, a, o=obs: o.observe(a[0])))
        try:
            for i, batch in enumerate(loader):
                if i >= num_batches:
                    break
                self.forward_fn(self.work, batch)
                self.calibration_batches += 1
        finally:
            for h in handles:
                h.remove()
        if self.calibration_batches == 0:
            raise ValueError("the calibration loader produced no batches")

    @staticmethod
    def _take(loader: Iterable, n: int, out: list, what: str | None):
        it = iter(loader)
        for _ in range(n):
            try:
                out.append(next(it))
            except StopIteration:
                break
        if what is not None and not out:
            raise ValueError(f"{what} produced no batches")
        return it

    @torch.no_grad()
    def _record(self) -> Tensor:
        """Float logits of the search batches, recording every candidate's inputs and output."""
        for rec in self.records.values():
            rec.clear()
        handles = [m.register_forward_hook(_recorder(self.records[fqn]), with_kwargs=True) for fqn, m in self.float_modules.items()]
        outs = []
        try:
            for batch in self.batches["search"]:
                for rec in self.records.values():
                    rec.append([])
                outs.append(as_logits(self.forward_fn(self.work, batch), self.tasks))
        finally:
            for h in handles:
                h.remove()
        logits = torch.cat(outs)
        if logits.shape != self.labels["search"].shape:
            raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(self.labels['search'].shape)} differ in shape")
        return logits

    # ----------------------------------------------------------------- trials
    def variant(self, fqn: str, precision: str) -> nn.Module:
        """``fqn`` quantized to ``precision`` (built once and cached; ``"fp32"`` is the float module)."""
        if precision == "fp32":
            return self.float_modules[fqn]
        key = (fqn, precision)
        if key not in self._variants:
            kind = self.kinds[fqn]
            if precision not in self.ladders[kind]:
                raise ValueError(f"precision {precision!r} is not a candidate for {kind} {fqn!r}: {self.ladders[kind]}")
            q = apply_config(self.float_modules[fqn], precision_config(kind, precision, self.linear_config, self.int4_clip), fqn)
            if fqn in self.observers and getattr(q, "activation", None) == "static":
                q.observer = self.observers[fqn]
                q.set_activation_range(*self.observers[fqn].compute_range())
            self._variants[key] = q.eval()
        return self._variants[key]

    @torch.no_grad()
    def _run(self, split: str) -> tuple[Tensor, bool]:
        outs, intact = [], True
        for i, batch in enumerate(self.batches[split]):
            self.state.batch = i if split == "search" else None
            self.state.calls.clear()
            outs.append(as_logits(self.forward_fn(self.work, batch), self.tasks))
            intact = self.state.intact() and intact
        self.state.batch = None
        return torch.cat(outs), intact

    def logits(self, plan: Mapping[str, str], split: Literal["search", "confirm"] = "search") -> Tensor:
        """Logits of the model with ``plan`` applied (the working model is restored afterwards)."""
        if not self.batches.get(split):
            raise ValueError(f"no {split!r} batches were cached")
        logits, intact = self._logits(plan, split)
        if not intact:  # the model changed a cached module output in place: stop replaying, record afresh
            self.state.enabled = False
            self._record()
            logits, _ = self._logits(plan, split)
        return logits

    def _logits(self, plan: Mapping[str, str], split: str) -> tuple[Tensor, bool]:
        swapped = []
        try:
            for fqn, p in plan.items():
                if fqn not in self.kinds:
                    raise KeyError(f"{fqn!r} is not a quantizable module of the model")
                if p != "fp32":
                    set_submodule(self.work, fqn, self.variant(fqn, p))
                    swapped.append(fqn)
            return self._run(split)
        finally:
            for fqn in swapped:
                set_submodule(self.work, fqn, _Replay(self.float_modules[fqn], fqn, self.records[fqn], self.state))

    def evaluate(self, plan: Mapping[str, str], split: Literal["search", "confirm"] = "search") -> dict[str, Any]:
        """``{"ne_rel_delta", "auc_delta", "per_task"}`` of ``plan`` against float (reduced over tasks by ``task``)."""
        return self.compare(self.logits(plan, split), split)

    def compare(self, logits: Tensor, split: str) -> dict[str, Any]:
        per_task = self._per_task(logits, split)
        base = self.baseline[split]
        rows = {}
        for t in per_task:
            ne_fp, auc_fp = base[t]["ne"], base[t]["auc"]
            rows[t] = {**per_task[t], "ne_rel_delta": (per_task[t]["ne"] - ne_fp) / ne_fp, "auc_delta": per_task[t]["auc"] - auc_fp}
        return {**_reduce(rows, self.task), "per_task": rows}

    @torch.no_grad()
    def interval(self, logits: Tensor, split: str, draws: int = 200, level: float = 0.95) -> dict[str, list[float]]:
        """Paired bootstrap interval of the reduced ``ne_rel_delta`` / ``auc_delta`` of ``logits``
        against the float logits: rows are resampled with replacement (the same rows for both models)
        ``draws`` times; returns ``{metric: [lo, hi]}`` at ``level``. The relative NE change is the
        ratio of mean log losses (the base-rate entropy cancels), so only AUC needs a loop."""
        from torchmetrics.functional.classification import binary_auroc

        y, ref = self.labels[split], self.fp32_logits[split]
        n = y.shape[0]
        idx = torch.randint(0, n, (draws, n), generator=torch.Generator().manual_seed(0))
        ll = {k: F.binary_cross_entropy_with_logits(v.float(), y.float(), reduction="none") for k, v in (("q", logits), ("f", ref))}
        ne_rows = ll["q"][idx].mean(1) / ll["f"][idx].mean(1) - 1.0  # [draws, T]
        auc_rows = torch.empty_like(ne_rows)
        pq, pf = torch.sigmoid(logits.float()), torch.sigmoid(ref.float())
        with warnings.catch_warnings():  # a resample of a rare task may hold no positive: both AUCs read 0
            warnings.filterwarnings("ignore", message=r"No (positive|negative) samples")
            for d in range(draws):
                i = idx[d]
                for j in range(y.shape[1]):
                    yj = y[i, j].long()
                    auc_rows[d, j] = binary_auroc(pq[i, j], yj) - binary_auroc(pf[i, j], yj)
        cols = range(y.shape[1]) if self.task in ("mean", "worst") else [self._column(self.task)]
        ne = ne_rows[:, list(cols)]
        auc = auc_rows[:, list(cols)]
        if self.task == "worst":
            ne_red, auc_red = ne.amax(1), auc.amin(1)
        else:
            ne_red, auc_red = ne.mean(1), auc.mean(1)
        q = torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=ne_red.dtype)
        return {"ne_rel_delta": torch.quantile(ne_red, q).tolist(), "auc_delta": torch.quantile(auc_red, q).tolist()}

    def _column(self, task: str | int) -> int:
        names = self.tasks if len(self.tasks) == self.labels["search"].shape[1] else [str(i) for i in range(self.labels["search"].shape[1])]
        return names.index(str(task))

    def _per_task(self, logits: Tensor, split: str) -> dict[str, dict[str, float]]:
        y = self.labels[split]
        names = self.tasks if len(self.tasks) == y.shape[1] else [str(i) for i in range(y.shape[1])]
        out = {}
        for j, name in enumerate(names):
            col = y[:, j]
            if bool((col == col[0]).all()):
                raise ValueError(f"the held-out labels of task {name!r} hold a single class: AUC and NE are undefined")
            out[name] = eval_metrics(logits[:, j], col)
        return out

    @torch.no_grad()
    def output_sqnr_db(self, fqn: str, precision: str) -> float:
        """SQNR (dB) of the module's output at ``precision`` against float, on its cached float inputs."""
        q = self.variant(fqn, precision)
        signal = noise = 0.0
        for calls in self.records[fqn]:
            for args, kwargs, out in calls:
                ref, approx = _as_2d(out, "module output").double(), _as_2d(q(*args, **kwargs), "module output").double()
                signal += float(ref.pow(2).sum())
                noise += float((ref - approx).pow(2).sum())
        if noise == 0.0:
            return _DB_CAP
        return max(-_DB_CAP, min(_DB_CAP, 10.0 * math.log10(max(signal, 1e-300) / noise)))

    def bytes_of(self, fqn: str, precision: str) -> int:
        return state_bytes(self.variant(fqn, precision))


def _check_task(task: str | int, tasks: list[str], num_cols: int) -> str | int:
    if task in ("mean", "worst"):
        return task
    if isinstance(task, int) and not isinstance(task, bool):
        if not 0 <= task < num_cols:
            raise ValueError(f"task index {task} is out of range for a model with {num_cols} output column(s)")
        return tasks[task] if len(tasks) == num_cols else str(task)
    if isinstance(task, str) and task in tasks:
        return task
    raise ValueError(f"task must be 'mean', 'worst', a column index or one of the model's tasks {tasks}, got {task!r}")


def _reduce(rows: dict[str, dict[str, float]], task: str | int) -> dict[str, float]:
    if task in ("mean", "worst"):
        ne = [r["ne_rel_delta"] for r in rows.values()]
        auc = [r["auc_delta"] for r in rows.values()]
        if task == "mean":
            return {"ne_rel_delta": sum(ne) / len(ne), "auc_delta": sum(auc) / len(auc)}
        return {"ne_rel_delta": max(ne), "auc_delta": min(auc)}
    r = rows[str(task)]
    return {"ne_rel_delta": r["ne_rel_delta"], "auc_delta": r["auc_delta"]}
