"""The README's command-line journeys: ``lrs --help``, ``lrs fit`` with every example config (default
logger on), ``lrs test``, and ``lrs fit`` checkpoint -> ``lrs quantize`` (onnx, torch, budget) ->
``quant.load`` -> score a batch. Each runs the installed ``lrs`` in a fresh directory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .conftest import CONFIGS, run, warnings_in

# small sizes that still walk every step (fit, validation, checkpoint, test)
SMALL = ["--data.init_args.num_train", "65536", "--data.init_args.num_val", "8192", "--data.init_args.num_test", "4096"]
TRAINING_CONFIGS = sorted(p.name for p in CONFIGS.glob("*.yaml") if p.name != "quant.yaml")


def test_help_lists_every_subcommand(tmp_path):
    out = run(["lrs", "--help"], tmp_path).stdout
    for sub in ("fit", "validate", "test", "predict", "quantize", "demo", "bench"):
        assert f"  {sub} " in out
    assert run(["lrs"], tmp_path, ok=(2,)).stdout.startswith("usage: lrs")
    assert "--budget-ne" in run(["lrs", "quantize", "--help"], tmp_path).stdout


@pytest.fixture(scope="module")
def fitted(tmp_path_factory) -> tuple[Path, Path, str]:
    """``lrs fit --config examples/configs/synthetic.yaml`` (small data) in a fresh directory."""
    work = tmp_path_factory.mktemp("fit")
    proc = run(["lrs", "fit", "--config", str(CONFIGS / "synthetic.yaml"), *SMALL, "--trainer.enable_progress_bar", "false"], work)
    ckpts = sorted(work.glob("runs/synthetic/lightning_logs/version_0/checkpoints/*.ckpt"))
    return work, work / "runs/synthetic/lightning_logs/version_0/checkpoints/last.ckpt", proc.stdout + proc.stderr


def test_fit_synthetic_config_writes_logs_and_last_checkpoint(fitted):
    work, last, output = fitted
    assert last.is_file(), sorted(str(p) for p in work.rglob("*"))
    assert len(list(last.parent.glob("dlrm-epoch=0-val_auc=*.ckpt"))) == 1  # the best by val_auc, named by the config
    metrics = (last.parents[1] / "metrics.csv").read_text()  # the default logger (CSV without tensorboard)
    assert "val_auc" in metrics.splitlines()[0]
    assert warnings_in(output) == []


@pytest.mark.parametrize("config", [c for c in TRAINING_CONFIGS if c != "synthetic.yaml"])
def test_fit_every_example_config_with_the_default_logger(config, tmp_path):
    args = ["lrs", "fit", "--config", str(CONFIGS / config), "--trainer.max_steps", "6", "--trainer.log_every_n_steps", "3",
            "--trainer.val_check_interval", "6", "--trainer.limit_val_batches", "2",
            "--trainer.enable_progress_bar", "false"]  # fmt: skip
    if "SyntheticCTRDataModule" in (CONFIGS / config).read_text():  # MovieLens: downloaded once from the recbole wheel
        args += SMALL
    if "TabularDataModule" in (CONFIGS / config).read_text():  # the user's own CSV, in the directory it runs in
        from tests.data.test_tabular import planted_csv

        planted_csv(tmp_path / "clicks.csv", n=3000)
    proc = run(args, tmp_path, timeout=300)
    logs = list(tmp_path.glob("runs/*/lightning_logs/version_0/metrics.csv"))
    assert len(logs) == 1 and "train_loss" in logs[0].read_text(), sorted(str(p) for p in tmp_path.rglob("*"))
    assert list(tmp_path.glob("runs/*/lightning_logs/version_0/checkpoints/*.ckpt"))
    assert warnings_in(proc.stdout + proc.stderr) == []


def test_lrs_test_on_the_fitted_checkpoint(fitted, tmp_path):
    _, last, _ = fitted
    proc = run(["lrs", "test", "--config", str(CONFIGS / "synthetic.yaml"), *SMALL, "--ckpt_path", str(last),
                "--trainer.enable_progress_bar", "false"], tmp_path)  # fmt: skip
    assert "test_auc" in proc.stdout and "test_ne_conversion" in proc.stdout


SCORE = """
import sys, torch
from lightning_recsys.data import SyntheticCTRDataModule
from lightning_recsys.quant import load
predictor = load(sys.argv[1])
batch = SyntheticCTRDataModule(num_train=4096, num_val=4096, num_test=4096, batch_size=333, max_rows=20000).make_batch("test", 0)[0]
logits = predictor(batch)
assert logits.shape == (333, 2) and torch.isfinite(logits).all(), logits
print("scored", tuple(logits.shape))
"""


@pytest.mark.parametrize("fmt", ["onnx", "torch"])
def test_fit_checkpoint_quantizes_loads_and_scores(fitted, tmp_path, fmt):
    _, last, _ = fitted
    proc = run(["lrs", "quantize", str(last), "--out", "art", "--config", str(CONFIGS / "quant.yaml"), "--format", fmt], tmp_path)
    assert warnings_in(proc.stdout + proc.stderr) == []
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["bytes_ratio"] < 0.45 and summary["auc_fp32"] - summary["auc_quant"] < 0.005
    files = {p.name for p in (tmp_path / "art").iterdir()}
    assert {f"model.{'onnx' if fmt == 'onnx' else 'pt2'}", "meta.json", "report.json", "quant_config.yaml"} <= files
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging directory left behind
    (tmp_path / "score.py").write_text(SCORE)
    assert "scored (333, 2)" in run(["python", "score.py", "art"], tmp_path).stdout
    # the checkpoint is never modified and --out is never overwritten without --overwrite
    again = run(["lrs", "quantize", str(last), "--out", "art"], tmp_path, ok=(2,))
    assert "not empty" in again.stderr and "--overwrite" in again.stderr


def test_fit_checkpoint_quantizes_to_a_budget(fitted, tmp_path):
    _, last, _ = fitted
    proc = run(["lrs", "quantize", str(last), "--out", "budget", "--budget-ne", "0.1%"], tmp_path, ok=(0, 3))
    report = json.loads((tmp_path / "budget" / "plan_report.json").read_text())
    files = {p.name for p in (tmp_path / "budget").iterdir()}
    assert {"plan_report.md", "plan_report.png"} <= files
    if proc.returncode == 0:  # met on the search AND the confirmation rows, with bootstrap intervals
        assert report["met"] and report["confirm"]["ne_rel_delta"] <= 0.001
        assert len(report["confirm"]["ci95"]["ne_rel_delta"]) == 2 and "model.onnx" in files
    else:  # refused: only the report, whose figures say why
        assert not report["met"] and "model.onnx" not in files
        assert "no plan meets the budget" in proc.stderr


def test_quantize_errors_name_the_fix(fitted, tmp_path):
    _, last, _ = fitted
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"not a checkpoint")
    assert "corrupt or not a torch checkpoint" in run(["lrs", "quantize", str(bad), "--out", "x"], tmp_path, ok=(2,)).stderr
    proc = run(["lrs", "quantize", str(last), "--out", "y", "--module-class", "torch.nn.Linear"], tmp_path, ok=(2,))
    assert "do not build Linear" in proc.stderr and "--module-class" not in proc.stderr.split("Linear (")[0]
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
