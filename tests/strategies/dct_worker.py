"""Script run by tests/strategies/test_dct_ddp.py: real 2-process ``Trainer(strategy="dct")`` runs.

``python tests/strategies/dct_worker.py OUT_DIR`` is rank 0; Lightning's subprocess launcher re-runs it
as rank 1. Every rank writes ``OUT_DIR/rank{r}.pt`` with what the tests compare.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import lightning.pytorch as pl
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import lightning_recsys  # noqa: F401  (registers "dct")
from lightning_recsys.data import SparseFeature, SyntheticCTRDataModule, TabularDataModule
from lightning_recsys.distributed import ShardedEmbeddingBagCollection
from lightning_recsys.models import RecsysModule
from lightning_recsys.models.dlrm import EmbeddingBagCollection
from lightning_recsys.strategies import DCTStrategy

ROWS, DENSE = 3000, 4


class OwnCollectionModule(pl.LightningModule):
    """A user's own model that uses our EmbeddingBagCollection (sharded by mp_compression=True)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.emb = EmbeddingBagCollection({"a": ROWS, "b": 500, "c": 300}, 8)
        self.mlp = nn.Sequential(nn.Linear(3 * 8 + DENSE, 32), nn.ReLU(), nn.Linear(32, 1))

    def training_step(self, batch, batch_idx):
        ids, dense, y = batch
        sparse = {n: SparseFeature.single_hot(ids[:, j] % c) for j, (n, c) in enumerate((("a", ROWS), ("b", 500), ("c", 300)))}
        logit = self.mlp(torch.cat([self.emb(sparse).flatten(1), dense], 1)).squeeze(1)
        return F.binary_cross_entropy_with_logits(logit, y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.5, momentum=0.9)


