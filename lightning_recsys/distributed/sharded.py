"""Table-wise sharded embedding collection over ``torch.distributed`` (gloo and NCCL).

Each rank holds some of the tables. ``forward(sparse)`` takes this rank's batch (every feature), sends
each feature's ids to the table's owner (``all_to_all_single``), pools them there for the samples of all
ranks, and sends the pooled embeddings back through a (optionally compressed) all-to-all: the result is
``[B, num_features, dim]`` for this rank's samples, as from
:class:`~lightning_recsys.embeddings.EmbeddingBagCollection`, so a DLRM can use it unchanged.
The tables' gradients stay on their owner; DDP must ignore these parameters (``DCTStrategy`` does that,
or call :func:`ignore_sharded_parameters` on the module you wrap).

Example (inside an initialised process group)::

    from lightning_recsys.distributed import shard_embeddings
    model = DLRM.from_spec(spec)
    shard_embeddings(model)                      # swaps model's EmbeddingBagCollection; boundary codec "quant"
    shard_embeddings(model, codec="topk", keep_ratio=0.05)   # or DCT's per-sample top-k
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from .._compat import ddp_ignore_parameters
from .._validation import ConfigurationError, check_int
from ..data.batch import SparseFeature
from ..embeddings.collection import EmbeddingBagCollection
from .codecs import BoundaryCodec, Codec, Levels, Rounding, Scales, boundary_all_to_all

__all__ = [
    "ShardedEmbeddingBagCollection",
    "ignore_sharded_parameters",
    "make_codec",
    "plan_placement",
    "shard_embeddings",
    "unshard_embeddings",
]

_OWNER = "ShardedEmbeddingBagCollection: "


def make_codec(codec: Codec, keep_ratio: float, per_table: bool, embedding_dim: int, **options: Any) -> BoundaryCodec:
    """The boundary codec of a collection: groups of ``embedding_dim`` (one per table) when ``per_table``."""
    if not isinstance(per_table, bool):
        raise TypeError(f"per_table must be True or False, got {per_table!r}")
    return BoundaryCodec(codec, keep_ratio=keep_ratio, group=embedding_dim if per_table else None, **options)


def plan_placement(sizes: Mapping[str, int], world_size: int) -> dict[str, int]:
    """Greedy table-wise placement: largest tables first, each to the least-loaded rank."""
    load = [0] * world_size
    placement = {}
    for name in sorted(sizes, key=lambda n: (-int(sizes[n]), n)):
        rank = min(range(world_size), key=lambda r: (load[r], r))
        placement[name] = rank
        load[rank] += int(sizes[name])
    return placement


class ShardedEmbeddingBagCollection(nn.Module):
    """Sum-pooled embedding bags sharded table-wise across the ranks of ``process_group``.

    Args:
        cardinalities: rows per feature (feature order = output order).
        embedding_dim: columns of every table.
        codec: boundary codec, ``"fp32"`` (uncompressed), ``"fp16"``, ``"int8"``, ``"quant"`` (4-bit forward,
            2-bit backward, Gaussian levels, factored scales by default), ``"topk"`` or ``"threshold"`` (DCT's sparse boundary).
        keep_ratio: fraction of each sample's boundary entries kept by ``"topk"`` (``"threshold"``: targeted).
        per_table: ``"topk"`` keeps ``ceil(keep_ratio * embedding_dim)`` entries of every table's pooled
            vector per sample (default; ``"threshold"``: one threshold per table; ``"quant"`` and quantized
            values: one scale per table vector); ``False``: per sample's whole row on each owner.
        bits, grad_bits, grad_rounding, levels, scales, start_step, refresh_interval, sample_size: the codec's
            value precision and scale layout forward and backward, warm-up and threshold refresh (see
            :class:`~lightning_recsys.distributed.codecs.BoundaryCodec`).
        placement: feature -> owner rank (default :func:`plan_placement`).
        weights: initial full tables (feature -> [rows, dim]); default DLRM's uniform(+-1/sqrt(rows)),
            drawn per table from ``seed`` so every rank agrees.
        process_group: default the world.
    """

    def __init__(
        self,
        cardinalities: Mapping[str, int],
        embedding_dim: int,
        codec: Codec = "fp32",
        keep_ratio: float = 0.05,
        per_table: bool = True,
        placement: Mapping[str, int] | None = None,
        weights: Mapping[str, Tensor] | None = None,
        process_group: Any = None,
        seed: int = 0,
        bits: int | None = None,
        grad_bits: int | None = None,
        grad_rounding: Rounding = "nearest",
        levels: Levels | None = None,
        scales: Scales | None = None,
        start_step: int = 0,
        refresh_interval: int = 100,
        sample_size: int = 8192,
    ) -> None:
        super().__init__()
        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError(
                "ShardedEmbeddingBagCollection needs an initialised torch.distributed process group "
                "(create it inside a DDP/DCT run, e.g. from a strategy or after init_process_group)"
            )
        if not cardinalities:
            raise ConfigurationError(f"{_OWNER}cardinalities must name at least one sparse feature")
        check_int("embedding_dim", embedding_dim, low=1, owner=_OWNER)
        self.codec = make_codec(codec, keep_ratio, per_table, embedding_dim, bits=bits, grad_bits=grad_bits,
                                grad_rounding=grad_rounding, levels=levels, scales=scales, start_step=start_step,
                                refresh_interval=refresh_interval, sample_size=sample_size, seed=seed)  # fmt: skip
        self.process_group = process_group
        self.world_size = dist.get_world_size(process_group)
        self.rank = dist.get_rank(process_group)
        self.embedding_dim = embedding_dim
        self.cardinalities = {n: int(c) for n, c in cardinalities.items()}
        self._feature_names = list(self.cardinalities)
        if placement is None:
            placement = plan_placement(self.cardinalities, self.world_size)
        bad = {n: r for n, r in placement.items() if not isinstance(r, int) or not 0 <= r < self.world_size}
        if bad or set(placement) != set(self.cardinalities):
            raise ConfigurationError(
                f"{_OWNER}placement must map every feature {self._feature_names} to a rank in [0, {self.world_size}); got {dict(placement)}"
            )
        self.placement = dict(placement)
        self.owned = [[n for n in self._feature_names if self.placement[n] == r] for r in range(self.world_size)]
        self.tables = nn.ModuleDict()
        for i, name in enumerate(self._feature_names):
            if self.placement[name] != self.rank:
                continue
            rows = self.cardinalities[name]
            table = nn.EmbeddingBag(rows, embedding_dim, mode="sum")
            with torch.no_grad():
                if weights is not None and name in weights:
                    table.weight.copy_(weights[name])
                else:
                    gen = torch.Generator().manual_seed(seed * 1_000_003 + i)
                    table.weight.uniform_(-(rows**-0.5), rows**-0.5, generator=gen)
            self.tables[name] = table
        out_order = [n for r in range(self.world_size) for n in self.owned[r]]
        self.register_buffer(
            "_perm", torch.tensor([out_order.index(n) for n in self._feature_names], dtype=torch.long), persistent=False
        )
        self.stats = {k: 0 for k in ("forward_bytes", "backward_bytes", "dense_forward_bytes", "dense_backward_bytes", "id_bytes")}
        self.register_load_state_dict_pre_hook(_keep_own_tables)

    @classmethod
    def from_collection(cls, ebc: EmbeddingBagCollection, **kwargs: Any) -> ShardedEmbeddingBagCollection:
        """Shard an existing collection, keeping its weights (every rank must hold the same weights)."""
        cards = {n: t.num_embeddings for n, t in ebc.tables.items()}
        weights = {n: t.weight.detach() for n, t in ebc.tables.items()}
        return cls(cards, ebc.embedding_dim, weights=weights, **kwargs)

    @property
    def feature_names(self) -> list[str]:
        return list(self._feature_names)

    def _a2a(self, send: list[Tensor], recv_sizes: list[int], dtype: torch.dtype, device: torch.device) -> list[Tensor]:
        inp = torch.cat(send) if send else torch.empty(0, dtype=dtype, device=device)
        out = torch.empty(sum(recv_sizes), dtype=dtype, device=device)
        dist.all_to_all_single(out, inp.to(dtype), recv_sizes, [t.numel() for t in send], group=self.process_group)
        self.stats["id_bytes"] += inp.numel() * inp.element_size()
        return list(out.split(recv_sizes))

    def forward(self, sparse: Mapping[str, SparseFeature]) -> Tensor:
        missing = [n for n in self._feature_names if n not in sparse]
        if missing:
            raise KeyError(f"batch has no sparse features {missing}; it has {sorted(sparse)}")
        first = sparse[self._feature_names[0]]
        device, batch = first.values.device, first.batch_size
        world, local = self.world_size, self.owned[self.rank]
        weighted = any(sparse[n].weights is not None for n in self._feature_names)
        # 1) sizes: rows, id count and "has weights" per destination
        meta = [torch.tensor([batch, sum(sparse[n].values.numel() for n in self.owned[r]), int(weighted)], device=device) for r in range(world)]
        got = self._a2a(meta, [3] * world, torch.long, device)
        rows = [int(m[0]) for m in got]
        counts = [int(m[1]) for m in got]
        any_weights = any(int(m[2]) for m in got)
        # 2) ids (lengths, values, optional weights) to the tables' owners
        lengths = self._a2a([torch.cat([sparse[n].lengths for n in self.owned[r]] or [first.lengths[:0]]) for r in range(world)],
                            [b * len(local) for b in rows], torch.long, device)
        values = self._a2a([torch.cat([sparse[n].values for n in self.owned[r]] or [first.values[:0]]).long() for r in range(world)],
                           counts, torch.long, device)
        if any_weights:
            wts = self._a2a(
                [torch.cat([sparse[n].weights if sparse[n].weights is not None else torch.ones_like(sparse[n].values, dtype=torch.float)
                            for n in self.owned[r]] or [first.values[:0].float()]).float() for r in range(world)],
                counts, torch.float32, device)
        # 3) pool on the owner for the samples of every rank
        pooled = []
        per_src_len = [lengths[s].reshape(len(local), rows[s]) if local else None for s in range(world)]
        per_src_cnt = [per_src_len[s].sum(1).tolist() if local else [] for s in range(world)]
        per_src_vals = [values[s].split(per_src_cnt[s]) if local else [] for s in range(world)]
        per_src_wts = [wts[s].split(per_src_cnt[s]) if local and any_weights else [] for s in range(world)]
        for j, name in enumerate(local):
            lens = torch.cat([per_src_len[s][j] for s in range(world)])
            offsets = torch.zeros(lens.numel(), dtype=torch.long, device=device)
            offsets[1:] = torch.cumsum(lens, 0)[:-1]
            ids = torch.cat([per_src_vals[s][j] for s in range(world)])
            w = torch.cat([per_src_wts[s][j] for s in range(world)]) if any_weights else None
            pooled.append(self.tables[name](ids, offsets, per_sample_weights=w))
        dim = self.embedding_dim
        if pooled:
            local_out = torch.stack(pooled, dim=1).reshape(sum(rows), len(local) * dim)
        else:
            local_out = torch.zeros(sum(rows), 0, device=device, requires_grad=torch.is_grad_enabled())
        # 4) pooled embeddings back to the samples' ranks, through the codec
        widths = [len(self.owned[r]) * dim for r in range(world)]
        training = self.training and torch.is_grad_enabled()
        out = boundary_all_to_all(local_out, self.codec, rows, batch, widths, self.process_group, self.stats, training)
        return out.reshape(batch, len(self._feature_names), dim)[:, self._perm]

    def gather_full_state(self) -> dict[str, Tensor]:
        """Collective: every table's weight under ``tables.<name>.weight``, on every rank (CPU tensors)."""
        mine = {f"tables.{n}.weight": t.weight.detach().cpu() for n, t in self.tables.items()}
        parts: list[Any] = [None] * self.world_size
        dist.all_gather_object(parts, mine, group=self.process_group)
        return {k: v for p in parts for k, v in p.items()}


def _keep_own_tables(module: ShardedEmbeddingBagCollection, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
    """Load-state-dict pre-hook: a full (gathered) state dict holds every table; keep only this rank's."""
    for name in module.feature_names:
        if name not in module.tables:
            state_dict.pop(f"{prefix}tables.{name}.weight", None)


def shard_embeddings(
    module: nn.Module, codec: Codec = "quant", keep_ratio: float = 0.05, process_group: Any = None, per_table: bool = True,
    **codec_options: Any,
) -> list[ShardedEmbeddingBagCollection]:
    """Replace every :class:`EmbeddingBagCollection` inside ``module`` by a sharded copy (same weights),
    set ``codec``/``keep_ratio``/``per_table`` (and ``codec_options``: ``bits``, ``start_step``,
    ``refresh_interval``, ``sample_size``, ``seed``) on sharded collections already there; return them all."""
    found = []
    for parent in list(module.modules()):
        for child_name, child in list(parent.named_children()):
            if isinstance(child, EmbeddingBagCollection):
                sharded = ShardedEmbeddingBagCollection.from_collection(
                    child, codec=codec, keep_ratio=keep_ratio, per_table=per_table, process_group=process_group, **codec_options
                ).to(next(child.parameters()).device)
                sharded.swapped_from_collection = True
                setattr(parent, child_name, sharded)
                found.append(sharded)
            elif isinstance(child, ShardedEmbeddingBagCollection) and child not in found:
                child.codec = make_codec(codec, keep_ratio, per_table, child.embedding_dim, **codec_options)
                found.append(child)
    if isinstance(module, ShardedEmbeddingBagCollection):
        found.append(module)
    return found


def unshard_embeddings(module: nn.Module) -> int:
    """Collective: put a full :class:`EmbeddingBagCollection` (gathered weights) back wherever
    :func:`shard_embeddings` swapped one in; returns how many were restored."""
    restored = 0
    for parent in list(module.modules()):
        for child_name, child in list(parent.named_children()):
            if isinstance(child, ShardedEmbeddingBagCollection) and getattr(child, "swapped_from_collection", False):
                full = EmbeddingBagCollection(child.cardinalities, child.embedding_dim)
                state = {k[len("tables.") :]: v for k, v in child.gather_full_state().items()}
                full.tables.load_state_dict(state)
                device = next(child.parameters(), torch.empty(0)).device
                setattr(parent, child_name, full.to(device))
                restored += 1
    return restored


def ignore_sharded_parameters(module: nn.Module) -> list[str]:
    """Tell DDP not to all-reduce the sharded tables of ``module`` (call before wrapping it); returns the names."""
    names = [
        f"{prefix}.{name}" if prefix else name
        for prefix, sub in module.named_modules()
        if isinstance(sub, ShardedEmbeddingBagCollection)
        for name, _ in sub.named_parameters()
    ]
    ddp_ignore_parameters(module, names)
    return names
