"""Graph-export versions of embedding tables: bags lowered to Gather + ReduceSum.

``nn.EmbeddingBag`` exports to an ONNX ``Loop`` that runs 7-25x slower than a gather and a sum. For
export, every table is swapped for a module that takes **padded** ids ``[B, L]`` (``-1`` = padding;
an empty bag is a row of ``-1``) and gathers from a table with one extra all-zero row at the end (ONNX
``Gather`` reads index ``-1`` as the last row), so padding and empty bags add nothing without any mask.
Models exported with their own inputs keep ``nn.EmbeddingBag``'s contract instead (1-D ids + offsets
pooled by a scatter into the bags, 2-D ids, sum / mean / max: :class:`LoweredTable` ``native``).
Row-wise int8/int4 tables stay row-wise in the graph: ``Gather`` on the uint8 codes and one on the
per-row ``[scale, bias]`` pairs, then ``q * scale + bias`` (int8: a per-axis ``DequantizeLinear`` and a
bias ``Add``; default rows keep FBGEMM's exact range, so their bias is a float). int8 rows on the
anchored grid (``pack_rowwise(grid="anchored")``: integer zero points) gather ``[scale, zero point]``
and dequantize with the ``DequantizeLinear`` alone (no bias add; ``ours_onnx_int8_anchored`` in
benchmarks/results/quant.json: -6% to +3% of the default graph's time, so no reliable gain; at up to
2-3x the row error on rows of one sign); int4 bytes are
re-packed at export so that a bitwise ``And``, a ``BitShift`` and a ``Concat`` recover the uint8 codes. ORT 1.31's fused
``com.microsoft.GatherBlockQuantized`` (bits=8, block_size=D) measured slower than this on CPU (8.1 vs 3.2 ms for 512 x 26 rows of 64 on 2 threads), so it is not used.

Model-specific blocks get their export versions from lowerings registered with
:func:`register_lowering` (the project's DLRM ones: :mod:`lightning_recsys.quant.export.lowerings.dlrm`,
which fuses an ``EmbeddingBagCollection`` into one :class:`FusedCollection` reading the export's stacked
``[B, F]`` id matrix (:class:`StackedColumn`) and lowers or folds its ``DotInteraction``). A ``ReLU``
right before a calibrated static ``Int8Linear`` with zero point 0 is dropped (its quantization already
clamps negatives to 0).

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
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...data.batch import SparseFeature
from ..core.api import DENSE_EXPORTERS, set_submodule
from ..core.embedding import QuantizedEmbedding, QuantizedEmbeddingBag
from ..core.linear import Int8Linear

__all__ = ["LoweredTable", "FusedCollection", "StackedColumn", "Lowering", "lower_table", "lower_tables", "register_lowering"]

#: ``fn(model, module, native) -> replacement | None``: a model-specific export lowering (:func:`register_lowering`)
Lowering = Callable[[nn.Module, nn.Module, bool], "nn.Module | None"]
_LOWERINGS: dict[type[nn.Module], Lowering] = {}


@torch.library.custom_op("lrs_quant::dequantize_rows", mutates_args=())
def dequantize_rows(codes: Tensor, scale: Tensor, zero_point: Tensor | None = None) -> Tensor:
    """``(codes [..., D] - zero_point [..., 1]) * scale [..., 1]`` in float32 (``zero_point`` holds
    integers in 0..255; ``None``: 0); exported as one per-axis ``DequantizeLinear`` (with no zero-point
    input for ``None``), which ONNX Runtime runs several times faster than ``Cast`` + ``Mul``."""
    return codes.float() * scale if zero_point is None else (codes.float() - zero_point) * scale


@dequantize_rows.register_fake
def _(codes: Tensor, scale: Tensor, zero_point: Tensor | None = None) -> Tensor:
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
            return dequantize_rows(F.embedding(ids, self.q), scale) + bias
        packed = F.embedding(ids, self.q)  # int4: uint8 codes from both nibbles, no float arithmetic
        codes = unpack_nibbles(packed)
        if codes.shape[-1] != self.dim:
            codes = codes[..., : self.dim]
        scale, bias = sb.split(1, -1)
        return dequantize_rows(codes, scale) + bias

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


def _export_padding(m: nn.Module, native: bool) -> int | None:
    """A bag's ``padding_idx``, or the error for one the RecsysBatch export layout cannot pool."""
    pad = m.padding_idx
    if pad is not None and not native and m.mode != "sum":
        raise TypeError(f"{type(m).__name__} mode {m.mode!r} with padding_idx cannot be exported from a RecsysBatch "
                        "model; supported: mode 'sum' with padding_idx, or no padding_idx")  # fmt: skip
    return pad


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
        pad = _export_padding(m, native) if bag else None  # (a quantized sum's padding row is zeros already)
        return LoweredTable(kind, tensors, m.embedding_dim, bag, m.mode if bag else "sum", native=native,
                            include_last_offset=bag and m.include_last_offset,
                            padding_idx=pad if bag and m.mode != "sum" else None)  # fmt: skip
    if callable(getattr(m, "to_dense", None)) and not isinstance(m, (nn.Embedding, nn.EmbeddingBag)):
        m = m.to_dense()  # chunked / pruned tables export their dense table
    if isinstance(m, nn.EmbeddingBag):
        weight = m.weight.detach().clone()
        pad = _export_padding(m, native)
        if pad is not None and not native:
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


