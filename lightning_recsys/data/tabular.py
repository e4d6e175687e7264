"""Your own interactions table as :class:`RecsysBatch` es: a CSV / TSV file, or columns in memory.

Each row is one example. ``sparse`` columns become embedding-table ids: every value seen at least
``min_count`` times in the training rows gets an id ``1..n`` (most frequent first); missing, empty and
rarer values, and values that only validation or test rows hold (a new item, as in production), read
id 0 (one table row for "unknown"). A ``multi_hot`` column holds several values per row, joined by its
separator (``"Comedy|Drama"``), and becomes a bag of ids (an empty cell, an empty bag). ``dense`` columns
are numbers, standardised with the training rows' mean and deviation (or ``log1p``-ed for counts;
``signed_log1p`` for Criteo's counts, a few of which are negative), missing values reading 0 after the
transform. ``labels`` name the tasks: 0/1 columns, or any number column turned binary by
``label_threshold`` (``value >= threshold``, e.g. ratings ``>= 4``). A file without a header row gets
its names from ``column_names``; ``.gz`` files are read as they are. ``content={"item": ["genres",
"year"]}`` names the columns describing a feature's values: ``content_vectors("item")`` is what
``RecsysModule(arch="semantic_id")`` fits its codes on. The ids and dense statistics are the module's
state (in every checkpoint); ``encode`` applies them to new raw rows. Rows are split at random by ``seed``
into ``split_fractions`` (train, validation, test), as :class:`~lightning_recsys.data.MovieLens100KDataModule`.

Example:
    >>> from lightning_recsys.data import TabularDataModule
    >>> dm = TabularDataModule(columns={"user": ["a", "b", "a", "c"], "item": ["x", "y", "y", "x"],
    ...                                 "click": [1, 0, 1, 0]}, sparse=["user", "item"], labels=["click"],
    ...                        split_fractions=(0.5, 0.25, 0.25))
    >>> dm.feature_spec  # ids from the 2 training rows (0 and 1): users a, b and items x, y, plus 0 = unknown
    FeatureSpec(num_dense=0, cardinalities={'user': 3, 'item': 3}, tasks=['click'])
"""

from __future__ import annotations

import csv
import gzip
import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .batch import FeatureSpec, RecsysBatch, SparseFeature
from .splits import RandomSplitDataModule

__all__ = ["DENSE_TRANSFORMS", "MISSING", "TabularDataModule"]

#: cells that mark a missing value (``na_values=`` adds more)
MISSING = frozenset({"", "nan", "NaN", "NA", "null", "None"})
#: what ``dense_transform`` may be
DENSE_TRANSFORMS = ("standardize", "log1p", "signed_log1p", "none")


def _missing(v: Any, na: frozenset[str]) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v)) or (isinstance(v, str) and v.strip() in na)


def _read_csv(path: Path, delimiter: str | None, names: Sequence[str] | None, encoding: str) -> dict[str, list[str]]:
    """The columns of a CSV / TSV file (gzip-compressed when it ends in ``.gz``) as lists of strings: named
    by its header row, or by ``names`` when the file has none (its first row is then data)."""
    gz = path.suffix.lower() == ".gz"
    if delimiter is None:
        inner = Path(path.stem) if gz else path
        delimiter = "\t" if inner.suffix.lower() in (".tsv", ".tab") else ","
    if not isinstance(delimiter, str) or not delimiter or delimiter in ("\n", "\r"):
        raise ValueError(f"delimiter must be a non-empty string other than a line break, got {delimiter!r}")
    opener = gzip.open if gz else open
    try:
        with opener(path, "rt", newline="", encoding=encoding) as f:
            if len(delimiter) == 1:
                rows = [r for r in csv.reader(f, delimiter=delimiter) if r]
            else:  # MovieLens-1M's "::": plain splitting (no quoting), as csv takes one character only
                rows = [line.rstrip("\r\n").split(delimiter) for line in f if line.strip()]
    except UnicodeDecodeError as err:
        raise ValueError(f"{path} is not {encoding} text ({err.reason} at byte {err.start}); pass encoding= "
                         "(e.g. 'latin-1')") from None  # fmt: skip
    except (OSError, EOFError) as err:  # a truncated or not-really-gzip .gz file
        raise ValueError(f"{path} cannot be read: {err}") from None
    if names is not None and rows and rows[0] == list(names):
        raise ValueError(f"{path}'s first row is a header naming the columns as column_names= does; drop column_names=")
    header = list(names) if names is not None else (rows.pop(0) if rows else None)
    if not header:
        raise ValueError(f"{path} is empty: a header row naming the columns is expected (or column_names=)")
    what = "column_names" if names is not None else "the header"
    bad = next((i for i, r in enumerate(rows) if len(r) != len(header)), None)
    if bad is not None:
        raise ValueError(f"{path}: data row {bad + 1} has {len(rows[bad])} fields, {what} {len(header)} "
                         f"(delimiter {delimiter!r}; pass delimiter= if it is another)")  # fmt: skip
    return {name: [r[j] for r in rows] for j, name in enumerate(header)}


