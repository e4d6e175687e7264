"""MultiBalance under real 2-process gloo DDP: norms all-reduced, same weights and gradients on both ranks."""

from __future__ import annotations

import os
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_recsys.callbacks.multibalance import MultiBalance
from tests._dist import run_distributed
from tests.callbacks.test_multibalance import Encoder, _data

BETA = 0.5


class TwoTask(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.encoder = Encoder()
        self.head_a = nn.Linear(6, 1)
        self.head_b = nn.Linear(6, 1)
        self.shared_representation = "encoder"

    def losses(self, batch):
        ids, dense, ya, yb = batch
        z = self.encoder(ids, dense)
        return {
            "a": F.binary_cross_entropy_with_logits(self.head_a(z).squeeze(1), ya),
            "b": 20.0 * F.mse_loss(self.head_b(z).squeeze(1), yb),
        }

    def training_step(self, batch, batch_idx):
        self.task_losses = self.losses(batch)
        return self.task_losses["a"] + self.task_losses["b"]

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


class _Record(pl.Callback):
    def __init__(self, mb: MultiBalance) -> None:
        self.mb = mb
        self.grads: list[dict[str, torch.Tensor]] = []
        self.norms: list[torch.Tensor] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.grads.append({n: p.grad.detach().clone() for n, p in pl_module.named_parameters()})
        self.norms.append(self.mb.norms.clone())


def _worker(rank: int, world_size: int, out: str) -> None:
    os.environ.update(LOCAL_RANK=str(rank), NODE_RANK="0", WORLD_SIZE=str(world_size), RANK=str(rank))
    torch.set_num_threads(1)
    mb = MultiBalance(relax_factor=1.0, beta=BETA, anchor="target", target_task="a")
    rec = _Record(mb)
    trainer = pl.Trainer(
        accelerator="cpu", devices=world_size, strategy="ddp", max_steps=2, callbacks=[mb, rec],
        use_distributed_sampler=False,
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    module = TwoTask()
    shard = TensorDataset(*(t[rank::world_size] for t in _data().tensors))  # rank r: rows r, r+2, ...
    trainer.fit(module, DataLoader(shard, batch_size=4, shuffle=False))
    torch.save(
        {"grads": rec.grads, "norms": rec.norms, "params": dict(module.named_parameters()), "weights": mb.last_weights},
        Path(out) / f"rank{rank}.pt",
    )


def _reference_step1(beta: float) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Averaged gradients of step 1 computed by hand: rank r's first batch is rows r, r+2, r+4, r+6."""
    module = TwoTask()
    data = _data().tensors
    shards = [[t[r:8:2] for t in data] for r in range(2)]
    per_rank = []
    for shard in shards:
        ids, dense, ya, yb = shard
        z = module.encoder(ids, dense)
        la = F.binary_cross_entropy_with_logits(module.head_a(z).squeeze(1), ya)
        lb = 20.0 * F.mse_loss(module.head_b(z).squeeze(1), yb)
        ga, gb = (torch.autograd.grad(loss, z, retain_graph=True)[0] for loss in (la, lb))
        per_rank.append((z, la, lb, ga, gb))
    sq = torch.stack([torch.stack([ga.pow(2).sum(), gb.pow(2).sum()]) for _, _, _, ga, gb in per_rank]).mean(0)
    norms = (1 - beta) * sq.sqrt()
    scale = norms[0] / (norms + 1e-8)
    grads = {n: torch.zeros_like(p) for n, p in module.named_parameters()}
    enc = dict(module.encoder.named_parameters())
    heads = {f"head_{k}.{n}": p for k in "ab" for n, p in getattr(module, f"head_{k}").named_parameters()}
    for z, la, lb, ga, gb in per_rank:
        for n, g in zip(enc, torch.autograd.grad(z, list(enc.values()), scale[0] * ga + scale[1] * gb, retain_graph=True)):
            grads[f"encoder.{n}"] += g / 2
        for n, g in zip(heads, torch.autograd.grad(la + lb, list(heads.values()))):
            grads[n] += g / 2
    return grads, norms


@pytest.mark.timeout(240)
def test_ddp_two_ranks_same_weights_and_allreduced_norms(tmp_path):
    run_distributed(_worker, str(tmp_path), world_size=2, timeout=200)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2))
    assert r0["weights"] == r1["weights"]
    assert r0["weights"]["b"] != pytest.approx(1.0, abs=1e-3)  # the balancing really did something
    for step in range(2):
        assert torch.equal(r0["norms"][step], r1["norms"][step])
        for n in r0["grads"][step]:
            torch.testing.assert_close(r0["grads"][step][n], r1["grads"][step][n], rtol=0, atol=1e-7)
    for n in r0["params"]:
        torch.testing.assert_close(r0["params"][n], r1["params"][n], rtol=0, atol=1e-7)
    # step 1 against a hand computation with all-reduced squared norms and DDP's gradient averaging
    ref_grads, ref_norms = _reference_step1(BETA)
    torch.testing.assert_close(r0["norms"][0], ref_norms, rtol=1e-5, atol=1e-7)
    for n, g in ref_grads.items():
        torch.testing.assert_close(r0["grads"][0][n], g, rtol=1e-4, atol=1e-6)
