"""``TrialOptions``: the trial settings shared by :class:`~lightning_recsys.quant.search.trials.TrialRunner`,
:func:`~lightning_recsys.quant.sensitivity_analysis` and :func:`~lightning_recsys.quant.search_plan`.

One frozen parameter object, validated once (``ValueError`` / ``TypeError`` naming the option), built
by the public functions from their keywords (or passed as ``options=``) and handed down unchanged,
so the option list is written in one place.

Example:
    >>> opts = TrialOptions(eval_batches=2, table_precisions=["int8", "int4"])
    >>> opts.table_precisions  # normalised: cheapest first
    ('int4', 'int8')
    >>> TrialOptions(eval_batches=0)
    Traceback (most recent call last):
    ...
    ValueError: eval_batches must be an integer >= 1, got 0
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from torch import Tensor, nn

from ..._validation import ConfigurationError, check_choice, check_int
from ..core.config import Int8LinearConfig
from ..core.precisions import LINEAR_LADDER, TABLE_LADDER

__all__ = ["TrialOptions", "resolve_options"]


@dataclass(frozen=True)
class TrialOptions:
    """How a :class:`~lightning_recsys.quant.search.trials.TrialRunner` reads the data and which
    precisions it tries.

    * ``forward_fn(model, batch)`` / ``label_fn(batch)``: replace the derived
      :class:`~lightning_recsys.data.ModelContract` call / labels (``None``: derived);
    * ``task``: multi-task reduction — ``"mean"``, ``"worst"``, a task name or a column index;
    * ``calib_batches``: calibration batches (static int8 activations), >= 1;
    * ``eval_batches``: held-out search batches, >= 1;
    * ``confirm_batches``: confirmation batches, >= 0; ``None`` = the caller's default
      (0 for :class:`TrialRunner` and :func:`sensitivity_analysis`, 8 for :func:`search_plan`);
    * ``linear_config``: the int8 linear settings (``None`` = ``Int8LinearConfig()``);
    * ``int4_clip``: ``"minmax"`` or ``"greedy"`` clipping of int4 tables;
    * ``table_precisions`` / ``linear_precisions``: the candidate ladders (stored cheapest first).

    Example:
        >>> from lightning_recsys.quant import search_plan                       # doctest: +SKIP
        >>> opts = TrialOptions(eval_batches=4, confirm_batches=4, int4_clip="greedy")
        >>> res = search_plan(model, train_loader, val_loader, budget_ne=0.001,  # doctest: +SKIP
        ...                   options=opts)
    """

    forward_fn: Callable[[nn.Module, Any], Any] | None = None
    label_fn: Callable[[Any], Tensor] | None = None
    task: str | int = "mean"
    calib_batches: int = 16
    eval_batches: int = 8
    confirm_batches: int | None = None
    linear_config: Int8LinearConfig | None = None
    int4_clip: Literal["minmax", "greedy"] = "minmax"
    table_precisions: Sequence[str] = TABLE_LADDER
    linear_precisions: Sequence[str] = LINEAR_LADDER

    def __post_init__(self) -> None:
        check_int("calib_batches", self.calib_batches, low=1)
        check_int("eval_batches", self.eval_batches, low=1)
        check_int("confirm_batches", self.confirm_batches, low=0, optional=True)
        lin = self.linear_config if self.linear_config is not None else Int8LinearConfig()
        if not isinstance(lin, Int8LinearConfig):
            raise TypeError(f"linear_config must be an Int8LinearConfig, got {type(lin).__name__}")
        check_choice("int4_clip", self.int4_clip, ("minmax", "greedy"))
        object.__setattr__(self, "linear_config", lin)
        object.__setattr__(self, "table_precisions", check_ladder(self.table_precisions, TABLE_LADDER, "table_precisions"))
        object.__setattr__(self, "linear_precisions", check_ladder(self.linear_precisions, LINEAR_LADDER, "linear_precisions"))

    def replace(self, **changes: Any) -> TrialOptions:
        """A copy with ``changes`` applied (validated again)."""
        return dataclasses.replace(self, **changes)


def check_ladder(given: Sequence[str], full: tuple[str, ...], name: str) -> tuple[str, ...]:
    """``given`` as a tuple drawn from ``full``, cheapest first; ``ValueError`` naming ``name`` otherwise."""
    if isinstance(given, str) or not given:
        raise ConfigurationError(f"{name} must be a non-empty list drawn from {list(full)}, got {given!r}")
    bad = [p for p in given if p not in full]
    if bad:
        raise ConfigurationError(f"{name}: unknown precisions {bad}; expected a subset of {list(full)}")
    return tuple(p for p in full if p in given)  # cheapest first, whatever order was given


def resolve_options(options: TrialOptions | None, caller: Callable[..., Any], **keywords: Any) -> TrialOptions:
    """The one :class:`TrialOptions` of a call to ``caller``: ``options`` when given, else built from
    ``keywords`` (the caller's trial keywords). Giving ``options`` together with a keyword that differs
    from ``caller``'s default raises ``TypeError`` naming both."""
    if options is None:
        return TrialOptions(**keywords)
    if not isinstance(options, TrialOptions):
        raise TypeError(f"options must be a TrialOptions, got {type(options).__name__}")
    params = inspect.signature(caller).parameters
    given = [k for k, v in keywords.items() if not _is_default(v, params[k].default)]
    if given:
        raise TypeError(f"{caller.__name__}() got both options= and the keyword(s) {given}: "
                        "give the trial settings either as keywords or in options=TrialOptions(...), not both")  # fmt: skip
    return options


def _is_default(value: Any, default: Any) -> bool:
    if value is default:
        return True
    try:
        return type(value) is type(default) and bool(value == default)
    except Exception:  # noqa: BLE001 - values without a boolean ==: treat as given
        return False