def _as_list(values: Any) -> list[Any]:
    """A column (list, numpy array, tensor, pandas Series) as a list of Python values."""
    if isinstance(values, Tensor):
        return values.tolist()
    tolist = getattr(values, "tolist", None)
    return tolist() if callable(tolist) else list(values)


def _vocabulary(values: list[Any], min_count: int) -> dict[str, int]:
    """``str(value) -> id`` for the values seen ``min_count`` times or more: most frequent first (ties by
    value), ids from 1 (0 = missing / rare / unseen)."""
    counts = Counter(values)
    kept = sorted((v for v, c in counts.items() if c >= min_count), key=lambda v: (-counts[v], v))
    return {v: i + 1 for i, v in enumerate(kept)}


def _cell_values(v: Any, sep: str | None, na: frozenset[str]) -> list[str]:
    if _missing(v, na):
        return []
    if sep is None:
        return [str(v)]
    return [p.strip() for p in str(v).split(sep) if p.strip()]


def _per_value(values: list[Any], parse: Callable[[Any], Any]) -> list[Any]:
    """``parse`` of every cell, called once per distinct value (a column holds far fewer values than cells;
    keyed by type too, since ``1 == 1.0 == True`` but their strings differ)."""
    seen: dict[tuple[type, Any], Any] = {}
    out = []
    for v in values:
        key = (type(v), v)
        try:
            out.append(seen[key])
        except KeyError:
            out.append(seen.setdefault(key, parse(v)))
        except TypeError:  # an unhashable cell
            out.append(parse(v))
    return out


def _ids(cells: list[list[str]], vocab: Mapping[str, int], multi: bool) -> Tensor | tuple[Tensor, Tensor]:
    """Ids of parsed cells (0 for values outside ``vocab``): ``[n]``, or ``(values, offsets)`` of the bags."""
    if not multi:
        return torch.tensor([vocab.get(c[0], 0) if c else 0 for c in cells], dtype=torch.long)
    ids = [[vocab.get(x, 0) for x in c] for c in cells]
    lengths = torch.tensor([len(c) for c in ids], dtype=torch.long)
    return torch.tensor([x for c in ids for x in c], dtype=torch.long), torch.cat([lengths.new_zeros(1), lengths.cumsum(0)])


