import subprocess
import sys

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
