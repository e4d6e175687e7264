"""Quantized ``EmbeddingBagCollection``: all row-wise tables of one precision and width read with ONE
FBGEMM embedding-bag call instead of one call per table.

:func:`~lightning_recsys.quant.quantize_` turns every
:class:`~lightning_recsys.embeddings.EmbeddingBagCollection` with two or more sum-pooled row-wise int8
(or int4) tables of the same width into this subclass. The tables stay separate modules under the same
names (same state-dict keys; a table can still be swapped alone), but their ``packed`` rows become
consecutive slices of one buffer, so a batch of ``F`` features costs one kernel launch over ``B x F``
bags in batch-major order, whose output already is the ``[B, F, D]`` result (no per-table call, no
stack). Outputs are bit-identical to the per-table lookups: each bag reads the same rows in the same
order with the same kernel.

The buffer is shared through views, so ``torch.save`` / ``copy.deepcopy`` keep it shared and
``load_state_dict`` writes into it. When the views are broken (a table replaced,
``load_state_dict(assign=True)``, the module moved to another device) the collection warns once and looks
the tables up one by one, with the same results; :meth:`QuantizedEmbeddingBagCollection.refuse` shares
one buffer again. Tables swapped for modules of another kind (an export lowering, a float table) are
read one by one without a warning. ``fuse_lookups = False`` also selects the per-table path.

Example:
    >>> from lightning_recsys.data.batch import SparseFeature
    >>> from lightning_recsys.embeddings import EmbeddingBagCollection
    >>> from torch import nn
    >>> from lightning_recsys.quant import quantize_, RowwiseEmbeddingConfig
    >>> model = nn.Sequential(EmbeddingBagCollection({"user": 10, "item": 20}, embedding_dim=4))
    >>> quantize_(model, RowwiseEmbeddingConfig())
    >>> type(model[0]).__name__
    'QuantizedEmbeddingBagCollection'
    >>> ids = SparseFeature.from_lists([[1, 2], [3]])
    >>> model[0]({"user": ids, "item": ids}).shape
    torch.Size([2, 2, 4])
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ...data.batch import SparseFeature
from ...embeddings.collection import EmbeddingBagCollection
from .embedding import _BAG_OPS, QuantizedEmbeddingBag

__all__ = ["QuantizedEmbeddingBagCollection", "fuse_collections"]


def _fusable(m: nn.Module) -> tuple[str, int] | None:
    """``(precision, width)`` of a table the fused kernel call can read, else None."""
    if not isinstance(m, QuantizedEmbeddingBag) or m.precision not in _BAG_OPS:
        return None
    if m.mode != "sum" or m.include_last_offset or (m.precision == "int4" and m.embedding_dim % 2):
        return None  # mean pooling, a dropped last offset and int4's padding column stay per table
    return m.precision, m.embedding_dim


@dataclass
class _Group:
    """Tables read by one kernel call: feature ``names`` at ``positions`` in the collection's order, the
    table module of each (tied features share one), and ``base``: each feature's first row in ``fused``."""

    precision: str
    names: list[str]
    positions: list[int]
    tables: list[QuantizedEmbeddingBag]
    fused: Tensor
    base: Tensor
    sizes: Tensor
    starts: list[int]  # ``base`` as ints, for the per-forward pointer check


