"""Calibration observers: choose a uint8 activation range from a running histogram.

* ``minmax``: the observed minimum and maximum;
* ``percentile``: the ``p`` / ``100 - p`` percentiles (outliers clipped);
* ``mse``: the range minimising the expected squared quantization error (rounding noise ``step^2/12``
  inside the range, clipping error outside), searched over a grid of histogram bin edges;
* ``entropy``: the range minimising the KL divergence between the histogram and its 255-level
  quantized version (TensorRT's calibration, generalised to ranges that straddle zero).

Example:
    >>> import torch
    >>> obs = make_observer("percentile", percentile=99.0)
    >>> obs.observe(torch.randn(100_000))
    >>> lo, hi = obs.compute_range()
    >>> 2.1 < hi < 2.6
    True
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

__all__ = ["Observer", "MinMaxObserver", "PercentileObserver", "MSEObserver", "EntropyObserver", "make_observer", "OBSERVERS"]

_LEVELS = 255


class Observer:
    """Histogram of everything observed over ``[min, max]`` (re-binned when the range grows)."""

    name = "base"

    def __init__(self, bins: int = 2048) -> None:
        if not isinstance(bins, int) or bins < 2 * (_LEVELS + 1):
            raise ValueError(f"bins must be an integer >= {2 * (_LEVELS + 1)}, got {bins!r}")
        self.bins = bins
        self.min: float | None = None
        self.max: float | None = None
        self.hist = torch.zeros(bins, dtype=torch.float64)
        self.count = 0

    def observe(self, x: Tensor) -> None:
        """Add the values of ``x`` (any shape) to the histogram."""
        x = x.detach().reshape(-1).double()
        x = x[torch.isfinite(x)]
        if x.numel() == 0:
            return
        lo, hi = float(x.min()), float(x.max())
        if self.min is None:
            if hi <= lo:
                hi = lo + max(abs(lo), 1.0) * 1e-6
            self.min, self.max = lo, hi
        elif lo < self.min or hi > self.max:
            self._rebin(min(lo, self.min), max(hi, self.max))
        self.hist += torch.histc(x, self.bins, self.min, self.max)
        self.count += x.numel()

    def _rebin(self, lo: float, hi: float) -> None:
        width = (self.max - self.min) / self.bins
        centers = self.min + (torch.arange(self.bins, dtype=torch.float64) + 0.5) * width
        idx = ((centers - lo) / (hi - lo) * self.bins).long().clamp_(0, self.bins - 1)
        new = torch.zeros(self.bins, dtype=torch.float64)
        new.index_add_(0, idx, self.hist)
        self.hist, self.min, self.max = new, lo, hi

    def edges(self) -> Tensor:
        return torch.linspace(self.min, self.max, self.bins + 1, dtype=torch.float64)

    def compute_range(self) -> tuple[float, float]:
        """``(lo, hi)`` to quantize with; raises if nothing was observed."""
        if self.min is None:
            raise RuntimeError(f"{self.name} observer has seen no data: calibrate with at least one batch")
        return self._range()

    def _range(self) -> tuple[float, float]:
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        lo, hi = self.compute_range()
        return {"observer": self.name, "observed_min": self.min, "observed_max": self.max, "count": self.count,
                "range": [lo, hi]}  # fmt: skip


class MinMaxObserver(Observer):
    name = "minmax"

    def _range(self) -> tuple[float, float]:
        return float(self.min), float(self.max)


class PercentileObserver(Observer):
    """Clip to the ``100 - percentile`` and ``percentile`` percentiles."""

    name = "percentile"

    def __init__(self, percentile: float = 99.99, bins: int = 2048) -> None:
        super().__init__(bins)
        if not 50.0 < float(percentile) <= 100.0:
            raise ValueError(f"percentile must lie in (50, 100], got {percentile!r}")
        self.percentile = float(percentile)

    def _quantile(self, q: float) -> float:
        cdf = torch.cumsum(self.hist, 0) / self.hist.sum()
        edges = self.edges()
        i = int(torch.searchsorted(cdf, torch.tensor([q], dtype=torch.float64)).clamp(max=self.bins - 1))
        prev = float(cdf[i - 1]) if i > 0 else 0.0
        frac = 0.0 if cdf[i] <= prev else (q - prev) / (float(cdf[i]) - prev)
        return float(edges[i] + min(max(frac, 0.0), 1.0) * (edges[i + 1] - edges[i]))

    def _range(self) -> tuple[float, float]:
        p = self.percentile / 100.0
        return self._quantile(1.0 - p), self._quantile(p)


class MSEObserver(Observer):
    """Range minimising the expected squared quantization error over a grid of bin edges.

    For a candidate ``[a, b]`` the error is ``sum_{c < a} n_c (a - c)^2 + sum_{c > b} n_c (c - b)^2``
    (clipping) ``+ n_inside * step^2 / 12`` (rounding), evaluated for all candidates at once from
    prefix sums of the histogram.
    """

    name = "mse"

    def __init__(self, bins: int = 2048, grid: int = 256) -> None:
        super().__init__(bins)
        self.grid = grid

    def _range(self) -> tuple[float, float]:
        edges = self.edges()
        centers = 0.5 * (edges[1:] + edges[:-1])
        zero = torch.zeros(1, dtype=torch.float64)
        cnt = torch.cat([zero, torch.cumsum(self.hist, 0)])
        s1 = torch.cat([zero, torch.cumsum(self.hist * centers, 0)])
        s2 = torch.cat([zero, torch.cumsum(self.hist * centers * centers, 0)])
        median = int(torch.searchsorted(cnt / cnt[-1], torch.tensor([0.5], dtype=torch.float64)))
        lo_idx = torch.unique(torch.linspace(0, median, self.grid).round().long())
        hi_idx = torch.unique(torch.linspace(median + 1, self.bins, self.grid).round().long())
        a, b = edges[lo_idx][:, None], edges[hi_idx][None, :]
        below = a * a * cnt[lo_idx][:, None] - 2 * a * s1[lo_idx][:, None] + s2[lo_idx][:, None]
        n_above = cnt[-1] - cnt[hi_idx]
        above = b * b * n_above[None, :] - 2 * b * (s1[-1] - s1[hi_idx])[None, :] + (s2[-1] - s2[hi_idx])[None, :]
        step = (b.clamp(min=0.0) - a.clamp(max=0.0)) / _LEVELS  # the quantizer always keeps 0
        inside = (cnt[hi_idx][None, :] - cnt[lo_idx][:, None]) * step * step / 12.0
        err = below.clamp(min=0.0) + above.clamp(min=0.0) + inside
        k = int(torch.argmin(err))
        i, j = divmod(k, hi_idx.numel())
        return float(edges[lo_idx[i]]), float(edges[hi_idx[j]])


class EntropyObserver(Observer):
    """Range minimising KL(P || Q) between the clipped histogram P and its 255-level quantization Q.

    Candidates shrink the observed range towards zero by a factor ``a`` (``grid`` values); a window
    keeps at least 256 bins so that quantization is never lossless by construction.
    """

    name = "entropy"

    def __init__(self, bins: int = 2048, grid: int = 128) -> None:
        super().__init__(bins)
        self.grid = grid

    def _kl(self, i: int, j: int) -> float:
        window = self.hist[i:j]
        p = window.clone()  # reference: clipped mass piles up on the edge bins
        p[0] += self.hist[:i].sum()
        p[-1] += self.hist[j:].sum()
        width = j - i
        group = (torch.arange(width) * _LEVELS // width).long()
        nonzero = (window > 0).double()  # candidate: the window alone, quantized to 255 levels
        mass = torch.zeros(_LEVELS, dtype=torch.float64).index_add_(0, group, window)
        nz_count = torch.zeros(_LEVELS, dtype=torch.float64).index_add_(0, group, nonzero)
        q = torch.where(nonzero > 0, mass[group] / nz_count[group].clamp(min=1), torch.zeros_like(p))
        if float(q.sum()) == 0.0:
            return math.inf
        p, q = p / p.sum(), q / q.sum()
        m = p > 0
        return float((p[m] * (p[m] / q[m].clamp(min=1e-30)).log()).sum())

    def _range(self) -> tuple[float, float]:
        edges = self.edges()
        width = (self.max - self.min) / self.bins
        zero = min(max((0.0 - self.min) / width, 0.0), float(self.bins))
        best, best_kl = (float(self.min), float(self.max)), math.inf
        for a in torch.linspace(1.0, 0.0, self.grid + 1)[:-1].tolist():
            i = int(round(zero - zero * a))
            j = int(round(zero + (self.bins - zero) * a))
            if j - i < _LEVELS + 1:
                break
            kl = self._kl(i, j)
            if kl < best_kl:
                best_kl, best = kl, (float(edges[i]), float(edges[j]))
        return best


OBSERVERS = {"minmax": MinMaxObserver, "percentile": PercentileObserver, "mse": MSEObserver, "entropy": EntropyObserver}


def make_observer(name: str, percentile: float = 99.99, bins: int = 2048) -> Observer:
    """Build an observer by name: ``"minmax"``, ``"percentile"``, ``"mse"`` or ``"entropy"``."""
    if name not in OBSERVERS:
        raise ValueError(f"observer must be one of {sorted(OBSERVERS)}, got {name!r}")
    if name == "percentile":
        return PercentileObserver(percentile=percentile, bins=bins)
    return OBSERVERS[name](bins=bins)