class _Tables:
    """The table tensorised once: ids per sparse column (CSR for multi-hot ones), dense matrix, labels."""

    def __init__(self, cols: Mapping[str, list[Any]], opts: dict[str, Any], where: str, train: Tensor) -> None:
        n = len(next(iter(cols.values())))
        self.n, self.train = n, train
        train_rows = train.tolist()
        self.single: dict[str, Tensor] = {}
        self.multi: dict[str, tuple[Tensor, Tensor]] = {}
        self.vocabularies: dict[str, dict[str, int]] = {}
        for name in opts["sparse"]:
            sep = opts["multi_hot"].get(name)
            cells = _per_value(cols[name], lambda v, sep=sep: _cell_values(v, sep, opts["na"]))
            vocab = self.vocabularies[name] = _vocabulary([x for r in train_rows for x in cells[r]], opts["min_count"])
            if sep is None:
                self.single[name] = _ids(cells, vocab, multi=False)
            else:
                self.multi[name] = _ids(cells, vocab, multi=True)
        sizes = {name: len(vocab) + 1 for name, vocab in self.vocabularies.items()}
        self.dense_stats: dict[str, tuple[float, float]] = {}
        dense = []
        for name in opts["dense"]:
            x, self.dense_stats[name] = _dense(_numbers(name, cols[name], where, opts["na"]), name, opts["dense_transform"],
                                               where, train=train)  # fmt: skip
            dense.append(x)
        self.dense = torch.stack(dense, 1) if dense else torch.zeros(n, 0)
        self.labels = {t: _label(_numbers(t, cols[t], where, opts["na"]), t, opts["label_threshold"], where)
                       for t in opts["labels"]}  # fmt: skip
        self.spec = FeatureSpec(num_dense=len(opts["dense"]), cardinalities=sizes, tasks=list(opts["labels"]))
        self.order, self.dense_names = list(opts["sparse"]), list(opts["dense"])

    def __len__(self) -> int:
        return self.n

    def batch(self, rows: Tensor) -> RecsysBatch:
        """The :class:`RecsysBatch` of the given rows (gathers only)."""
        single = torch.arange(rows.numel() + 1)
        sparse = {}
        for name in self.order:
            if name in self.single:
                sparse[name] = SparseFeature(self.single[name][rows], single)
                continue
            values, offsets = self.multi[name]
            starts, lengths = offsets[rows], offsets[rows + 1] - offsets[rows]
            out_offsets = torch.cat([lengths.new_zeros(1), lengths.cumsum(0)])
            pos = torch.repeat_interleave(starts - out_offsets[:-1], lengths) + torch.arange(int(out_offsets[-1]))
            sparse[name] = SparseFeature(values[pos], out_offsets)
        return RecsysBatch(self.dense[rows], sparse, {t: y[rows] for t, y in self.labels.items()})

    def content(self, feature: str, columns: Sequence[str]) -> Tensor:
        """``[cardinality, C]``: per id of ``feature``, its ``columns`` as they read in the first training row
        holding it. A sparse column is a one-hot / multi-hot block of unit norm (its id 0, unknown, left
        out), a dense column its transformed value; id 0 and ids of no training row are zeros."""
        n = self.spec.cardinalities[feature]
        ids = self.single[feature][self.train]
        first = torch.full((n,), self.n, dtype=torch.long).scatter_reduce(0, ids, self.train, reduce="amin")
        held = first < self.n
        held[0] = False
        batch = self.batch(first.clamp(max=self.n - 1))
        dense_index = {name: j for j, name in enumerate(self.dense_names)}
        blocks = []
        for c in columns:
            if c in dense_index:
                blocks.append(batch.dense[:, dense_index[c] : dense_index[c] + 1])
                continue
            f = batch.sparse[c]
            rows = torch.repeat_interleave(torch.arange(n), f.offsets[1:] - f.offsets[:-1])
            block = torch.zeros(n, self.spec.cardinalities[c])
            block.index_put_((rows, f.values), torch.ones(f.values.numel()), accumulate=True)
            block[:, 0] = 0.0
            blocks.append(block / block.norm(dim=1, keepdim=True).clamp_min(1e-12))
        return torch.where(held[:, None], torch.cat(blocks, 1), 0.0)


def _numbers(name: str, values: list[Any], where: str, na: frozenset[str]) -> Tensor:
    """Floats (NaN where missing); a non-number names the column and the value."""
    def parse(v: Any) -> float:
        if _missing(v, na):
            return math.nan
        try:
            return float(v)
        except (TypeError, ValueError):
            raise ValueError(f"{where}: column {name!r} holds {v!r}, not a number; list the column in sparse= if it "
                             f"is categorical, or pass na_values=[{v!r}] if that marks a missing value") from None  # fmt: skip

    return torch.tensor(_per_value(values, parse), dtype=torch.float64)


