"""Data modules over one table of interactions read from files and split at random into train /
validation / test.

:class:`RandomSplitDataModule` holds what MovieLens-100K and the clothing reviews share: the files'
folder (``data_dir``, default a per-dataset cache folder) and ``download``, argument checks, the seeded
split, per-epoch seeded shuffling (:class:`EpochShuffleSampler`), resumable training loaders and
:class:`RowsDataset`, whose batches are gathers from tensors built once. A subclass finds (or fetches)
its files in ``_locate`` and loads its "tables" (``len(tables)`` rows, ``tables.batch(rows) ->
RecsysBatch``, ``tables.spec``) in ``_load``.

Example:
    >>> from lightning_recsys.data import MovieLens100KDataModule
    >>> dm = MovieLens100KDataModule(download=True, split_fractions=(0.8, 0.1, 0.1), seed=3)  # doctest: +SKIP
    >>> dm.setup("fit"); len(dm.train_dataset)  # doctest: +SKIP
    80000
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import os
from pathlib import Path

import lightning.pytorch as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, RandomSampler

from .._validation import check_int
from .batch import FeatureSpec, RecsysBatch
from .movielens_download import default_cache_dir
from .resumable import ResumableDataLoader

__all__ = ["EpochShuffleSampler", "RandomSplitDataModule", "RowsDataset"]


class RowsDataset(Dataset):
    """The rows of one split. ``dataset[i]`` is one sample as ``(dense, {feature: ids}, {task: label})``
    (the input of :func:`~lightning_recsys.data.collate_samples`); a ``DataLoader`` with a batch size
    fetches whole :class:`RecsysBatch` es at once through ``__getitems__``."""

    def __init__(self, tables: Any, rows: Tensor) -> None:
        self.tables = tables
        self.rows = rows

    def __len__(self) -> int:
        return int(self.rows.numel())

    def __getitems__(self, indices: Sequence[int]) -> RecsysBatch:
        return self.tables.batch(self.rows[torch.as_tensor(indices, dtype=torch.long)])

    def __getitem__(self, index: int) -> tuple[Tensor, dict[str, Tensor], dict[str, float]]:
        b = self.__getitems__([index])
        return b.dense[0], {k: f.values for k, f in b.sparse.items()}, {t: float(y[0]) for t, y in b.labels.items()}


def _passthrough(batch: RecsysBatch) -> RecsysBatch:
    return batch


class EpochShuffleSampler(RandomSampler):
    """A fresh permutation per epoch derived from ``(seed, epoch)``: reproducible across runs and exact
    on resume (Lightning calls ``set_epoch`` before each epoch; without it the epoch counts up)."""

    def __init__(self, data_source: Dataset, seed: int = 0) -> None:
        super().__init__(data_source)
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        gen = torch.Generator().manual_seed((self.seed * 1_000_003 + self.epoch + 1) % (2**63))
        self.epoch += 1
        return iter(torch.randperm(len(self.data_source), generator=gen).tolist())


class RandomSplitDataModule(pl.LightningDataModule):
    """Rows split at random by ``seed`` into ``split_fractions`` (train, val, test); subclasses load the
    rows in ``_load``. ``rows_name`` names them in messages (``"ratings"``, ``"reviews"``); ``data_dir``
    defaults to ``~/.cache/lightning_recsys/<cache_name>``."""

    rows_name = "rows"
    cache_name = "data"

    def __init__(
        self,
        data_dir: str | None = None,
        download: bool = False,
        batch_size: int = 1024,
        split_fractions: Sequence[float] = (0.8, 0.1, 0.1),
        seed: int = 0,
        shuffle: bool = True,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        if data_dir is not None and not isinstance(data_dir, (str, os.PathLike)):
            raise TypeError(f"data_dir must be a path string or None, got {type(data_dir).__name__}")
        for arg, val, lo in (("batch_size", batch_size, 1), ("num_workers", num_workers, 0)):
            check_int(arg, val, low=lo)
        check_int("seed", seed)
        fractions = list(split_fractions) if isinstance(split_fractions, Sequence) else None
        if (
            fractions is None
            or len(fractions) != 3
            or any(isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 < f < 1 for f in fractions)
            or abs(sum(fractions) - 1.0) > 1e-6
        ):
            raise ValueError(
                f"split_fractions must be three numbers [train, val, test], each in (0, 1), summing to 1; "
                f"got {split_fractions!r}"
            )
        self.save_hyperparameters()
        self.data_dir = Path(data_dir).expanduser() if data_dir is not None else default_cache_dir(self.cache_name)
        self.download = bool(download)
        self.batch_size = batch_size
        self.split_fractions = tuple(float(f) for f in fractions)
        self.seed = seed
        self.shuffle = bool(shuffle)
        self.num_workers = num_workers
        self.train_dataset: RowsDataset | None = None
        self.val_dataset: RowsDataset | None = None
        self.test_dataset: RowsDataset | None = None
        self._tables: Any = None

    def _locate(self) -> Any:
        raise NotImplementedError

    def _load(self) -> Any:
        raise NotImplementedError

    def prepare_data(self) -> None:
        """Download the files if needed (Lightning runs this on local rank 0 only)."""
        self._locate()

    @property
    def feature_spec(self) -> FeatureSpec:
        """Dense width, table sizes (id 0 = missing) and tasks; reads (or downloads) the files on first use."""
        return self._load().spec

    def split_rows(self, n: int) -> tuple[Tensor, Tensor, Tensor]:
        """The sorted row numbers of the train, validation and test splits of ``n`` rows (from ``seed``)."""
        n_val = round(self.split_fractions[1] * n)
        n_test = round(self.split_fractions[2] * n)
        n_train = n - n_val - n_test
        if min(n_train, n_val, n_test) < 1:
            raise ValueError(
                f"split_fractions {list(self.split_fractions)} of {n} {self.rows_name} leave a split empty "
                f"(train {n_train}, val {n_val}, test {n_test})"
            )
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed))
        return perm[:n_train].sort().values, perm[n_train : n_train + n_val].sort().values, perm[n_train + n_val :].sort().values

    def setup(self, stage: str | None = None) -> None:
        if self.train_dataset is not None:
            return
        tables = self._load()
        train, val, test = self.split_rows(len(tables))
        self.train_dataset = RowsDataset(tables, train)
        self.val_dataset = RowsDataset(tables, val)
        self.test_dataset = RowsDataset(tables, test)

    def _loader(self, dataset: RowsDataset | None, train: bool = False) -> DataLoader:
        if dataset is None:
            raise RuntimeError("call setup() before asking for a dataloader (the Trainer does it for you)")
        kwargs = {"batch_size": self.batch_size, "collate_fn": _passthrough, "num_workers": self.num_workers,
                  "persistent_workers": self.num_workers > 0}  # fmt: skip
        if train:  # resumes mid-epoch exactly (see ResumableDataLoader)
            sampler = EpochShuffleSampler(dataset, self.seed) if self.shuffle else None
            return ResumableDataLoader(dataset, sampler=sampler, datamodule=self, **kwargs)
        return DataLoader(dataset, **kwargs)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_dataset, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_dataset)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_dataset)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.test_dataset)
