"""Export lowerings of the project's DLRM blocks (``lightning_recsys.models.dlrm``), registered with
:func:`~lightning_recsys.quant.export.lowering.register_lowering` on import.

- ``EmbeddingBagCollection`` -> :class:`~lightning_recsys.quant.export.lowering.FusedCollection` when
  its lowered tables are sum-pooled bags sharing one precision and width (not for ``native`` exports):
  one zero row before each table's block, so an empty bag (id ``-1``) needs no ``Where``, and the
  export's stacked ``[B, F]`` id matrix is read directly.
- ``DLRMBackbone``: its ``DotInteraction`` becomes a :class:`FoldedDotInteraction` when every layer
  reading it is an ``Int8Linear`` (a quantized DLRM) and widening them costs less than the selection
  (:data:`FOLD_MACS_PER_VALUE`: narrow top layers): the consumers are widened (zero weights) to read
  all products ``[x, E x, E E^T]``, so no selection runs at all.
- any other ``DotInteraction`` -> :class:`LoweredDotInteraction` (same function): the pairwise dot
  products without the ``[B, F+1, D]`` concat, and the lower triangle read with one ``Gather`` of rows
  of the transposed, flattened products instead of ``GatherND`` on ``[F, F, B]``.

Together about 10% off the int8 DLRM graph at batch 512 and 40% at batch 1 (2 threads).

Example:
    >>> from lightning_recsys.models import DLRM
    >>> from lightning_recsys.quant.export.lowering import lower_tables
    >>> model = DLRM(num_dense=3, cardinalities={"a": 10, "b": 20}, embedding_dim=4, bottom_mlp=(4,), top_mlp=(8,))
    >>> type(lower_tables(model).backbone.interaction).__name__
    'LoweredDotInteraction'
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from ....models.dlrm import DLRM, MLP, DLRMBackbone, DotInteraction, EmbeddingBagCollection, MultiTaskDLRM
from ...core.linear import Int8Linear
from ..lowering import FusedCollection, LoweredTable, register_lowering

__all__ = ["LoweredDotInteraction", "FoldedDotInteraction", "FOLD_MACS_PER_VALUE"]


class LoweredDotInteraction(DotInteraction):
    """Export version of the project's ``DotInteraction`` (same output, same order).

    ``cat([x, lower-triangle of T T^T])`` with ``T = [x; E]`` is computed as ``E E^T`` and ``E x``
    (no ``[B, F+1, D]`` concat), then ``[x, E x, flat(E E^T)]`` is concatenated once and the wanted
    entries (:meth:`~lightning_recsys.models.DotInteraction.product_index`) are read with one ``Gather``
    of rows of the transposed products (ORT's ``Gather`` on axis 1 copies element by element; on axis 0
    it copies whole rows).
    """

    def forward(self, dense_vec: Tensor | None, embeddings: Tensor) -> Tensor:
        ee = torch.bmm(embeddings, embeddings.transpose(1, 2)).flatten(1)  # [B, F*F]
        if dense_vec is None:
            return self._select(ee, self.product_index(None))
        ex = torch.bmm(embeddings, dense_vec.unsqueeze(2)).flatten(1)  # [B, F]
        return self._select(torch.cat([dense_vec, ex, ee], 1), self.product_index(dense_vec.shape[1]))

    @staticmethod
    def _select(flat: Tensor, index: Tensor) -> Tensor:
        return torch.index_select(flat.t(), 0, index).t()


class FoldedDotInteraction(nn.Module):
    """Export version of ``DotInteraction`` for consumers widened by :func:`_fold_interaction`.

    Output ``[x, E x, flat(E E^T)]`` (``x`` only with ``include_dense``): every product, so the lower
    triangle needs no selection (two transposes and a gather in ONNX); the widened first layer gives
    the unused entries zero weight. With ``mask`` the diagonal and upper triangle of ``E E^T`` are zeroed,
    so a dynamically quantized consumer sees the same range as with the selected entries only
    (``DynamicQuantizeLinear``'s range always contains 0, and the upper triangle repeats the lower).
    """

    def __init__(self, num_embeddings: int, include_dense: bool, mask: bool) -> None:
        super().__init__()
        self.include_dense, self.masked = include_dense, mask
        self.register_buffer("mask", torch.tril(torch.ones(num_embeddings, num_embeddings), -1), persistent=False)

    def forward(self, dense_vec: Tensor, embeddings: Tensor) -> Tensor:
        ee = torch.bmm(embeddings, embeddings.transpose(1, 2))
        if self.masked:
            ee = ee * self.mask
        ex = torch.bmm(embeddings, dense_vec.unsqueeze(2)).flatten(1)
        head = [dense_vec] if self.include_dense else []
        return torch.cat([*head, ex, ee.flatten(1)], 1)

    @staticmethod
    def columns(inter: DotInteraction, dense_dim: int) -> tuple[Tensor, int]:
        """Where each output column of ``DotInteraction`` ``inter`` sits in the folded output, and the
        folded width."""
        f, head = inter.num_vectors - 1, dense_dim if inter.include_dense else 0  # vector 0 is the dense one
        return inter.product_index(dense_dim) - (dense_dim - head), head + f + f * f


def _widen_int8_linear(m: nn.Module, cols: Tensor, width: int) -> nn.Module:
    """A copy of ``Int8Linear`` ``m`` that reads input column ``cols[k]`` of a ``width``-wide input where
    ``m`` read column ``k`` (zero weights elsewhere: the same integer sums)."""
    out = copy.deepcopy(m)
    wq_t = torch.zeros(width, m.out_features, dtype=m.wq_t.dtype)
    wq_t[cols] = m.wq_t
    out.wq_t, out.in_features = wq_t, width
    return out


def _interaction_consumers(model: nn.Module, backbone: nn.Module) -> list[tuple[nn.Sequential, str]]:
    """``(MLP, name of its first layer)`` for every MLP that reads ``backbone``'s interaction output
    directly (only the project's own model classes, whose forward is known)."""
    if backbone.shared_mlp is not None:
        mlps = [backbone.shared_mlp]
    else:
        mlps = []
        for m in model.modules():
            if type(m) is DLRM and m.backbone is backbone:
                mlps.append(m.top_mlp)
            elif type(m) is MultiTaskDLRM and m.shared is backbone:
                mlps.extend(m.towers.values())
    return [(s, next(iter(s._modules))) for s in mlps if type(s) is MLP and len(s)]


#: fold only while the widened layers' extra multiply-accumulates per sample stay below this many per
#: folded value: ONNX Runtime 1.32 on 2 AVX512-VNNI cores runs about 3 ps per int8 MAC against about
#: 0.5 ns per value for the selection's transposes and gather. The reference DLRM (26 x 64, top
#: 512-512-256) widens 415 -> 766 inputs of a 512-wide layer: folded 5.1-5.3 ms, selected 4.4-4.8 ms
#: at batch 512; with a 128-wide top layer folding still wins.
FOLD_MACS_PER_VALUE = 170


def _fold_interaction(model: nn.Module, backbone: nn.Module, native: bool) -> None:
    """Swap a DLRM backbone's ``DotInteraction`` for :class:`FoldedDotInteraction` (in place) when every
    layer reading it is an ``Int8Linear`` (each widened to the folded layout) and the widening costs fewer
    multiply-accumulates than the selection it saves (:data:`FOLD_MACS_PER_VALUE`). A float consumer is
    left alone: widened, its float matmul costs more than the selection it saves."""
    if type(backbone) is not DLRMBackbone:
        return None
    inter, consumers = backbone.interaction, _interaction_consumers(model, backbone)
    if type(inter) is not DotInteraction or backbone.bottom_mlp is None or not consumers:
        return None
    firsts = [mlp._modules[name] for mlp, name in consumers]
    cols, width = FoldedDotInteraction.columns(inter, backbone.bottom_mlp.out_features)
    if not all(isinstance(m, Int8Linear) and m.in_features == cols.numel() for m in firsts):
        return None
    if (width - cols.numel()) * sum(m.out_features for m in firsts) > FOLD_MACS_PER_VALUE * width:
        return None
    masked = any(m.activation == "dynamic" for m in firsts)
    backbone.interaction = FoldedDotInteraction(inter.num_vectors - 1, inter.include_dense, masked)
    for (mlp, name), m in zip(consumers, firsts):
        mlp._modules[name] = _widen_int8_linear(m, cols, width)
    return None


def _lower_interaction(model: nn.Module, m: nn.Module, native: bool) -> nn.Module | None:
    """:class:`LoweredDotInteraction` for a (not folded) ``DotInteraction``."""
    if type(m) is not DotInteraction:
        return None
    return LoweredDotInteraction(m.num_vectors, m.include_dense)


def _fuse_collection(model: nn.Module, m: nn.Module, native: bool) -> nn.Module | None:
    """One :class:`FusedCollection` for an ``EmbeddingBagCollection`` whose lowered tables are sum-pooled
    bags of one kind and width (``native`` exports keep the per-table modules)."""
    tables = list(m.tables.values())
    if native or not tables or not all(isinstance(t, LoweredTable) and t.bag and t.mode == "sum" for t in tables):
        return None
    if len({(t.kind, t.dim, tuple(n for n, _ in t.named_buffers())) for t in tables}) != 1:
        return None
    return FusedCollection(list(m.tables.keys()), tables)


# the order matters: collections first, then folding, then the interactions left unfolded
register_lowering(EmbeddingBagCollection, _fuse_collection)
register_lowering(DLRMBackbone, _fold_interaction)
register_lowering(DotInteraction, _lower_interaction)
