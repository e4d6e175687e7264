"""Chunked embedding tables in a virtually-hashed physically-indexed (VHPI) layout (FIITED storage).

Every row of ``d`` columns is cut into ``K = d / C`` chunks of ``C`` columns. Only the kept chunks are
stored, back to back in a compact physical pool ``pool [P + 1, C]`` whose slot 0 is a shared all-zero
chunk. The per-row index is two small integers:

* ``mask [num_rows]``: a bitmask of the row's kept chunks (uint8 for ``K <= 8``, int16 / int32 / int64
  for ``K <= 15 / 31 / 63``);
* ``base [num_rows]`` (int32): pool slot of the row's first kept chunk.

Chunk ``c`` of row ``r`` lives at ``base[r] + popcount(mask[r] & ((1 << c) - 1))`` if bit ``c`` is set,
else it reads the zero slot. So the index costs 5 bytes per row for ``K <= 8`` (not one int per chunk),
and pruning reallocates the pool to exactly the kept chunks: memory really shrinks.

The pool is always laid out row-major (rows in order, each row's kept chunks in order), so while every
chunk is kept (before the first pruning, or after everything is re-admitted) ``pool[1:]`` *is* the dense
``[num_rows, d]`` table: the lookup is then the same single ``F.embedding`` / ``F.embedding_bag`` call as
the dense modules (bit-exact forward), with a hand-written backward that adds the per-access gradients
straight into the pool's gradient and, when tracking, records their per-chunk norms. Once chunks are
pruned, lookup is vectorised: one gather of the row index, a prefix popcount over ``K`` bits, one
``F.embedding`` on the pool with ``padding_idx=0`` (so the zero slot never receives a gradient), then
the pooling. ``max`` bags always take the gather path.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from lightning_recsys.embeddings.chunked import ChunkedEmbeddingBag
    >>> dense = nn.EmbeddingBag(100, 16, mode="sum")
    >>> table = ChunkedEmbeddingBag.from_dense(dense, chunk_size=4)
    >>> ids, offsets = torch.tensor([1, 2, 3]), torch.tensor([0, 2])
    >>> torch.allclose(table(ids, offsets), dense(ids, offsets))
    True
    >>> keep = torch.zeros(100, 4, dtype=torch.bool); keep[:10] = True
    >>> _ = table.set_kept(keep)          # keep 10 rows' chunks: the pool shrinks to 40 (+1 zero) chunks
    >>> tuple(table.pool.shape)
    (41, 4)
"""

from __future__ import annotations

import functools
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._validation import ConfigurationError, check_int
from .checkpoint import dense_layout, load_dense
from .chunked_lookup import AllKeptLookup, DenseForm, PrunedLookup, chunk_norms, kept_positions, record

__all__ = ["ChunkedEmbedding", "ChunkedEmbeddingBag", "ChunkedEmbeddingBase", "mask_dtype_for"]


def mask_dtype_for(num_chunks: int) -> torch.dtype:
    """Smallest integer dtype holding a ``num_chunks``-bit mask."""
    for bits, dtype in ((8, torch.uint8), (15, torch.int16), (31, torch.int32), (63, torch.int64)):
        if num_chunks <= bits:
            return dtype
    raise ValueError(f"at most 63 chunks per row are supported, got {num_chunks}; use a larger chunk_size")


@functools.cache
def _shifts(k: int, device: torch.device) -> Tensor:
    return torch.arange(k, device=device)


@functools.cache
def _rank_lut(k: int, device: torch.device) -> Tensor:
    """``[2^k, k]``: rank of chunk ``c`` among the kept chunks of mask ``m``, or a large negative if pruned."""
    bits = (torch.arange(1 << k).unsqueeze(1) >> torch.arange(k)) & 1
    return torch.where(bits == 1, bits.cumsum(1) - 1, -(1 << 40)).to(device)


