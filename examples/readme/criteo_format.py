"""README "Your own data": a file in Criteo's layout (tab-separated, no header row, gzip-compressed; label,
13 integer counts with missing cells and the odd negative one, 26 hashed categories), written here with a
planted click signal, read with column_names= and trained by the reference DLRM."""

import gzip
import math
import random
from functools import partial

import lightning.pytorch as pl
import torch

import lightning_recsys as lrs

rnd = random.Random(0)
with gzip.open("day_0.gz", "wt") as f:
    for _ in range(8_000):
        ints = [rnd.choice(["", str(int(rnd.expovariate(0.1)))]) for _ in range(13)]
        ints[1] = str(rnd.randint(-3, 40))  # Criteo's I2 holds a few negative values
        cats = [f"{rnd.randrange(16 if j < 3 else 1000) * 2654435761 % 2**32:08x}" for j in range(26)]
        signal = (int(cats[0], 16) % 7 - 3) * 0.8 + (0.05 * int(ints[0]) if ints[0] else -0.5)
        label = int(rnd.random() < 1 / (1 + math.exp(-signal)))
        f.write("\t".join([str(label), *ints, *cats]) + "\n")

names = ["label", *(f"I{i}" for i in range(1, 14)), *(f"C{i}" for i in range(1, 27))]
dm = lrs.TabularDataModule("day_0.gz", column_names=names, delimiter="\t", labels="label", dense=names[1:14],
                           sparse=names[14:], dense_transform="signed_log1p", min_count=10, batch_size=128)
module = lrs.RecsysModule(feature_spec=dm.feature_spec, optimizer=partial(torch.optim.Adam, lr=3e-3))
trainer = pl.Trainer(max_epochs=2)
trainer.fit(module, dm)

assert trainer.callback_metrics["val_auc"] > 0.7, trainer.callback_metrics
