import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lightning_recsys.cli import RecsysCLI, main
from lightning_recsys.models import RecsysModule

TINY = """
trainer:
  max_steps: 3
  accelerator: cpu
  logger: false
  enable_progress_bar: false
  enable_model_summary: false
  default_root_dir: {root}
model:
  embedding_dim: 8
  arch: multitask
  optimizer:
    class_path: torch.optim.Adagrad
    init_args:
      lr: 0.02
data:
  class_path: lightning_recsys.data.SyntheticCTRDataModule
  init_args:
    num_train: 1024
    num_val: 256
    num_test: 256
    batch_size: 256
    max_rows: 100
"""


def test_cli_links_feature_spec_and_optimizer(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(TINY.format(root=tmp_path))
    from lightning.pytorch import LightningDataModule

    cli = RecsysCLI(RecsysModule, LightningDataModule, subclass_mode_data=True, run=False, args=["--config", str(cfg)])
    assert cli.model.feature_spec == cli.datamodule.feature_spec
    assert isinstance(cli.model.configure_optimizers(), torch.optim.Adagrad)


@pytest.mark.timeout(180)
def test_lrs_fit_from_yaml_writes_checkpoint(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(TINY.format(root=tmp_path))
    out = subprocess.run(
        [sys.executable, "-m", "lightning_recsys.cli", "fit", "--config", str(cfg)], capture_output=True, text=True, timeout=170
    )
    assert out.returncode == 0, out.stderr[-2000:]
    ckpts = list(tmp_path.rglob("*.ckpt"))
    assert ckpts, "lrs fit wrote no checkpoint"
    loaded = RecsysModule.load_from_checkpoint(ckpts[0], weights_only=True)
    assert loaded.hparams["arch"] == "multitask"


def test_bench_help_lists_benchmarks(capsys):
    assert main(["bench", "--help"]) == 0
    assert "train" in capsys.readouterr().out


def test_cli_builds_lr_scheduler_from_yaml(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        TINY.format(root=tmp_path).replace(
            "model:\n", "model:\n  lr_scheduler:\n    class_path: torch.optim.lr_scheduler.StepLR\n    init_args:\n      step_size: 2\n"
        )
    )
    from lightning.pytorch import LightningDataModule

    cli = RecsysCLI(RecsysModule, LightningDataModule, subclass_mode_data=True, run=False, args=["--config", str(cfg)])
    conf = cli.model.configure_optimizers()
    assert isinstance(conf["lr_scheduler"], torch.optim.lr_scheduler.StepLR)


OWN_MODULE = '''
import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


class ClickModel(pl.LightningModule):
    def __init__(self, dim: int = 4):
        super().__init__()
        self.save_hyperparameters()
        self.bag = nn.EmbeddingBag(50, dim, mode="sum")
        self.head = nn.Linear(dim + 2, 1)

    def forward(self, dense, ids):
        return self.head(torch.cat([dense, self.bag(ids)], 1))[:, 0]

    def _loss(self, batch):
        dense, ids, y = batch
        return F.binary_cross_entropy_with_logits(self(dense, ids), y)

    def training_step(self, batch, batch_idx):
        return self._loss(batch)

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", self._loss(batch))

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-2)


class ClickData(pl.LightningDataModule):
    def __init__(self, rows: int = 512):
        super().__init__()
        self.save_hyperparameters()
        g = torch.Generator().manual_seed(0)
        ids = torch.randint(0, 50, (rows, 2), generator=g)
        self.data = TensorDataset(torch.randn(rows, 2, generator=g), ids, (ids[:, 0] % 3 == 0).float())

    def train_dataloader(self):
        return DataLoader(self.data, batch_size=64)

    def val_dataloader(self):
        return DataLoader(self.data, batch_size=128)
'''


@pytest.mark.timeout(240)
def test_lrs_fit_and_quantize_a_users_own_module(tmp_path):
    """`lrs fit --model mymod.ClickModel --data mymod.ClickData`: LightningCLI's subclass mode (RecsysModule
    stays the default); the checkpoint records both classes, so `lrs quantize` needs no other option."""
    (tmp_path / "mymod.py").write_text(OWN_MODULE)
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    run = [sys.executable, "-m", "lightning_recsys.cli"]
    fit = subprocess.run([*run, "fit", "--model", "mymod.ClickModel", "--model.dim", "6", "--data", "mymod.ClickData",
                          "--trainer.max_epochs", "1", "--trainer.enable_progress_bar", "false",
                          "--trainer.default_root_dir", str(tmp_path / "runs")],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=200)  # fmt: skip
    assert fit.returncode == 0, fit.stderr[-2000:]
    (ckpt,) = (tmp_path / "runs").rglob("*.ckpt")
    hparams = torch.load(ckpt, weights_only=True)["hyper_parameters"]
    assert hparams["_class_path"] == "mymod.ClickModel" and hparams["dim"] == 6
    quant = subprocess.run([*run, "quantize", str(ckpt), "--out", str(tmp_path / "art")], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=200)  # fmt: skip
    assert quant.returncode == 0, quant.stderr[-2000:]
    assert (tmp_path / "art" / "model.onnx").is_file()


@pytest.mark.timeout(240)
def test_lrs_fit_your_own_csv_then_quantize_without_options(tmp_path):
    """examples/configs/tabular.yaml on a CSV: TabularDataModule from YAML; the checkpoint records it, so
    `lrs quantize` rebuilds the data from the checkpoint alone."""
    from tests.data.test_tabular import planted_csv

    planted_csv(tmp_path / "clicks.csv")
    config = Path(__file__).resolve().parents[1] / "examples" / "configs" / "tabular.yaml"
    run = [sys.executable, "-m", "lightning_recsys.cli"]
    fit = subprocess.run([*run, "fit", "--config", str(config), "--data.init_args.path", "clicks.csv", "--trainer.max_epochs", "2",
                          "--trainer.enable_progress_bar", "false"], cwd=tmp_path, capture_output=True, text=True,
                         timeout=200)  # fmt: skip
    assert fit.returncode == 0, fit.stderr[-2000:]
    ckpt = next((tmp_path / "runs" / "tabular").rglob("last.ckpt"), None) or next((tmp_path / "runs" / "tabular").rglob("*.ckpt"))
    data = torch.load(ckpt, weights_only=True)["datamodule_hyper_parameters"]
    assert data["_class_path"] == "lightning_recsys.data.TabularDataModule" and data["path"] == "clicks.csv"
    quant = subprocess.run([*run, "quantize", str(ckpt), "--out", "art"], cwd=tmp_path, capture_output=True, text=True,
                           timeout=200)  # fmt: skip
    assert quant.returncode == 0, quant.stderr[-2000:]
    report = json.loads((tmp_path / "art" / "report.json").read_text())
    assert report["evaluation"]["auc_fp32"] > 0.7 and abs(report["evaluation"]["ne_delta"]) < 0.01
    # from another directory the recorded relative path finds nothing: a clear error, no artifact
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    moved = subprocess.run([*run, "quantize", str(ckpt), "--out", "art"], cwd=elsewhere, capture_output=True, text=True,
                           timeout=200)  # fmt: skip
    assert moved.returncode == 2 and not (elsewhere / "art").exists()
    assert "data module saved in the checkpoint (TabularDataModule) cannot find its data: no file at clicks.csv" in moved.stderr
    assert "--data path/to/data.yaml" in moved.stderr
