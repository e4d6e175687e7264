"""`lrs quantize` end to end on a checkpoint written by a real Trainer; the checkpoint stays untouched."""

import argparse
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from lightning_recsys.data import SyntheticCTRDataModule
from lightning_recsys.models import RecsysModule
from lightning_recsys.quant import load, quantize_checkpoint
from lightning_recsys.quant.cli import main

pytestmark = pytest.mark.timeout(300)


def _dm():
    return SyntheticCTRDataModule(num_train=1024, num_val=512, num_test=256, batch_size=128, max_rows=300, num_sparse=4)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    dm = _dm()
    module = RecsysModule(feature_spec=dm.feature_spec, embedding_dim=8, bottom_mlp=(16,), top_mlp=(16,))
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, max_steps=6)  # fmt: skip
    trainer.fit(module, dm)
    path = tmp_path_factory.mktemp("ckpt") / "model.ckpt"
    trainer.save_checkpoint(path)
    return path


def _sha(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_cli_main_onnx_end_to_end(ckpt, tmp_path, capsys):
    before = _sha(ckpt)
    cfg = tmp_path / "quant.yaml"
    cfg.write_text("embeddings: {precision: int8}\nlinears: {precision: int8, activation: static, observer: mse}\n"
                   "overrides:\n  '.*tables\\.C2': {precision: int4}\n")  # fmt: skip
    out = tmp_path / "art"
    assert main([str(ckpt), "--out", str(out), "--config", str(cfg), "--calib-batches", "2"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["bytes_ratio"] < 0.6
    assert {p.name for p in out.iterdir()} == {"model.onnx", "meta.json", "report.json", "calibration.json", "quant_config.yaml"}
    report = json.loads((out / "report.json").read_text())
    by_name = {m["name"]: m for m in report["modules"]}
    assert by_name["model.backbone.embeddings.tables.C2"]["precision"] == "int4"
    assert by_name["model.top_mlp.0"]["activation"] == "static"
    assert all(m["bytes"] < m["float_bytes"] for m in report["modules"])
    assert report["evaluation"]["logit_sqnr_db"] > 20
    calib = json.loads((out / "calibration.json").read_text())
    assert calib["model.top_mlp.0"]["observer"] == "mse" and calib["model.top_mlp.0"]["num_batches"] == 2
    batch = _dm().make_batch("test", 0)[0]
    logits = load(out)(batch)
    assert logits.shape == (batch.batch_size, 2)
    # refuses a non-empty output directory unless told to overwrite
    assert main([str(ckpt), "--out", str(out)]) == 2
    assert "not empty" in capsys.readouterr().err
    assert main([str(ckpt), "--out", str(out), "--overwrite", "--format", "torch", "--calib-batches", "1"]) == 0
    assert (out / "model.pt2").is_file() and not (out / "model.onnx").exists()  # only our files were replaced
    assert _sha(ckpt) == before


def test_module_entry_point_torch_format(ckpt, tmp_path):
    before = _sha(ckpt)
    out = tmp_path / "torch_art"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.run(
        [sys.executable, "-m", "lightning_recsys.quant.cli", str(ckpt), "--out", str(out), "--format", "torch",
         "--calib-batches", "1", "--eval-batches", "1"],
        capture_output=True, text=True, timeout=240, env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (out / "model.pt2").is_file() and not (out / "model.onnx").exists()
    predictor = load(out)
    batch = _dm().make_batch("val", 1)[0]
    assert predictor(batch).shape == (batch.batch_size, 2)
    assert _sha(ckpt) == before


def test_clear_errors(ckpt, tmp_path, capsys):
    corrupt = tmp_path / "corrupt.ckpt"
    corrupt.write_bytes(ckpt.read_bytes()[:2000])
    with pytest.raises(ValueError, match="corrupt or not a torch checkpoint"):
        quantize_checkpoint(corrupt, tmp_path / "o1")
    assert main([str(corrupt), "--out", str(tmp_path / "o1")]) == 2
    assert "corrupt" in capsys.readouterr().err
    assert not (tmp_path / "o1").exists()
    bad_cfg = tmp_path / "bad.yaml"
    bad_cfg.write_text("embeddings: {precision: int8}\ncalibration_batches: 3\n")
    with pytest.raises(ValueError, match=r"unknown quantization config keys \['calibration_batches'\]"):
        quantize_checkpoint(ckpt, tmp_path / "o2", config=bad_cfg)
    # a checkpoint holding an object that needs full unpickling: refused, the error names the opt-in flag
    unsafe = tmp_path / "unsafe.ckpt"
    data = torch.load(ckpt, weights_only=True)
    data["hyper_parameters"]["extra"] = argparse.Namespace(a=1)  # not on the weights-only allowlist
    torch.save(data, unsafe)
    with pytest.raises(ValueError, match="--unsafe-full-unpickle"):
        quantize_checkpoint(unsafe, tmp_path / "o3")
    # incompatible: weights of another architecture
    other = tmp_path / "other.ckpt"
    data = torch.load(ckpt, weights_only=True)
    data["hyper_parameters"]["embedding_dim"] = 4
    torch.save(data, other)
    with pytest.raises(ValueError, match="incompatible checkpoint"):
        quantize_checkpoint(other, tmp_path / "o4")
    with pytest.raises(ValueError, match="format must be"):
        quantize_checkpoint(ckpt, tmp_path / "o5", format="tflite")
