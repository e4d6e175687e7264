"""Budgeted mixed-precision search: the smallest per-module plan that meets an NE / AUC budget.

Budget: ``budget_ne`` is the largest allowed *relative* NE increase as a fraction
(``0.001`` = 0.1 %: ``(NE_q - NE_fp32) / NE_fp32 <= 0.001``); ``budget_auc`` the largest allowed
absolute AUC drop (``AUC_fp32 - AUC_q <= budget_auc``). Give either or both.

Algorithm (Intel Neural Compressor's tolerance-driven fallback, with per-module sensitivities):

1. :class:`~lightning_recsys.quant.search.trials.TrialRunner` measures each module quantized alone
   at each candidate precision (tables int4 / int8 / fp16, linears int8 / fp16);
2. the start plan gives each module the cheapest precision whose effect *alone* fits the budget;
3. while the whole model misses the budget on the search batches, the module whose own effect at its
   current precision uses the largest share of the budget moves one step up
   (int4 -> int8 -> fp16 -> fp32 for tables, int8 -> fp16 -> fp32 for linears) and the WHOLE model
   is evaluated again (errors interact); every plan tried is recorded;
4. a plan that meets the budget on the search batches is checked on separate confirmation batches;
   when it misses there, the search goes on from it (step 3) instead of giving up. ``met`` is true
   only for a plan meeting the budget on both (and fitting ``max_size_ratio`` when given); otherwise
   the result says why. The final plan's figures carry paired-bootstrap 95% intervals (``ci95``).

The result holds the quantized model that was evaluated (``result.model``), the plan as a
:class:`RecipeConfig` with exact-name overrides, the trail, the sensitivities and, for static int8
linears, the calibration (ranges observed on the float model in one pass).

Example:
    >>> from lightning_recsys.data import SyntheticCTRDataModule
    >>> from lightning_recsys.models import DLRM
    >>> dm = SyntheticCTRDataModule(num_train=512, num_val=1024, num_test=256, max_rows=50, num_sparse=3,
    ...                             batch_size=128)
    >>> model = DLRM.from_spec(dm.feature_spec, embedding_dim=8)
    >>> res = search_plan(model, dm.train_dataloader(), dm.val_dataloader(), budget_ne=0.01,
    ...                   eval_batches=2, confirm_batches=2)
    >>> res.met, set(res.plan.values()) <= {"fp16", "fp32", "int4", "int8", "int8_static"}
    (True, True)
"""

from __future__ import annotations

import copy
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from torch import Tensor, nn

from ..._validation import ConfigurationError, check_number
from ..core.api import set_submodule
from ..core.config import FP32Config, Int8LinearConfig, RecipeConfig, RowwiseEmbeddingConfig, config_to_dict
from ..core.precisions import LINEAR_LADDER, LOW_PRECISIONS, TABLE_LADDER
from .report import state_bytes
from .sensitivity import SensitivityResult, sensitivity_with_runner
from .options import TrialOptions, resolve_options
from .trials import TrialRunner, precision_config

__all__ = ["Budget", "BudgetNotMetError", "PlanTrial", "SearchResult", "search_plan", "search_plan_with_runner",
           "plan_to_recipe", "check_size_ratio"]

class BudgetNotMetError(RuntimeError):
    """No precision plan meets the accuracy budget: the artifact is refused (only the report is written)."""