class QuantizedEmbeddingBagCollection(EmbeddingBagCollection):
    """An ``EmbeddingBagCollection`` whose row-wise int8 / int4 tables of one width share one buffer and
    are read with one kernel call per precision (see the module doc). Built by ``quantize_``; the same
    forward and output ``[B, num_features, dim]`` as the collection it replaces.

    ``fuse_lookups`` (default True): set it to False to read the tables one by one.
    """

    def __init__(self, tables: nn.ModuleDict, embedding_dim: int) -> None:
        # not EmbeddingBagCollection.__init__: it would allocate float tables only to drop them
        nn.Module.__init__(self)
        self.embedding_dim = int(embedding_dim)
        self.tables = tables
        self.fuse_lookups = True
        self._groups: list[_Group] = []
        self._warned = False
        self.refuse()

    @classmethod
    def from_collection(cls, collection: EmbeddingBagCollection) -> QuantizedEmbeddingBagCollection:
        """The fused twin of ``collection``, adopting its tables (the same module objects)."""
        return cls(collection.tables, collection.embedding_dim)

    @torch.no_grad()
    def refuse(self) -> None:
        """(Re)build the shared buffers from the tables' current rows: afterwards every fusable table's
        ``packed`` is a slice of its group's buffer (its values unchanged)."""
        by_key: dict[tuple[str, int], list[tuple[int, str]]] = {}
        for pos, (name, table) in enumerate(self.tables.items()):
            key = _fusable(table)
            if key is not None:
                by_key.setdefault(key, []).append((pos, name))
        self._groups = []
        for (precision, _), members in by_key.items():
            if len(members) < 2:
                continue
            tables = [self.tables[n] for _, n in members]
            distinct = list({id(t): t for t in tables}.values())  # tied features: one block
            fused = torch.cat([t.packed for t in distinct])
            first, row = {}, 0
            for t in distinct:
                t._buffers["packed"] = fused[row : row + t.num_embeddings]
                first[id(t)], row = row, row + t.num_embeddings
            base = torch.tensor([first[id(t)] for t in tables], dtype=torch.long, device=fused.device)
            sizes = torch.tensor([t.num_embeddings for t in tables], dtype=torch.long, device=fused.device)
            self._groups.append(_Group(precision, [n for _, n in members], [p for p, _ in members], tables, fused, base, sizes,
                                       base.tolist()))  # fmt: skip
        self._warned = False

    def _intact(self) -> bool:
        """Whether every group's features still hold its tables, each reading its slice of the buffer."""
        for g in self._groups:
            ptr, row_bytes = g.fused.data_ptr(), g.fused.stride(0)
            for name, t, start in zip(g.names, g.tables, g.starts):
                if self.tables[name] is not t or t.packed.data_ptr() != ptr + start * row_bytes:
                    return False
        return True

    def forward(self, sparse: Mapping[str, SparseFeature]) -> Tensor:
        if not (self.fuse_lookups and self._groups):
            return super().forward(sparse)
        if not self._intact():
            if not all(_fusable(self.tables[n]) for g in self._groups for n in g.names):
                return super().forward(sparse)  # tables swapped for other kinds (e.g. export lowering): by design
            if not self._warned:
                warnings.warn(
                    "QuantizedEmbeddingBagCollection: its tables no longer share one buffer (a table was replaced, "
                    "load_state_dict(assign=True) or the module moved); reading them one by one. Call refuse() to "
                    "read them with one kernel call again.", stacklevel=2,
                )  # fmt: skip
                self._warned = True
            return super().forward(sparse)
        for name in self.tables:
            if name not in sparse:
                raise KeyError(f"batch has no sparse feature {name!r}; it has {sorted(sparse)}")
        feats = [sparse[n] for n in self.tables]
        if len({int(f.offsets.numel()) for f in feats}) != 1 or any(f.values.dim() != 1 for f in feats):
            return super().forward(sparse)  # the per-table path raises the specific error
        outs = [self._lookup(g, [feats[p] for p in g.positions]) for g in self._groups]
        if len(outs) == 1 and len(self._groups[0].names) == len(feats):
            return outs[0]
        cols: list[Tensor | None] = [None] * len(feats)
        for g, out in zip(self._groups, outs):
            for j, p in enumerate(g.positions):
                cols[p] = out[:, j]
        for p, (name, table) in enumerate(self.tables.items()):
            if cols[p] is None:
                f = feats[p]
                cols[p] = table(f.values, f.offsets[:-1], per_sample_weights=f.weights)
        return torch.stack(cols, dim=1)

    @staticmethod
    def _lookup(g: _Group, feats: list[SparseFeature]) -> Tensor:
        """``[B, G, D]`` pooled rows of the group's features: one kernel call over the ``B x G`` bags in
        batch-major order (bag ``b * G + j`` is sample ``b`` of feature ``j``)."""
        batch, width = feats[0].offsets.numel() - 1, len(feats)
        values = [f.values.long() for f in feats]
        counts = torch.tensor([v.numel() for v in values])
        offsets = torch.stack([f.offsets.long() for f in feats], 1)  # [B + 1, G]
        # nn.EmbeddingBag with offsets[:-1]: the first bag starts at offsets[0], the last runs to the end
        ends = torch.cat([offsets[1:-1], counts.unsqueeze(0)]) if batch else offsets[1:]
        lengths = ends - offsets[:-1]  # [B, G]
        weighted = any(f.weights is not None for f in feats)
        if bool((lengths == 1).all()) and bool((offsets[0] == 0).all()):  # single-hot: no reordering
            stacked = torch.stack(values, 1)  # [B, G]
            if batch:
                _check_ids(g, stacked.amin(0), stacked.amax(0))
            ids = (stacked + g.base).reshape(-1)
            weights = torch.stack([f.weights if f.weights is not None else torch.ones(batch) for f in feats], 1).reshape(-1) \
                if weighted else None  # fmt: skip
            bag_starts = torch.arange(batch * width)
        else:
            nonempty = [v if v.numel() else v.new_zeros(1) for v in values]
            _check_ids(g, torch.stack([v.min() for v in nonempty]), torch.stack([v.max() for v in nonempty]))
            ids, weights, bag_starts = _batch_major(g.base, values, feats, offsets[0], lengths, weighted)
        psw = None if weights is None else weights.float()
        # (weight, indices, offsets, scale_grad_by_freq, mode=sum, pruned_weights, per_sample_weights,
        #  compressed_indices_mapping, include_last_offset)
        out = _BAG_OPS[g.precision](g.fused, ids, bag_starts, False, 0, False, psw, None, False)
        return out.view(batch, width, out.shape[-1])


