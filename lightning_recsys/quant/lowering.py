"""Graph-export versions of embedding tables: bags lowered to Gather + ReduceSum.

``nn.EmbeddingBag`` exports to an ONNX ``Loop`` that runs 7-25x slower than a gather and a sum. For
export, every table is swapped for a module that takes **padded** ids ``[B, L]`` (``-1`` = padding;
an empty bag is a row of ``-1``) and gathers from a table with one extra all-zero row at the end (ONNX
``Gather`` reads index ``-1`` as the last row), so padding and empty bags add nothing without any mask.
Models exported with their own inputs keep ``nn.EmbeddingBag``'s contract instead (1-D ids + offsets
pooled by a scatter into the bags, 2-D ids, sum / mean / max: :class:`LoweredTable` ``native``).
Row-wise int8/int4 tables stay row-wise in the graph: ``Gather`` on the uint8 codes and one on the
per-row ``[scale, bias]`` pairs, then ``q * scale + bias``. int8 rows quantized with integer zero points
(:func:`~lightning_recsys.quant.pack_rowwise`) gather ``[scale, zero point]`` and dequantize with one
per-axis ``DequantizeLinear``; int4 bytes are re-packed at export so that a bitwise ``And``, a
``BitShift`` and a ``Concat`` recover the uint8 codes. ORT 1.31's fused
``com.microsoft.GatherBlockQuantized`` (bits=8, block_size=D) measured slower than this on CPU (8.1 vs 3.2 ms for 512 x 26 rows of 64 on 2 threads), so it is not used.

The project's ``DotInteraction`` is swapped for :class:`LoweredDotInteraction` (same function): the
pairwise dot products without the ``[B, F+1, D]`` concat, and the lower triangle read with one
``Gather`` of rows of the transposed, flattened products instead of ``GatherND`` on ``[F, F, B]``.
When every layer reading it is an ``Int8Linear`` (a quantized DLRM), it becomes a
:class:`FoldedDotInteraction` instead: the consumers are widened (zero weights) to read all products
``[x, E x, E E^T]``, so no selection runs at all. A :class:`FusedCollection` puts one zero row before
each table's block, so an empty bag (id ``-1``) needs no ``Where``, and reads the export's stacked
``[B, F]`` id matrix directly (:class:`StackedColumn`). Together about 10% off the int8 DLRM graph at
batch 512 and 40% at batch 1 (2 threads). A ``ReLU`` right before a calibrated static ``Int8Linear``
with zero point 0 is dropped (its quantization already clamps negatives to 0).

Example:
    >>> import torch
    >>> from torch import nn
    >>> bag = nn.EmbeddingBag(10, 4)
    >>> low = lower_table(bag)
    >>> ids = torch.tensor([[1, 2], [3, 9]])
    >>> torch.allclose(low(ids), bag(ids))
    True
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data.batch import SparseFeature
from .embedding import QuantizedEmbedding, QuantizedEmbeddingBag

__all__ = ["LoweredTable", "FusedCollection", "LoweredDotInteraction", "FoldedDotInteraction", "StackedColumn",
           "lower_table", "lower_tables"]  # fmt: skip


@torch.library.custom_op("lrs_quant::dequantize_rows", mutates_args=())
def dequantize_rows(codes: Tensor, scale: Tensor, zero_point: Tensor) -> Tensor:
    """``(codes [..., D] - zero_point [..., 1]) * scale [..., 1]`` in float32 (``zero_point`` holds
    integers in 0..255); exported as one per-axis ``DequantizeLinear``, which ONNX Runtime runs several
    times faster than ``Cast`` + ``Mul`` + a broadcast bias ``Add``."""
    return (codes.float() - zero_point) * scale


@dequantize_rows.register_fake
def _(codes: Tensor, scale: Tensor, zero_point: Tensor) -> Tensor:
    return codes.new_empty(codes.shape, dtype=torch.float32)


@torch.library.custom_op("lrs_quant::unpack_nibbles", mutates_args=())
def unpack_nibbles(packed: Tensor) -> Tensor:
    """uint8 ``[..., H]`` -> uint8 ``[..., 2H]``: the low nibbles, then the high nibbles (exported as
    ``BitwiseAnd`` + ``BitShift`` + ``Concat``)."""
    return torch.cat([packed & 15, packed >> 4], -1)


@unpack_nibbles.register_fake
def _(packed: Tensor) -> Tensor:
    return packed.new_empty((*packed.shape[:-1], 2 * packed.shape[-1]))


def _integer_zero_points(scale: Tensor, bias: Tensor) -> Tensor | None:
    """``zp`` with ``bias == -zp * scale`` (integers in 0..255), or None when the rows were not
    quantized on such a grid (e.g. packed by FBGEMM with a float bias)."""
    zp = torch.round(-bias.double() / scale.double())
    exact = (bias.double() + zp * scale.double()).abs() <= 2.0**-22 * (zp + 1) * scale.double().abs()  # fp32 rounding
    if bool(exact.all()) and bool(((zp >= 0) & (zp <= 255)).all()):
        return zp.float()
    return None


def _split_nibbles(packed: Tensor, dim: int) -> Tensor:
    """FBGEMM's int4 bytes (even column low, odd column high) -> byte ``k`` holding column ``k`` (low)
    and column ``k + ceil(dim / 2)`` (high), so a graph unpacks rows with one ``And``, one ``BitShift``
    and a ``Concat`` instead of interleaving."""
    codes = torch.stack([packed & 15, packed >> 4], -1).flatten(-2)  # [N, 2 * ceil(dim / 2)], columns in order
    half = packed.shape[-1]
    codes[:, dim:] = 0
    return (codes[:, :half] | (codes[:, half:] << 4)).contiguous()


def _with_zero_row(t: Tensor) -> Tensor:
    return torch.cat([t, torch.zeros((1, *t.shape[1:]), dtype=t.dtype)], 0).contiguous()


class LoweredTable(nn.Module):
    """A table for export: ``forward(input, offsets=None, per_sample_weights=None)``; ``bag=False``
    returns rows ``[*input.shape, D]`` like ``nn.Embedding``, ``bag=True`` pools (sum / mean / max):

    * ``native=False`` (the RecsysBatch export layout): padded ids ``[B, L]`` (``-1`` = padding) or
      single-hot ids ``[B]`` (``-1`` = empty bag, no reduction); ``offsets`` is ignored.
    * ``native=True``: ``nn.EmbeddingBag``'s contract (1-D ids with ``offsets``, ``include_last_offset``
      as the module had it, or 2-D ids; ``padding_idx`` ids left out), 1-D ids pooled by a scatter into
      the bags (:meth:`_pool_segments`: the number of ids and bag lengths stay dynamic).

    int4 codes ``q``: the split nibble layout of :func:`lower_table` (byte ``k``: columns ``k``, ``k + ceil(D/2)``).
    """

    def __init__(self, kind: str, tensors: dict[str, Tensor], dim: int, bag: bool, mode: str = "sum", *,
                 native: bool = False, include_last_offset: bool = False, padding_idx: int | None = None) -> None:  # fmt: skip
        super().__init__()
        if kind not in ("float", "fp16", "int8", "int4"):
            raise ValueError(f"kind must be float, fp16, int8 or int4, got {kind!r}")
        if mode not in ("sum", "mean", "max"):
            raise ValueError(f"mode must be 'sum', 'mean' or 'max', got {mode!r}")
        self.kind, self.dim, self.bag, self.mode = kind, int(dim), bag, mode
        self.native, self.include_last_offset, self.padding_idx = native, include_last_offset, padding_idx
        tensors = {k: v.detach() for k, v in tensors.items()}
        if "scale" in tensors:  # one [N, 2] table: a single Gather reads a row's scale and bias / zero point
            scale, bias = tensors.pop("scale").float(), tensors.pop("bias").float()
            zp = _integer_zero_points(scale, bias) if kind == "int8" else None
            if zp is None:
                tensors["scale_bias"] = torch.stack([scale, bias], 1)
            else:
                tensors["scale_zp"] = torch.stack([scale, zp], 1)
        for name, t in tensors.items():
            self.register_buffer(name, _with_zero_row(t))

    def rows(self, ids: Tensor) -> Tensor:
        """Float32 rows for ``ids`` (any shape; ``-1`` reads the zero row in ONNX)."""
        if self.kind == "float":
            return F.embedding(ids, self.weight)
        if self.kind == "fp16":
            return F.embedding(ids, self.weight).float()
        if hasattr(self, "scale_zp"):
            scale, zp = F.embedding(ids, self.scale_zp).split(1, -1)
            return dequantize_rows(F.embedding(ids, self.q), scale, zp)
        sb = F.embedding(ids, self.scale_bias)
        if self.kind == "int8":
            scale, bias = sb.split(1, -1)
            return dequantize_rows(F.embedding(ids, self.q), scale, torch.zeros_like(scale)) + bias
        packed = F.embedding(ids, self.q)  # int4: uint8 codes from both nibbles, no float arithmetic
        codes = unpack_nibbles(packed)
        if codes.shape[-1] != self.dim:
            codes = codes[..., : self.dim]
        scale, bias = sb.split(1, -1)
        return dequantize_rows(codes, scale, torch.zeros_like(scale)) + bias

    def forward(self, input: Tensor, offsets: Tensor | None = None, per_sample_weights: Tensor | None = None) -> Tensor:
        if not self.bag:
            return self.rows(input)
        if per_sample_weights is not None and self.mode != "sum":
            raise ValueError(f"per_sample_weights needs mode='sum' (this bag's mode is {self.mode!r}), as in nn.EmbeddingBag")
        if self.native and input.dim() == 1:
            if offsets is None or offsets.dim() != 1:
                raise ValueError("offsets (1-D) is required when input is 1-D, as in nn.EmbeddingBag")
            return self._pool_segments(input, offsets, per_sample_weights)
        if self.native and offsets is not None:
            raise ValueError("offsets must be None when input is 2-D (fixed-length bags), as in nn.EmbeddingBag")
        if not self.native and input.dim() == 1:  # single-hot export: one id per bag, -1 = empty bag
            rows = self.rows(input)
            return rows if per_sample_weights is None else rows * per_sample_weights.unsqueeze(-1)
        if input.dim() != 2:
            raise ValueError(f"an exported bag table needs 2-D ids [batch, bag] (or 1-D ids with offsets), got shape "
                             f"{tuple(input.shape)}")  # fmt: skip
        rows = self.rows(input)
        if per_sample_weights is not None:
            rows = rows * per_sample_weights.unsqueeze(-1)
        pad = self.native and self.padding_idx is not None  # (padded layout: -1 reads the zero row)
        valid = (input != self.padding_idx) if pad else (input >= 0) if not self.native and self.mode != "sum" else None
        if self.mode == "max":
            if valid is None:
                return rows.amax(1)
            out = rows.masked_fill(~valid.unsqueeze(-1), float("-inf")).amax(1)
            return torch.where(valid.any(1, keepdim=True), out, torch.zeros_like(out))  # an empty bag gives zeros
        if pad:
            rows = rows * valid.unsqueeze(-1).to(rows.dtype)
        out = rows.sum(1)
        if self.mode == "mean":
            count = valid.sum(1, keepdim=True) if valid is not None else torch.full_like(out[:, :1], input.shape[1])
            out = out / count.clamp(min=1).to(out.dtype)
        return out

    def _pool_segments(self, ids: Tensor, offsets: Tensor, weights: Tensor | None) -> Tensor:
        """``nn.EmbeddingBag(ids, offsets)`` without a ``Loop``: id ``p``'s bag is the number of offsets ``<= p``
        minus one (a scatter-add of ones at the offsets, then a cumsum); rows are scattered into their bags.
        Ids past an ``include_last_offset`` end and ``padding_idx`` ids go to an extra bag, dropped."""
        n, slots, offsets = ids.shape[0], offsets.shape[0], offsets.long()
        marks = torch.zeros(n + 1, dtype=torch.long, device=ids.device).index_add(0, offsets, torch.ones_like(offsets))
        seg = marks.cumsum(0)[:n] - 1
        if self.padding_idx is not None:
            seg = torch.where(ids == self.padding_idx, torch.full_like(seg, slots), seg)
        rows = self.rows(ids)
        if weights is not None:
            rows = rows * weights.unsqueeze(-1).to(rows.dtype)
        bags = slots - 1 if self.include_last_offset else slots
        zeros = rows.new_zeros(slots + 1, rows.shape[-1])
        if self.mode == "max":  # empty bags keep the zeros (include_self=False), as in nn.EmbeddingBag
            return zeros.scatter_reduce(0, seg.unsqueeze(-1).expand_as(rows), rows, "amax", include_self=False)[:bags]
        out = zeros.index_add(0, seg, rows)[:bags]
        if self.mode == "mean":
            count = rows.new_zeros(slots + 1).index_add(0, seg, torch.ones_like(rows[:, 0]))[:bags]
            out = out / count.clamp(min=1).unsqueeze(-1)
        return out


def lower_table(m: nn.Module, native: bool = False) -> LoweredTable:
    """The export version of a float or quantized embedding table (``native``: see :class:`LoweredTable`)."""
    if getattr(m, "max_norm", None) is not None:
        raise TypeError(f"{type(m).__name__} with max_norm renormalises rows in forward; it cannot be exported (set "
                        "max_norm=None and renormalise the weights once)")  # fmt: skip
    if isinstance(m, (QuantizedEmbedding, QuantizedEmbeddingBag)):
        bag = isinstance(m, QuantizedEmbeddingBag)
        kind = "fp16" if m.precision == "fp16" else m.precision
        tensors = m.lowering_tensors()
        if kind == "int4":  # byte k: column k in the low nibble, column k + ceil(D/2) in the high one
            tensors["q"] = _split_nibbles(tensors["q"], m.embedding_dim)
        return LoweredTable(kind, tensors, m.embedding_dim, bag, m.mode if bag else "sum", native=native,
                            include_last_offset=bag and m.include_last_offset)  # fmt: skip
    if callable(getattr(m, "to_dense", None)) and not isinstance(m, (nn.Embedding, nn.EmbeddingBag)):
        m = m.to_dense()  # chunked / pruned tables export their dense table
    if isinstance(m, nn.EmbeddingBag):
        weight = m.weight.detach().clone()
        pad = m.padding_idx
        if pad is not None and not native:
            if m.mode != "sum":
                raise TypeError(f"nn.EmbeddingBag mode {m.mode!r} with padding_idx cannot be exported from a RecsysBatch "
                                "model; supported: mode 'sum' with padding_idx, or no padding_idx")  # fmt: skip
            weight[pad] = 0.0
        return LoweredTable("float", {"weight": weight}, m.embedding_dim, True, m.mode, native=native,
                            include_last_offset=m.include_last_offset, padding_idx=pad if native else None)  # fmt: skip
    if isinstance(m, nn.Embedding):
        return LoweredTable("float", {"weight": m.weight.detach()}, m.embedding_dim, False, native=native)
    raise TypeError(f"cannot lower {type(m).__name__} for export; supported: nn.Embedding(Bag), Quantized*, dense exporters")


@dataclass
class StackedColumn(SparseFeature):
    """A single-hot feature that is column ``column`` of an export input ``matrix`` [B, K] holding the
    ids of several features (``values`` is that column): a :class:`FusedCollection` whose features are
    consecutive columns reads the matrix directly."""

    matrix: Tensor | None = None
    column: int = 0


class FusedCollection(nn.Module):
    """Export version of an ``EmbeddingBagCollection`` whose tables share one kind and width: all
    tables stacked into one, so single-hot features cost ONE Gather (+ dequantization) for all of
    them instead of a gather, a reduction and a concat per table. Multi-hot inputs fall back to the
    per-table lowered modules."""

    def __init__(self, names: list[str], tables: list[LoweredTable]) -> None:
        super().__init__()
        first = tables[0]
        self.names, self.dim = list(names), first.dim
        self.per_table = nn.ModuleDict(dict(zip(names, tables)))
        parts: dict[str, list[Tensor]] = {}
        base, start = [], 0
        for t in tables:  # each table's block follows one zero row, so id -1 + base reads zeros
            rows = 0
            for key, buf in t.named_buffers(recurse=False):
                parts.setdefault(key, []).extend([buf[-1:], buf[:-1]])  # the table's own zero row first
                rows = buf.shape[0]
            base.append(start + 1)
            start += rows
        tensors = {k: torch.cat(v, 0) for k, v in parts.items()}
        self.fused = LoweredTable(first.kind, tensors, first.dim, bag=False)
        self.register_buffer("base", torch.tensor(base, dtype=torch.long))

    def forward(self, sparse) -> Tensor:
        feats = [sparse[n] for n in self.names]
        if any(f.values.dim() != 1 for f in feats):
            return torch.stack([self.per_table[n](f.values, None, f.weights) for n, f in zip(self.names, feats)], 1)
        ids = self._stacked_ids(feats)
        if ids is None:  # [B, F]: one Concat of the 1-D ids and a transpose (torch.stack: an Unsqueeze per feature)
            ids = torch.cat([f.values for f in feats], 0).reshape(len(feats), -1).t()
        ids = ids + self.base  # -1 (empty bag) lands on the zero row before each table's block
        rows = self.fused.rows(ids)  # [B, F, D]
        if any(f.weights is not None for f in feats):
            w = torch.stack([f.weights if f.weights is not None else torch.ones_like(f.values, dtype=rows.dtype)
                             for f in feats], 1)  # fmt: skip
            rows = rows * w.unsqueeze(-1)
        return rows


    @staticmethod
    def _stacked_ids(feats: list) -> Tensor | None:
        """The ``[B, F]`` slice of the export's stacked id matrix when ``feats`` are consecutive columns."""
        first = feats[0]
        if not all(isinstance(f, StackedColumn) and f.matrix is first.matrix and f.weights is None for f in feats):
            return None
        if [f.column for f in feats] != list(range(first.column, first.column + len(feats))):
            return None
        whole = first.column == 0 and len(feats) == first.matrix.shape[1]
        return first.matrix if whole else first.matrix[:, first.column : first.column + len(feats)]