@dataclass
class Budget:
    """``ne``: max relative NE increase (fraction, 0.001 = 0.1 %); ``auc``: max absolute AUC drop."""

    ne: float | None = None
    auc: float | None = None

    def __post_init__(self) -> None:
        if self.ne is None and self.auc is None:
            raise ConfigurationError("give a budget: budget_ne (relative NE increase, 0.001 = 0.1%) and/or budget_auc (AUC drop)")
        check_number("budget_ne", self.ne, low=0.0, high=1.0, high_open=True, optional=True,
                     hint="a relative NE increase as a fraction: 0.001 = 0.1%")
        check_number("budget_auc", self.auc, low=0.0, high=1.0, high_open=True, optional=True,
                     hint="an absolute AUC drop, e.g. 0.001")

    def usage(self, ne_rel_delta: float, auc_delta: float) -> float:
        """Largest share of the budget used (> 1: over budget). A zero budget counts any loss as inf."""
        shares = []
        if self.ne is not None:
            shares.append(_share(ne_rel_delta, self.ne))
        if self.auc is not None:
            shares.append(_share(-auc_delta, self.auc))
        return max(shares)

    def meets(self, metrics: Mapping[str, Any]) -> bool:
        return self.usage(metrics["ne_rel_delta"], metrics["auc_delta"]) <= 1.0

    def describe(self) -> str:
        parts = []
        if self.ne is not None:
            parts.append(f"relative NE increase <= {100 * self.ne:g}%")
        if self.auc is not None:
            parts.append(f"AUC drop <= {self.auc:g}")
        return " and ".join(parts)


def _share(loss: float, budget: float) -> float:
    if budget > 0:
        return loss / budget
    return float("inf") if loss > 0 else 0.0


@dataclass
class PlanTrial:
    """One whole-model plan evaluated on the search batches."""

    step: int
    change: str
    bytes: int
    size_ratio: float
    ne_rel_delta: float
    auc_delta: float
    meets_budget: bool
    plan: dict[str, str]
    confirm_ne_rel_delta: float | None = None  # set when the plan met the budget on the search batches
    confirm_auc_delta: float | None = None
    confirmed: bool | None = None


@dataclass
class SearchResult:
    """Outcome of :func:`search_plan`. ``to_dict()`` is JSON-serialisable (without the model)."""

    met: bool
    message: str
    budget: Budget
    plan: dict[str, str]
    recipe: RecipeConfig
    search: dict[str, Any]
    confirm: dict[str, Any] | None
    bytes: int
    fp32_bytes: int
    int8_bytes_fraction: float
    reasons: dict[str, str]
    module_bytes: dict[str, int]
    trail: list[PlanTrial]
    sensitivity: SensitivityResult
    calibration: dict[str, dict[str, Any]]
    seconds: dict[str, float]
    references: dict[str, dict[str, Any]] = field(default_factory=dict)
    model: nn.Module | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "met": self.met, "message": self.message,
            "budget": {"ne_relative": self.budget.ne, "auc_drop": self.budget.auc, "text": self.budget.describe()},
            "plan": self.plan, "recipe": config_to_dict(self.recipe), "search": self.search, "confirm": self.confirm,
            "bytes": self.bytes, "fp32_bytes": self.fp32_bytes, "size_ratio": self.bytes / max(self.fp32_bytes, 1),
            "int8_bytes_fraction": self.int8_bytes_fraction, "reasons": self.reasons, "module_bytes": self.module_bytes,
            "trail": [t.__dict__ for t in self.trail], "sensitivity": self.sensitivity.to_dict(),
            "calibration": self.calibration, "seconds": self.seconds, "references": self.references,
        }  # fmt: skip


def plan_to_recipe(plan: Mapping[str, str], kinds: Mapping[str, str], linear_config: Int8LinearConfig | None = None,
                   int4_clip: str = "minmax") -> RecipeConfig:  # fmt: skip
    """A :class:`RecipeConfig` with int8 defaults and an exact-name (``re.escape``) override for every
    module whose precision differs from int8."""
    lin = linear_config or Int8LinearConfig()
    overrides = {}
    for fqn, p in plan.items():
        if p != "int8":
            overrides[re.escape(fqn)] = FP32Config() if p == "fp32" else precision_config(kinds[fqn], p, lin, int4_clip)
    return RecipeConfig(embeddings=RowwiseEmbeddingConfig(bits=8), linears=lin, overrides=overrides)


