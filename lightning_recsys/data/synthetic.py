"""Synthetic Criteo-like click/conversion data with a planted model (so the Bayes-optimal AUC is known).

Every batch is generated on the fly from ``(seed, split, batch index)``: any size from a few hundred
rows (tests) to many millions (benchmarks) without holding the data in memory, and the same seed
always gives the same batches.

Example:
    >>> from lightning_recsys.data import SyntheticCTRDataModule
    >>> dm = SyntheticCTRDataModule(num_train=2048, num_val=512, num_test=512, max_rows=1000, batch_size=256)
    >>> batch = next(iter(dm.train_dataloader()))
    >>> batch.dense.shape, len(batch.sparse), sorted(batch.labels)
    (torch.Size([256, 13]), 26, ['click', 'conversion'])
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from .._validation import ConfigurationError, check_int, check_number
from .batch import FeatureSpec, RecsysBatch, SparseFeature
from .resumable import ResumableDataLoader

__all__ = ["CRITEO_KAGGLE_CARDINALITIES", "PlantedCTRModel", "SyntheticCTRDataset", "SyntheticCTRDataModule"]

#: Table sizes of the 26 categorical features of the Criteo Kaggle display-advertising data set.
CRITEO_KAGGLE_CARDINALITIES: tuple[int, ...] = (
    1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3, 93145, 5683, 8351593, 3194,
    27, 14992, 5461306, 10, 5652, 2173, 4, 7046547, 18, 15, 286181, 105, 142572,
)  # fmt: skip

_SPLITS = {"train": 0, "val": 1, "test": 2}


class PlantedCTRModel:
    """The ground truth the labels are drawn from: per-id effects, pairwise latent interactions, dense.

    ``logit_t = bias_t + w_t . dense + sum_f a_f[id_f, t] + c_t * sum_{f<g in crossed} v_f[id_f] . v_g[id_g]``

    where only ``K = num_interacting`` context features interact pairwise: the ones with the fewest
    rows (at least 10), so the crosses are strong and observed often, as with real context crosses,
    rather than hundreds of faint ones over long-tail ids that no model could learn.

    Per-id effects ``a_f`` (one column per task, partly shared between tasks) and latent vectors
    ``v_f`` (``planted_dim`` columns) shrink with the id's popularity rank,
    ``(1 + rank / head_size) ** -0.5``: as in real logs, the long tail carries less signal per id.
    Rarer tasks get a lower bias (``base_rates``). The Bayes-optimal predictor is ``sigmoid(logit)``.
    """

    def __init__(
        self,
        cardinalities: Sequence[int],
        ranks: Sequence[Tensor],
        num_dense: int,
        tasks: Sequence[str],
        base_rates: Sequence[float],
        planted_dim: int,
        signal: float,
        head_size: int,
        num_interacting: int,
        generator: torch.Generator,
    ) -> None:
        self.tasks = list(tasks)
        t, k, num_sparse = len(self.tasks), planted_dim, len(cardinalities)
        n_int = min(num_interacting, num_sparse)
        by_size = sorted(range(num_sparse), key=lambda f: (cardinalities[f] < 10, cardinalities[f], f))
        self.interacting = sorted(by_size[:n_int])
        # logit variance budget: ~65% per-id effects, ~20% pairwise interactions, ~15% dense
        first_std = signal * math.sqrt(0.65 / num_sparse)
        pair_std = (signal * signal * 0.20 / max(1.0, n_int * (n_int - 1) / 2 * k)) ** 0.25
        mix = torch.eye(t) if t == 1 else torch.full((t, t), 0.6).fill_diagonal_(0.8)  # related tasks
        self.first: list[Tensor] = []
        self.tables: list[Tensor] = []
        for f, (n, rank) in enumerate(zip(cardinalities, ranks)):
            shrink = (1.0 + rank.float() / head_size).rsqrt()[:, None]
            self.first.append(torch.randn(n, t, generator=generator) @ mix.T * shrink * first_std)
            if f in self.interacting:
                self.tables.append(torch.randn(n, k, generator=generator) * shrink * pair_std)
        self.w = (mix @ torch.randn(t, num_dense, generator=generator)) * (signal * math.sqrt(0.15 / max(num_dense, 1)) / 0.55)
        self.c = torch.ones(t)
        self.c[1:] = 0.5
        self.bias = torch.tensor([math.log(p / (1 - p)) for p in base_rates])  # calibrated by the data module
        self.dense_mean = float(F.softplus(torch.randn(100_000, generator=generator)).mean())

    def logits(self, dense: Tensor, sparse: Sequence[SparseFeature]) -> Tensor:
        """Planted logits [B, T]."""
        first = sum(F.embedding_bag(f.values, a, f.offsets[:-1], mode="sum") for f, a in zip(sparse, self.first))
        crossed = [sparse[f] for f in self.interacting]
        pooled = torch.stack(
            [F.embedding_bag(f.values, v, f.offsets[:-1], mode="sum") for f, v in zip(crossed, self.tables)], dim=1
        )  # [B, K, k]
        s = pooled.sum(1)
        pair = 0.5 * ((s * s).sum(-1) - (pooled * pooled).sum((1, 2)))  # sum over crossed pairs <v_f, v_g>
        lin = (dense - self.dense_mean) @ self.w.T
        return self.bias + lin + first + pair[:, None] * self.c


class SyntheticCTRDataset(Dataset):
    """Map-style dataset whose item ``i`` is the whole batch ``i`` of a split (use ``batch_size=None``)."""

    def __init__(self, module: SyntheticCTRDataModule, split: str, num_samples: int) -> None:
        if split not in _SPLITS:
            raise ConfigurationError(f"split must be one of {sorted(_SPLITS)}, got {split!r}")
        self.module = module
        self.split = split
        self.num_samples = num_samples
        self.num_batches = max(1, math.ceil(num_samples / module.batch_size))

    def __len__(self) -> int:
        return self.num_batches

    def __getitem__(self, index: int) -> RecsysBatch:
        return self.module.make_batch(self.split, index)[0]


class SyntheticCTRDataModule(pl.LightningDataModule):
    """Criteo-like data: 13 dense and 26 categorical features, Zipf ids, labels from a planted model.

    Args:
        num_train, num_val, num_test: rows per split (rounded up to whole batches).
        batch_size: rows per batch.
        max_rows: cap on every table's size (Criteo-Kaggle cardinalities otherwise).
        num_dense, num_sparse: feature counts (13 and 26 as in Criteo by default).
        zipf_alpha: Zipf exponent of the id distribution (ids are ranks, randomly permuted per table).
        max_bag_size: 1 for single-hot (Criteo); larger gives multi-hot bags of 1..max_bag_size ids.
        tasks: task names; the first is the main task.
        base_rates: approximate positive rate per task (e.g. clicks 25%, conversions 3%).
        planted_dim: latent size of the planted model; signal: its logit scale; head_size: popularity
            rank at which an id's planted effect has shrunk by 1/sqrt(2); num_interacting: how many
            sparse features (those with the fewest rows) interact pairwise in the planted model.
        seed: everything (planted model, batches) derives from it.
        num_workers: DataLoader workers.
        shift_at_step: plant a distribution shift (off by default): batches made once the attached
            trainer's ``global_step`` has reached this step (train and validation alike) carry dense
            features ``x * shift_dense_scale + shift_dense_offset``, while the labels still follow
            the planted model of ``x`` (an upstream encoding change: same information, new scale).
            Needs ``num_workers=0``; ``make_batch(..., shifted=True)`` makes a shifted batch explicitly.
        shift_dense_scale, shift_dense_offset: the shift applied to the dense features.
    """

    def __init__(
        self,
        num_train: int = 500_000,
        num_val: int = 50_000,
        num_test: int = 50_000,
        batch_size: int = 1024,
        max_rows: int = 100_000,
        num_dense: int = 13,
        num_sparse: int = 26,
        zipf_alpha: float = 1.1,
        max_bag_size: int = 1,
        tasks: Sequence[str] = ("click", "conversion"),
        base_rates: Sequence[float] = (0.25, 0.03),
        planted_dim: int = 4,
        signal: float = 1.6,
        head_size: int = 200,
        num_interacting: int = 6,
        seed: int = 0,
        num_workers: int = 0,
        shift_at_step: int | None = None,
        shift_dense_scale: float = 4.0,
        shift_dense_offset: float = 0.0,
    ) -> None:
        super().__init__()
        for arg, val, lo in (
            ("num_train", num_train, 1), ("num_val", num_val, 1), ("num_test", num_test, 1),
            ("batch_size", batch_size, 1), ("max_rows", max_rows, 2), ("num_dense", num_dense, 0),
            ("num_sparse", num_sparse, 1), ("max_bag_size", max_bag_size, 1), ("planted_dim", planted_dim, 1),
            ("head_size", head_size, 1), ("num_interacting", num_interacting, 0),
            ("num_workers", num_workers, 0),
        ):  # fmt: skip
            check_int(arg, val, low=lo)
        check_int("num_sparse", num_sparse, high=len(CRITEO_KAGGLE_CARDINALITIES))
        check_int("shift_at_step", shift_at_step, low=0, optional=True)
        if shift_at_step is not None and num_workers > 0:
            raise ConfigurationError(f"shift_at_step reads the trainer's step in the main process: it needs num_workers=0, got {num_workers}")
        for arg, val in (("shift_dense_scale", shift_dense_scale), ("shift_dense_offset", shift_dense_offset)):
            check_number(arg, val, low=-math.inf, high=math.inf, low_open=True, high_open=True)
        check_number("zipf_alpha", zipf_alpha, low=0.0, low_open=True)
        tasks, base_rates = list(tasks), list(base_rates)
        if len(base_rates) != len(tasks):
            raise ConfigurationError(f"base_rates needs one rate per task ({len(tasks)}), got {list(base_rates)}")
        for i, p in enumerate(base_rates):
            check_number(f"base_rates[{i}]", p, low=0.0, high=1.0, low_open=True, high_open=True)
        self.save_hyperparameters()
        self.num_train, self.num_val, self.num_test = num_train, num_val, num_test
        self.batch_size = batch_size
        self.max_bag_size = max_bag_size
        self.seed = seed
        self.num_workers = num_workers
        self.shift_at_step = shift_at_step
        self.shift_dense_scale, self.shift_dense_offset = float(shift_dense_scale), float(shift_dense_offset)
        self.cardinalities = [min(c, max_rows) for c in CRITEO_KAGGLE_CARDINALITIES[:num_sparse]]
        self.feature_names = [f"C{i + 1}" for i in range(num_sparse)]
        self.spec = FeatureSpec(num_dense, dict(zip(self.feature_names, self.cardinalities)), tasks)
        gen = torch.Generator().manual_seed(seed)
        # Zipf over ranks, then a random permutation so the hot ids are scattered over the table
        self._cdfs = []
        self._perms = []
        for n in self.cardinalities:
            w = torch.arange(1, n + 1, dtype=torch.float64).pow(-zipf_alpha)
            cdf = torch.cumsum(w, 0)
            self._cdfs.append((cdf / cdf[-1]).float())
            self._perms.append(torch.randperm(n, generator=gen))
        ranks = [torch.argsort(perm) for perm in self._perms]  # id -> popularity rank
        self.planted = PlantedCTRModel(
            self.cardinalities, ranks, num_dense, tasks, base_rates, planted_dim, signal, head_size, num_interacting, gen
        )
        self._calibrate_bias(base_rates)

    def _calibrate_bias(self, base_rates: Sequence[float], rows: int = 20_000) -> None:
        """Set the planted biases so each task's mean probability equals its base rate."""
        batch = self._features(rows, torch.Generator().manual_seed(self.seed * 3 + 7))
        self.planted.bias = torch.zeros(len(base_rates))
        z = self.planted.logits(batch.dense, list(batch.sparse.values()))
        lo, hi = torch.full((z.shape[1],), -30.0), torch.full((z.shape[1],), 30.0)
        target = torch.tensor(list(base_rates))
        for _ in range(60):  # bisection on the monotone mean-probability curve
            mid = (lo + hi) / 2
            above = torch.sigmoid(z + mid).mean(0) > target
            hi = torch.where(above, mid, hi)
            lo = torch.where(above, lo, mid)
        self.planted.bias = (lo + hi) / 2

    @property
    def feature_spec(self) -> FeatureSpec:
        """Dense width, table sizes and task names, for building models (``DLRM.from_spec``)."""
        return self.spec

    def _sample_ids(self, f: int, count: int, gen: torch.Generator) -> Tensor:
        u = torch.rand(count, generator=gen)
        ranks = torch.searchsorted(self._cdfs[f], u).clamp_(max=self.cardinalities[f] - 1)
        return self._perms[f][ranks]

    def shift_active(self) -> bool:
        """Whether batches made now carry the planted shift (``shift_at_step`` reached by the trainer)."""
        trainer = self.trainer
        return self.shift_at_step is not None and trainer is not None and trainer.global_step >= self.shift_at_step

    def make_batch(self, split: str, index: int, shifted: bool | None = None) -> tuple[RecsysBatch, Tensor]:
        """Batch ``index`` of ``split`` and the planted (Bayes-optimal) probabilities [B, T].

        ``shifted`` applies the planted dense shift (default: :meth:`shift_active`); labels and
        probabilities are the same either way.
        """
        num = {"train": self.num_train, "val": self.num_val, "test": self.num_test}[split]
        n_batches = max(1, math.ceil(num / self.batch_size))
        if not 0 <= index < n_batches:
            raise IndexError(f"batch index {index} out of range for split {split!r} with {n_batches} batches")
        b = min(self.batch_size, num - index * self.batch_size)
        gen = torch.Generator().manual_seed((self.seed * 3 + _SPLITS[split]) * 1_000_003 + index)
        batch = self._features(b, gen)
        probs = torch.sigmoid(self.planted.logits(batch.dense, list(batch.sparse.values())))
        labels_all = torch.bernoulli(probs, generator=gen)
        batch.labels = {t: labels_all[:, i].contiguous() for i, t in enumerate(self.spec.tasks)}
        if shifted is None:
            shifted = self.shift_active()
        if shifted:
            batch.dense = batch.dense * self.shift_dense_scale + self.shift_dense_offset
        return batch, probs

    def _features(self, b: int, gen: torch.Generator) -> RecsysBatch:
        """``b`` rows of dense and sparse features (no labels)."""
        dense = F.softplus(torch.randn(b, self.spec.num_dense, generator=gen))
        sparse = {}
        for f, name in enumerate(self.feature_names):
            if self.max_bag_size == 1:
                lengths = torch.ones(b, dtype=torch.long)
            else:
                lengths = torch.randint(1, self.max_bag_size + 1, (b,), generator=gen)
            offsets = torch.zeros(b + 1, dtype=torch.long)
            offsets[1:] = torch.cumsum(lengths, 0)
            sparse[name] = SparseFeature(self._sample_ids(f, int(offsets[-1]), gen), offsets)
        return RecsysBatch(dense, sparse)

    def bayes_auc(self, split: str = "test") -> dict[str, float]:
        """AUC of the planted model's own probabilities on ``split``: the best any model can reach."""
        from torchmetrics.classification import BinaryAUROC

        metrics = {t: BinaryAUROC() for t in self.spec.tasks}
        num = {"train": self.num_train, "val": self.num_val, "test": self.num_test}[split]
        for i in range(max(1, math.ceil(num / self.batch_size))):
            batch, probs = self.make_batch(split, i, shifted=False)
            for j, t in enumerate(self.spec.tasks):
                metrics[t].update(probs[:, j], batch.labels[t].long())
        return {t: float(m.compute()) for t, m in metrics.items()}

    def _loader(self, split: str, num: int) -> DataLoader:
        kwargs = {"batch_size": None, "shuffle": False, "num_workers": self.num_workers,
                  "persistent_workers": self.num_workers > 0}  # fmt: skip
        dataset = SyntheticCTRDataset(self, split, num)
        if split == "train":  # resumes mid-epoch exactly (see ResumableDataLoader)
            return ResumableDataLoader(dataset, datamodule=self, **kwargs)
        return DataLoader(dataset, **kwargs)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", self.num_train)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", self.num_val)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", self.num_test)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test", self.num_test)