def _dense(x: Tensor, name: str, transform: str, where: str, stats: tuple[float, float] | None = None,
           train: Tensor | None = None) -> tuple[Tensor, tuple[float, float]]:  # fmt: skip
    """The transformed column (missing values 0) and its ``(shift, scale)``: the training rows' mean and
    deviation for ``"standardize"`` (or the given ``stats``), ``(0, 1)`` otherwise."""
    known = ~torch.isnan(x)
    if transform == "log1p":
        if bool((x[known] < 0).any()):
            raise ValueError(f"{where}: dense column {name!r} has negative values; dense_transform='log1p' needs "
                             "counts >= 0 ('signed_log1p' takes any sign, 'standardize' too)")  # fmt: skip
        x = torch.log1p(x)
    elif transform == "signed_log1p":  # sign(x) * log(1 + |x|): log1p for counts, odd for the rare negative value
        x = torch.sign(x) * torch.log1p(x.abs())
    if stats is None:
        seen = x[train][known[train]] if transform == "standardize" else x[:0]
        stats = (float(seen.mean()), float(seen.std()) or 1.0) if seen.numel() > 1 else (0.0, 1.0)
    return torch.where(known, (x - stats[0]) / stats[1], 0.0).float(), stats


def _label(y: Tensor, name: str, thresholds: Mapping[str, float], where: str) -> Tensor:
    if bool(torch.isnan(y).any()):
        raise ValueError(f"{where}: label column {name!r} has missing values; every row needs its label")
    if name in thresholds:
        return (y >= thresholds[name]).float()
    if not bool(((y == 0) | (y == 1)).all()):
        bad = y[(y != 0) & (y != 1)][:3].tolist()
        raise ValueError(f"{where}: label column {name!r} holds values other than 0 / 1 (e.g. {bad}); pass "
                         f"label_threshold={{{name!r}: t}} to use value >= t as the label")  # fmt: skip
    return y.float()


