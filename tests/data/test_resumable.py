"""Mid-epoch resume: a run resumed from a checkpoint saved in the middle of an epoch ends with the
same weights as the run that never stopped (real Trainers, real checkpoints)."""

import pytest
import torch
import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import TensorDataset

from lightning_recsys.data import SyntheticCTRDataModule
from lightning_recsys.data.resumable import ResumableDataLoader
from lightning_recsys.models import RecsysModule

from .test_movielens import write_grouplens


def _module(dm) -> RecsysModule:
    torch.manual_seed(0)
    return RecsysModule(feature_spec=dm.feature_spec, embedding_dim=4, bottom_mlp=(8,), top_mlp=(8,))


def _trainer(tmp_path, **kw) -> pl.Trainer:
    return pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
                      num_sanity_val_steps=0, limit_val_batches=0, default_root_dir=tmp_path, **kw)  # fmt: skip


def _mid_epoch_resume_matches(dm_factory, tmp_path, steps_per_epoch: int) -> None:
    straight = _module(dm_factory())
    _trainer(tmp_path / "a", max_epochs=2, enable_checkpointing=False).fit(straight, dm_factory())
    # the interrupted run: a checkpoint in the middle of the first epoch, then a stop
    stop_at = steps_per_epoch // 2 + 1
    ckpt_cb = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=stop_at, save_top_k=-1)
    first = _module(dm_factory())
    _trainer(tmp_path / "b", max_steps=stop_at, callbacks=[ckpt_cb]).fit(first, dm_factory())
    (ckpt,) = list((tmp_path / "ckpt").glob("*.ckpt"))
    assert torch.load(ckpt, weights_only=True)["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [{"batches_taken": stop_at}]
    resumed = _module(dm_factory())
    _trainer(tmp_path / "c", max_epochs=2, enable_checkpointing=False).fit(resumed, dm_factory(), ckpt_path=ckpt)
    assert resumed.trainer.global_step == 2 * steps_per_epoch
    for (k, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), f"{k} differs after a mid-epoch resume"


@pytest.mark.timeout(180)
def test_synthetic_mid_epoch_resume_is_exact(tmp_path):
    _mid_epoch_resume_matches(
        lambda: SyntheticCTRDataModule(num_train=7 * 64, num_val=64, num_test=64, batch_size=64, max_rows=50, num_sparse=3),
        tmp_path, steps_per_epoch=7,
    )  # fmt: skip


@pytest.mark.timeout(180)
def test_movielens_mid_epoch_resume_is_exact(tmp_path):
    from lightning_recsys.data import MovieLens100KDataModule

    data_dir = str(write_grouplens(tmp_path / "d"))
    _mid_epoch_resume_matches(lambda: MovieLens100KDataModule(data_dir=data_dir, batch_size=4, seed=4), tmp_path, steps_per_epoch=4)


def test_loader_state_validation():
    loader = ResumableDataLoader(TensorDataset(torch.arange(4)), batch_size=2)
    assert loader.state_dict() == {"batches_taken": 0}  # no trainer attached
    with pytest.raises(ValueError, match="exactly 'batches_taken'"):
        loader.load_state_dict({"index": 1})
    with pytest.raises(ValueError, match="integer >= 0"):
        loader.load_state_dict({"batches_taken": -1})
    loader.load_state_dict({"batches_taken": 2})  # saved after the epoch's last batch: the next epoch is whole
    assert [b[0].tolist() for b in loader] == [[0, 1], [2, 3]]
