import pytest
import torch

from lightning_recsys.data import CRITEO_KAGGLE_CARDINALITIES, SyntheticCTRDataModule


def _dm(**kw):
    args = dict(num_train=2048, num_val=512, num_test=512, batch_size=256, max_rows=1000, seed=3)
    args.update(kw)
    return SyntheticCTRDataModule(**args)


def _same(a, b):
    return (
        torch.equal(a.dense, b.dense)
        and all(torch.equal(a.sparse[k].values, b.sparse[k].values) for k in a.sparse)
        and all(torch.equal(a.labels[k], b.labels[k]) for k in a.labels)
    )


def test_deterministic_from_seed():
    a, b, c = _dm(), _dm(), _dm(seed=4)
    assert _same(a.make_batch("train", 3)[0], b.make_batch("train", 3)[0])
    assert not _same(a.make_batch("train", 3)[0], c.make_batch("train", 3)[0])
    assert not _same(a.make_batch("train", 0)[0], a.make_batch("val", 0)[0])
    first = next(iter(a.train_dataloader()))
    assert _same(first, next(iter(a.train_dataloader())))


def test_shapes_spec_and_validation():
    dm = _dm()
    spec = dm.feature_spec
    assert spec.num_dense == 13 and len(spec.cardinalities) == 26 and spec.tasks == ["click", "conversion"]
    assert list(spec.cardinalities.values()) == [min(c, 1000) for c in CRITEO_KAGGLE_CARDINALITIES]
    batches = list(dm.train_dataloader())
    assert len(batches) == 8 and batches[0].batch_size == 256
    for b in batches:
        b.validate(spec)


def test_zipf_ids_and_base_rates():
    dm = _dm(num_train=20480, batch_size=2048)
    ids = torch.cat([dm.make_batch("train", i)[0].sparse["C3"].values for i in range(10)])
    counts = torch.bincount(ids, minlength=1000).sort(descending=True).values.float()
    # heavy head: the 10 most frequent ids of 1000 take a large share of the traffic
    assert counts[:10].sum() / counts.sum() > 0.3
    labels = torch.cat([dm.make_batch("train", i)[0].labels["conversion"] for i in range(10)])
    clicks = torch.cat([dm.make_batch("train", i)[0].labels["click"] for i in range(10)])
    assert 0.005 < labels.mean() < 0.1 < clicks.mean() < 0.5


def test_bayes_auc_is_reported_and_beats_chance():
    auc = _dm(num_test=4096, batch_size=1024).bayes_auc("test")
    assert set(auc) == {"click", "conversion"}
    assert 0.7 < auc["click"] < 0.95


def test_multi_hot_bags():
    b = _dm(max_bag_size=3).make_batch("val", 0)[0]
    lengths = b.sparse["C1"].lengths
    assert lengths.min() >= 1 and lengths.max() <= 3 and lengths.max() > 1


def test_last_batch_partial_and_index_errors():
    dm = _dm(num_val=600, batch_size=256)
    sizes = [b.batch_size for b in dm.val_dataloader()]
    assert sizes == [256, 256, 88]
    with pytest.raises(IndexError, match="out of range"):
        dm.make_batch("val", 3)


@pytest.mark.parametrize(
    "kw, msg",
    [
        (dict(batch_size=0), "batch_size must be an integer >= 1"),
        (dict(num_sparse=30), "num_sparse must be an integer <= 26"),
        (dict(base_rates=(0.2,)), "one rate per task"),
        (dict(base_rates=(0.2, 1.5)), r"base_rates\[1\] must be a number in \(0, 1\), got 1.5"),
        (dict(zipf_alpha=0), "zipf_alpha must be a number > 0"),
    ],
)
def test_bad_arguments(kw, msg):
    with pytest.raises(ValueError, match=msg):
        _dm(**kw)