class TabularDataModule(RandomSplitDataModule):
    """Rows of a CSV / TSV file (``path``) or in-memory ``columns`` as :class:`RecsysBatch` es (see the module
    docstring).

    Args:
        path: a CSV file (``.tsv`` / ``.tab``: tab-separated; ``.gz`` after either: gzip-compressed) with a
            header row; or ``columns``: a mapping ``name -> values`` (lists, numpy arrays, tensors; a pandas
            DataFrame works as is).
        sparse: categorical columns (embedding tables), in the batch's feature order.
        dense: number columns; ``dense_transform``: ``"standardize"`` (default), ``"log1p"`` (counts),
            ``"signed_log1p"`` (``sign(x) * log1p(|x|)``: counts that may hold a negative value, as Criteo's) or
            ``"none"``.
        labels: task columns (0 / 1, or see ``label_threshold``: one threshold for all or one per column).
        multi_hot: ``{column: separator}`` for sparse columns holding several values per row.
        min_count: values seen fewer times read id 0 with the missing ones.
        na_values: more cells that mark a missing value (``""``, ``"nan"``, ``"NA"``, ``"null"``, ``"None"`` do).
        delimiter: the file's field separator when not given by its extension; one longer than a character
            (MovieLens-1M's ``"::"``) splits each line without CSV quoting.
        column_names: the columns' names for a file without a header row (Criteo's ``label, I1..I13,
            C1..C26``); its first row is then data.
        encoding: the file's text encoding (``"latin-1"`` for many older datasets).
        content: ``{feature: [columns]}``: the sparse / dense columns that describe a single-valued sparse
            feature's values (an item's genres and year), for :meth:`content_vectors` (Semantic IDs).
        batch_size, split_fractions, seed, shuffle, num_workers: as in
            :class:`~lightning_recsys.data.MovieLens100KDataModule`.
    """

    rows_name = "rows"

    def __init__(
        self,
        path: str | None = None,
        *,
        columns: Mapping[str, Any] | None = None,
        sparse: Sequence[str] = (),
        dense: Sequence[str] = (),
        labels: Sequence[str] | str = (),
        multi_hot: Mapping[str, str] | None = None,
        label_threshold: float | Mapping[str, float] | None = None,
        dense_transform: str = "standardize",
        min_count: int = 1,
        na_values: Sequence[str] = (),
        delimiter: str | None = None,
        column_names: Sequence[str] | None = None,
        encoding: str = "utf-8",
        content: Mapping[str, Sequence[str]] | None = None,
        batch_size: int = 1024,
        split_fractions: Sequence[float] = (0.8, 0.1, 0.1),
        seed: int = 0,
        shuffle: bool = True,
        num_workers: int = 0,
    ) -> None:
        if (path is None) == (columns is None):
            raise ValueError("pass exactly one of path= (a CSV / TSV file) and columns= (a mapping name -> values)")
        super().__init__(None, False, batch_size, split_fractions, seed, shuffle, num_workers)
        self.save_hyperparameters(ignore=["columns"])  # what rebuilds it (lrs quantize reads them from a checkpoint)
        self.remove_ignored_hparams(["data_dir", "download"])  # the base class's, not arguments here
        labels = [labels] if isinstance(labels, str) else list(labels)
        multi_hot = dict(multi_hot or {})
        if not sparse and not dense:
            raise ValueError("name the model's inputs: sparse= (categorical columns) and / or dense= (number columns)")
        if not labels:
            raise ValueError("labels= must name at least one label column (one task each)")
        if dense_transform not in DENSE_TRANSFORMS:
            raise ValueError(f"dense_transform must be one of {DENSE_TRANSFORMS}, got {dense_transform!r}")
        if not isinstance(min_count, int) or min_count < 1:
            raise ValueError(f"min_count must be an integer >= 1, got {min_count!r}")
        stray = sorted(set(multi_hot) - set(sparse))
        if stray:
            raise ValueError(f"multi_hot names {stray}, which are not in sparse={list(sparse)}")
        if isinstance(label_threshold, Mapping):
            thresholds = {str(k): float(v) for k, v in label_threshold.items()}
            if set(thresholds) - set(labels):
                raise ValueError(f"label_threshold names {sorted(set(thresholds) - set(labels))}, which are not in "
                                 f"labels={labels}")  # fmt: skip
        else:
            thresholds = {t: float(label_threshold) for t in labels} if label_threshold is not None else {}
        self.path = None if path is None else Path(path).expanduser()
        self._columns = columns
        self.delimiter, self.encoding = delimiter, encoding
        self.column_names = None if column_names is None else [str(c) for c in column_names]
        if self.column_names is not None:
            if path is None:
                raise ValueError("column_names= names the columns of a file without a header row; "
                                 "columns= are named already")
            if len(set(self.column_names)) != len(self.column_names):
                raise ValueError(f"column_names holds a name twice: {self.column_names}")
        self._opts = {"sparse": list(sparse), "dense": list(dense), "labels": labels, "multi_hot": multi_hot,
                      "label_threshold": thresholds, "dense_transform": dense_transform, "min_count": min_count,
                      "na": MISSING | {str(v) for v in na_values}}  # fmt: skip
        used = [*sparse, *dense, *labels]
        if len(set(used)) != len(used):
            raise ValueError(f"a column is used twice among sparse / dense / labels: {used}")
        self.content = {str(f): [str(c) for c in cs] for f, cs in (content or {}).items()}
        for feature, described in self.content.items():
            if feature not in sparse or feature in multi_hot:
                raise ValueError(f"content names {feature!r}, which is not a single-valued column of sparse={list(sparse)}")
            stray = [c for c in described if c not in (*sparse, *dense) or c == feature]
            if stray or not described:
                raise ValueError(f"content[{feature!r}] must list other columns of sparse= / dense= that describe it; "
                                 f"got {described}")  # fmt: skip
        self._content: dict[str, Tensor] = {}
        self._saved: dict[str, Any] | None = None  # the encoder state of a checkpoint (load_state_dict)

    def state_dict(self) -> dict[str, Any]:
        """The training vocabularies (``{feature: {value: id}}``) and dense ``(shift, scale)``: saved in every
        checkpoint, so ``TabularDataModule.load_from_checkpoint(path).encode(...)`` serves new rows
        without the file, and a resumed run stops if the file now gives other ids."""
        tables = self._load()
        return {"vocabularies": tables.vocabularies, "dense_stats": {k: list(v) for k, v in tables.dense_stats.items()}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if set(state_dict) != {"vocabularies", "dense_stats"}:
            raise ValueError(f"TabularDataModule state must hold 'vocabularies' and 'dense_stats', got {sorted(state_dict)}")
        self._saved = {"vocabularies": state_dict["vocabularies"],
                       "dense_stats": {k: tuple(v) for k, v in state_dict["dense_stats"].items()}}  # fmt: skip
        if self._tables is not None:
            self._check_saved(self._tables)

    def _check_saved(self, tables: _Tables) -> None:
        changed = [f for f in tables.vocabularies if tables.vocabularies[f] != self._saved["vocabularies"].get(f)]
        changed += [f for f in tables.dense_stats if tables.dense_stats[f] != self._saved["dense_stats"].get(f)]
        if changed:
            raise ValueError(f"{self.path or 'columns='} gives other ids or statistics than the checkpoint for {changed}: "
                             "the data changed since it was written, and the model's rows would be misread; restore "
                             "the data it was trained on (or start a new run)")  # fmt: skip

    def encode(self, columns: Mapping[str, Any]) -> RecsysBatch:
        """New raw rows (``{column: values}``, as ``columns=``) as a :class:`RecsysBatch` with the training ids and
        statistics: what a server does with requests. Values the training rows did not hold read id 0;
        label columns are read when present.

        Example:
            >>> dm = TabularDataModule.load_from_checkpoint("last.ckpt")  # doctest: +SKIP
            >>> batch = dm.encode({"user": ["u7"], "item": ["i3"], "genres": ["Drama"], "price": [12.5]})  # doctest: +SKIP
        """
        enc = self._saved if self._saved is not None else self.state_dict()
        opts = self._opts
        cols = {k: _as_list(v) for k, v in columns.items()}
        missing = [c for c in (*opts["sparse"], *opts["dense"]) if c not in cols]
        if missing:
            raise ValueError(f"encode: no column {missing}; the model reads {[*opts['sparse'], *opts['dense']]}")
        lengths = {len(v) for v in cols.values()}
        if len(lengths) != 1:
            raise ValueError(f"encode: the columns have different lengths {sorted(lengths)}")
        n = lengths.pop()
        single = torch.arange(n + 1)
        sparse = {}
        for name in opts["sparse"]:
            sep = opts["multi_hot"].get(name)
            cells = _per_value(cols[name], lambda v, sep=sep: _cell_values(v, sep, opts["na"]))
            ids = _ids(cells, enc["vocabularies"][name], multi=sep is not None)
            sparse[name] = SparseFeature(*ids) if sep is not None else SparseFeature(ids, single)
        dense = [_dense(_numbers(c, cols[c], "encode", opts["na"]), c, opts["dense_transform"], "encode",
                        stats=tuple(enc["dense_stats"][c]))[0] for c in opts["dense"]]  # fmt: skip
        labels = {t: _label(_numbers(t, cols[t], "encode", opts["na"]), t, opts["label_threshold"], "encode")
                  for t in opts["labels"] if t in cols}  # fmt: skip
        return RecsysBatch(torch.stack(dense, 1) if dense else torch.zeros(n, 0), sparse, labels)

    def content_vectors(self, feature: str) -> Tensor:
        """``[cardinality, C]`` content vector per id of ``feature`` from its ``content=`` columns (what
        ``RecsysModule(arch="semantic_id")`` fits its codes on)."""
        if feature not in self.content:
            raise ValueError(f"no content for {feature!r}: name the columns that describe it, "
                             f"content={{{feature!r}: ['genres', ...]}}")  # fmt: skip
        if feature not in self._content:
            self._content[feature] = self._load().content(feature, self.content[feature])
        return self._content[feature]

    def _locate(self) -> Path | None:
        if self.path is not None and not self.path.is_file():
            raise FileNotFoundError(f"no file at {self.path}")
        return self.path

    def _load(self) -> _Tables:
        if self._tables is None:
            path = self._locate()
            where = str(path) if path is not None else "columns="
            if path is not None:
                cols = _read_csv(path, self.delimiter, self.column_names, self.encoding)
            else:
                cols = {k: _as_list(v) for k, v in self._columns.items()}
            needed = [*self._opts["sparse"], *self._opts["dense"], *self._opts["labels"]]
            missing = [c for c in needed if c not in cols]
            if missing:
                raise ValueError(f"{where} has no column {missing}; its columns are {list(cols)}")
            lengths = {len(cols[c]) for c in needed}
            if len(lengths) > 1:
                raise ValueError(f"{where}: the columns have different lengths {sorted(lengths)}")
            if not lengths or not next(iter(lengths)):
                raise ValueError(f"{where} holds no rows")
            train = self.split_rows(next(iter(lengths)))[0]  # ids and dense statistics from the training rows only
            tables = _Tables({c: cols[c] for c in needed}, self._opts, where, train)
            if self._saved is not None:
                self._check_saved(tables)
            self._tables = tables
        return self._tables
