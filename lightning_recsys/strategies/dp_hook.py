"""DCT's data-parallel half: a DDP comm hook that hard-thresholds gradients with error feedback.

Per parameter ``p`` of a bucket: ``a = g + e`` (``e`` the residual kept from earlier steps), send
``C(a) = a * 1[|a| >= tau_p]`` as (index, value) pairs, keep ``e = a - C(a)``. ``tau_p`` is the
``density`` quantile of ``|a|``, estimated from a random sample every ``refresh_interval`` steps (between
refreshes the hook only compares). Ranks all-gather their pair counts, then the padded pairs, sum them
and divide by the world size; a bucket where that would hand more bytes to the collective than a dense
all-reduce sends ``C(a)`` densely instead (same sum, so the math does not depend on the bucket layout).
Parameters smaller than ``min_compress_numel`` (biases) are sent exactly (``tau = 0``).

Example:
    >>> import torch
    >>> a = torch.tensor([0.5, -2.0, 0.1, 3.0])
    >>> idx, values, residual = threshold_compress(a, tau=1.0)
    >>> idx.tolist(), values.tolist(), residual.tolist()
    ([1, 3], [-2.0, 3.0], [0.5, 0.0, 0.10000000149011612, 0.0])
"""

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

__all__ = ["DCTCommState", "dct_comm_hook", "sampled_threshold", "threshold_compress", "threshold_compress_"]


