"""DCT's data-parallel half: a DDP comm hook that hard-thresholds gradients with error feedback.

Per parameter ``p`` of a bucket: ``a = g + e`` (``e`` the residual kept from earlier steps), send
``C(a) = a * 1[|a| >= tau_p]`` as (index, value) pairs, keep ``e = a - C(a)``. ``tau_p`` is the
``density`` quantile of ``|a|``, estimated from a random sample every ``refresh_interval`` steps (between
refreshes the hook only compares). Parameters smaller than ``min_compress_numel`` (biases, small MLPs,
small tables) use ``tau = 0``: every nonzero entry goes.

Each rank hands one packed int32 buffer per bucket to a single ``all_gather``: per parameter either its
values densely (where pairs would not pay) or ``cap_p`` index slots and ``cap_p`` value slots, with
``cap_p = ceil(capacity_factor * density * numel_p)`` for thresholded parameters and
``ceil(capacity_factor * nnz_p)`` for ``tau = 0`` ones (``nnz_p`` the largest nonzero count over the
ranks, exchanged at refresh steps only). Every rank thus knows every buffer's length without a count
exchange per step. Unused slots are padding (index 0, value 0); when more than ``cap_p`` entries pass
(the threshold drifts between refreshes), the ``cap_p`` largest go and the rest stay in the residual
(error feedback sends them later). A bucket whose packed buffer would not be smaller than a dense
all-reduce sends ``C(a)`` densely instead (same sum).

CPU cost: between refreshes, a thresholded parameter's residual is below ``tau`` everywhere but where
the cap left entries over, so only the entries where ``g`` is nonzero (for embedding tables, the rows
of the batch) and those left over are added and compared: the same result as a full pass, for a
fraction of the work. Selections read bool masks as int64 words rather than one ``nonzero`` per entry.

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


def _positions(keep: Tensor) -> Tensor:
    """Ascending positions of the True entries of ``keep`` (length a multiple of 8).

    ``nonzero`` over a full-length bool mask is the costly pass on CPU, so the mask is read as int64
    words (8 entries each): one ``nonzero`` over n/8 words, then one over the few words that hit.
    """
    words = keep.view(torch.int64).nonzero().flatten()
    row, col = keep.view(-1, 8)[words].nonzero(as_tuple=True)
    return words[row] * 8 + col


def _select(a: Tensor, tau: float, scratch: Tensor, mask: Tensor) -> Tensor:
    """Positions of ``a`` with ``|a| >= tau`` (``|a| > 0`` when ``tau <= 0``), ascending."""
    n = a.numel()
    absval = torch.abs(a, out=scratch[:n])
    keep = mask[: -(-n // 8) * 8]
    if tau > 0:
        torch.ge(absval, tau, out=keep[:n])
    else:
        torch.gt(absval, 0, out=keep[:n])
    keep[n:].fill_(False)
    return _positions(keep)


def _capped(idx: Tensor, values: Tensor, cap: int | None) -> tuple[Tensor, Tensor, Tensor]:
    """The ``cap`` largest of the passing entries, and the positions of those left over (ascending)."""
    if cap is not None and idx.numel() > cap:
        top = torch.topk(values.abs(), cap, sorted=False).indices
        left = torch.ones(idx.numel(), dtype=torch.bool, device=idx.device)
        left[top] = False
        return idx[top], values[top], idx[left]
    return idx, values, idx[:0]


def _compress_touched(
    residual: Tensor, g: Tensor, tau: float, mask: Tensor, cap: int, left: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """``_threshold_compress`` of ``residual + g`` when every entry of ``residual`` but those at ``left``
    is below ``tau > 0``: only the entries where ``g`` is nonzero (few, for embedding tables) or in
    ``left`` can pass, so only those are added and compared. Same result as adding and scanning all."""
    n = g.numel()
    keep = mask[: -(-n // 8) * 8]
    torch.ne(g.view(torch.int32), 0, out=keep[:n])
    keep[n:].fill_(False)
    if left.numel():
        keep[left] = True
    cand = _positions(keep)
    vals = residual[cand].add_(g[cand])
    residual[cand] = vals
    hit = (vals.abs() >= tau).nonzero().flatten()
    idx, values, left = _capped(cand[hit], vals[hit], cap)
    residual.index_fill_(0, idx, 0.0)
    return idx, values, left


def _threshold_compress(a: Tensor, tau: float, scratch: Tensor, mask: Tensor, cap: int | None) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`threshold_compress_` that also returns the positions the cap left over the threshold."""
    idx = _select(a, tau, scratch, mask)
    idx, values, left = _capped(idx, a[idx], cap)
    a.index_fill_(0, idx, 0.0)
    return idx, values, left


