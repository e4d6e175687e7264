"""Batches of another size from an export example, for the parity check on sizes never exported.

:func:`select_rows` picks rows of an example (its first half, or its one row twice): for a
:class:`~lightning_recsys.data.RecsysBatch` through its own CSR layout; for a model's own inputs
through the roles :func:`infer_roles` finds by running the model once with a pre-hook on every
``nn.EmbeddingBag`` / ``QuantizedEmbeddingBag`` (or registered dense-exportable table):

* a 1-D tensor passed as a bag's ``offsets`` (as is, or without its last entry: ``offsets[:-1]``) is an
  offsets input (``B`` bag starts, or ``B + 1`` entries ending with the number of ids);
* the 1-D ``input`` and ``per_sample_weights`` passed with it are that bag's ids and weights (their
  rows are the bags' ids, taken bag by bag);
* every other tensor whose dim 0 has the output's batch size ``B`` is batch-major (rows taken).

When a tensor fits none of these (e.g. ids a model pools with its own code, or offsets it computes
from another input), the roles are unknown and :func:`infer_roles` says which inputs; pass batches
of other sizes yourself then (``export_onnx(..., verify_batches=[...])``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ...data.batch import RecsysBatch, SparseFeature
from .flat import output_logits

__all__ = ["other_rows", "infer_roles", "select_rows", "recsys_rows"]


def other_rows(batch_size: int) -> list[int]:
    """Rows for a batch of another size: the first half, or row 0 twice for a batch of one."""
    return [0, 0] if batch_size == 1 else list(range(batch_size // 2))


def _take_bags(offsets: Tensor, csr: bool, values: list[Tensor], idx: list[int]) -> tuple[Tensor, list[Tensor]]:
    """Bags ``idx`` of CSR data: new offsets (same form: ``B + 1`` entries when ``csr``, else ``B``
    starts) and the values of those bags, back to back."""
    n = values[0].shape[0] if values else int(offsets[-1]) if offsets.numel() else 0
    o = offsets.long()
    starts, ends = (o[:-1], o[1:]) if csr else (o, torch.cat([o[1:], o.new_tensor([n])]))
    pos = [torch.arange(int(starts[r]), int(ends[r])) for r in idx]
    pos_t = torch.cat(pos) if pos else torch.zeros(0, dtype=torch.long)
    new = torch.zeros(len(idx) + 1, dtype=torch.long)
    new[1:] = torch.cumsum((ends - starts)[idx], 0) if idx else new[1:]
    new = (new if csr else new[:-1]).to(offsets.dtype)
    return new, [v[pos_t] for v in values]


def recsys_rows(batch: RecsysBatch, idx: list[int]) -> RecsysBatch:
    """Rows ``idx`` of ``batch`` (features keep their weights; labels are dropped)."""
    sparse = {}
    for name, f in batch.sparse.items():
        values = [f.values] + ([f.weights] if f.weights is not None else [])
        offsets, taken = _take_bags(f.offsets, True, values, idx)
        sparse[name] = SparseFeature(taken[0], offsets, taken[1] if f.weights is not None else None)
    return RecsysBatch(batch.dense[idx], sparse, {})


def _bag_modules(model: nn.Module) -> list[nn.Module]:
    from ..core.api import DENSE_EXPORTERS
    from ..core.embedding import QuantizedEmbeddingBag

    dense_bags = tuple(t for t in DENSE_EXPORTERS if "offsets" in t.forward.__code__.co_varnames)
    return [m for m in model.modules() if isinstance(m, (nn.EmbeddingBag, QuantizedEmbeddingBag, *dense_bags))]


def _match(t: Any, leaves: list[Tensor]) -> tuple[int, bool] | None:
    """``(leaf index, without its last entry)`` when 1-D ``t`` is a leaf or the leaf minus its last entry."""
    if not isinstance(t, Tensor) or t.dim() != 1:
        return None
    for j, leaf in enumerate(leaves):
        if t is leaf:
            return j, False
    ptr = t.untyped_storage().data_ptr()
    for j, leaf in enumerate(leaves):  # a view of a leaf: offsets[:-1] (empty tensors may share no storage)
        if ptr and leaf.dim() == 1 and leaf.dtype == t.dtype and leaf.device == t.device and t.stride() == leaf.stride() \
                and ptr == leaf.untyped_storage().data_ptr() and t.storage_offset() == leaf.storage_offset() \
                and t.numel() in (leaf.numel(), leaf.numel() - 1):  # fmt: skip
            return j, t.numel() == leaf.numel() - 1
    return None


@torch.no_grad()
def infer_roles(model: nn.Module, args: tuple, kwargs: dict, names: list[str], leaves: list[Tensor],
                read: list[bool] | None = None) -> tuple[int, dict] | str:  # fmt: skip
    """``(B, roles)`` for the leaves of ``model(*args, **kwargs)`` (see module doc), or why not (a
    sentence). A leaf the graph does not ``read`` is kept as it is when its role is unknown."""
    calls: list[tuple[nn.Module, tuple, dict]] = []

    def hook(m: nn.Module, a: tuple, kw: dict) -> None:
        calls.append((m, a, kw))

    handles = [m.register_forward_pre_hook(hook, with_kwargs=True) for m in _bag_modules(model)]
    try:
        out = model(*args, **kwargs)
    finally:
        for h in handles:
            h.remove()
    try:
        out = output_logits(out)
    except TypeError:
        return "the model's output holds no logits tensor"
    if out.dim() == 0:
        return "the model's output has no batch dimension"
    b = int(out.shape[0])
    roles: dict[int, tuple] = {}
    for m, a, kw in calls:
        def arg(i: int, key: str) -> Any:
            return a[i] if len(a) > i else kw.get(key)

        ids, offsets, weights = arg(0, "input"), arg(1, "offsets"), arg(2, "per_sample_weights")
        if not isinstance(ids, Tensor) or ids.dim() != 1 or offsets is None:
            continue
        o, v = _match(offsets, leaves), _match(ids, leaves)
        w = None if weights is None else _match(weights, leaves)
        csr = o is not None and (o[1] or bool(getattr(m, "include_last_offset", False)))
        if o is None or v is None or v[1] or (weights is not None and (w is None or w[1])) or \
                leaves[o[0]].numel() - int(csr) != b:  # fmt: skip
            return f"{type(m).__name__} reads ids / offsets that are not model inputs of the batch's {b} rows"
        members = [v[0]] + ([w[0]] if w is not None else [])
        old = roles.get(o[0])
        if old is not None and (old[0] != "offsets" or old[1] != csr):
            return f"input {names[o[0]]!r} is used in two ways"
        roles[o[0]] = ("offsets", csr, sorted(set(members) | set(old[2] if old else [])))
        for j in members:
            if roles.get(j, ("values", o[0])) != ("values", o[0]):
                return f"input {names[j]!r} is used as the ids of bags with different offsets (or as offsets)"
            roles[j] = ("values", o[0])
    unknown = []
    for j, leaf in enumerate(leaves):
        if j not in roles:
            if leaf.dim() >= 1 and leaf.shape[0] == b:
                roles[j] = ("rows",)
            elif read is None or read[j]:
                unknown.append(names[j])
    if unknown:
        return (f"inputs {unknown} are neither batch-major (dim 0 = the {b} rows of the output) nor the ids / offsets "
                "of an nn.EmbeddingBag")  # fmt: skip
    return b, roles


def select_rows(leaves: list[Tensor], roles: dict, idx: list[int]) -> list[Tensor]:
    """The leaves of a batch made of rows ``idx`` of the example (roles from :func:`infer_roles`)."""
    out = list(leaves)
    index = torch.tensor(idx, dtype=torch.long)
    for j, role in roles.items():
        if role[0] == "rows":
            out[j] = leaves[j][index.to(leaves[j].device)]
        elif role[0] == "offsets":
            members = role[2]
            offsets, taken = _take_bags(leaves[j], role[1], [leaves[k] for k in members], idx)
            out[j] = offsets
            for k, t in zip(members, taken):
                out[k] = t
    return out
