import pytest
import torch

from lightning_recsys.data import FeatureSpec, RecsysBatch, SparseFeature, collate_samples


def _batch(**over):
    b = dict(
        dense=torch.zeros(3, 2),
        sparse={"item": SparseFeature.from_lists([[1], [2, 3], []]), "user": SparseFeature.single_hot(torch.tensor([0, 1, 2]))},
        labels={"click": torch.tensor([0.0, 1.0, 0.0])},
    )
    b.update(over)
    return RecsysBatch(**b)


def test_valid_batch_and_layout():
    b = _batch().validate({"item": 4, "user": 3})
    assert b.batch_size == 3
    assert b.sparse["item"].offsets.tolist() == [0, 1, 3, 3]
    assert b.sparse["item"].lengths.tolist() == [1, 2, 0]
    assert b.sparse["user"].offsets.tolist() == [0, 1, 2, 3]


def test_embedding_bag_consumes_feature():
    f = SparseFeature.from_lists([[1], [2, 3], []])
    bag = torch.nn.EmbeddingBag(4, 2, mode="sum")
    out = bag(f.values, f.offsets[:-1])
    assert torch.allclose(out[1], bag.weight[2] + bag.weight[3])
    assert torch.equal(out[2], torch.zeros(2))


def test_id_out_of_range_names_feature_and_id():
    with pytest.raises(ValueError, match=r"'item'.*id 3 is out of range.*3 rows"):
        _batch().validate({"item": 3, "user": 3})


def test_negative_id():
    b = _batch(sparse={"item": SparseFeature.from_lists([[1], [-2], [0]])})
    with pytest.raises(ValueError, match=r"'item'.*id -2 is negative"):
        b.validate()


def test_wrong_dtypes():
    f = SparseFeature(torch.tensor([1.0, 2.0, 3.0]), torch.arange(4))
    with pytest.raises(TypeError, match=r"'item'.*int64 or int32"):
        _batch(sparse={"item": f}).validate()
    with pytest.raises(TypeError, match="dense features must be a floating-point"):
        _batch(dense=torch.zeros(3, 2, dtype=torch.long)).validate()
    with pytest.raises(TypeError, match="labels of task 'click'"):
        _batch(labels={"click": torch.tensor([0, 1, 0])}).validate()


def test_mismatched_lengths():
    with pytest.raises(ValueError, match=r"'item' has 2 bags but the batch has 3 rows"):
        _batch(sparse={"item": SparseFeature.from_lists([[1], [2]])}).validate()
    with pytest.raises(ValueError, match="offsets end at 2 but there are 3 values"):
        _batch(sparse={"item": SparseFeature(torch.tensor([1, 2, 3]), torch.tensor([0, 1, 1, 2]))}).validate()
    with pytest.raises(ValueError, match=r"labels of task 'click' must have shape \(3,\)"):
        _batch(labels={"click": torch.zeros(2)}).validate()


def test_nan_dense():
    d = torch.zeros(3, 2)
    d[1, 0] = float("nan")
    with pytest.raises(ValueError, match=r"NaN \(first bad rows: \[1\]\)"):
        _batch(dense=d).validate()


def test_spec_checks():
    spec = FeatureSpec(num_dense=2, cardinalities={"item": 4, "user": 3, "ad": 5}, tasks=["click"])
    with pytest.raises(ValueError, match=r"lacks sparse features \['ad'\]"):
        _batch().validate(spec)
    with pytest.raises(ValueError, match="expected 4 dense features"):
        _batch().validate(FeatureSpec(4, {"item": 4, "user": 3}))
    with pytest.raises(ValueError, match="cardinality of sparse feature 'x' must be >= 1"):
        FeatureSpec(1, {"x": 0})


def test_weights_validated():
    f = SparseFeature(torch.tensor([1, 2]), torch.tensor([0, 1, 2, 2]), weights=torch.ones(3))
    with pytest.raises(ValueError, match="weights shape"):
        _batch(sparse={"item": f}).validate()


def test_collate_and_to():
    samples = [
        (torch.tensor([1.0, 2.0]), {"g": torch.tensor([1, 2])}, {"like": 1}),
        (torch.tensor([0.0, 1.0]), {"g": torch.tensor([], dtype=torch.long)}, {"like": 0}),
    ]
    b = collate_samples(samples)
    assert b.sparse["g"].offsets.tolist() == [0, 2, 2]
    assert b.labels["like"].tolist() == [1.0, 0.0]
    moved = b.to(torch.float64)
    assert moved.dense.dtype == torch.float64
    assert moved.sparse["g"].values.dtype == torch.int64  # ids are not cast by a dtype move
