"""Export parity with int8 rounding ties, and artifacts that appear only when complete."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from torch import nn

from lightning_recsys.quant import Int8Linear, export_onnx, quantize_checkpoint
from lightning_recsys.quant import pipeline
from lightning_recsys.quant.export.parity import ort_runtime, tie_envelope, verify

SCALE = 1.0 / 16  # exact in float32, and so is every (k + 0.5) * SCALE below


def _tie_model() -> tuple[nn.Module, torch.Tensor]:
    """An identity fp32 layer feeding a static int8 layer whose inputs sit exactly on rounding ties."""
    eye = nn.Linear(4, 4, bias=False)
    eye.weight.data.copy_(torch.eye(4))
    head = nn.Linear(4, 1)
    head.weight.data.copy_(torch.tensor([[0.5, 0.25, 0.75, 1.0]]))
    q = Int8Linear.from_float(head, activation="static")
    q.set_activation_range(0.0, 255 * SCALE)
    assert float(q.x_scale) == SCALE
    model = nn.Sequential(eye, q).eval()
    k = torch.tensor([[2.0, 4.0, 3.0, 6.0], [8.0, 10.0, 12.0, 14.0], [1.0, 3.0, 5.0, 7.0]])  # even k: ties round down
    return model, (k + 0.5) * SCALE


def _scaled_identity(proto: onnx.ModelProto, factor: float) -> None:
    for init in proto.graph.initializer:
        arr = numpy_helper.to_array(init)
        if arr.shape == (4, 4) and np.allclose(arr, np.eye(4)):
            init.CopyFrom(numpy_helper.from_array((arr * np.float32(factor)).astype(np.float32), init.name))
            return
    raise AssertionError("identity weight not found in the graph")


def test_tie_envelope_spans_both_roundings():
    model, x = _tie_model()
    with torch.no_grad():
        ref = model(x)
        up = model[1](x * (1 + 1e-6))  # every tie rounds up
    lo, hi, jittered = tie_envelope(model, (x,), ref)
    assert jittered and torch.all(lo <= ref) and torch.all(hi >= up - 1e-6)
    assert float((up - ref).abs().max()) > 0.01  # one code of a tie moves the logit far beyond atol=1e-3


def test_rounding_ties_are_accepted_and_counted_other_differences_are_not(tmp_path):
    model, x = _tie_model()
    meta = export_onnx(model, tmp_path / "m.onnx", x)
    assert meta["parity"]["rows_beyond_tol"] == 0
    proto = onnx.load(str(tmp_path / "m.onnx"))
    _scaled_identity(proto, 1 + 2**-20)  # ORT's int8 inputs land just above the ties: they round up
    report = verify(model, ort_runtime(proto), x, meta, 1e-3, 1e-3)
    assert report["rows_beyond_tol"] >= 2 and report["rounding_ties"] == report["rows_beyond_tol"]
    _scaled_identity(proto, 1.5)  # a real difference of the graph: refused, naming the row
    with pytest.raises(RuntimeError, match=r"differs from the PyTorch model in \d+ of 3 rows \(row \d: .*not an int8 rounding tie"):
        verify(model, ort_runtime(proto), x, meta, 1e-3, 1e-3)


def test_a_failed_export_leaves_no_file(tmp_path, monkeypatch):
    model, x = _tie_model()
    monkeypatch.setattr("lightning_recsys.quant.export.onnx.verify_export", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("boom")))
    with pytest.raises(RuntimeError, match="boom"):
        export_onnx(model, tmp_path / "m.onnx", x)
    assert list(tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def small_ckpt(tmp_path_factory):
    import lightning.pytorch as pl

    from lightning_recsys.data import SyntheticCTRDataModule
    from lightning_recsys.models import RecsysModule

    dm = SyntheticCTRDataModule(num_train=2048, num_val=2048, num_test=512, batch_size=256, max_rows=200, num_sparse=4)
    module = RecsysModule(feature_spec=dm.feature_spec, embedding_dim=8)
    trainer = pl.Trainer(max_steps=4, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=0)  # fmt: skip
    trainer.fit(module, dm)
    path = tmp_path_factory.mktemp("ckpt") / "m.ckpt"
    trainer.save_checkpoint(path)
    return path, dm


def test_artifact_appears_only_when_complete(small_ckpt, tmp_path, monkeypatch):
    ckpt, dm = small_ckpt
    before = ckpt.read_bytes()
    monkeypatch.setattr(pipeline, "export_onnx", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("export failed")))
    with pytest.raises(RuntimeError, match="export failed"):
        quantize_checkpoint(ckpt, tmp_path / "art", datamodule=dm, calib_batches=2)
    assert list(tmp_path.iterdir()) == []  # neither the artifact nor its staging directory
    monkeypatch.undo()
    (tmp_path / "art").mkdir()
    (tmp_path / "art" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="--overwrite"):
        quantize_checkpoint(ckpt, tmp_path / "art", datamodule=dm, calib_batches=2)
    report = quantize_checkpoint(ckpt, tmp_path / "art", datamodule=dm, calib_batches=2, overwrite=True)
    names = sorted(p.name for p in (tmp_path / "art").iterdir())
    assert names == ["calibration.json", "meta.json", "model.onnx", "notes.txt", "quant_config.yaml", "report.json"]
    assert report["export_parity"]["rows"] > 0 and ckpt.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["art"]