def _check_ids(g: _Group, lows: Tensor, highs: Tensor) -> None:
    """Raise ``IndexError`` naming the feature when an id is outside its table (an id past its table
    would read the next table's rows)."""
    bad = (lows < 0) | (highs >= g.sizes)
    if bool(bad.any()):
        j = int(bad.nonzero()[0])
        raise IndexError(f"sparse feature {g.names[j]!r}: ids must be in [0, {int(g.sizes[j])}) (its table's rows), "
                         f"got ids from {int(lows[j])} to {int(highs[j])}")  # fmt: skip


def _batch_major(base: Tensor, values: list[Tensor], feats: list[SparseFeature], firsts: Tensor, lengths: Tensor,
                 weighted: bool) -> tuple[Tensor, Tensor | None, Tensor]:  # fmt: skip
    """Ids (plus each feature's first row), weights and bag starts of ragged bags reordered from feature-major
    (feature ``j``'s bags back to back) to batch-major (sample ``b``'s ``G`` bags back to back)."""
    batch, width = lengths.shape
    kept = [v[int(s) : int(s) + int(n)] for v, s, n in zip(values, firsts, lengths.sum(0))]  # the ids the bags read
    ids = torch.cat([v + b for v, b in zip(kept, base)])
    fm_lengths = lengths.t().reshape(-1)  # feature-major bag lengths
    bag = torch.repeat_interleave(torch.arange(batch * width), fm_lengths)  # feature-major bag of each id
    rank = torch.arange(ids.numel()) - (fm_lengths.cumsum(0) - fm_lengths)[bag]
    bm_lengths = lengths.reshape(-1)
    bag_starts = bm_lengths.cumsum(0) - bm_lengths
    dest = bag_starts[(bag % batch) * width + bag // batch] + rank
    out = torch.empty_like(ids)
    out[dest] = ids
    weights = None
    if weighted:
        w = torch.cat([f.weights[int(s) : int(s) + int(n)] if f.weights is not None else torch.ones(int(n))
                       for f, s, n in zip(feats, firsts, lengths.sum(0))])  # fmt: skip
        weights = torch.empty_like(w)
        weights[dest] = w
    return out, weights, bag_starts


def fuse_collections(model: nn.Module) -> None:
    """Swap, in place, every ``EmbeddingBagCollection`` of ``model`` with fusable quantized tables for a
    :class:`QuantizedEmbeddingBagCollection` (and re-fuse those already swapped)."""
    for fqn, m in list(model.named_modules()):
        if isinstance(m, QuantizedEmbeddingBagCollection):
            m.refuse()
        elif type(m) is EmbeddingBagCollection and fqn:
            new = QuantizedEmbeddingBagCollection.from_collection(m)
            if new._groups:
                parent_name, _, child = fqn.rpartition(".")
                setattr(model.get_submodule(parent_name) if parent_name else model, child, new)
