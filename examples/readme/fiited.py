"""README "FIITED": prune 90% of the embedding chunks during training; the tables really shrink."""

import lightning.pytorch as pl
import torch

import lightning_recsys as lrs
from lightning_recsys.callbacks import FIITED
from lightning_recsys.embeddings import export_compact, to_dense_modules

dm = lrs.SyntheticCTRDataModule(num_train=150_000, max_rows=10_000, num_sparse=8, batch_size=512)
module = lrs.RecsysModule(feature_spec=dm.feature_spec, embedding_dim=32)
dense_bytes = sum(p.numel() * 4 for n, p in module.named_parameters() if "tables" in n)

fiited = FIITED(chunk_size=1, prefix=True, warm_start="uniform", target_sparsity=0.9, start_step=20, end_step=200, interval=10)
pl.Trainer(max_epochs=1, callbacks=[fiited]).fit(module, dm)   # any LightningModule with nn.Embedding / nn.EmbeddingBag
compact = export_compact(module)   # {table: {pool [P, C], mask, base, ...}}: what the quantizer takes
to_dense_modules(module)           # plain nn.Embedding / nn.EmbeddingBag again (pruned chunks read 0)

kept = sum(c["pool"].shape[0] for c in compact.values())
total = sum(c["num_embeddings"] * c["embedding_dim"] // c["chunk_size"] for c in compact.values())
assert kept / total < 0.12, (kept, total)
assert isinstance(module.model.embeddings.tables["C1"], torch.nn.EmbeddingBag)
