"""README "DCT": the strategy by name and by object; one short 2-process run on gloo."""

import lightning.pytorch as pl

import lightning_recsys as lrs
import lightning_recsys                      # registers "dct" and "dct_spawn"
from lightning_recsys.distributed import DCTStrategy

if __name__ == "__main__":  # the 2 training processes re-import this file
    pl.Trainer(strategy="dct", accelerator="cpu", devices=2)      # 1% density, threshold refreshed every 100 steps
    pl.Trainer(strategy=DCTStrategy(density=0.01, refresh_interval=100, min_compress_numel=100_000), devices=2)
    pl.Trainer(strategy=DCTStrategy(mp_compression=True), devices=2)   # shard tables; default mp_codec="quant":
                                                                         # 4-bit forward, 2-bit backward (~10x)
    pl.Trainer(strategy=DCTStrategy(mp_compression=True, mp_scales="group"), devices=2)  # per-vector scales: 8.9x
    pl.Trainer(strategy=DCTStrategy(mp_compression=True, mp_codec="topk", mp_keep_ratio=0.05), devices=2)     # DCT's sparse top-k
    pl.Trainer(strategy=DCTStrategy(mp_compression=True, mp_codec="threshold", mp_refresh_interval=100), devices=2)
    pl.Trainer(strategy=DCTStrategy(mp_compression=True, mp_codec="int8"), devices=2)     # lossless, 3.9x

    dm = lrs.SyntheticCTRDataModule(num_train=65_536, num_val=8_192, max_rows=20_000, batch_size=512)
    module = lrs.RecsysModule(feature_spec=dm.feature_spec)
    trainer = pl.Trainer(strategy="dct_spawn", accelerator="cpu", devices=2, max_steps=40)
    trainer.fit(module, dm)
    assert trainer.callback_metrics["dct_compression_ratio"] > 5, trainer.callback_metrics