def _check_shape(num_embeddings: int, embedding_dim: int, chunk_size: int) -> None:
    for arg, val in (("num_embeddings", num_embeddings), ("embedding_dim", embedding_dim), ("chunk_size", chunk_size)):
        check_int(arg, val, low=1)
    if embedding_dim % chunk_size:
        raise ConfigurationError(
            f"chunk_size={chunk_size} does not divide embedding_dim={embedding_dim}; pick a divisor of "
            f"{embedding_dim}, e.g. {[c for c in range(1, embedding_dim + 1) if embedding_dim % c == 0]}"
        )
    mask_dtype_for(embedding_dim // chunk_size)


class ChunkedEmbeddingBase(nn.Module):
    """Storage shared by :class:`ChunkedEmbedding` and :class:`ChunkedEmbeddingBag`.

    Attributes:
        pool: ``nn.Parameter [P + 1, C]``, slot 0 all zeros; replaced (new shape) by :meth:`set_kept`.
        mask, base: the per-row index buffers (see the module docstring); not persistent: the state dict
            holds the dense ``weight`` of the replaced module (:mod:`lightning_recsys.embeddings.checkpoint`).
        grad_norm_acc: ``None`` or a ``[num_rows, K]`` float tensor into which backward adds, per access,
            the L2 norm of the gradient of every chunk (also of pruned chunks: the gradient they would
            get), set by :meth:`track_grad_norms`. FIITED uses it as the chunk utility signal.
    """

    pool: nn.Parameter
    mask: Tensor
    base: Tensor

    is_bag = False  #: an EmbeddingBag (pooled bags) rather than an Embedding (one row per id)

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        chunk_size: int = 4,
        padding_idx: int | None = None,
        _weight: Tensor | None = None,
        device: Any = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        _check_shape(num_embeddings, embedding_dim, chunk_size)
        if padding_idx is not None:
            if not -num_embeddings <= padding_idx < num_embeddings:
                raise ValueError(f"padding_idx must be within [-{num_embeddings}, {num_embeddings}), got {padding_idx}")
            padding_idx %= num_embeddings
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        self.chunk_size = chunk_size
        self.num_chunks = embedding_dim // chunk_size
        self.padding_idx = padding_idx
        self.prefix_block = 0  # > 0: prefix index (see :meth:`use_prefix_index`)
        if _weight is None:
            _weight = torch.empty(num_embeddings, embedding_dim, device=device, dtype=dtype)
            nn.init.normal_(_weight)
            if padding_idx is not None:
                _weight[padding_idx].zero_()
        elif tuple(_weight.shape) != (num_embeddings, embedding_dim):
            raise ValueError(f"_weight must have shape {(num_embeddings, embedding_dim)}, got {tuple(_weight.shape)}")
        k, c = self.num_chunks, chunk_size
        pool = torch.cat([_weight.new_zeros(1, c), _weight.detach().reshape(num_embeddings * k, c)])
        self.pool = nn.Parameter(pool)
        self.register_buffer("mask", self._pack(torch.ones(num_embeddings, k, dtype=torch.bool, device=pool.device)), False)
        self.register_buffer("base", (torch.arange(num_embeddings, device=pool.device) * k + 1).to(torch.int32), False)
        self.grad_norm_acc: Tensor | None = None
        self.access_acc: Tensor | None = None
        self._acc: Tensor | None = None  # [num_rows, K + 1]: grad_norm_acc and access_acc are views of it
        self._pos_cache: tuple[Any, Tensor] | None = None  # see :meth:`_kept_positions`

    # ---------------------------------------------------------------- index
    @torch.no_grad()
    def use_prefix_index(self, block: int = 16) -> None:
        """Switch to the prefix index: every row keeps its first ``k_r`` chunks (:meth:`set_kept` refuses other
        layouts); ``mask [num_rows]`` (uint8) holds ``k_r`` and ``base`` (int32) the pool slot of the first chunk
        of every ``block`` rows only, a row's slot being its block's plus the counts before it in the block. The
        index then costs ``1 + 4 / block`` bytes per row, whatever ``K``; so ``chunk_size=1`` (a per-row
        dimension) is affordable."""
        if not isinstance(block, int) or block < 1 or self.num_chunks > 255:
            raise ValueError(f"block must be a positive integer and K <= 255, got block={block!r}, K={self.num_chunks}")
        keep = self.kept_mask()
        if not torch.equal(keep, torch.cumprod(keep.to(torch.uint8), 1).bool()):
            raise ValueError("the table's layout is not a prefix of every row; call use_prefix_index before pruning")
        self.prefix_block = block
        self.mask = keep.sum(1).to(torch.uint8)
        self.base = torch.zeros(-(-self.num_embeddings // block), dtype=torch.int32, device=self.mask.device)
        self._set_base(keep.sum(1))

    def _pack(self, keep: Tensor) -> Tensor:
        """Bool ``[rows, K]`` -> bitmask ``[rows]`` in the mask dtype (prefix index: the counts)."""
        if self.prefix_block:
            return keep.sum(1).to(torch.uint8)
        v = (keep.long() << torch.arange(self.num_chunks, device=keep.device)).sum(1)
        return v.to(mask_dtype_for(self.num_chunks))  # the sign bit is never used

    def kept_mask(self, mask: Tensor | None = None) -> Tensor:
        """Bool ``[num_rows, K]``: which chunks are stored (or kept by the bitmask ``mask``, default the table's)."""
        mask = self.mask if mask is None else mask
        if self.prefix_block:
            return _shifts(self.num_chunks, mask.device) < mask.long().unsqueeze(1)
        return (mask.long().unsqueeze(1) >> _shifts(self.num_chunks, mask.device)) & 1 == 1

    def _slots(self, flat_ids: Tensor, chunk_major: bool = False) -> Tensor:
        """Pool slot of every chunk of the given rows, ``[N, K]`` (``[K, N]`` if ``chunk_major``; 0 = pruned,
        reads zeros)."""
        k, device = self.num_chunks, self.mask.device
        if self.prefix_block:
            b, cols = self.prefix_block, _shifts(self.num_chunks, device)
            start = torch.div(flat_ids, b, rounding_mode="floor")
            offs = flat_ids - start * b
            near = _shifts(b, device)
            before = self.mask.index_select(0, (start.unsqueeze(1) * b + near).clamp_max_(self.num_embeddings - 1).flatten())
            before = (before.view(-1, b).long() * (near < offs.unsqueeze(1))).sum(1)
            first = self.base.index_select(0, start).long() + before
            count = self.mask.index_select(0, flat_ids).long()
            slots = torch.where(cols < count.unsqueeze(1), first.unsqueeze(1) + cols, 0)
            return slots.t().contiguous() if chunk_major else slots
        base = self.base.index_select(0, flat_ids).long()
        mask = self.mask.index_select(0, flat_ids).long()
        if k <= 8:  # one gather in a shared 2^K x K table of prefix popcounts
            slots = (_rank_lut(k, device).index_select(0, mask) + base.unsqueeze(1)).clamp_min_(0)
            return slots.t().contiguous() if chunk_major else slots
        bits = (mask.unsqueeze(1) >> _shifts(k, device)) & 1
        rank = bits.cumsum(1) - bits
        slots = (base.unsqueeze(1) + rank) * bits
        return slots.t().contiguous() if chunk_major else slots

    def _gather(self, flat_ids: Tensor) -> Tensor:
        """Rows ``[N, d]`` (pruned chunks as zeros), recording gradient norms when tracking."""
        return PrunedLookup.apply(self.pool, self, flat_ids, True)

    @property
    def weight(self) -> Tensor:
        """The ``[num_rows, d]`` table (pruned chunks read 0), differentiable w.r.t. the pool, for code that reads
        ``.weight`` (a regulariser, scores against every row); such reads do not count in the utilities."""
        return self._dense_view(self.pool) if self.all_kept else DenseForm.apply(self.pool, self, self._kept_positions())

    def _small(self, input: Tensor) -> Tensor | None:
        """At most 4 rows per id of the batch: the dense :attr:`weight` for the dense lookup path, else None."""
        return None if self.num_embeddings > 4 * input.numel() else self.weight

    def _kept_positions(self) -> Tensor:
        return kept_positions(self)  # row-major position of every pool slot after the zero slot (cached)

    def cache_bytes(self) -> int:
        """Bytes of the lookup cache of small tables (derived from the index, rebuilt at will; not storage)."""
        return 0 if self._pos_cache is None else self._pos_cache[1].numel() * 4

    def _check_ids(self, ids: Tensor) -> None:
        if not isinstance(ids, Tensor) or ids.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"input must be an int64 or int32 tensor, got {getattr(ids, 'dtype', type(ids).__name__)}")

    @property
    def all_kept(self) -> bool:
        """Whether every chunk is stored: then ``pool[1:]`` is the row-major ``[num_rows, d]`` table."""
        return int(self.pool.shape[0]) - 1 == self.num_embeddings * self.num_chunks

    def _dense_view(self, pool: Tensor) -> Tensor:
        """``pool[1:]`` as the ``[num_rows, d]`` weight (valid while :attr:`all_kept`)."""
        return pool[1:].view(self.num_embeddings, self.embedding_dim)

    def _accesses(self, input: Tensor, offsets: Tensor | None, weights: Tensor | None) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """How the output gradient reaches every access: ids ``[N]``, output row of each (``None`` = row ``i``)
        and a per-access factor (``None`` = 1). Overridden by the bag variant."""
        return input.reshape(-1), None, None

    def _chunk_norms(self, grad: Tensor) -> Tensor:
        return chunk_norms(grad, self.num_chunks, self.chunk_size)  # per-chunk L2 norms [N, K] of grad [N, d]

    # ---------------------------------------------------------------- pruning
    def track_grad_norms(self, enabled: bool = True) -> None:
        """Start (zeroed ``[num_rows, K]`` accumulator) or stop recording per-chunk gradient norms."""
        self._acc = torch.zeros(self.num_embeddings, self.num_chunks + 1, device=self.pool.device) if enabled else None
        self.grad_norm_acc = None if self._acc is None else self._acc[:, : self.num_chunks]
        self.access_acc = None if self._acc is None else self._acc[:, self.num_chunks]

    def _record(self, ids: Tensor, grad: Tensor, bag_of: Tensor | None = None, factor: Tensor | None = None) -> None:
        """Per-access chunk norms and access counts into the accumulators (:func:`~.chunked_lookup.record`)."""
        record(self, ids, grad, bag_of, factor)

    @torch.no_grad()
    def set_kept(self, keep: Tensor, fresh_init: Tensor | None = None) -> Tensor:
        """Keep exactly the chunks where ``keep [num_rows, K]`` is true; reallocate the pool.

        Chunks that stay keep their values; newly kept chunks take ``fresh_init`` (``[n_fresh, C]`` in
        pool order) or zeros. Returns ``src`` (int64 ``[P_new + 1]``): for every new slot the old slot it
        came from, 0 for the zero slot and fresh chunks; use it to remap optimizer state
        (``new_state = old_state[src]``, fresh chunks getting the zero slot's, i.e. untouched, state).
        """
        if keep.shape != (self.num_embeddings, self.num_chunks) or keep.dtype != torch.bool:
            raise ValueError(
                f"keep must be a bool tensor of shape {(self.num_embeddings, self.num_chunks)}, got "
                f"{keep.dtype} {tuple(keep.shape)}"
            )
        keep = keep.to(self.pool.device)
        if self.prefix_block and not torch.equal(keep, torch.cumprod(keep.to(torch.uint8), 1).bool()):
            raise ValueError("this table has a prefix index: keep must hold the first k_r chunks of every row")
        all_rows = torch.arange(self.num_embeddings, device=keep.device)
        old_slots = self._slots(all_rows)  # [rows, K]
        src = torch.cat([old_slots.new_zeros(1), old_slots[keep]])
        counts = keep.sum(1)
        base = torch.cumsum(counts, 0) - counts + 1
        new_pool = self.pool.detach()[src]
        if fresh_init is not None:
            fresh = (src == 0).nonzero().flatten()[1:]
            if fresh_init.shape != (fresh.numel(), self.chunk_size):
                raise ValueError(f"fresh_init must have shape {(fresh.numel(), self.chunk_size)}, got {tuple(fresh_init.shape)}")
            new_pool[fresh] = fresh_init.to(new_pool)
        self.pool = nn.Parameter(new_pool, requires_grad=self.pool.requires_grad)
        self.mask.copy_(self._pack(keep))
        self._set_base(counts) if self.prefix_block else self.base.copy_(base.to(torch.int32))
        return src

    def _set_base(self, counts: Tensor) -> None:
        """Prefix index: pool slot of the first chunk of every block of rows."""
        base = torch.cumsum(counts, 0) - counts + 1
        self.base.copy_(base[:: self.prefix_block].to(torch.int32))

    # ---------------------------------------------------------------- accounting / export
    @property
    def num_kept(self) -> int:
        return int(self.pool.shape[0]) - 1

    def storage_bytes(self) -> dict[str, int]:
        """Bytes of the pool (incl. the zero slot) and of the index (mask + base)."""
        return {
            "pool": self.pool.numel() * self.pool.element_size(),
            "index": self.mask.numel() * self.mask.element_size() + self.base.numel() * self.base.element_size(),
        }

    @torch.no_grad()
    def dense_weight(self) -> Tensor:
        """The full ``[num_rows, d]`` weight, pruned chunks as zeros."""
        return dense_layout(self, self.pool)

    def compact(self) -> dict[str, Any]:
        """Compact export: ``pool [P, C]`` (without the zero slot), ``mask``, ``base`` (0-based), shapes."""
        return {
            "pool": self.pool.detach()[1:].clone(),
            "mask": self.mask.clone(),
            "base": (self.base.long() - 1).clamp_min(0).to(torch.int32),
            "num_embeddings": self.num_embeddings,
            "embedding_dim": self.embedding_dim,
            "chunk_size": self.chunk_size,
        }

    def _save_to_state_dict(self, destination: dict[str, Any], prefix: str, keep_vars: bool) -> None:
        """Save what the replaced ``nn.Embedding`` / ``nn.EmbeddingBag`` would: the dense ``weight``."""
        destination[prefix + "weight"] = self.dense_weight()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        """Load a dense ``weight`` (see :func:`~lightning_recsys.embeddings.checkpoint.load_dense`)."""
        load_dense(self, state_dict, prefix, missing_keys, unexpected_keys if strict else [], error_msgs)

    def extra_repr(self) -> str:
        s = f"{self.num_embeddings}, {self.embedding_dim}, chunk_size={self.chunk_size}, kept={self.num_kept}"
        return s + (f", padding_idx={self.padding_idx}" if self.padding_idx is not None else "")

    @staticmethod
    def _check_convertible(module: nn.Module) -> None:
        for attr in ("max_norm",):
            if getattr(module, attr, None) is not None:
                raise ValueError(f"cannot chunk {module}: {attr}={getattr(module, attr)} is not supported (use None)")
        fix = {"scale_grad_by_freq": "use False", "sparse": "the compact pool takes dense gradients: build the table with "
               "sparse=False and a dense optimizer (Adam, Adagrad; not SparseAdam), or leave it out with FIITED(pattern=...)"}
        for attr, hint in fix.items():
            if getattr(module, attr, False):
                raise ValueError(f"cannot chunk {module}: {attr}=True is not supported ({hint})")


class ChunkedEmbedding(ChunkedEmbeddingBase):
    """Drop-in ``nn.Embedding``: ``forward(input) -> [*input.shape, d]``.

    Example:
        >>> table = ChunkedEmbedding.from_dense(nn.Embedding(10, 8), chunk_size=4)
        >>> table(torch.tensor([[1, 2], [3, 4]])).shape
        torch.Size([2, 2, 8])
    """

    @classmethod
    def from_dense(cls, module: nn.Embedding, chunk_size: int = 4) -> ChunkedEmbedding:
        """Copy of ``module`` (weights included) in chunked storage."""
        if not isinstance(module, nn.Embedding):
            raise TypeError(f"expected an nn.Embedding, got {type(module).__name__}")
        cls._check_convertible(module)
        return cls(module.num_embeddings, module.embedding_dim, chunk_size, module.padding_idx, _weight=module.weight)

    def forward(self, input: Tensor) -> Tensor:
        self._check_ids(input)
        if self.all_kept:  # exactly nn.Embedding on the pool seen as the dense table
            return AllKeptLookup.apply(self.pool, None, self, input, None)
        small = self._small(input)
        if small is not None:
            return AllKeptLookup.apply(small, None, self, input, None, True)
        return self._gather(input.reshape(-1)).view(*input.shape, self.embedding_dim)

    def to_dense(self) -> nn.Embedding:
        """Plain ``nn.Embedding`` with the current weights (pruned chunks zero)."""
        w = self.dense_weight()
        return nn.Embedding(self.num_embeddings, self.embedding_dim, self.padding_idx, _weight=w.clone())


class ChunkedEmbeddingBag(ChunkedEmbeddingBase):
    """Drop-in ``nn.EmbeddingBag``: ``forward(input, offsets=None, per_sample_weights=None) -> [B, d]``.

    Supports ``mode`` ``"sum"``/``"mean"``/``"max"``, ``include_last_offset``, ``padding_idx`` and 1-D
    input with offsets or 2-D fixed-length bags, like ``nn.EmbeddingBag``.
    """

    is_bag = True

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        chunk_size: int = 4,
        mode: str = "mean",
        include_last_offset: bool = False,
        padding_idx: int | None = None,
        _weight: Tensor | None = None,
        device: Any = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        if mode not in ("sum", "mean", "max"):
            raise ValueError(f"mode must be 'sum', 'mean' or 'max', got {mode!r}")
        super().__init__(num_embeddings, embedding_dim, chunk_size, padding_idx, _weight, device, dtype)
        self.mode = mode
        self.include_last_offset = include_last_offset

    @classmethod
    def from_dense(cls, module: nn.EmbeddingBag, chunk_size: int = 4) -> ChunkedEmbeddingBag:
        """Copy of ``module`` (weights and options) in chunked storage."""
        if not isinstance(module, nn.EmbeddingBag):
            raise TypeError(f"expected an nn.EmbeddingBag, got {type(module).__name__}")
        cls._check_convertible(module)
        return cls(
            module.num_embeddings, module.embedding_dim, chunk_size, module.mode, module.include_last_offset,
            module.padding_idx, _weight=module.weight,
        )  # fmt: skip

    def forward(self, input: Tensor, offsets: Tensor | None = None, per_sample_weights: Tensor | None = None) -> Tensor:
        self._check_ids(input)
        if input.dim() == 2:
            if offsets is not None:
                raise ValueError("offsets must be None when input is 2-D (fixed-length bags)")
        elif input.dim() != 1:
            raise ValueError(f"input must be 1-D (with offsets) or 2-D, got shape {tuple(input.shape)}")
        elif offsets is None:
            raise ValueError("offsets must be given when input is 1-D")
        if self.all_kept and self.mode != "max":  # exactly nn.EmbeddingBag on the pool seen as the dense table
            return AllKeptLookup.apply(self.pool, per_sample_weights, self, input, offsets)
        small = None if self.mode == "max" else self._small(input)
        if small is not None:
            return AllKeptLookup.apply(small, per_sample_weights, self, input, offsets, True)
        if self.mode == "sum" and self.padding_idx is None:
            return self._sum_bags(input, offsets, per_sample_weights)
        flat = input.reshape(-1)
        rows = self._gather(flat)
        positions = torch.arange(flat.numel(), device=flat.device)
        pad = None
        if self.padding_idx is not None:  # padded ids are left out of their bag, as in nn.EmbeddingBag
            rows = torch.cat([rows, rows.new_zeros(1, self.embedding_dim)])
            pad = flat.numel()
            positions = torch.where(flat == self.padding_idx, pad, positions)
        return F.embedding_bag(
            positions.view(input.shape), rows, offsets, mode=self.mode, per_sample_weights=per_sample_weights,
            include_last_offset=self.include_last_offset, padding_idx=pad,
        )  # fmt: skip

    def _accesses(self, input: Tensor, offsets: Tensor | None, weights: Tensor | None) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """Ids ``[N]``, bag of each (``None`` when every bag holds one id) and factor on the bag gradient
        (``None`` = 1; ``sum``: the weight, ``mean``: 1 / bag size; padded ids are left out of their bag: 0)."""
        flat = input.reshape(-1)
        bag_of = self._bag_of(input, offsets)
        if bag_of is not None:
            flat = flat[: bag_of.numel()]  # ids past the last offset (include_last_offset) are in no bag
        factor = None if weights is None else weights.detach().reshape(-1)[: flat.numel()]
        real = None if self.padding_idx is None else (flat != self.padding_idx).to(self.pool.dtype)
        if real is not None:
            factor = real if factor is None else factor * real
        if self.mode == "mean" and bag_of is not None:
            ones = real if real is not None else self.pool.new_ones(flat.numel())
            size = self.pool.new_zeros(int(bag_of[-1]) + 1 if bag_of.numel() else 0).index_add_(0, bag_of, ones)
            inv = size.clamp_min_(1).reciprocal_().index_select(0, bag_of)
            factor = inv if factor is None else factor * inv
        return flat, bag_of, factor

    def _bag_of(self, input: Tensor, offsets: Tensor | None) -> Tensor | None:
        """Bag number of every id of ``input`` (1-D with offsets, or 2-D); ``None`` when id ``i`` is bag ``i``."""
        if input.dim() == 2:
            if input.shape[1] == 1:
                return None
            return torch.arange(input.shape[0], device=input.device).repeat_interleave(input.shape[1])
        n = input.numel()
        if not self.include_last_offset and offsets.numel() == n and bool((offsets.diff() == 1).all()) and (n == 0 or int(offsets[0]) == 0):
            return None
        if self.include_last_offset:
            return torch.repeat_interleave(torch.arange(offsets.numel() - 1, device=input.device), offsets.diff())
        ends = torch.cat([offsets[1:], offsets.new_tensor([n])])
        return torch.repeat_interleave(torch.arange(offsets.numel(), device=input.device), ends - offsets, output_size=n)

    def _sum_bags(self, input: Tensor, offsets: Tensor | None, weights: Tensor | None) -> Tensor:
        """Sum pooling as gather + ``index_add`` into the bags (on CPU ``embedding_bag``'s backward sorts
        the indices and is several times slower than the dense table's)."""
        flat = input.reshape(-1)
        n = flat.numel()
        rows = self._gather(flat)
        if weights is not None:
            rows = rows * weights.reshape(-1, 1).to(rows.dtype)
        if input.dim() == 2:
            b, per_bag = input.shape
            if per_bag == 1:
                return rows  # one id per bag (single-hot): nothing to pool
            bag_of = torch.arange(b, device=flat.device).repeat_interleave(per_bag)
        else:
            starts = offsets[:-1] if self.include_last_offset else offsets
            ends = offsets[1:] if self.include_last_offset else torch.cat([offsets[1:], offsets.new_tensor([n])])
            b, lengths = starts.numel(), ends - starts
            if n == b and bool((lengths == 1).all()):
                return rows
            bag_of = torch.repeat_interleave(torch.arange(b, device=flat.device), lengths, output_size=n)
        return rows.new_zeros(b, self.embedding_dim).index_add_(0, bag_of, rows)

    def to_dense(self) -> nn.EmbeddingBag:
        """Plain ``nn.EmbeddingBag`` with the current weights (pruned chunks zero)."""
        return nn.EmbeddingBag(
            self.num_embeddings, self.embedding_dim, mode=self.mode, include_last_offset=self.include_last_offset,
            padding_idx=self.padding_idx, _weight=self.dense_weight().clone(),
        )  # fmt: skip

    def extra_repr(self) -> str:
        return super().extra_repr() + f", mode={self.mode!r}"