def _fmt(ne: float, auc: float) -> str:
    return f"ΔNE {100 * ne:+.4f}%, ΔAUC {auc:+.5f}"


def search_plan(
    model: nn.Module,
    calib_loader: Iterable | None,
    eval_loader: Iterable,
    *,
    budget_ne: float | None = None,
    budget_auc: float | None = None,
    confirm_loader: Iterable | None = None,
    forward_fn: Callable[[nn.Module, Any], Any] | None = None,
    label_fn: Callable[[Any], Tensor] | None = None,
    task: str | int = "mean",
    calib_batches: int = 16,
    eval_batches: int = 8,
    confirm_batches: int = 8,
    linear_config: Int8LinearConfig | None = None,
    int4_clip: Literal["minmax", "greedy"] = "minmax",
    table_precisions: Sequence[str] = TABLE_LADDER,
    linear_precisions: Sequence[str] = LINEAR_LADDER,
    max_size_ratio: float | None = None,
    options: TrialOptions | None = None,
) -> SearchResult:
    """Choose a precision per table / linear of ``model`` (not modified) meeting the budget with the
    fewest bytes. Search batches: the first ``eval_batches`` of ``eval_loader``; confirmation batches:
    ``confirm_batches`` from ``confirm_loader`` or else the next ones of ``eval_loader``.

    ``table_precisions`` / ``linear_precisions`` restrict the ladders (e.g. leave out ``"fp32"`` for
    an int8-only target); ``max_size_ratio`` caps the plan's bytes as a fraction of the float model's.

    The trial keywords (``forward_fn`` ... ``linear_precisions``, ``confirm_batches``) may instead be
    given as one :class:`~lightning_recsys.quant.TrialOptions` in ``options=`` (its
    ``confirm_batches=None`` means 8); giving both raises ``TypeError``.

    Example:
        >>> res = search_plan(model, train_loader, val_loader, budget_ne=0.001)  # doctest: +SKIP
        >>> opts = TrialOptions(eval_batches=4, confirm_batches=4)
        >>> res = search_plan(model, train_loader, val_loader, budget_ne=0.001,  # doctest: +SKIP
        ...                   options=opts)
    """
    Budget(budget_ne, budget_auc)  # validate before any work
    check_size_ratio(max_size_ratio)
    opts = resolve_options(
        options, search_plan, forward_fn=forward_fn, label_fn=label_fn, task=task, calib_batches=calib_batches,
        eval_batches=eval_batches, confirm_batches=confirm_batches, linear_config=linear_config, int4_clip=int4_clip,
        table_precisions=table_precisions, linear_precisions=linear_precisions,
    )  # fmt: skip
    if opts.confirm_batches is None:
        opts = opts.replace(confirm_batches=8)
    runner = TrialRunner(model, calib_loader, eval_loader, opts, confirm_loader=confirm_loader)
    return search_plan_with_runner(runner, sensitivity_with_runner(runner), budget_ne=budget_ne, budget_auc=budget_auc, max_size_ratio=max_size_ratio)


def check_size_ratio(max_size_ratio: float | None) -> None:
    """Raise unless ``max_size_ratio`` is ``None`` or a number in ``(0, 1]``."""
    check_number("max_size_ratio", max_size_ratio, low=0.0, high=1.0, low_open=True, optional=True)