class PlainModule(pl.LightningModule):
    """Any LightningModule: plain nn.EmbeddingBag + nn.Linear, SGD with momentum."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.EmbeddingBag(ROWS, 8, mode="sum")
        self.mlp = nn.Sequential(nn.Linear(8 + DENSE, 64), nn.ReLU(), nn.Linear(64, 1))

    def training_step(self, batch, batch_idx):
        ids, dense, y = batch
        logit = self.mlp(torch.cat([self.emb(ids), dense], 1)).squeeze(1)
        return F.binary_cross_entropy_with_logits(logit, y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.5, momentum=0.9)


def plain_loader() -> DataLoader:
    g = torch.Generator().manual_seed(1)
    n = 2 * 4 * 32  # 2 ranks x 4 batches of 32
    ids = torch.randint(0, ROWS, (n, 3), generator=g)
    dense = torch.randn(n, DENSE, generator=g)
    y = (torch.rand(n, generator=g) < 0.3).float()
    return DataLoader(TensorDataset(ids, dense, y), batch_size=32)


class Grab(pl.Callback):
    """Keeps the sharded collections seen during training (the strategy swaps full tables back at the end)."""

    def on_train_start(self, trainer, pl_module):
        self.sharded = [m for m in pl_module.modules() if isinstance(m, ShardedEmbeddingBagCollection)]


def trainer(strategy, tmp: Path, **kw) -> pl.Trainer:
    return pl.Trainer(
        strategy=strategy, accelerator="cpu", devices=2, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp, **kw,
    )  # fmt: skip


def params(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def dct(**kw) -> DCTStrategy:
    opts = dict(density=0.02, refresh_interval=3, start_step=2, min_compress_numel=100)
    opts.update(kw)
    return DCTStrategy(**opts)


def run_dp(out: Path, res: dict) -> None:
    # by name, default options, 8 steps
    pl.seed_everything(0)
    model = PlainModule()
    t = trainer("dct", out, max_epochs=2)
    t.fit(model, plain_loader())
    st = t.strategy.comm_state
    res["by_name"] = {
        "strategy": type(t.strategy).__name__, "hook_calls": st.hook_calls, "step": st.step,
        "last_stats": st.last_stats, "total_bytes": st.total_bytes_sent,
        "logged": {k: float(v) for k, v in t.callback_metrics.items() if k.startswith("dct_")},
        "params": params(model),
    }  # fmt: skip
    # straight 8 steps vs 4 + checkpoint + resume to 8 (refresh every 3 steps: refreshes at 2, 5)
    pl.seed_everything(0)
    straight = PlainModule()
    t = trainer(dct(), out, max_epochs=2)
    t.fit(straight, plain_loader())
    res["straight"] = {"params": params(straight), "comm": t.strategy.comm_state.state_dict()}
    pl.seed_everything(0)
    half = PlainModule()
    t = trainer(dct(), out, max_epochs=1)
    t.fit(half, plain_loader())
    ckpt = out / "half.ckpt"
    t.save_checkpoint(ckpt)
    res["half_comm"] = t.strategy.comm_state.state_dict()
    pl.seed_everything(0)  # the same script resumed: same seed (Lightning seeds the sampler from it)
    resumed = PlainModule()
    t = trainer(dct(), out, max_epochs=2)
    t.fit(resumed, plain_loader(), ckpt_path=ckpt)
    res["resumed"] = {"params": params(resumed), "comm": t.strategy.comm_state.state_dict()}


def recsys_setup():
    dm = SyntheticCTRDataModule(num_train=256, num_val=64, num_test=64, batch_size=32, max_rows=60, num_sparse=4)
    pl.seed_everything(0)
    module = RecsysModule(feature_spec=dm.feature_spec, embedding_dim=8, bottom_mlp=(16,), top_mlp=(16,))
    return dm, module


def run_mp(out: Path, res: dict) -> None:
    dm, straight = recsys_setup()
    grab = Grab()
    t = trainer(dct(mp_compression=True), out, max_epochs=2, limit_val_batches=1, num_sanity_val_steps=0,
                callbacks=[grab])
    t.fit(straight, dm)
    (coll,) = grab.sharded
    res["mp"] = {
        "is_sharded": isinstance(coll, ShardedEmbeddingBagCollection), "local_tables": sorted(coll.tables),
        "after_fit": type(straight.model.backbone.embeddings).__name__,
        "after_fit_state": {k: v for k, v in params(straight).items() if ".tables." in k},
        "stats": dict(coll.stats), "dense_params": {k: v for k, v in params(straight).items() if ".tables." not in k},
        "full": {k: v for k, v in t.strategy.lightning_module_state_dict().items() if ".tables." in k},
        "comm": t.strategy.comm_state.state_dict(), "val_auc": float(t.callback_metrics.get("val_auc", float("nan"))),
    }  # fmt: skip
    # resume exactness with sharded tables (per-rank optimizer states, gathered tables, hook state)
    def fit(epochs, ckpt=None):
        pl.seed_everything(0)
        m = OwnCollectionModule()
        grab = Grab()
        # threshold codec: its state (step, thresholds refreshed at steps 1, 4, 7) must survive the checkpoint
        mp = dict(mp_codec="threshold", mp_keep_ratio=0.25, mp_start_step=1, mp_refresh_interval=3)
        t = trainer(dct(mp_compression=True, **mp), out, max_epochs=epochs, callbacks=[grab])
        t.fit(m, plain_loader(), ckpt_path=ckpt)
        return t, grab.sharded[0]

    t, m = fit(2)
    res["own_straight"] = {"state": t.strategy.lightning_module_state_dict(), "comm": t.strategy.comm_state.state_dict(),
                           "codec": m.codec.state_dict()}  # fmt: skip
    t, m = fit(1)
    ckpt = out / "mp_half.ckpt"
    t.save_checkpoint(ckpt)
    t, m = fit(2, ckpt)
    res["own_resumed"] = {"state": t.strategy.lightning_module_state_dict(), "comm": t.strategy.comm_state.state_dict(),
                          "codec": m.codec.state_dict()}  # fmt: skip
    res["own_local_tables"] = sorted(m.tables)
    res["mp_ckpt_keys"] = sorted(k for k in torch.load(ckpt, weights_only=False)["state_dict"] if ".tables." in k)


def _topk_mask(block: torch.Tensor, k: int) -> torch.Tensor:
    return torch.zeros_like(block).scatter_(-1, torch.topk(block.abs(), k, dim=-1).indices, 1.0)


def run_boundary(res: dict) -> None:
    """Compressed all-to-all vs the uncompressed one with the same top-k mask applied (per table, and
    over each owner's whole row)."""
    rank = dist.get_rank()
    cards = {"a": 50, "b": 40, "c": 30}
    keep = 0.25
    ref = ShardedEmbeddingBagCollection(cards, 4, codec="fp32", seed=1)
    cmp = ShardedEmbeddingBagCollection(cards, 4, codec="topk", keep_ratio=keep, seed=1)
    row = ShardedEmbeddingBagCollection(cards, 4, codec="topk", keep_ratio=keep, per_table=False, seed=1)
    g = torch.Generator().manual_seed(10 + rank)
    batch = 6 + rank  # ranks may hold different batch sizes
    sparse = {}
    for n, c in cards.items():
        lengths = torch.randint(0, 4, (batch,), generator=g)
        offsets = torch.zeros(batch + 1, dtype=torch.long)
        offsets[1:] = lengths.cumsum(0)
        values = torch.randint(0, c, (int(offsets[-1]),), generator=g)
        weights = torch.rand(values.numel(), generator=g) if n == "b" else None
        sparse[n] = SparseFeature(values, offsets, weights)
    out_ref = ref(sparse)
    out_cmp = cmp(sparse)
    out_row = row(sparse)
    names = list(cards)
    mask = _topk_mask(out_ref.detach(), 1)  # per table: ceil(0.25 * 4) = 1 of each table's 4 entries
    row_mask = torch.zeros_like(out_ref)
    for owned in row.owned:
        if not owned:
            continue
        cols = [names.index(n) for n in owned]
        block = out_ref[:, cols, :].detach().reshape(batch, -1)
        row_mask[:, cols, :] = _topk_mask(block, math.ceil(keep * block.shape[1])).reshape(batch, len(cols), -1)
    w = torch.randn(out_ref.shape, generator=g)
    (out_row * w).sum().backward()
    res["boundary_row"] = {
        "out_cmp": out_row.detach(), "out_masked_ref": (out_ref * row_mask).detach(),
        "grads_cmp": {n: t.weight.grad.clone() for n, t in row.tables.items()},
    }  # fmt: skip
    (out_ref * row_mask * w).sum().backward(retain_graph=True)
    res["boundary_row"]["grads_ref"] = {n: t.weight.grad.clone() for n, t in ref.tables.items()}
    ref.zero_grad()
    w = torch.randn(out_ref.shape, generator=g)
    (out_cmp * w).sum().backward()
    (out_ref * mask * w).sum().backward()
    res["boundary"] = {
        "out_cmp": out_cmp.detach(), "out_masked_ref": (out_ref * mask).detach(), "kept": float(mask.mean()),
        "grads_cmp": {n: t.weight.grad.clone() for n, t in cmp.tables.items()},
        "grads_ref": {n: t.weight.grad.clone() for n, t in ref.tables.items()},
        "stats_cmp": dict(cmp.stats), "stats_ref": dict(ref.stats),
    }  # fmt: skip
    for codec in ("fp16", "int8"):
        q = ShardedEmbeddingBagCollection(cards, 4, codec=codec, seed=1)
        out = q(sparse)
        out.sum().backward()
        res["boundary"][codec] = {"max_err": float((out - out_ref).abs().max()), "stats": dict(q.stats)}


def _plain_vs_dct(model_fn, opt_fn, batch_fn, steps: int, start_step: int) -> tuple[dict, dict, dict, nn.Module]:
    """The same DDP training with the default all-reduce hook and with ours (tau = 0 everywhere:
    ``min_compress_numel`` above every bucket): final parameters of both, our hook's last stats, the model."""
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
    from torch.nn.parallel import DistributedDataParallel as DDP

    from lightning_recsys.strategies import DCTCommState, dct_comm_hook

    finals, stats = [], {}
    for use_dct in (False, True):
        torch.manual_seed(0)
        model = model_fn()
        ddp = DDP(model)
        if use_dct:
            state = DCTCommState(min_compress_numel=10**9, start_step=start_step).bind(ddp)
            ddp.register_comm_hook(state, dct_comm_hook)
        else:
            ddp.register_comm_hook(None, default_hooks.allreduce_hook)
        opt = opt_fn(ddp.parameters())
        g = torch.Generator().manual_seed(dist.get_rank())
        for _ in range(steps):
            x, y = batch_fn(g)
            opt.zero_grad()
            F.mse_loss(ddp(x), y).backward()
            opt.step()
        finals.append(params(model))
        if use_dct:
            stats = dict(state.last_stats)
    return finals[0], finals[1], stats, model


def run_fallback(res: dict) -> None:
    """Where pairs would cost more than a dense all-reduce, the hook all-reduces: same result as plain DDP
    (tau = 0 everywhere: every nonzero would be sent, so the dense path is cheaper)."""
    plain, ours, stats, model = _plain_vs_dct(
        lambda: nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Linear(32, 1)), lambda p: torch.optim.SGD(p, lr=0.1),
        lambda g: (torch.randn(16, 6, generator=g), torch.randn(16, 1, generator=g)), steps=4, start_step=2,
    )  # fmt: skip
    numel = sum(p.numel() for p in model.parameters())
    res["fallback"] = {"plain": plain, "dct": ours, "stats": stats, "numel": numel}


