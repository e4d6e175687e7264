"""Demo step ``fiited``: train a DLRM while pruning 90% of its embedding chunks; the tables really
shrink (``python examples/fiited.py``).

Trains twice on the same synthetic Criteo-like data (dense, then with ``FIITED``), prints AUC and the
bytes of the embedding tables, then exports the pruned tables (compact pool + index, and plain
``nn.EmbeddingBag`` modules) and checks the exported model gives the same predictions.
"""

from __future__ import annotations

import functools
from typing import Any

import lightning.pytorch as pl
import torch

from ..callbacks import FIITED
from ..data import SyntheticCTRDataModule
from ..embeddings import export_compact, to_dense_modules
from ..models import RecsysModule

__all__ = ["main"]


def _fit(dm: SyntheticCTRDataModule, callbacks: list) -> tuple[RecsysModule, float]:
    pl.seed_everything(0, verbose=False)
    module = RecsysModule(feature_spec=dm.feature_spec, embedding_dim=32, optimizer=functools.partial(torch.optim.Adam, lr=3e-3))
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, max_epochs=1, callbacks=callbacks, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
    )  # fmt: skip
    trainer.fit(module, dm)
    return module, float(trainer.callback_metrics["val_auc"])


def main(quick: bool = False) -> dict[str, Any]:
    """Train dense and pruned on the same data; return AUCs, bytes and whether the export matches."""
    dm = SyntheticCTRDataModule(num_train=20_480 if quick else 30_720, num_val=4_096, num_test=4_096, batch_size=512, max_rows=10_000, num_sparse=8)
    dense, dense_auc = _fit(dm, [])
    dense_bytes = sum(t.weight.numel() * 4 for t in dense.model.embeddings.tables.values())

    fiited = FIITED(chunk_size=4, target_sparsity=0.9, start_step=6, end_step=36, interval=3)
    pruned, pruned_auc = _fit(dm, [fiited])
    pruned_bytes = fiited.embedding_bytes()

    batch = dm.make_batch("test", 0)[0]
    with torch.no_grad():
        before = pruned(batch)
        compact = export_compact(pruned)  # pool [P, C] + mask + base per table, for the quantization toolchain
        to_dense_modules(pruned)  # plain nn.EmbeddingBag tables for any consumer
        same = torch.allclose(pruned(batch), before, atol=1e-5)
    kept = sum(c["pool"].shape[0] for c in compact.values())
    total = sum(c["num_embeddings"] * c["embedding_dim"] // c["chunk_size"] for c in compact.values())
    summary = {
        "dense_auc": dense_auc,
        "fiited_auc": pruned_auc,
        "auc_drop": dense_auc - pruned_auc,
        "kept_fraction": kept / total,
        "dense_embedding_bytes": dense_bytes,
        "fiited_embedding_bytes": pruned_bytes,
        "memory_ratio": pruned_bytes / dense_bytes,
        "export_matches": bool(same),
    }
    print(
        f"FIITED: kept {kept}/{total} chunks ({summary['kept_fraction']:.1%}); embedding bytes {pruned_bytes:,} vs "
        f"dense {dense_bytes:,} ({summary['memory_ratio']:.3f}x); val AUC {pruned_auc:.4f} vs dense {dense_auc:.4f}; "
        f"exported model matches: {same}"
    )
    return summary