def search_plan_with_runner(
    runner: TrialRunner,
    sens: SensitivityResult,
    *,
    budget_ne: float | None = None,
    budget_auc: float | None = None,
    table_precisions: Sequence[str] | None = None,
    linear_precisions: Sequence[str] | None = None,
    max_size_ratio: float | None = None,
) -> SearchResult:
    """The search step of :func:`search_plan` (which builds the runner and the sensitivities, then calls
    this), for callers that hold a :class:`~lightning_recsys.quant.search.trials.TrialRunner` and its
    :func:`~lightning_recsys.quant.search.sensitivity.sensitivity_with_runner` result: several
    budgets or narrower ladders (e.g. ``table_precisions=["int8", "fp16", "fp32"]``) reuse one analysis.

    Example:
        >>> runner = TrialRunner(model, None, val_loader)                   # doctest: +SKIP
        >>> sens = sensitivity_with_runner(runner)                           # doctest: +SKIP
        >>> small = search_plan_with_runner(runner, sens, budget_ne=0.001)   # doctest: +SKIP
        >>> no_int4 = search_plan_with_runner(runner, sens, budget_ne=0.001,  # doctest: +SKIP
        ...                                   table_precisions=["int8", "fp16", "fp32"])
    """
    budget = Budget(budget_ne, budget_auc)
    check_size_ratio(max_size_ratio)
    allowed = {
        "embedding": _subset(table_precisions, runner.ladders["embedding"], "table_precisions"),
        "linear": _subset(linear_precisions, runner.ladders["linear"], "linear_precisions"),
    }
    t0 = time.perf_counter()
    greedy = _Greedy(runner, sens, budget, allowed, max_size_ratio)
    ev, confirm = greedy.run()
    t_search = time.perf_counter() - t0
    return greedy.result(ev, confirm, {"setup": runner.setup_seconds, "sensitivity": sens.seconds, "search": t_search,
                              "total": runner.setup_seconds + sens.seconds + time.perf_counter() - t0})  # fmt: skip


