"""Small trained models with one deliberately fragile module, shared by the sensitivity / search tests.

* ``fragile_dlrm()``: our DLRM inside a RecsysModule (a LightningModule, two tasks), trained briefly;
  then one hidden unit of ``top_mlp.0`` is scaled up 1000x and ``top_mlp.2``'s matching input column
  down 1000x. The float function is unchanged (ReLU is positively homogeneous), but ``top_mlp.2``'s
  input now has one huge channel: its per-tensor int8 activations lose every other channel.
* ``FragileBagModel``: a plain nn.Module (nn.EmbeddingBag / nn.Linear, dict batches) whose table
  ``bag_a`` carries a huge value in a column the model never reads: float output unchanged, but each
  row's int8 / int4 step becomes enormous, so row-wise quantization wrecks the columns it does read.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lightning_recsys.data import SyntheticCTRDataModule
from lightning_recsys.models import RecsysModule


def dlrm_data() -> SyntheticCTRDataModule:
    return SyntheticCTRDataModule(num_train=4096, num_val=4096, num_test=256, max_rows=300, num_sparse=4,
                                  batch_size=256, seed=0)  # fmt: skip


def fragile_dlrm(dm: SyntheticCTRDataModule, epochs: int = 2) -> RecsysModule:
    torch.manual_seed(0)
    module = RecsysModule(feature_spec=dm.feature_spec, embedding_dim=8, bottom_mlp=(16,), top_mlp=(16, 8))
    opt = torch.optim.Adam(module.parameters(), lr=1e-2)
    for _ in range(epochs):
        for batch in dm.train_dataloader():
            loss = sum(module._task_losses(module(batch), batch).values())
            opt.zero_grad()
            loss.backward()
            opt.step()
    module.eval()
    acts = []
    hook = module.model.top_mlp[1].register_forward_hook(lambda m, a, out: acts.append(out))
    with torch.no_grad():
        for _, batch in zip(range(4), dm.val_dataloader()):
            module(batch)
    hook.remove()
    k = int((torch.cat(acts) > 0).float().mean(0).argmax())  # the most often active hidden unit
    with torch.no_grad():
        l0, l2 = module.model.top_mlp[0], module.model.top_mlp[2]
        l0.weight[k] *= 1000.0
        l0.bias[k] *= 1000.0
        l2.weight[:, k] /= 1000.0
    return module


class FragileBagModel(nn.Module):
    """``forward({"a": ids [B, 2], "b": ids [B, 1], "dense": [B, 4]}) -> logits [B]``."""

    def __init__(self) -> None:
        super().__init__()
        self.bag_a = nn.EmbeddingBag(200, 9, mode="sum")  # column 8 of both tables is never read
        self.bag_b = nn.EmbeddingBag(100, 9, mode="sum")
        self.fc1 = nn.Linear(20, 16)
        self.fc2 = nn.Linear(16, 1)

    def forward(self, batch: dict) -> torch.Tensor:
        ea = self.bag_a(batch["a"])[:, :8]
        eb = self.bag_b(batch["b"])[:, :8]
        return self.fc2(torch.relu(self.fc1(torch.cat([ea, eb, batch["dense"]], 1)))).squeeze(1)


def bag_batches(n: int, seed: int, batch_size: int = 256) -> list[dict]:
    """Deterministic dict batches whose labels follow a fixed planted teacher."""
    teacher = torch.Generator().manual_seed(1234)
    ta, tb = torch.randn(200, generator=teacher), torch.randn(100, generator=teacher)
    td = torch.randn(4, generator=teacher)
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        a = torch.randint(0, 200, (batch_size, 2), generator=g)
        b = torch.randint(0, 100, (batch_size, 1), generator=g)
        dense = torch.randn(batch_size, 4, generator=g)
        logit = ta[a].sum(1) + tb[b].sum(1) + dense @ td
        label = torch.bernoulli(torch.sigmoid(logit), generator=g)
        out.append({"a": a, "b": b, "dense": dense, "label": label})
    return out


def fragile_bag_model(hidden_a: float = 1e4, hidden_b: float = 0.0) -> FragileBagModel:
    """Trained model; every row of ``bag_a`` / ``bag_b`` then gets ``hidden_a`` / ``hidden_b`` in its
    unread column (1e4: int8 wrecks the table and int4 cannot hold it; 1e3: moderately fragile)."""
    torch.manual_seed(0)
    model = FragileBagModel()
    opt = torch.optim.Adam(model.parameters(), lr=2e-2)
    for _ in range(3):
        for batch in bag_batches(16, seed=0):
            loss = F.binary_cross_entropy_with_logits(model(batch), batch["label"])
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        model.bag_a.weight[:, 8] = hidden_a
        model.bag_b.weight[:, 8] = hidden_b
    return model.eval()


def bag_labels(batch: dict) -> torch.Tensor:
    return batch["label"]