def threshold_compress_(a: Tensor, tau: float, scratch: Tensor | None = None, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """In place: return ``(indices, values)`` of the nonzero entries with ``|a| >= tau`` and zero them in
    ``a``, which is left holding the residual. ``scratch`` (float) and ``mask`` (bool), at least
    ``a.numel()`` long, avoid allocating full-size temporaries (large fresh tensors cost page faults)."""
    n = a.numel()
    absval = torch.abs(a, out=scratch[:n]) if scratch is not None else a.abs()
    keep = torch.ge(absval, tau, out=mask[:n]) if mask is not None else absval >= tau
    if tau <= 0:
        keep &= absval > 0
    idx = keep.nonzero().flatten()
    values = a[idx]
    a.index_fill_(0, idx, 0.0)
    return idx, values


def threshold_compress(a: Tensor, tau: float) -> tuple[Tensor, Tensor, Tensor]:
    """Split ``a`` into what is sent and what is kept: ``(indices, values, residual)``.

    Sent are the nonzero entries with ``|a| >= tau``; ``residual`` is ``a`` with them zeroed, so
    ``residual.index_put((indices,), values) == a`` exactly (the error-feedback invariant).
    """
    residual = a.detach().clone()
    idx, values = threshold_compress_(residual, tau)
    return idx, values, residual


def sampled_threshold(a: Tensor, density: float, sample_size: int, generator: torch.Generator) -> float:
    """Estimate the ``density`` upper quantile of ``|a|`` from ``sample_size`` uniform samples.

    Exact (top-k of the whole tensor) when ``a`` has at most ``sample_size`` entries.
    """
    flat = a.detach().reshape(-1).abs()
    if flat.numel() > sample_size:
        pick = torch.randint(flat.numel(), (sample_size,), generator=generator, device="cpu").to(flat.device)
        flat = flat[pick]
    k = max(1, math.ceil(density * flat.numel()))
    return float(torch.topk(flat.float(), k, sorted=False).values.min())


@dataclass
class _StepStats:
    numel: int = 0
    selected: int = 0
    bytes_sent: int = 0

    def as_dict(self, step: int) -> dict[str, float]:
        dense = 4 * self.numel
        return {
            "step": float(step),
            "density": self.selected / max(self.numel, 1),
            "bytes_sent": float(self.bytes_sent),
            "dense_bytes": float(dense),
            "compression_ratio": dense / max(self.bytes_sent, 1),
        }


@dataclass
class DCTCommState:
    """State of :func:`dct_comm_hook`: options, per-parameter residuals and thresholds, step counter.

    Register with ``ddp_model.register_comm_hook(state, dct_comm_hook)`` after :meth:`bind` (which maps
    bucket parameters to names so that residuals and thresholds survive bucket rebuilds and can be saved
    with :meth:`state_dict`). ``last_stats`` holds the figures of the last finished step,
    ``total_bytes_sent`` the bytes this rank handed to collectives inside the hook.
    """

    process_group: Any = None
    density: float = 0.01
    refresh_interval: int = 100
    error_feedback: bool = True
    start_step: int = 2
    min_compress_numel: int = 1024
    sample_size: int = 8192
    seed: int = 0
    step: int = 0
    residuals: dict[str, Tensor] = field(default_factory=dict)
    thresholds: dict[str, float] = field(default_factory=dict)
    refreshed_at: dict[str, int] = field(default_factory=dict)
    refresh_steps: list[int] = field(default_factory=list)
    total_bytes_sent: int = 0
    hook_calls: int = 0
    last_stats: dict[str, float] = field(default_factory=dict)
    _names: dict[int, str] = field(default_factory=dict, repr=False)
    _order: dict[str, int] = field(default_factory=dict, repr=False)
    _current: _StepStats = field(default_factory=_StepStats, repr=False)
    _scratch: Tensor | None = field(default=None, repr=False)
    _mask: Tensor | None = field(default=None, repr=False)

    def bind(self, module: nn.Module) -> "DCTCommState":
        """Remember the names of ``module``'s parameters (the module DDP wraps, or DDP itself)."""
        module = getattr(module, "module", module)
        self._names = {p.data_ptr(): n for n, p in module.named_parameters()}
        self._order = {n: i for i, n in enumerate(sorted(self._names.values()))}
        return self

    def refresh_due(self, step: int) -> bool:
        """Whether thresholds are recomputed at ``step`` (every ``refresh_interval`` from ``start_step``)."""
        return step >= self.start_step and (step - self.start_step) % self.refresh_interval == 0

    def _threshold(self, name: str, a: Tensor) -> float:
        if a.numel() < self.min_compress_numel:
            return 0.0
        if name not in self.thresholds or self.refresh_due(self.step) and self.refreshed_at.get(name) != self.step:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.step * 7919 + self._order.get(name, 0))
            self.thresholds[name] = sampled_threshold(a, self.density, self.sample_size, gen)
            self.refreshed_at[name] = self.step
            if not self.refresh_steps or self.refresh_steps[-1] != self.step:
                self.refresh_steps.append(self.step)
                del self.refresh_steps[:-64]
        return self.thresholds[name]

    def _segments(self, bucket: dist.GradBucket) -> list[tuple[str, int, int]]:
        base = bucket.buffer().data_ptr()
        size = bucket.buffer().element_size()
        segs = []
        for i, (p, g) in enumerate(zip(bucket.parameters(), bucket.gradients())):
            name = self._names.get(p.data_ptr(), f"bucket{bucket.index()}.param{i}")
            segs.append((name, (g.data_ptr() - base) // size, g.numel()))
        return segs

    def _finish_bucket(self, bucket: dist.GradBucket) -> None:
        self.hook_calls += 1
        if bucket.is_last():
            self.last_stats = self._current.as_dict(self.step)
            self._current = _StepStats()
            self.step += 1

    def state_dict(self) -> dict[str, Any]:
        """This rank's hook state: step, residuals and thresholds by parameter name, counters."""
        return {
            "step": self.step,
            "residuals": {k: v.detach().cpu().clone() for k, v in self.residuals.items()},
            "thresholds": dict(self.thresholds),
            "refreshed_at": dict(self.refreshed_at),
            "refresh_steps": list(self.refresh_steps),
            "total_bytes_sent": self.total_bytes_sent,
        }

    def load_state_dict(self, state: dict[str, Any], device: torch.device | str = "cpu") -> None:
        self.step = int(state["step"])
        self.residuals = {k: v.to(device) for k, v in state["residuals"].items()}
        self.thresholds = {k: float(v) for k, v in state["thresholds"].items()}
        self.refreshed_at = {k: int(v) for k, v in state["refreshed_at"].items()}
        self.refresh_steps = list(state["refresh_steps"])
        self.total_bytes_sent = int(state["total_bytes_sent"])


def _count(state: DCTCommState, nbytes: int) -> None:
    state._current.bytes_sent += nbytes
    state.total_bytes_sent += nbytes


def dct_comm_hook(state: DCTCommState, bucket: dist.GradBucket) -> torch.futures.Future[Tensor]:
    """DDP comm hook: plain all-reduce before ``state.start_step``, thresholded exchange afterwards."""
    group = state.process_group if state.process_group is not None else dist.group.WORLD
    world = dist.get_world_size(group)
    buf = bucket.buffer()
    numel = buf.numel()
    state._current.numel += numel
    if state.step < state.start_step:
        state._current.selected += numel
        _count(state, numel * buf.element_size())
        buf.div_(world)
        fut = dist.all_reduce(buf, group=group, async_op=True).get_future().then(lambda f: f.value()[0])
        state._finish_bucket(bucket)
        return fut

    segments = state._segments(bucket)
    biggest = max(n for _, _, n in segments)
    if state._scratch is None or state._scratch.numel() < biggest or state._scratch.device != buf.device:
        state._scratch = torch.empty(biggest, dtype=torch.float32, device=buf.device)
        state._mask = torch.empty(biggest, dtype=torch.bool, device=buf.device)
    idx_parts, val_parts = [], []
    for name, off, n in segments:
        a = buf[off : off + n]
        if state.error_feedback:  # a = g + e, accumulated in the residual buffer itself
            if name not in state.residuals:
                state.residuals[name] = torch.zeros(n, dtype=torch.float32, device=buf.device)
            a = state.residuals[name].add_(a)
        idx, values = threshold_compress_(a, state._threshold(name, a), state._scratch, state._mask)
        idx_parts.append(idx + off)
        val_parts.append(values)
    idx = torch.cat(idx_parts).to(torch.int32)
    values = torch.cat(val_parts).float()
    state._current.selected += idx.numel()

    counts = [torch.zeros(1, dtype=torch.int64, device=buf.device) for _ in range(world)]
    dist.all_gather(counts, torch.tensor([idx.numel()], dtype=torch.int64, device=buf.device), group=group)
    _count(state, 8)
    max_k = int(torch.cat(counts).max())

    # the bucket buffer is free now (g is in the residuals or was consumed): it carries the result
    if max_k * world >= numel:  # pairs would cost more than a dense all-reduce: send C(a) densely
        dense = buf.zero_()
        dense[idx.long()] = values.to(buf.dtype)
        _count(state, numel * dense.element_size())
        fut = dist.all_reduce(dense, group=group, async_op=True).get_future()
        state._finish_bucket(bucket)
        return fut.then(lambda f: f.value()[0].div_(world))

    payload = torch.zeros(2 * max_k, dtype=torch.int32, device=buf.device)
    payload[: idx.numel()] = idx
    payload[max_k : max_k + idx.numel()] = values.view(torch.int32)
    gathered = [torch.empty_like(payload) for _ in range(world)]
    _count(state, payload.numel() * payload.element_size())
    work = dist.all_gather(gathered, payload, group=group, async_op=True)

    def decompress(_: torch.futures.Future) -> Tensor:
        out = buf.zero_()
        for p in gathered:
            out.index_add_(0, p[:max_k].long(), p[max_k:].view(torch.float32).to(buf.dtype))
        return out.div_(world)

    state._finish_bucket(bucket)
    return work.get_future().then(decompress)