def threshold_compress_(
    a: Tensor, tau: float, scratch: Tensor | None = None, mask: Tensor | None = None, cap: int | None = None
) -> tuple[Tensor, Tensor]:
    """In place: return ``(indices, values)`` of the nonzero entries with ``|a| >= tau`` and zero them in
    ``a``, which is left holding the residual. With ``cap``, at most ``cap`` of them go (the largest);
    the others stay in ``a``. ``scratch`` (float) and ``mask`` (bool), at least ``a.numel()`` rounded up
    to a multiple of 8 long, avoid allocating full-size temporaries."""
    n8 = -(-a.numel() // 8) * 8
    scratch = scratch if scratch is not None else torch.empty(n8, dtype=a.dtype, device=a.device)
    mask = mask if mask is not None else torch.empty(n8, dtype=torch.bool, device=a.device)
    return _threshold_compress(a, tau, scratch, mask, cap)[:2]


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
    capacity_factor: float = 1.0
    seed: int = 0
    step: int = 0
    residuals: dict[str, Tensor] = field(default_factory=dict)
    thresholds: dict[str, float] = field(default_factory=dict)
    capacities: dict[str, int] = field(default_factory=dict)
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
    _left: dict[str, Tensor] = field(default_factory=dict, repr=False)  # residual entries over the threshold

    def bind(self, module: nn.Module) -> "DCTCommState":
        """Remember the names of ``module``'s parameters (the module DDP wraps, or DDP itself)."""
        module = getattr(module, "module", module)
        self._names = {p.data_ptr(): n for n, p in module.named_parameters()}
        self._order = {n: i for i, n in enumerate(sorted(self._names.values()))}
        return self

    def refresh_due(self, step: int) -> bool:
        """Whether thresholds are recomputed at ``step`` (every ``refresh_interval`` from ``start_step``)."""
        return step >= self.start_step and (step - self.start_step) % self.refresh_interval == 0

    def capacity(self, numel: int) -> int:
        """Pair slots a thresholded parameter of ``numel`` entries gets in the packed buffer."""
        return min(numel, math.ceil(self.capacity_factor * self.density * numel))

    def _capacities(self, segs: list[tuple[str, int, int, Tensor]], group: Any) -> list[int]:
        """Slots per segment (``numel`` means: sent densely). ``tau = 0`` segments' capacities come from
        their largest nonzero count over the ranks, exchanged at refresh steps (and when unknown)."""
        due = self.refresh_due(self.step)
        need = [(name, a) for name, _, n, a in segs if n < self.min_compress_numel and (due or name not in self.capacities)]
        if need:
            nnz = torch.stack([a.count_nonzero() for _, a in need]).to(torch.int64)
            dist.all_reduce(nnz, op=dist.ReduceOp.MAX, group=group)
            _count(self, nnz.numel() * nnz.element_size())
            for (name, a), c in zip(need, nnz.tolist()):
                self.capacities[name] = min(a.numel(), max(1, math.ceil(self.capacity_factor * c)))
        caps = [self.capacities[name] if n < self.min_compress_numel else self.capacity(n) for name, _, n, _ in segs]
        return [n if 2 * c >= n else c for c, (_, _, n, _) in zip(caps, segs)]

    def _touched_only(self, name: str, numel: int) -> bool:
        """Whether this step may add and compare only where the gradient is nonzero: the threshold is
        not refreshed now and the residual is known to be below it but at the positions the cap left over."""
        due = name not in self.thresholds or self.refresh_due(self.step) and self.refreshed_at.get(name) != self.step
        return (self.error_feedback and not due and name in self._left and self.thresholds[name] > 0
                and numel >= self.min_compress_numel and 2 * self.capacity(numel) < numel)

    def _threshold(self, name: str, a: Tensor) -> float:
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

    def _buffers(self, numel: int, device: torch.device) -> tuple[Tensor, Tensor]:
        n8 = -(-numel // 8) * 8
        if self._scratch is None or self._scratch.numel() < n8 or self._scratch.device != device:
            self._scratch = torch.empty(n8, dtype=torch.float32, device=device)
            self._mask = torch.empty(n8, dtype=torch.bool, device=device)
        return self._scratch, self._mask

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
            "capacities": dict(self.capacities),
            "refreshed_at": dict(self.refreshed_at),
            "refresh_steps": list(self.refresh_steps),
            "total_bytes_sent": self.total_bytes_sent,
        }

    def load_state_dict(self, state: dict[str, Any], device: torch.device | str = "cpu") -> None:
        self.step = int(state["step"])
        self.residuals = {k: v.to(device) for k, v in state["residuals"].items()}
        self.thresholds = {k: float(v) for k, v in state["thresholds"].items()}
        self.capacities = {k: int(v) for k, v in state.get("capacities", {}).items()}
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
    if buf.layout != torch.strided:  # sparse gradients (sparse=True tables) are sparse already: all-reduced as they are
        buf = buf.coalesce()
        values = buf.values()
        state._current.selected += values.numel()
        _count(state, buf.indices().numel() * buf.indices().element_size() + values.numel() * values.element_size())
        fut = dist.all_reduce(buf / world, group=group, async_op=True).get_future().then(lambda f: f.value()[0])
        state._finish_bucket(bucket)
        return fut
    if state.step < state.start_step:
        state._current.selected += numel
        _count(state, numel * buf.element_size())
        buf.div_(world)
        fut = dist.all_reduce(buf, group=group, async_op=True).get_future().then(lambda f: f.value()[0])
        state._finish_bucket(bucket)
        return fut

    # a = g + e, accumulated in the residual buffer itself (deferred to the touched entries where possible)
    segs = []
    for name, off, n in state._segments(bucket):
        a = buf[off : off + n]
        if state.error_feedback:
            if name not in state.residuals:
                state.residuals[name] = torch.zeros(n, dtype=torch.float32, device=buf.device)
            a = None if state._touched_only(name, n) else state.residuals[name].add_(a)
        segs.append((name, off, n, a))
    caps = state._capacities(segs, group)
    dense_segs = [(off, n, a) for (_, off, n, a), c in zip(segs, caps) if c == n]
    pair_segs = [(name, off, n, a, c) for (name, off, n, a), c in zip(segs, caps) if c < n]
    n_dense = sum(n for _, n, _ in dense_segs)
    total_cap = sum(c for *_, c in pair_segs)
    packed_len = n_dense + 2 * total_cap
    scratch, mask = state._buffers(max((n for _, _, n, _, _ in pair_segs), default=0), buf.device)

    idx_parts, val_parts = [], []
    for i, (name, off, n, a, cap) in enumerate(pair_segs):
        if a is None:
            residual, left = state.residuals[name], state._left[name]
            idx, values, left = _compress_touched(residual, buf[off : off + n], state.thresholds[name], mask, cap, left)
            pair_segs[i] = (name, off, n, residual, cap)
        else:
            tau = state._threshold(name, a) if n >= state.min_compress_numel else 0.0
            idx, values, left = _threshold_compress(a, tau, scratch, mask, cap)
        state._left[name] = left
        idx_parts.append(idx)
        val_parts.append(values.float())
    state._current.selected += n_dense + sum(i.numel() for i in idx_parts)

    if packed_len >= numel:  # pairs would cost more than a dense all-reduce: send C(a) densely
        for (off, n, a) in dense_segs:
            if a.data_ptr() != buf[off:].data_ptr():
                buf[off : off + n].copy_(a)
                a.zero_()
        for (_, off, n, _, _), idx, values in zip(pair_segs, idx_parts, val_parts):
            buf[off : off + n].zero_().index_copy_(0, idx, values.to(buf.dtype))
        _count(state, numel * buf.element_size())
        fut = dist.all_reduce(buf, group=group, async_op=True).get_future()
        state._finish_bucket(bucket)
        return fut.then(lambda f: f.value()[0].div_(world))

    # one packed buffer: [dense values | index slots | value slots], padding = (index 0, value 0)
    payload = torch.zeros(packed_len, dtype=torch.int32, device=buf.device)
    pos = 0
    for off, n, a in dense_segs:
        payload[pos : pos + n] = a.float().view(torch.int32)
        if state.error_feedback:
            a.zero_()  # all of it was sent
        pos += n
    for (_, off, _, _, cap), idx, values in zip(pair_segs, idx_parts, val_parts):
        payload[pos : pos + idx.numel()] = idx + off
        payload[pos + total_cap : pos + total_cap + idx.numel()] = values.view(torch.int32)
        pos += cap
    gathered = [torch.empty_like(payload) for _ in range(world)]
    _count(state, packed_len * payload.element_size())
    work = dist.all_gather(gathered, payload, group=group, async_op=True)

    def decompress(_: torch.futures.Future) -> Tensor:
        out = buf.zero_()
        scale = 1.0 / world
        for p in gathered:
            pos = 0
            for off, n, _ in dense_segs:
                out[off : off + n].add_(p[pos : pos + n].view(torch.float32).to(buf.dtype), alpha=scale)
                pos += n
            vals = p[n_dense + total_cap :].view(torch.float32).to(buf.dtype)
            out.index_add_(0, p[n_dense : n_dense + total_cap].long(), vals, alpha=scale)
        return out

    state._finish_bucket(bucket)
    return work.get_future().then(decompress)
