"""The optimizers inside real Lightning Trainers: fit, resume-from-checkpoint exactness, LightningCLI YAML."""

from functools import partial
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from torch import nn

from lightning_recsys.cli import RecsysCLI
from lightning_recsys.data import SyntheticCTRDataModule
from lightning_recsys.models import RecsysModule
from lightning_recsys.optim import CounterSGD, MLorcAdamW, MLorcLion, Muon, module_parameters

MUON_YAML = Path(__file__).resolve().parents[2] / "examples" / "configs" / "muon.yaml"

OPTIMIZERS = {
    "mlorc_adamw": partial(MLorcAdamW, lr=3e-3, rank=2),
    "mlorc_lion": partial(MLorcLion, lr=3e-4, rank=2),
    "muon": partial(Muon, lr=0.02, adamw_lr=3e-3),
    "counter_sgd": partial(CounterSGD, lr=0.1, dense_lr=0.05, half_life=100.0),
}


def _dm() -> SyntheticCTRDataModule:
    return SyntheticCTRDataModule(num_train=128, num_val=64, num_test=64, batch_size=64, max_rows=40, num_sparse=4, num_dense=4)


def _module(dm: SyntheticCTRDataModule, factory) -> RecsysModule:
    torch.manual_seed(0)
    return RecsysModule(feature_spec=dm.feature_spec, embedding_dim=4, bottom_mlp=(8,), top_mlp=(8,), optimizer=factory)


def _trainer(**kw) -> pl.Trainer:
    return pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0, **kw)  # fmt: skip


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_fit_and_resume_from_checkpoint_is_exact(name, tmp_path):
    dm = _dm()
    straight = _module(dm, OPTIMIZERS[name])
    start = {k: v.clone() for k, v in straight.state_dict().items()}
    _trainer(max_epochs=2).fit(straight, dm)  # 4 steps
    opt = straight.trainer.optimizers[0]
    assert isinstance(opt, OPTIMIZERS[name].func)
    emb = straight.model.embeddings.tables["C1"].weight
    group_of_emb = next(g for g in opt.param_groups if any(p is emb for p in g["params"]))
    assert group_of_emb.get("use_muon", False) is False and group_of_emb.get("mlorc", False) is False
    assert group_of_emb.get("counter", True) is True  # embedding tables get counters / dense state / AdamW
    moved = [k for k, v in straight.state_dict().items() if not torch.equal(v, start[k])]
    assert any("tables" in k for k in moved) and any("top_mlp" in k for k in moved)

    half = _module(dm, OPTIMIZERS[name])
    first = _trainer(max_epochs=1)
    first.fit(half, dm)
    ckpt = tmp_path / "half.ckpt"
    first.save_checkpoint(ckpt)
    resumed = _module(dm, OPTIMIZERS[name])
    _trainer(max_epochs=2).fit(resumed, dm, ckpt_path=ckpt)
    for (k, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), f"{name}: {k} differs after resume"


class PlainRec(pl.LightningModule):
    """A LightningModule written only with nn.Embedding / nn.EmbeddingBag / nn.Linear."""

    def __init__(self, optimizer: str) -> None:
        super().__init__()
        self.optimizer_name = optimizer
        sparse = optimizer == "counter_sgd"
        self.user = nn.Embedding(30, 8, sparse=sparse)
        self.items = nn.EmbeddingBag(40, 8, sparse=sparse)
        self.mlp = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 1))

    def training_step(self, batch, batch_idx):
        u, items, y = batch
        h = torch.cat([self.user(u), self.items(items)], 1)
        loss = nn.functional.binary_cross_entropy_with_logits(self.mlp(h).squeeze(1), y)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):
        return OPTIMIZERS[self.optimizer_name](module_parameters(self))


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_plain_lightning_module_trains(name):
    torch.manual_seed(0)
    u, items = torch.randint(0, 30, (256,)), torch.randint(0, 40, (256, 3))
    y = ((u % 2) == (items[:, 0] % 2)).float()
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(u, items, y), batch_size=64)
    model = PlainRec(name)
    trainer = _trainer(max_epochs=3)
    losses = []

    class Record(pl.Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            losses.append(float(trainer.callback_metrics["train_loss"]))

    trainer.callbacks.append(Record())
    trainer.fit(model, data)
    assert losses[-1] < losses[0]


@pytest.mark.timeout(120)
def test_muon_recipe_from_lightning_cli_yaml(tmp_path):
    small = ["--data.init_args.num_train=256", "--data.init_args.num_val=128", "--data.init_args.num_test=128",
             "--data.init_args.batch_size=64", "--data.init_args.max_rows=50", "--data.init_args.num_sparse=4",
             "--model.embedding_dim=4", "--model.bottom_mlp=[8]", "--model.top_mlp=[8]",
             "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
             "--trainer.limit_val_batches=0", "--trainer.num_sanity_val_steps=0",
             f"--trainer.default_root_dir={tmp_path}"]  # fmt: skip
    # the `lrs` command's LightningCLI (it links data.feature_spec -> model.feature_spec)
    cli = RecsysCLI(RecsysModule, pl.LightningDataModule, subclass_mode_data=True, run=False,
                    save_config_callback=None, args=["--config", str(MUON_YAML), *small])  # fmt: skip
    cli.trainer.fit(cli.model, cli.datamodule)
    opt = cli.trainer.optimizers[0]
    assert isinstance(opt, Muon)
    routes = {id(p): g["use_muon"] for g in opt.param_groups for p in g["params"]}
    model = cli.model.model
    assert all(routes[id(t.weight)] is False for t in model.embeddings.tables.values())
    assert routes[id(model.backbone.bottom_mlp[0].weight)] is True
    assert routes[id(model.top_mlp[-1].weight)] is False  # the output layer stays on AdamW
    assert opt.param_groups[0]["lr"] == 0.02 and opt.param_groups[1]["lr"] == 0.003
    assert len(routes) == len(list(cli.model.parameters()))