class LoweredDotInteraction(nn.Module):
    """Export version of the project's ``DotInteraction`` (same output, same order).

    ``cat([x, lower-triangle of T T^T])`` with ``T = [x; E]`` is computed as ``E E^T`` and ``E x``
    (no ``[B, F+1, D]`` concat), then ``[x, E x, flat(E E^T)]`` is concatenated once and the wanted
    entries are read with one ``Gather`` (on the transposed products: ORT gathers whole rows fast).
    """

    def __init__(self, num_vectors: int, rows: Tensor, cols: Tensor, include_dense: bool) -> None:
        super().__init__()
        self.include_dense = include_dense
        self.num_vectors = int(num_vectors)
        self.register_buffer("rows", rows.clone(), persistent=False)
        self.register_buffer("cols", cols.clone(), persistent=False)

    def _index(self, dim: int | None) -> Tensor:
        """Positions in ``[x (dim), E x (F), flat(E E^T) (F*F)]`` (``flat(E E^T)`` alone without ``x``)."""
        if dim is None:
            return self.rows * self.num_vectors + self.cols
        f = self.num_vectors - 1
        r, c = self.rows - 1, self.cols - 1  # embedding indices; c == -1 is the dense vector
        pair = torch.where(c < 0, dim + r, dim + f + r * f + c.clamp(min=0))
        head = torch.arange(dim) if self.include_dense else torch.empty(0, dtype=torch.long)
        return torch.cat([head, pair])

    def forward(self, dense_vec: Tensor | None, embeddings: Tensor) -> Tensor:
        ee = torch.bmm(embeddings, embeddings.transpose(1, 2)).flatten(1)  # [B, F*F]
        if dense_vec is None:
            return self._select(ee, self._index(None))
        ex = torch.bmm(embeddings, dense_vec.unsqueeze(2)).flatten(1)  # [B, F]
        return self._select(torch.cat([dense_vec, ex, ee], 1), self._index(dense_vec.shape[1]))

    @staticmethod
    def _select(flat: Tensor, index: Tensor) -> Tensor:
        # ORT's Gather on axis 1 copies element by element; on axis 0 it copies whole rows
        return torch.index_select(flat.t(), 0, index).t()


