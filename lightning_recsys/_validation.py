"""Argument checks shared by every layer: one wording and one exception policy for bad input.

Policy (every constructor, callback, optimizer and function of the package follows it):

* an argument of the wrong *type* (a string where a number is expected, a bool where an integer is)
  raises :class:`TypeError`;
* a value out of range, a choice that is not offered, options that contradict each other, or a setting
  that does not fit the model, trainer or data raises :class:`ConfigurationError`. It is both a
  ``ValueError`` (Python's convention, as ``torch.optim`` uses it) and Lightning's
  ``MisconfigurationException`` (what Lightning's own callbacks raise), so either ``except`` catches it;
* a run whose state breaks an invariant raises :class:`RuntimeError`.

Every message names the argument (prefixed by its owner, e.g. ``"FIITED: "``), what was expected, what
was given and, where one exists, the option that fixes it.

Example:
    >>> check_int("interval", 10, low=1, owner="FIITED: ")
    10
    >>> check_number("beta", 0.9, low=0.0, high=1.0, high_open=True)
    0.9
    >>> check_choice("mode", "sum", ("sum", "mean"))
    'sum'
    >>> try:
    ...     check_int("interval", 0, low=1, owner="FIITED: ")
    ... except ConfigurationError as err:
    ...     print(err)
    FIITED: interval must be an integer >= 1, got 0
"""

from __future__ import annotations

from collections.abc import Collection
from numbers import Real
from typing import Any, TypeVar

from lightning.pytorch.utilities.exceptions import MisconfigurationException

__all__ = ["ConfigurationError", "check_choice", "check_int", "check_number"]

T = TypeVar("T")


class ConfigurationError(MisconfigurationException, ValueError):
    """A value out of range, a choice not offered, contradicting options or a setting that does not fit
    the model / data. Message: which argument, what was expected, what was given, which option fixes it."""


def _tail(hint: str) -> str:
    return f"; {hint}" if hint else ""


def _bounds(low: float | None, high: float | None, low_open: bool, high_open: bool) -> str:
    lo = None if low is None else ("(" if low_open else "[") + f"{low:g}"
    hi = None if high is None else f"{high:g}" + (")" if high_open else "]")
    if lo is not None and hi is not None:
        return f" in {lo}, {hi}"
    if lo is not None:
        return f" {'>' if low_open else '>='} {low:g}"
    if hi is not None:
        return f" {'<' if high_open else '<='} {high:g}"
    return ""


def check_int(name: str, value: Any, *, low: int | None = None, high: int | None = None, optional: bool = False,
              owner: str = "", hint: str = "") -> int | None:  # fmt: skip
    """``value`` as an ``int`` in ``[low, high]`` (``None`` passes when ``optional``); raises
    ``TypeError`` for a non-integer (bools included), :class:`ConfigurationError` out of range.
    ``hint`` is appended to the message (e.g. what the value means)."""
    if value is None and optional:
        return None
    want = f"{'None or ' if optional else ''}an integer{_bounds(low, high, False, False)}"
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{owner}{name} must be {want}, got {value!r} ({type(value).__name__}){_tail(hint)}")
    if (low is not None and value < low) or (high is not None and value > high):
        raise ConfigurationError(f"{owner}{name} must be {want}, got {value!r}{_tail(hint)}")
    return int(value)


def check_number(name: str, value: Any, *, low: float | None = None, high: float | None = None,
                 low_open: bool = False, high_open: bool = False, optional: bool = False,
                 owner: str = "", hint: str = "") -> float | None:  # fmt: skip
    """``value`` as a ``float`` in the interval given by ``low`` / ``high`` (``*_open`` excludes the end;
    NaN never passes); ``TypeError`` for a non-number (bools included), :class:`ConfigurationError`
    outside the interval."""
    if value is None and optional:
        return None
    want = f"{'None or ' if optional else ''}a number{_bounds(low, high, low_open, high_open)}"
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{owner}{name} must be {want}, got {value!r} ({type(value).__name__}){_tail(hint)}")
    v = float(value)
    inside = v == v  # NaN is outside every interval
    if low is not None:
        inside = inside and (v > low if low_open else v >= low)
    if high is not None:
        inside = inside and (v < high if high_open else v <= high)
    if not inside:
        raise ConfigurationError(f"{owner}{name} must be {want}, got {value!r}{_tail(hint)}")
    return v


def check_choice(name: str, value: T, choices: Collection[Any], *, owner: str = "", hint: str = "") -> T:
    """``value`` if it is one of ``choices``, else :class:`ConfigurationError` listing them."""
    try:
        ok = value in choices
    except TypeError:  # unhashable value against a set / dict
        ok = False
    if not ok:
        raise ConfigurationError(f"{owner}{name} must be one of {list(choices)}, got {value!r}{_tail(hint)}")
    return value
