"""The recsys batch type: dense floats, multi-hot sparse bags per feature, labels per task.

Example:
    >>> import torch
    >>> from lightning_recsys.data import RecsysBatch, SparseFeature
    >>> batch = RecsysBatch(
    ...     dense=torch.zeros(2, 3),
    ...     sparse={"item": SparseFeature.from_lists([[4], [1, 7]])},
    ...     labels={"click": torch.tensor([0.0, 1.0])},
    ... )
    >>> batch.validate({"item": 10}).batch_size
    2
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

__all__ = ["SparseFeature", "RecsysBatch", "FeatureSpec"]


def _device_dtype(device, dtype):
    """Allow ``.to(torch.float16)`` as well as ``.to("cpu")`` / ``.to(device, dtype)``."""
    if isinstance(device, torch.dtype):
        return None, device
    return device, dtype


@dataclass
class SparseFeature:
    """One categorical feature for a batch, as a bag of ids per sample (CSR layout).

    ``values`` holds the ids of all samples back to back (int64); ``offsets`` has ``batch_size + 1``
    entries, sample ``i`` owning ``values[offsets[i]:offsets[i + 1]]``. Single-hot is the special case
    ``offsets = arange(batch_size + 1)``; an empty bag has ``offsets[i] == offsets[i + 1]``.
    ``weights`` (optional, float) are per-id weights as ``nn.EmbeddingBag``'s ``per_sample_weights``.

    ``nn.EmbeddingBag(values, offsets[:-1])`` (default ``include_last_offset=False``) consumes it as is.
    """

    values: Tensor
    offsets: Tensor
    weights: Tensor | None = None

    @classmethod
    def from_lists(cls, bags: Sequence[Sequence[int]]) -> SparseFeature:
        """Build from a list of id lists, one per sample."""
        lengths = torch.tensor([len(b) for b in bags], dtype=torch.long)
        offsets = torch.zeros(len(bags) + 1, dtype=torch.long)
        offsets[1:] = torch.cumsum(lengths, 0)
        values = torch.tensor([int(v) for b in bags for v in b], dtype=torch.long)
        return cls(values=values, offsets=offsets)

    @classmethod
    def single_hot(cls, ids: Tensor) -> SparseFeature:
        """One id per sample."""
        ids = ids.reshape(-1).long()
        return cls(values=ids, offsets=torch.arange(ids.numel() + 1, device=ids.device))

    @property
    def batch_size(self) -> int:
        return self.offsets.numel() - 1

    @property
    def lengths(self) -> Tensor:
        return self.offsets[1:] - self.offsets[:-1]

    def to(self, device=None, dtype: torch.dtype | None = None, non_blocking: bool = False) -> SparseFeature:
        """Move to ``device``; ``dtype`` applies to the float ``weights`` only (ids stay integers)."""
        device, dtype = _device_dtype(device, dtype)
        w = None if self.weights is None else self.weights.to(device=device, dtype=dtype, non_blocking=non_blocking)
        return SparseFeature(
            self.values.to(device=device, non_blocking=non_blocking),
            self.offsets.to(device=device, non_blocking=non_blocking),
            w,
        )

    def pin_memory(self) -> SparseFeature:
        w = None if self.weights is None else self.weights.pin_memory()
        return SparseFeature(self.values.pin_memory(), self.offsets.pin_memory(), w)

    def validate(self, name: str, num_embeddings: int | None = None) -> None:
        """Raise ``TypeError``/``ValueError`` naming ``name`` when the feature is malformed."""
        if not isinstance(self.values, Tensor) or self.values.dtype not in (torch.int64, torch.int32):
            raise TypeError(
                f"sparse feature {name!r}: values must be an int64 or int32 tensor, got "
                f"{getattr(self.values, 'dtype', type(self.values).__name__)}"
            )
        if not isinstance(self.offsets, Tensor) or self.offsets.dtype not in (torch.int64, torch.int32):
            raise TypeError(
                f"sparse feature {name!r}: offsets must be an int64 or int32 tensor, got "
                f"{getattr(self.offsets, 'dtype', type(self.offsets).__name__)}"
            )
        if self.values.dim() != 1 or self.offsets.dim() != 1:
            raise ValueError(
                f"sparse feature {name!r}: values and offsets must be 1-D, got shapes "
                f"{tuple(self.values.shape)} and {tuple(self.offsets.shape)}"
            )
        if self.offsets.numel() < 1 or int(self.offsets[0]) != 0:
            raise ValueError(f"sparse feature {name!r}: offsets must start with 0 (CSR layout, batch_size + 1 entries)")
        if int(self.offsets[-1]) != self.values.numel():
            raise ValueError(
                f"sparse feature {name!r}: offsets end at {int(self.offsets[-1])} but there are "
                f"{self.values.numel()} values (mismatched lengths)"
            )
        if self.offsets.numel() > 1 and bool((self.offsets[1:] < self.offsets[:-1]).any()):
            raise ValueError(f"sparse feature {name!r}: offsets must be non-decreasing")
        if self.weights is not None:
            if not self.weights.is_floating_point():
                raise TypeError(f"sparse feature {name!r}: weights must be floating point, got {self.weights.dtype}")
            if self.weights.shape != self.values.shape:
                raise ValueError(
                    f"sparse feature {name!r}: weights shape {tuple(self.weights.shape)} does not match "
                    f"values shape {tuple(self.values.shape)}"
                )
        if self.values.numel():
            lo = int(self.values.min())
            if lo < 0:
                raise ValueError(f"sparse feature {name!r}: id {lo} is negative")
            if num_embeddings is not None:
                hi = int(self.values.max())
                if hi >= num_embeddings:
                    raise ValueError(
                        f"sparse feature {name!r}: id {hi} is out of range for a table of {num_embeddings} rows "
                        f"(ids must be in [0, {num_embeddings}))"
                    )


@dataclass
class FeatureSpec:
    """What a data module produces: dense width, table size per sparse feature, task names.

    Models build themselves from it (``DLRM.from_spec(spec)``) and ``RecsysBatch.validate`` checks
    batches against it.
    """

    num_dense: int
    cardinalities: dict[str, int]
    tasks: list[str] = field(default_factory=lambda: ["label"])

    def __post_init__(self) -> None:
        if self.num_dense < 0:
            raise ValueError(f"num_dense must be >= 0, got {self.num_dense}")
        for name, n in self.cardinalities.items():
            if int(n) < 1:
                raise ValueError(f"cardinality of sparse feature {name!r} must be >= 1, got {n}")
        if not self.tasks:
            raise ValueError("tasks must name at least one task")
        if len(set(self.tasks)) != len(self.tasks):
            raise ValueError(f"task names must be unique, got {self.tasks}")

    @property
    def sparse_names(self) -> list[str]:
        return list(self.cardinalities)


@dataclass
class RecsysBatch:
    """A batch: ``dense`` [B, num_dense] float, ``sparse`` name -> :class:`SparseFeature`,
    ``labels`` task -> [B] float in {0, 1} (may be empty at inference)."""

    dense: Tensor
    sparse: dict[str, SparseFeature]
    labels: dict[str, Tensor] = field(default_factory=dict)

    @property
    def batch_size(self) -> int:
        return int(self.dense.shape[0])

    def to(self, device=None, dtype: torch.dtype | None = None, non_blocking: bool = False) -> RecsysBatch:
        """Move every tensor to ``device`` (Lightning calls this); ``dtype`` casts float tensors only."""
        device, dtype = _device_dtype(device, dtype)
        kw = dict(device=device, dtype=dtype, non_blocking=non_blocking)
        return RecsysBatch(
            dense=self.dense.to(**kw),
            sparse={k: v.to(device, dtype, non_blocking) for k, v in self.sparse.items()},
            labels={k: v.to(**kw) for k, v in self.labels.items()},
        )

    def pin_memory(self) -> RecsysBatch:
        return RecsysBatch(
            self.dense.pin_memory(),
            {k: v.pin_memory() for k, v in self.sparse.items()},
            {k: v.pin_memory() for k, v in self.labels.items()},
        )

    def validate(self, spec: FeatureSpec | Mapping[str, int] | None = None) -> RecsysBatch:
        """Check dtypes, shapes, id ranges and NaNs; return ``self`` or raise a specific error.

        ``spec`` is a :class:`FeatureSpec` or a mapping from sparse feature name to table size.
        """
        if not isinstance(self.dense, Tensor) or not self.dense.is_floating_point():
            raise TypeError(
                f"dense features must be a floating-point tensor, got "
                f"{getattr(self.dense, 'dtype', type(self.dense).__name__)}"
            )
        if self.dense.dim() != 2:
            raise ValueError(f"dense features must be 2-D [batch, num_dense], got shape {tuple(self.dense.shape)}")
        if torch.isnan(self.dense).any():
            rows = torch.isnan(self.dense).any(1).nonzero().flatten()[:5].tolist()
            raise ValueError(f"dense features contain NaN (first bad rows: {rows})")
        b = self.batch_size
        cards: Mapping[str, int] | None
        if isinstance(spec, FeatureSpec):
            cards = spec.cardinalities
            if self.dense.shape[1] != spec.num_dense:
                raise ValueError(f"expected {spec.num_dense} dense features, got {self.dense.shape[1]}")
            missing = [n for n in spec.cardinalities if n not in self.sparse]
            if missing:
                raise ValueError(f"batch lacks sparse features {missing}")
        else:
            cards = spec
        for name, feat in self.sparse.items():
            if not isinstance(feat, SparseFeature):
                raise TypeError(f"sparse feature {name!r} must be a SparseFeature, got {type(feat).__name__}")
            if cards is not None and name not in cards:
                raise ValueError(f"unknown sparse feature {name!r}; known: {sorted(cards)}")
            feat.validate(name, None if cards is None else int(cards[name]))
            if feat.batch_size != b:
                raise ValueError(
                    f"sparse feature {name!r} has {feat.batch_size} bags but the batch has {b} rows (mismatched lengths)"
                )
        for task, y in self.labels.items():
            if not isinstance(y, Tensor) or not y.is_floating_point():
                raise TypeError(
                    f"labels of task {task!r} must be a floating-point tensor, got "
                    f"{getattr(y, 'dtype', type(y).__name__)}"
                )
            if y.shape != (b,):
                raise ValueError(f"labels of task {task!r} must have shape ({b},), got {tuple(y.shape)}")
            if torch.isnan(y).any():
                raise ValueError(f"labels of task {task!r} contain NaN")
        return self


def collate_samples(samples: Sequence[tuple[Tensor, dict[str, Tensor], dict[str, float]]]) -> RecsysBatch:
    """Collate per-sample ``(dense, {feature: ids}, {task: label})`` tuples into a :class:`RecsysBatch`."""
    if not samples:
        raise ValueError("cannot collate an empty list of samples")
    dense = torch.stack([s[0] for s in samples]).float()
    sparse = {}
    for name in samples[0][1]:
        bags = [s[1][name].reshape(-1).long() for s in samples]
        lengths = torch.tensor([t.numel() for t in bags], dtype=torch.long)
        offsets = torch.zeros(len(bags) + 1, dtype=torch.long)
        offsets[1:] = torch.cumsum(lengths, 0)
        sparse[name] = SparseFeature(torch.cat(bags), offsets)
    labels = {t: torch.tensor([float(s[2][t]) for s in samples]) for t in samples[0][2]}
    return RecsysBatch(dense, sparse, labels)