class FoldedDotInteraction(nn.Module):
    """Export version of ``DotInteraction`` for consumers widened by :func:`_fold_interactions`.

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
    def columns(inter: nn.Module, dense_dim: int) -> tuple[Tensor, int]:
        """Where each output column of ``DotInteraction`` ``inter`` sits in the folded output, and the
        folded width."""
        f = int(inter.rows.max()) if inter.rows.numel() else 0  # embeddings; vector 0 is the dense one
        r, c = inter.rows - 1, inter.cols - 1
        head = dense_dim if inter.include_dense else 0
        pair = head + torch.where(c < 0, r, f + r * f + c.clamp(min=0))
        return torch.cat([torch.arange(head), pair]), head + f + f * f


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
    from ..models.dlrm import DLRM, MLP, MultiTaskDLRM

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


def _fold_interactions(model: nn.Module) -> None:
    """Swap a DLRM backbone's ``DotInteraction`` for :class:`FoldedDotInteraction` when every layer
    reading it is an ``Int8Linear`` (each widened to the folded layout). A float consumer is left alone:
    widened, its float matmul costs more than the selection it saves."""
    try:
        from ..models.dlrm import DLRMBackbone, DotInteraction
    except ImportError:  # pragma: no cover
        return
    from .linear import Int8Linear

    for backbone in [m for m in model.modules() if type(m) is DLRMBackbone]:
        inter, consumers = backbone.interaction, _interaction_consumers(model, backbone)
        if type(inter) is not DotInteraction or backbone.bottom_mlp is None or not consumers:
            continue
        firsts = [mlp._modules[name] for mlp, name in consumers]
        cols, width = FoldedDotInteraction.columns(inter, backbone.bottom_mlp.out_features)
        if not all(isinstance(m, Int8Linear) and m.in_features == cols.numel() for m in firsts):
            continue
        masked = any(m.activation == "dynamic" for m in firsts)
        backbone.interaction = FoldedDotInteraction(int(inter.rows.max()), inter.include_dense, masked)
        for (mlp, name), m in zip(consumers, firsts):
            mlp._modules[name] = _widen_int8_linear(m, cols, width)


def _drop_relus_before_static_int8(model: nn.Module) -> None:
    """In every ``nn.Sequential``, drop a ``ReLU`` whose next layer is a calibrated static ``Int8Linear``
    with zero point 0: its ``QuantizeLinear`` already saturates negatives to code 0, so the ReLU is one
    pass over the activations that changes nothing."""
    from .linear import Int8Linear

    for seq in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
        names = list(seq._modules)
        for a, b in zip(names, names[1:]):
            relu, nxt = seq._modules[a], seq._modules[b]
            if type(relu) is nn.ReLU and isinstance(nxt, Int8Linear) and nxt.activation == "static" and nxt._calibrated \
                    and float(nxt.x_zero_point) == 0.0:  # fmt: skip
                seq._modules[a] = nn.Identity()


def _lower_interactions(model: nn.Module) -> None:
    try:
        from ..models.dlrm import DotInteraction
    except ImportError:  # pragma: no cover
        return
    for fqn, m in list(model.named_modules()):
        if type(m) is not DotInteraction or not fqn:
            continue
        parent_name, _, child = fqn.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        n = int(m.rows.max()) + 1 if m.rows.numel() else 1
        setattr(parent, child, LoweredDotInteraction(n, m.rows, m.cols, m.include_dense))


def _fuse_collections(model: nn.Module) -> None:
    try:
        from ..models.dlrm import EmbeddingBagCollection
    except ImportError:  # pragma: no cover
        return
    for fqn, m in list(model.named_modules()):
        if not isinstance(m, EmbeddingBagCollection):
            continue
        tables = list(m.tables.values())
        if not tables or not all(isinstance(t, LoweredTable) and t.bag and t.mode == "sum" for t in tables):
            continue
        if len({(t.kind, t.dim, tuple(n for n, _ in t.named_buffers())) for t in tables}) != 1:
            continue
        parent_name, _, child = fqn.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        if not fqn:
            continue
        setattr(parent, child, FusedCollection(list(m.tables.keys()), tables))


def lower_tables(model: nn.Module, native: bool = False) -> nn.Module:
    """A deep copy of ``model`` with every embedding table replaced by its :class:`LoweredTable`
    (the project's ``EmbeddingBagCollection`` fused into a :class:`FusedCollection` when its tables
    share one precision and width, its ``DotInteraction`` swapped for :class:`LoweredDotInteraction` or
    folded, and ReLUs before static int8 linears with zero point 0 dropped).

    ``native=False``: the tables read the :class:`~lightning_recsys.data.RecsysBatch` export layout
    (padded / single-hot ids); ``native=True``: they keep ``nn.EmbeddingBag``'s input contract (1-D ids
    with offsets, or 2-D ids), for models exported with their own tensor inputs (no fusion then)."""
    from .api import _DENSE_EXPORTERS

    model = copy.deepcopy(model)
    table_types = (nn.Embedding, nn.EmbeddingBag, QuantizedEmbedding, QuantizedEmbeddingBag, *_DENSE_EXPORTERS)
    targets = []
    for fqn, m in model.named_modules():
        if fqn and isinstance(m, table_types) and not any(fqn.startswith(t + ".") for t, _ in targets):
            targets.append((fqn, m))
    for fqn, m in targets:
        parent_name, _, child = fqn.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, lower_table(m, native))
    if not native:
        _fuse_collections(model)
    _fold_interactions(model)
    _lower_interactions(model)
    _drop_relus_before_static_int8(model)
    return model
