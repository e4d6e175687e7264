"""README "Your own data": a CSV file of interactions (written here with a planted click signal) trained
by the reference DLRM. Any table works: name its categorical, number and label columns."""

import csv
import math
import random
from functools import partial

import lightning.pytorch as pl
import torch

import lightning_recsys as lrs

rnd = random.Random(0)
taste = {u: rnd.gauss(0, 1) for u in range(60)}  # each user's taste for the item "style" below
with open("clicks.csv", "w", newline="") as f:
    out = csv.writer(f)
    out.writerow(["user", "item", "genres", "price", "click"])
    for _ in range(12_000):
        user, item, price = rnd.randrange(60), rnd.randrange(40), rnd.uniform(1, 50)
        style = 1 if item % 2 else -1
        p = 1 / (1 + math.exp(-(2 * taste[user] * style - 0.03 * price + 0.5)))
        genres = "|".join(sorted({("Action", "Comedy", "Drama")[item % 3], ("Horror", "Romance")[item % 2]}))
        out.writerow([f"u{user}", f"i{item}", genres, f"{price:.2f}", int(rnd.random() < p)])

dm = lrs.TabularDataModule("clicks.csv", sparse=["user", "item", "genres"], dense=["price"], labels=["click"],
                           multi_hot={"genres": "|"}, batch_size=128)   # or columns={...}: a DataFrame works as is
module = lrs.RecsysModule(feature_spec=dm.feature_spec, optimizer=partial(torch.optim.Adam, lr=1e-2))
trainer = pl.Trainer(max_epochs=4)
trainer.fit(module, dm)

assert trainer.callback_metrics["val_auc"] > 0.75, trainer.callback_metrics
