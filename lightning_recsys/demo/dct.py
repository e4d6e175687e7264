"""Demo step ``dct``: a DLRM trained with ``DCTStrategy`` in 2 CPU processes (gloo).

Data parallel (default): every gradient tensor with >= 100k entries (the replicated embedding tables) is
hard-thresholded to ~1% with error feedback; smaller ones (the MLPs) are sent exactly.
``--mp`` (``main(mp_compression=True)``): hybrid parallel instead: the tables are sharded across the two
processes and the pooled embeddings cross a compressed all-to-all (the default ``mp_codec="quant"``: 4-bit
values forward and 2-bit gradients backward on Gaussian levels, factored int8 scales; ~10x fewer bytes
than fp32, AUC within about 0.002 in benchmarks/results/dct.json). Prints the AUC and what was sent.

    python examples/dct.py [--mp]
"""

from __future__ import annotations

import functools

import lightning.pytorch as pl
import torch

from ..data import SyntheticCTRDataModule
from ..models import RecsysModule
from ..distributed import DCTStrategy

__all__ = ["main"]


def main(quick: bool = False, mp_compression: bool = False) -> dict:
    """Train, print a short summary on rank 0 and return the key figures (rank 0's view)."""
    max_steps = 30 if quick else 80
    pl.seed_everything(0)
    dm = SyntheticCTRDataModule(num_train=2 * 512 * max_steps, num_val=4096, num_test=512, batch_size=512,
                                max_rows=20000)  # fmt: skip
    module = RecsysModule(feature_spec=dm.feature_spec, embedding_dim=16,
                          optimizer=functools.partial(torch.optim.Adam, lr=3e-3))  # fmt: skip
    strategy = DCTStrategy(density=0.01, refresh_interval=50, min_compress_numel=100_000, mp_compression=mp_compression,
                           start_method="spawn")  # fmt: skip
    trainer = pl.Trainer(
        strategy=strategy, accelerator="cpu", devices=2, max_steps=max_steps, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(module, dm)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    summary = {
        "val_auc": metrics.get("val_auc", float("nan")),
        "dp_density": metrics.get("dct_density", float("nan")),
        "dp_bytes_sent_last_step": metrics.get("dct_bytes_sent", float("nan")),
        "dp_compression_ratio": metrics.get("dct_compression_ratio", float("nan")),
    }
    if mp_compression:
        summary["mp_compression_ratio"] = metrics.get("dct_mp_compression_ratio", float("nan"))
    if trainer.is_global_zero:
        print("DCT example (2 processes, gloo):", ", ".join(f"{k}={v:.4g}" for k, v in summary.items()))
    return summary