def run_sparse(res: dict) -> None:
    """A table with sparse gradients (``sparse=True``, Adagrad): its bucket is all-reduced as it is (the
    linear's bucket too: tau = 0), so training ends as with plain DDP."""
    plain, ours, stats, _ = _plain_vs_dct(
        lambda: nn.Sequential(nn.EmbeddingBag(ROWS, 8, mode="sum", sparse=True), nn.Linear(8, 1)),
        lambda p: torch.optim.Adagrad(p, lr=0.1),
        lambda g: (torch.randint(0, ROWS, (16, 3), generator=g), torch.randn(16, 1, generator=g)), steps=3, start_step=0,
    )  # fmt: skip
    res["sparse"] = {"plain": plain, "dct": ours, "stats": stats}


class Rows(pl.Callback):
    """The training rows this rank's loader serves (after Lightning put its distributed sampler in)."""

    def on_train_start(self, trainer, pl_module):
        loader = trainer.train_dataloader
        self.sampler = type(loader.sampler).__name__
        self.rows = [int(loader.dataset.rows[i]) for i in loader.sampler]


def run_tabular(out: Path, res: dict) -> None:
    """A user's table (TabularDataModule, as the README's "Your own data") under strategy="dct": each rank
    reads its own half of the training rows, and the replicas stay identical."""
    g = torch.Generator().manual_seed(3)
    n = 600
    columns = {"user": torch.randint(0, 40, (n,), generator=g), "item": torch.randint(0, 30, (n,), generator=g),
               "price": torch.rand(n, generator=g), "click": (torch.rand(n, generator=g) < 0.3).long()}  # fmt: skip
    dm = TabularDataModule(columns=columns, sparse=["user", "item"], dense=["price"], labels="click", batch_size=40)
    pl.seed_everything(0)
    module = RecsysModule(feature_spec=dm.feature_spec, embedding_dim=8)
    rows = Rows()
    trainer(dct(), out, max_epochs=1, limit_val_batches=1, num_sanity_val_steps=0, callbacks=[rows]).fit(module, dm)
    res["tabular"] = {"sampler": rows.sampler, "rows": rows.rows, "train_rows": dm.train_dataset.rows.tolist(),
                      "params": params(module)}  # fmt: skip


def main() -> None:
    out = Path(sys.argv[1])
    res: dict = {}
    run_dp(out, res)
    run_mp(out, res)
    run_boundary(res)
    run_fallback(res)
    run_sparse(res)
    run_tabular(out, res)
    torch.save(res, out / f"rank{dist.get_rank()}.pt")
    dist.barrier()
    # last, because Lightning's launcher stops the other rank after an exception
    try:
        trainer(dct(mp_compression=True), out, max_steps=1).fit(PlainModule(), plain_loader())
    except ValueError as err:
        (out / f"mp_error_rank{dist.get_rank()}.txt").write_text(str(err))


if __name__ == "__main__":
    main()
