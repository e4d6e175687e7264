"""MovieLens-100K with item content vectors and cold-start / tail evaluation groups (Semantic IDs).

:class:`MovieLens100KItemsDataModule` reads the files like :class:`MovieLens100KDataModule` (same
features, tasks and batches) and changes the split: a random ``new_item_fraction`` of the rated items
(drawn by ``seed``) is held out of training entirely, all their ratings going to the test split; the
other ratings are split ``split_fractions`` at random as usual. Test rows fall in groups by how
often their item was rated in training: ``"new"`` (never: the cold-start items), ``"tail"``
(1 to ``tail_max_ratings`` times), ``"head"`` (more) and ``"all"``.

``content_vectors("item")`` [items + 1, C] is built from what ships with the data, no pretrained
encoder: the genres (multi-hot, unit norm), the release year (standardised, clipped to +-2 std and
halved, and one-hot in 5-year
buckets) and the title words (signed feature hashing into ``title_buckets`` buckets, unit norm),
blocks weighted by :data:`CONTENT_WEIGHTS`. Row 0 (the missing item) is all zeros.

Example:
    >>> from lightning_recsys.data.movielens_items import MovieLens100KItemsDataModule
    >>> dm = MovieLens100KItemsDataModule(download=True, batch_size=1024)  # doctest: +SKIP
    >>> dm.setup("fit")  # doctest: +SKIP
    >>> dm.content_vectors("item").shape  # doctest: +SKIP
    torch.Size([1683, 102])
    >>> batch = next(iter(dm.group_dataloader("new")))  # test ratings of items never seen in training  # doctest: +SKIP
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from .._validation import ConfigurationError, check_int, check_number
from .movielens import GENRES, MovieLens100KDataModule, MovieLensDataset, _header, _read_grouplens, _read_recbole, _rows, _vocab

__all__ = ["CONTENT_WEIGHTS", "GROUPS", "MovieLens100KItemsDataModule", "title_words"]

GROUPS = ("all", "head", "tail", "new")
#: weight of each block of the item content vector (each block has unit norm before weighting)
CONTENT_WEIGHTS = {"genres": 1.0, "year": 0.5, "year_bucket": 0.5, "title": 1.0}
_STOP_WORDS = frozenset({"the", "a", "an", "of", "and", "in", "to", "on", "for", "la", "le", "les", "de", "il", "el"})


def title_words(title: str) -> list[str]:
    """Lower-case words of a movie title without the trailing ``(1995)`` year and common stop words."""
    title = re.sub(r"\(\d{4}\)\s*$", "", title).lower()
    return [w for w in re.findall(r"[a-z0-9]+", title) if w not in _STOP_WORDS]


def _read_titles(fmt: str, folder: Path) -> dict[str, str]:
    """Item token -> title (GroupLens: ``u.item``'s second field; RecBole: ``movie_title``)."""
    if fmt == "grouplens":
        g = len(GENRES)  # a title may hold '|': it spans the fields between the id and the release date
        return {f[0]: "|".join(f[1 : len(f) - g - 3]) for f, _ in _rows(folder / "u.item", "|", 5 + g, "latin-1", at_least=True)}
    path = folder / "ml-100k.item"
    c = _header(path, ("item_id", "movie_title"))
    return {f[c["item_id"]]: f[c["movie_title"]] for f, _ in _rows(path, "\t", len(c), header=True)}


class MovieLens100KItemsDataModule(MovieLens100KDataModule):
    """MovieLens-100K with a cold-start item hold-out, tail groups and item content vectors.

    Args:
        new_item_fraction: share of the rated items held out of training (their ratings are test rows), in [0, 1).
        tail_max_ratings: an item with 1 to this many training ratings is a tail item.
        title_buckets: width of the hashed title-word block of the content vectors.
        data_dir, download, batch_size, split_fractions, seed, shuffle, num_workers: as in
            :class:`MovieLens100KDataModule` (``split_fractions`` splits the ratings of the other items).
    """

    def __init__(
        self,
        data_dir: str | None = None,
        download: bool = False,
        batch_size: int = 1024,
        split_fractions: Sequence[float] = (0.8, 0.1, 0.1),
        seed: int = 0,
        shuffle: bool = True,
        num_workers: int = 0,
        new_item_fraction: float = 0.1,
        tail_max_ratings: int = 20,
        title_buckets: int = 64,
    ) -> None:
        super().__init__(data_dir, download, batch_size, split_fractions, seed, shuffle, num_workers)
        check_number("new_item_fraction", new_item_fraction, low=0.0, high=1.0, high_open=True)
        for arg, val in (("tail_max_ratings", tail_max_ratings), ("title_buckets", title_buckets)):
            check_int(arg, val, low=1)
        self.new_item_fraction = float(new_item_fraction)
        self.tail_max_ratings = tail_max_ratings
        self.title_buckets = title_buckets
        self.train_item_counts: Tensor | None = None
        self.test_groups: dict[str, Tensor] = {}
        self._content: Tensor | None = None

    def setup(self, stage: str | None = None) -> None:
        """Hold out the new items, split the other ratings, and group the test rows by training count."""
        if self.train_dataset is not None:
            return
        tables = self._load()
        items = tables.rating_item
        rated = torch.unique(items)
        gen = torch.Generator().manual_seed(self.seed)
        new_items = rated[torch.randperm(rated.numel(), generator=gen)[: round(self.new_item_fraction * rated.numel())]]
        held_out = torch.isin(items, new_items)
        rest = (~held_out).nonzero().flatten()
        n = rest.numel()
        n_val, n_test = round(self.split_fractions[1] * n), round(self.split_fractions[2] * n)
        if min(n - n_val - n_test, n_val, n_test) < 1:
            raise ValueError(f"split_fractions {list(self.split_fractions)} of {n} ratings leave a split empty")
        rest = rest[torch.randperm(n, generator=gen)]
        train = rest[: n - n_val - n_test].sort().values
        test = torch.cat([rest[n - n_test :], held_out.nonzero().flatten()]).sort().values
        self.train_dataset = MovieLensDataset(tables, train)
        self.val_dataset = MovieLensDataset(tables, rest[n - n_val - n_test : n - n_test].sort().values)
        self.test_dataset = MovieLensDataset(tables, test)
        self.train_item_counts = torch.bincount(items[train], minlength=tables.spec.cardinalities["item"])
        seen = self.train_item_counts[items[test]]
        self.test_groups = {
            "all": torch.ones_like(seen, dtype=torch.bool),
            "head": seen > self.tail_max_ratings,
            "tail": (seen >= 1) & (seen <= self.tail_max_ratings),
            "new": seen == 0,
        }

    def group_dataloader(self, group: str) -> DataLoader:
        """Test rows of one group of :data:`GROUPS` (``"new"``: items never rated in training)."""
        if group not in GROUPS:
            raise ConfigurationError(f"group must be one of {GROUPS}, got {group!r}")
        if self.test_dataset is None:
            raise RuntimeError("call setup() before asking for a dataloader (the Trainer does it for you)")
        rows = self.test_dataset.rows[self.test_groups[group]]
        return self._loader(MovieLensDataset(self.test_dataset.tables, rows))

    def content_vectors(self, feature: str = "item") -> Tensor:
        """Content vector per id of ``feature`` (only ``"item"``): ``[cardinality, C]`` float32."""
        if feature != "item":
            raise ValueError(f"content vectors exist for the sparse feature 'item' only, got feature={feature!r}")
        if self._content is None:
            self._content = self._build_content()
        return self._content

    def _build_content(self) -> Tensor:
        tables = self._load()
        fmt, folder = self._locate()
        raw = _read_grouplens(folder) if fmt == "grouplens" else _read_recbole(folder)
        vocab = _vocab([*raw.items, *raw.rating_items])  # the same item ids as the batches
        n = tables.spec.cardinalities["item"]
        genres = torch.zeros(n, tables.spec.cardinalities["genres"])
        keep = torch.arange(tables.genre_padded.shape[1]) < tables.genre_lengths[:, None]
        rows = torch.arange(n)[:, None].expand_as(keep)[keep]
        genres[rows, tables.genre_padded[keep]] = 1.0
        genres[:, 0] = 0.0  # the 'missing genre' id carries no content
        year_bucket = torch.nn.functional.one_hot(tables.item_year, tables.spec.cardinalities["year"]).float()
        year_bucket[:, 0] = 0.0
        title = torch.zeros(n, self.title_buckets)
        for token, text in _read_titles(fmt, folder).items():
            for word in title_words(text):
                h = zlib.crc32(word.encode())
                title[vocab[token], h % self.title_buckets] += 1.0 if (h >> 16) & 1 else -1.0
        year = tables.item_dense[:, None].clamp(-2.0, 2.0) / 2.0  # standardised, in [-1, 1]
        blocks = {"genres": genres, "year": year, "year_bucket": year_bucket, "title": title}
        unit = {k: b if k == "year" else b / b.norm(dim=1, keepdim=True).clamp_min(1e-12) for k, b in blocks.items()}
        content = torch.cat([CONTENT_WEIGHTS[k] * b for k, b in unit.items()], 1)
        content[0] = 0.0
        return content
