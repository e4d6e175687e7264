"""README "TensorRT": the program TensorRT gets is prepared on CPU; the engine build needs CUDA."""

import lightning.pytorch as pl
import torch

import lightning_recsys as lrs
from lightning_recsys.quant import TensorRTPredictor, export_tensorrt, prepare_tensorrt_program, tensorrt_inputs

dm = lrs.SyntheticCTRDataModule(num_train=30_000, max_rows=2_000, batch_size=512)
module = lrs.RecsysModule(feature_spec=dm.feature_spec)
pl.Trainer(max_epochs=1).fit(module, dm)
model = module.model.eval()
batch = next(iter(dm.val_dataloader()))

prep = prepare_tensorrt_program(model, batch, "fp16", max_batch=4096, max_bag_len=64)   # CPU is enough
logits = prep.program.module()(*tensorrt_inputs(batch, prep.meta))     # the graph TensorRT will get
if torch.cuda.is_available():
    export_tensorrt(model, "artifacts/trt", batch, "fp16")                    # on a GPU machine
    logits = TensorRTPredictor("artifacts/trt")(batch)
print("logits", tuple(logits.shape))