def register_lowering(module_type: type[nn.Module], fn: Lowering) -> None:
    """Have :func:`lower_tables` call ``fn(model, module, native)`` on every instance of ``module_type``
    in the copy it lowers (after the tables are lowered), to swap in an export version of a model's own
    block.

    ``fn`` returns the replacement for ``module`` (``None``: keep it, e.g. after changing it in place; the
    root module is never replaced); ``native`` is ``lower_tables``' flag (the model keeps its own tensor
    inputs). Lowerings run in registration order; registering a type again replaces its function in place.
    The project's DLRM lowerings (:mod:`lightning_recsys.quant.export.lowerings.dlrm`) register on import.
    """
    if not (isinstance(module_type, type) and issubclass(module_type, nn.Module)):
        raise TypeError(f"module_type must be an nn.Module subclass, got {module_type!r}")
    if not callable(fn):
        raise TypeError(f"fn must be callable as fn(model, module, native), got {fn!r}")
    _LOWERINGS[module_type] = fn


def _run_lowerings(model: nn.Module, native: bool) -> None:
    """Apply every registered lowering to ``model`` in place (see :func:`register_lowering`)."""
    for module_type, fn in list(_LOWERINGS.items()):
        for fqn, m in list(model.named_modules()):
            if isinstance(m, module_type):
                new = fn(model, m, native)
                if new is not None and new is not m and fqn:
                    set_submodule(model, fqn, new)


def _drop_relus_before_static_int8(model: nn.Module) -> None:
    """In every ``nn.Sequential``, drop a ``ReLU`` whose next layer is a calibrated static ``Int8Linear``
    with zero point 0: its ``QuantizeLinear`` already saturates negatives to code 0, so the ReLU is one
    pass over the activations that changes nothing."""
    for seq in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
        names = list(seq._modules)
        for a, b in zip(names, names[1:]):
            relu, nxt = seq._modules[a], seq._modules[b]
            if type(relu) is nn.ReLU and isinstance(nxt, Int8Linear) and nxt.activation == "static" and nxt._calibrated \
                    and float(nxt.x_zero_point) == 0.0:  # fmt: skip
                seq._modules[a] = nn.Identity()


def lower_tables(model: nn.Module, native: bool = False) -> nn.Module:
    """A deep copy of ``model`` with every embedding table replaced by its :class:`LoweredTable`, then
    the registered model-specific lowerings applied (:func:`register_lowering`; the project's
    ``EmbeddingBagCollection`` fused into a :class:`FusedCollection` when its tables share one precision
    and width, its ``DotInteraction`` lowered or folded) and ReLUs before static int8 linears with zero
    point 0 dropped.

    ``native=False``: the tables read the :class:`~lightning_recsys.data.RecsysBatch` export layout
    (padded / single-hot ids); ``native=True``: they keep ``nn.EmbeddingBag``'s input contract (1-D ids
    with offsets, or 2-D ids), for models exported with their own tensor inputs (no fusion then)."""
    model = copy.deepcopy(model)
    table_types = (nn.Embedding, nn.EmbeddingBag, QuantizedEmbedding, QuantizedEmbeddingBag, *DENSE_EXPORTERS)
    targets, lowered = [], {}
    for fqn, m in model.named_modules(remove_duplicate=False):  # a tied table: lowered once, under every name
        if fqn and isinstance(m, table_types) and not any(fqn.startswith(t + ".") for t, _ in targets):
            targets.append((fqn, m))
    for fqn, m in targets:
        if id(m) not in lowered:
            lowered[id(m)] = lower_table(m, native)
        set_submodule(model, fqn, lowered[id(m)])
    _run_lowerings(model, native)
    _drop_relus_before_static_int8(model)
    return model