class _Greedy:
    """State of one search: per-module ladders, the current plan, the reasons and the trail."""

    def __init__(self, runner: TrialRunner, sens: SensitivityResult, budget: Budget, allowed: dict[str, tuple[str, ...]],
                 max_size_ratio: float | None) -> None:  # fmt: skip
        self.runner, self.sens, self.budget, self.allowed = runner, sens, budget, allowed
        self.by_name = {m.name: m for m in sens.modules}
        self.other_bytes = runner.fp32_bytes - sum(m.fp32_bytes for m in sens.modules)  # outside tables / linears
        self.max_size_ratio = max_size_ratio
        self.cap = None if max_size_ratio is None else max_size_ratio * runner.fp32_bytes
        self.ladders: dict[str, tuple[str, ...]] = {}  # per module: the allowed precisions it can be stored in
        for fqn, kind in runner.kinds.items():
            self.ladders[fqn] = tuple(p for p in allowed[kind] if p == "fp32" or p in self.by_name[fqn].trials)
            if not self.ladders[fqn]:
                raise ValueError(f"module {fqn!r} cannot be stored in any allowed precision {allowed[kind]}: "
                                 f"{self.by_name[fqn].unavailable}")  # fmt: skip
        self.reasons: dict[str, str] = {}
        self.plan: dict[str, str] = {}
        self.trail: list[PlanTrial] = []
        self.why_stop = ""

    def solo(self, fqn: str, p: str) -> dict[str, float] | None:
        return self.by_name[fqn].trials.get(p)

    def usage(self, fqn: str, p: str) -> float:
        t = self.solo(fqn, p)
        return 0.0 if t is None else self.budget.usage(t["ne_rel_delta"], t["auc_delta"])

    def mbytes(self, fqn: str, p: str) -> int:
        return self.by_name[fqn].fp32_bytes if p == "fp32" else int(self.by_name[fqn].trials[p]["bytes"])

    def total(self, plan: Mapping[str, str]) -> int:
        return self.other_bytes + sum(self.mbytes(f, p) for f, p in plan.items())

    def _start(self) -> None:
        """Each module at the cheapest precision whose effect alone fits the budget."""
        for fqn, ladder in self.ladders.items():
            fits = [p for p in ladder if self.usage(fqn, p) <= 1.0]
            self.plan[fqn] = fits[0] if fits else ladder[-1]
            why = []
            skipped = ladder[: ladder.index(self.plan[fqn])]
            if skipped:
                t = self.solo(fqn, skipped[-1])
                why.append(f"alone at {skipped[-1]}: {_fmt(t['ne_rel_delta'], t['auc_delta'])} exceeds the budget")
            full = self.allowed[self.runner.kinds[fqn]]
            unavailable = self.by_name[fqn].unavailable
            why += [f"{p} unavailable: {unavailable[p]}" for p in full[: full.index(self.plan[fqn])] if p in unavailable]
            if why:
                self.reasons[fqn] = "; ".join(why)

    def _record(self, change: str) -> dict[str, Any]:
        ev = self.runner.evaluate(self.plan)
        b = self.total(self.plan)
        self.trail.append(PlanTrial(len(self.trail), change, b, b / max(self.runner.fp32_bytes, 1), ev["ne_rel_delta"],
                                    ev["auc_delta"], self.budget.meets(ev), dict(self.plan)))  # fmt: skip
        return ev

    def _most_sensitive_step(self) -> tuple[str, str] | None:
        """The module using the largest share of the budget alone at its precision, and its next step."""
        movable = []
        for fqn, p in self.plan.items():
            ladder = self.ladders[fqn]
            if p == ladder[-1]:
                continue
            nxt = ladder[ladder.index(p) + 1]
            if self.cap is not None and self.total(self.plan) - self.mbytes(fqn, p) + self.mbytes(fqn, nxt) > self.cap:
                continue
            sqnr = (self.solo(fqn, p) or {"sqnr_db": 0.0})["sqnr_db"]
            movable.append((-self.usage(fqn, p), sqnr, self.mbytes(fqn, nxt) - self.mbytes(fqn, p), fqn, nxt))
        return min(movable)[3:] if movable else None

    def _confirm(self) -> dict[str, Any] | None:
        """The last plan tried on the confirmation batches (``None`` without any); noted in the trail."""
        if not self.runner.batches["confirm"]:
            return None
        conf = self.runner.evaluate(self.plan, "confirm")
        t = self.trail[-1]
        t.confirm_ne_rel_delta, t.confirm_auc_delta, t.confirmed = conf["ne_rel_delta"], conf["auc_delta"], self.budget.meets(conf)
        return conf

    def run(self) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """Start plan, then one step up for the most sensitive module until the WHOLE model fits on
        the search batches and on the confirmation batches; returns both evaluations of the last plan."""
        self._start()
        ev = self._record("start: cheapest precision whose effect alone fits the budget")
        conf = None
        while True:
            if self.budget.meets(ev):
                conf = self._confirm()
                if conf is None or self.budget.meets(conf):
                    break
                missed, where = conf, "the confirmation batches"
            else:
                conf, missed, where = None, ev, "the search batches"
            step = self._most_sensitive_step()
            if step is None:
                self.why_stop = "every module is at its highest allowed precision" + (" within max_size_ratio" if self.cap else "")
                break
            fqn, nxt = step
            old, t = self.plan[fqn], self.solo(fqn, self.plan[fqn])
            self.reasons[fqn] = (
                f"fallback step {len(self.trail)}: whole model {_fmt(missed['ne_rel_delta'], missed['auc_delta'])} missed the "
                f"budget on {where} and this module was the most sensitive left (alone at {old}: "
                f"{_fmt(t['ne_rel_delta'], t['auc_delta'])})"
            )
            self.plan[fqn] = nxt
            ev = self._record(f"{fqn}: {old} -> {nxt}")
        return ev, conf

    def _message(self, ev: dict[str, Any], confirm: dict[str, Any] | None, size_ok: bool) -> tuple[bool, str]:
        b, searched = self.budget.describe(), _fmt(ev["ne_rel_delta"], ev["auc_delta"])
        if not self.budget.meets(ev):
            return False, f"no plan meets the budget ({b}) on the search batches: {self.why_stop}; best tried {searched}"
        if confirm is not None and not self.budget.meets(confirm):
            return False, (f"no plan meets the budget ({b}) on both the search and the confirmation batches: "
                           f"{self.why_stop}; the last meets it on the search batches ({searched}) but not on the "
                           f"confirmation batches ({_fmt(confirm['ne_rel_delta'], confirm['auc_delta'])})")  # fmt: skip
        if not size_ok:
            ratio = self.total(self.plan) / self.runner.fp32_bytes
            return False, f"the plan needs {ratio:.3f} of the float bytes, over max_size_ratio={self.max_size_ratio}"
        checked = (f", confirmation {_fmt(confirm['ne_rel_delta'], confirm['auc_delta'])}" if confirm is not None
                   else " (no confirmation batches: checked on the search batches only)")  # fmt: skip
        return True, f"plan meets the budget ({b}): search {searched}{checked}"

    def result(self, ev: dict[str, Any], confirm: dict[str, Any] | None, seconds: dict[str, float]) -> SearchResult:
        """Assemble the quantized model, the recipe and the summary (with bootstrap intervals)."""
        runner, plan = self.runner, self.plan
        references = {}
        if all("int8" in ladder for ladder in self.ladders.values()):  # the uniform int8 plan, for comparison
            uniform = {f: "int8" for f in plan}
            ref = runner.evaluate(uniform)
            size = self.total(uniform)
            references["all_int8"] = {"bytes": size, "size_ratio": size / max(runner.fp32_bytes, 1),
                                      "meets_budget": self.budget.meets(ref), **_public(ref)}  # fmt: skip
        search = {**_public(ev), "ci95": runner.interval(runner.logits(plan), "search")}
        if confirm is not None:
            confirm = {**_public(confirm), "ci95": runner.interval(runner.logits(plan, "confirm"), "confirm")}
        met, message = self._message(ev, confirm, self.cap is None or self.total(plan) <= self.cap)
        final = copy.deepcopy(runner.model).eval()
        calibration = {}
        for fqn, p in plan.items():
            if p == "fp32":
                continue
            q = copy.deepcopy(runner.variant(fqn, p))
            set_submodule(final, fqn, q)
            if getattr(q, "activation", None) == "static":
                calibration[fqn] = {**runner.observers[fqn].to_dict(), "num_batches": runner.calibration_batches,
                                    "scale": float(q.x_scale), "zero_point": int(q.x_zero_point),
                                    "calibrated_on": "float model"}  # fmt: skip
        final_bytes = state_bytes(final)
        low = sum(self.mbytes(f, p) for f, p in plan.items() if p in LOW_PRECISIONS)
        cheapest = {f: self.allowed[runner.kinds[f]][0] for f in plan}
        return SearchResult(
            met=met, message=message, budget=self.budget, plan=dict(plan),
            recipe=plan_to_recipe(plan, runner.kinds, runner.linear_config, runner.int4_clip),
            search=search, confirm=confirm,
            bytes=final_bytes, fp32_bytes=runner.fp32_bytes, int8_bytes_fraction=low / max(final_bytes, 1),
            reasons={f: r for f, r in self.reasons.items() if plan[f] != cheapest[f]},
            module_bytes={f: self.mbytes(f, p) for f, p in plan.items()}, trail=self.trail, sensitivity=self.sens,
            calibration=calibration, seconds=seconds, model=final, references=references,
        )  # fmt: skip


def _subset(given: Sequence[str] | None, available: tuple[str, ...], name: str) -> tuple[str, ...]:
    if given is None:
        return available
    if isinstance(given, str) or not given or any(p not in available for p in given):
        raise ValueError(f"{name} must be a non-empty subset of the analysed precisions {list(available)}, got {given!r}")
    return tuple(p for p in available if p in given)


def _public(ev: Mapping[str, Any]) -> dict[str, Any]:
    return {k: ev[k] for k in ("ne_rel_delta", "auc_delta", "per_task")}
