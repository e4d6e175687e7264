"""README "Quantize for deployment" from Python: quantize_, calibrate, export_onnx, load."""

import lightning.pytorch as pl
import torch

import lightning_recsys as lrs
from lightning_recsys.quant import Int8LinearConfig, RecipeConfig, calibrate, export_onnx, load, quantize_

dm = lrs.SyntheticCTRDataModule(num_train=50_000, max_rows=5_000, batch_size=512)
module = lrs.RecsysModule(feature_spec=dm.feature_spec)
pl.Trainer(max_epochs=1).fit(module, dm)
model = module.model
example_batch = batch = next(iter(dm.val_dataloader()))

recipe = RecipeConfig(linears=Int8LinearConfig(activation="static", observer="mse"),
                      overrides={r".*tables\.C3": {"precision": "int4"}, r".*top_mlp\.4": {"precision": "fp32"}})
quantize_(model, recipe)                         # any nn.Module with nn.Embedding / EmbeddingBag / Linear
calibrate(model, dm.train_dataloader(), num_batches=16)
export_onnx(model, "model.onnx", example_batch)  # ONNX checker + ONNX Runtime parity check built in
logits = load("model.onnx")(batch)               # a predictor that takes RecsysBatch

with torch.no_grad():
    assert (logits - model(batch)).abs().max() < 1e-2
