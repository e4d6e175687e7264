"""ModelContract on models written the usual way: tuple batches, dict batches, RecsysBatch."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_recsys.data import ModelContract, SyntheticCTRDataModule
from lightning_recsys.models import RecsysModule
from lightning_recsys.quant import Int8LinearConfig, RecipeConfig, calibrate, quantize_, sensitivity_analysis


class BagDLRM(nn.Module):
    """``forward(dense, ids, offsets)``: one EmbeddingBag (mean) over 1-D ids with offsets, two task heads."""

    def __init__(self) -> None:
        super().__init__()
        self.bag = nn.EmbeddingBag(50, 8, mode="mean")
        self.mlp = nn.Sequential(nn.Linear(11, 16), nn.ReLU())
        self.heads = nn.ModuleDict({"click": nn.Linear(16, 1), "buy": nn.Linear(16, 1)})

    def forward(self, dense: torch.Tensor, ids: torch.Tensor, offsets: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.mlp(torch.cat([dense, self.bag(ids, offsets)], 1))
        return {t: head(h)[:, 0] for t, head in self.heads.items()}


def tuple_batches(n: int, seed: int = 0, b: int = 64) -> list[tuple]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        lengths = torch.randint(0, 4, (b,), generator=g)
        offsets = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)[:-1]])
        ids = torch.randint(0, 50, (int(lengths.sum()),), generator=g)
        dense = torch.randn(b, 3, generator=g)
        out.append((dense, ids, offsets, torch.randint(0, 2, (b, 2), generator=g).float()))
    return out


def test_tuple_batch_calls_with_the_inputs_and_reads_the_last_item_as_labels():
    model, batch = BagDLRM(), tuple_batches(1)[0]
    contract = ModelContract.infer(model, batch)
    logits = contract.logits(model, batch)
    assert contract.tasks == ("click", "buy")  # the keys of its dict output
    assert logits.shape == (64, 2) and contract.labels(batch).shape == (64, 2)
    assert torch.equal(logits[:, 1], model(*batch[:3])["buy"].detach())  # dict outputs stacked in task order
    assert contract.inputs(batch)[0][0] is batch[0]


def test_dict_batch_features_and_label_key():
    class DictModel(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(3, 1)

        def forward(self, features: dict) -> torch.Tensor:
            return self.lin(features["x"])[:, 0]

    model = DictModel()
    batch = {"x": torch.randn(8, 3), "label": torch.ones(8)}
    contract = ModelContract.infer(model, batch)
    assert contract.tasks == ("task0",) and contract.logits(model, batch).shape == (8, 1)
    other = {"x": torch.randn(8, 3), "clicked": torch.ones(8)}
    assert ModelContract.infer(model, other, label_key="clicked").labels(other).shape == (8, 1)
    with pytest.raises(ValueError, match="cannot find the labels in a dict batch.*label_key="):
        ModelContract.infer(model, other).labels(other)


def test_recsys_module_and_errors_name_the_option():
    dm = SyntheticCTRDataModule(num_train=256, num_val=256, num_test=256, batch_size=64, max_rows=50, num_sparse=3)
    module = RecsysModule(feature_spec=dm.feature_spec, embedding_dim=4)
    batch = dm.make_batch("val", 0)[0]
    contract = ModelContract.infer(module, batch)
    assert contract.tasks == ("click", "conversion") and contract.logits(module, batch).shape == (64, 2)
    with pytest.raises(ValueError, match="in any usual form.*forward_fn="):
        ModelContract.infer(nn.Linear(7, 1), tuple_batches(1)[0])
    assert ModelContract.infer(module, batch, forward_fn="forward").tasks == ("click", "conversion")
    with pytest.raises(ValueError, match="has no such method"):
        ModelContract.infer(module, batch, forward_fn="score").logits(module, batch)


def test_calibration_and_sensitivity_run_on_a_tuple_batch_model():
    model, batches = BagDLRM(), tuple_batches(6)
    res = sensitivity_analysis(model, batches[:2], batches[2:], eval_batches=4, table_precisions=["int8", "fp32"])
    assert res.tasks == ["click", "buy"] and {m.name for m in res.modules} >= {"bag", "mlp.0"}
    quantize_(model, RecipeConfig(linears=Int8LinearConfig(activation="static")))
    info = calibrate(model, batches, num_batches=3)
    assert info and all(v["num_batches"] == 3 for v in info.values())
