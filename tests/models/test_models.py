import lightning.pytorch as pl
import pytest
import torch
from torch import nn

from lightning_recsys.data import FeatureSpec, RecsysBatch, SparseFeature, SyntheticCTRDataModule
from lightning_recsys.models import DLRM, DotInteraction, MultiTaskDLRM, RecsysModule


def _trainer(**kw):
    args = dict(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    args.update(kw)
    return pl.Trainer(**args)


@pytest.fixture(scope="module")
def dm():
    return SyntheticCTRDataModule(num_train=131072, num_val=8192, num_test=8192, batch_size=1024, max_rows=300, seed=1)


def test_dot_interaction_matches_loop():
    inter = DotInteraction(3)
    d, e = torch.randn(2, 4), torch.randn(2, 2, 4)
    out = inter(d, e)
    t = torch.cat([d[:, None], e], 1)
    pairs = [(t[:, i] * t[:, j]).sum(-1) for i in range(3) for j in range(i)]
    assert torch.allclose(out, torch.cat([d, torch.stack(pairs, 1)], 1))


def test_shapes_and_multihot(dm):
    spec = FeatureSpec(2, {"a": 5, "b": 7}, ["click", "buy"])
    batch = RecsysBatch(
        torch.randn(3, 2),
        {"a": SparseFeature.from_lists([[0, 1], [], [4]]), "b": SparseFeature.single_hot(torch.tensor([6, 0, 3]))},
    )
    assert DLRM.from_spec(spec, embedding_dim=4).forward(batch).shape == (3, 2)
    mt = MultiTaskDLRM.from_spec(spec, embedding_dim=4)
    assert mt(batch).shape == (3, 2)
    assert mt.shared(batch).shape == (3, mt.shared.out_features)
    with pytest.raises(KeyError, match="no sparse feature 'b'"):
        DLRM.from_spec(spec)(RecsysBatch(batch.dense, {"a": batch.sparse["a"]}))


@pytest.mark.timeout(180)
@pytest.mark.parametrize("arch", ["dlrm", "multitask"])
def test_learns_planted_signal(dm, arch):
    torch.manual_seed(0)
    module = RecsysModule(feature_spec=dm.feature_spec, arch=arch, embedding_dim=8)
    trainer = _trainer(max_epochs=1)
    trainer.fit(module, dm)
    res = trainer.test(module, dm, verbose=False)[0]
    assert res["test_auc"] > 0.66, res  # chance is 0.5; the planted model reaches ~0.8
    assert res["test_ne"] < 0.99
    assert set(res) >= {"test_auc_click", "test_auc_conversion", "test_ne_click", "test_ne_conversion", "test_loss"}


@pytest.mark.timeout(120)
def test_checkpoint_roundtrip_identical_predictions(dm, tmp_path):
    module = RecsysModule(feature_spec=dm.feature_spec, arch="multitask", embedding_dim=8, task_weights={"conversion": 2.0})
    trainer = _trainer(max_steps=5, limit_val_batches=2)
    trainer.fit(module, dm)
    path = tmp_path / "m.ckpt"
    trainer.save_checkpoint(path)
    loaded = RecsysModule.load_from_checkpoint(path, weights_only=True)
    assert loaded.hparams["arch"] == "multitask" and loaded.task_weights["conversion"] == 2.0
    batch = dm.make_batch("test", 0)[0]
    module.eval(), loaded.eval()
    with torch.no_grad():
        assert torch.equal(module(batch), loaded(batch))


class _UserModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.EmbeddingBag(500, 4, mode="sum")
        self.lin = nn.Linear(4 + 13, 2)

    def forward(self, batch):
        f = batch.sparse["C1"]
        return self.lin(torch.cat([self.emb(f.values, f.offsets[:-1]), batch.dense], 1))


def test_user_model_and_validate_batches(dm):
    module = RecsysModule(model=_UserModel(), feature_spec=dm.feature_spec, validate_batches=True)
    _trainer(max_steps=3, limit_val_batches=1).fit(module, dm)


def test_bad_arguments(dm):
    with pytest.raises(ValueError, match="pass either model= or feature_spec="):
        RecsysModule()
    with pytest.raises(ValueError, match="arch must be 'dlrm' or 'multitask'"):
        RecsysModule(feature_spec=dm.feature_spec, arch="wide")
    with pytest.raises(ValueError, match=r"task_weights names unknown tasks \['ctr'\]"):
        RecsysModule(feature_spec=dm.feature_spec, task_weights={"ctr": 1.0})
    module = RecsysModule(model=_UserModel(), tasks=["a", "b", "c"])
    with pytest.raises(ValueError, match=r"expected \[batch, 3\]"):
        module.training_step(dm.make_batch("train", 0)[0], 0)
