"""FIITED on real Lightning Trainers with a plain nn.Embedding/nn.EmbeddingBag LightningModule."""

from __future__ import annotations

import os
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from lightning.pytorch.loggers.logger import Logger
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch.utils.data import DataLoader, TensorDataset

from lightning_recsys.callbacks.fiited import FIITED, remap_optimizer_state
from lightning_recsys.embeddings.chunked import ChunkedEmbedding, ChunkedEmbeddingBag
from lightning_recsys.embeddings.convert import to_dense_modules
from tests._dist import run_distributed

ROWS, DIM = 40, 8

OPTIMIZERS = {
    "sgd": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9),
    "adam": lambda p: torch.optim.Adam(p, lr=0.01),
    "adamw": lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=0.01),
    "adagrad": lambda p: torch.optim.Adagrad(p, lr=0.1, initial_accumulator_value=0.1),
}


class Plain(pl.LightningModule):
    """A LightningModule written only with plain nn.Embedding / nn.EmbeddingBag / nn.Linear."""

    def __init__(self, optimizer: str = "adam") -> None:
        super().__init__()
        torch.manual_seed(0)
        self.user = nn.Embedding(ROWS, DIM)
        self.items = nn.EmbeddingBag(ROWS, DIM, mode="sum")
        self.head = nn.Linear(DIM, 1)
        self.optimizer = optimizer

    def forward(self, user, items):
        return self.head(self.user(user) * self.items(items)).squeeze(1)

    def training_step(self, batch, batch_idx):
        user, items, y = batch
        return F.binary_cross_entropy_with_logits(self(user, items), y)

    def configure_optimizers(self):
        return OPTIMIZERS[self.optimizer](self.parameters())


def _data(n: int = 96, seed: int = 1, lo: int = 0, hi: int = ROWS) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    skew = lambda *shape: lo + ((hi - lo) * torch.rand(*shape, generator=g) ** 3).long()  # noqa: E731 (hot ids)
    user, items = skew(n), skew(n, 3)
    y = ((user + items.sum(1)) % 3 == 0).float()
    return TensorDataset(user, items, y)


def _trainer(callbacks, max_steps: int, logger=False, **kw) -> pl.Trainer:
    return pl.Trainer(
        accelerator="cpu", devices=1, logger=logger, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, max_steps=max_steps, callbacks=callbacks, **kw,
    )  # fmt: skip


def test_swaps_prunes_to_target_and_frees_memory():
    module = Plain()
    dense_bytes = 2 * ROWS * DIM * 4
    cb = FIITED(chunk_size=2, target_sparsity=0.75, start_step=2, end_step=8, interval=2)
    trainer = _trainer([cb], max_steps=10)
    trainer.fit(module, DataLoader(_data(), batch_size=8))
    assert isinstance(module.user, ChunkedEmbedding) and isinstance(module.items, ChunkedEmbeddingBag)
    kept = module.user.num_kept + module.items.num_kept
    assert kept == 0.25 * 2 * ROWS * (DIM // 2)  # the byte budget lands on an exact chunk count here
    # the optimizer holds the new, smaller pools (and only those) with matching state
    opt = trainer.optimizers[0]
    held = {id(p) for g in opt.param_groups for p in g["params"]}
    assert id(module.user.pool) in held and id(module.items.pool) in held
    assert opt.state[module.user.pool]["exp_avg"].shape == module.user.pool.shape
    pool_bytes = sum(m.pool.numel() * 4 for m in (module.user, module.items))
    assert cb.embedding_bytes() == pool_bytes + 2 * ROWS * 5 and cb.embedding_bytes() < 0.45 * dense_bytes
    assert trainer.callback_metrics["fiited/kept_fraction"] == pytest.approx(0.25)
    assert trainer.callback_metrics["fiited/embedding_bytes"] == cb.embedding_bytes()
    # pruned chunks read zero; the model still runs on plain modules after export
    user, items, _ = _data()[:8]
    out = module(user, items)
    to_dense_modules(module)
    assert type(module.user) is nn.Embedding
    torch.testing.assert_close(module(user, items), out)
    assert (module.user.weight.view(ROWS, 4, 2).abs().sum(-1) > 0).sum() <= cb.tables["user"].num_kept


def test_dense_fast_path_until_the_first_pruning_event():
    """The tables look up through the dense view of the pool until the first pruning, the chunked gather after."""
    module = Plain()
    cb = FIITED(chunk_size=2, target_sparsity=0.5, start_step=3, end_step=6, interval=3, schedule="constant")
    seen = []

    class Probe(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen.append((trainer.global_step, pl_module.user.all_kept, pl_module.items.all_kept))

    _trainer([cb, Probe()], max_steps=6).fit(module, DataLoader(_data(), batch_size=8))
    assert seen == [(s, s < 3, s < 3) for s in range(6)]
    assert all(u.sum() > 0 for u in cb.utility.values())  # the fast path fed the utilities


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_optimizer_state_is_remapped(name):
    table = ChunkedEmbeddingBag.from_dense(nn.EmbeddingBag(20, 8, mode="sum"), chunk_size=2)
    other = nn.Linear(3, 3)
    opt = OPTIMIZERS[name]([{"params": [table.pool]}, {"params": other.parameters()}])
    for _ in range(2):
        table(torch.randint(0, 20, (30,)), torch.tensor([0, 10, 20])).pow(2).sum().backward()
        opt.step()
    old, before = table.pool, {k: v.clone() for k, v in opt.state[table.pool].items()}
    keep = torch.rand(20, 4) < 0.5
    src = table.set_kept(keep)
    assert remap_optimizer_state(opt, old, table.pool, src)
    assert opt.param_groups[0]["params"][0] is table.pool and old not in opt.state
    state = opt.state[table.pool]
    for key, value in before.items():
        if value.dim() == 0:  # step counters are kept
            assert torch.equal(state[key], value)
        else:
            assert state[key].shape == table.pool.shape
            assert torch.equal(state[key], value[src])  # kept chunks: their own state; fresh: the zero slot's
    table(torch.randint(0, 20, (30,)), torch.tensor([0, 10, 20])).pow(2).sum().backward()
    opt.step()  # the optimizer works on the new parameter
    assert (table.pool[0] == 0).all()


class RowCounterSGD(torch.optim.Optimizer):
    """SGD with a per-row counter (like CounterSGD) and a factored [2, C] statistic that cannot be remapped."""

    def __init__(self, params, lr: float = 0.1, factored: bool = False) -> None:
        super().__init__(params, {"lr": lr, "factored": factored})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                state = self.state[p]
                if not state:
                    state["count"] = torch.zeros(p.shape[0])
                    if group["factored"]:
                        state["col"] = torch.zeros(2, p.shape[1])
                present = p.grad.ne(0).any(1)
                state["count"] += present
                p.add_(p.grad / state["count"].clamp_min(1).sqrt().unsqueeze(1), alpha=-group["lr"])


@pytest.mark.parametrize("factored", [False, True])
def test_row_state_is_remapped_and_unmappable_state_dropped(factored):
    table = ChunkedEmbeddingBag.from_dense(nn.EmbeddingBag(20, 8, mode="sum"), chunk_size=2)
    opt = RowCounterSGD([table.pool], factored=factored)
    table(torch.randint(0, 20, (30,)), torch.tensor([0, 10, 20])).sum().backward()
    opt.step()
    old, count = table.pool, opt.state[table.pool]["count"].clone()
    src = table.set_kept(torch.rand(20, 4) < 0.5)
    assert remap_optimizer_state(opt, old, table.pool, src)
    if factored:  # a [2, C] statistic has no per-slot rows: the parameter restarts with fresh state
        assert table.pool not in opt.state
    else:
        assert torch.equal(opt.state[table.pool]["count"], count[src])


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_trains_with_torch_optimizers(name):
    module = Plain(optimizer=name)
    cb = FIITED(chunk_size=4, target_sparsity=0.5, start_step=1, end_step=3, interval=1)
    _trainer([cb], max_steps=5).fit(module, DataLoader(_data(48), batch_size=8))
    assert module.user.num_kept + module.items.num_kept == ROWS * 2  # half of 2 x 40 x 2 chunks
    assert all(torch.isfinite(p).all() for p in module.parameters())


class ReadsWeight(Plain):
    """A training loss that reads ``self.items.weight`` (an L2 penalty on the whole table), as user code does."""

    def training_step(self, batch, batch_idx):
        return super().training_step(batch, batch_idx) + 1e-3 * self.items.weight.pow(2).sum()


def test_a_loss_reading_table_weight_trains_through_pruning():
    module = ReadsWeight()
    cb = FIITED(chunk_size=4, target_sparsity=0.5, start_step=1, end_step=3, interval=1)
    _trainer([cb], max_steps=5).fit(module, DataLoader(_data(48), batch_size=8))  # raised AttributeError: 'weight'
    assert isinstance(module.items, ChunkedEmbeddingBag) and module.items.num_kept < ROWS * 2
    assert torch.equal(module.items.weight.detach(), module.items.dense_weight())


class _Events(pl.Callback):
    """Records the tables right after every pruning event (FIITED runs first in the same hook)."""

    def __init__(self, cb: FIITED) -> None:
        self.cb, self.records = cb, []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.cb.last_event_step == trainer.global_step:
            t = pl_module.user
            state = trainer.optimizers[0].state[t.pool]["exp_avg"]
            self.records.append((t.kept_mask(), t.dense_weight().view(ROWS, -1, 2), F.embedding(t._slots(torch.arange(ROWS)), state)))


def _row_rms(keep: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """RMS of every row's kept values (the whole table's for rows keeping nothing), from the dense view."""
    count = keep.sum(1) * w.shape[-1]
    rms = (w.square().sum((1, 2)) / count.clamp_min(1)).sqrt()
    return torch.where(count > 0, rms, (w.square().sum() / count.sum()).sqrt())


@pytest.mark.parametrize("init", ["scaled", "normal", "zeros"])
def test_readmitted_chunks_are_reinitialised(init):
    # phase 1 uses user ids < 20 only, phase 2 ids >= 20: utilities move, pruned chunks come back
    data = torch.utils.data.ConcatDataset([_data(48, lo=0, hi=20), _data(48, seed=2, lo=20, hi=ROWS)])
    cb = FIITED(chunk_size=2, target_sparsity=0.5, start_step=2, end_step=2, interval=2, gamma=0.05,
                readmit_init=init, readmit_std=0.5, readmit_scale=0.5, pattern="user")  # fmt: skip
    events = _Events(cb)
    module = Plain()
    _trainer([cb, events], max_steps=12).fit(module, DataLoader(data, batch_size=8))
    readmitted = 0
    for (k0, w0, _), (k1, w1, s1) in zip(events.records, events.records[1:]):
        fresh = k1 & ~k0
        readmitted += int(fresh.sum())
        if fresh.any():
            assert (s1[fresh] == 0).all()  # fresh optimizer state
            if init == "zeros":
                assert (w1[fresh] == 0).all()
            elif init == "normal":
                assert (w1[fresh] != 0).all() and w1[fresh].std() == pytest.approx(0.5, rel=0.5)
            else:  # noise at half the RMS of the row's kept values (2 steps before: the last event's record)
                scale = 0.5 * _row_rms(k0, w0).unsqueeze(1).unsqueeze(2).expand_as(w1)[fresh]
                assert (w1[fresh] != 0).all() and (w1[fresh] / scale).std() == pytest.approx(1, rel=0.5)
        assert (w1[~k1] == 0).all()
    assert readmitted > 0
    assert set(cb.tables) == {"user"} and isinstance(module.items, nn.EmbeddingBag)


class _Recorder(Logger):
    """In-memory logger: every record a CSV / TensorBoard logger would write."""

    name, version = "recorder", 0

    def __init__(self) -> None:
        super().__init__()
        self.records: list[tuple[int | None, dict]] = []

    def log_metrics(self, metrics, step=None) -> None:
        self.records.append((step, dict(metrics)))

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass


class Wide(Plain):
    """Plain with 400-row tables, so that a churn of 1% is 8 chunks."""

    def __init__(self) -> None:
        pl.LightningModule.__init__(self)
        torch.manual_seed(0)
        self.user, self.items, self.head = nn.Embedding(400, DIM), nn.EmbeddingBag(400, DIM, mode="sum"), nn.Linear(DIM, 1)
        self.optimizer = "adam"


def test_churn_after_the_schedule_is_small_and_logged_per_event():
    def run(margin: float) -> tuple[FIITED, list[float]]:
        cb = FIITED(chunk_size=2, target_sparsity=0.75, start_step=4, end_step=16, interval=4, readmit_margin=margin)
        log = _Recorder()
        _trainer([cb], max_steps=80, logger=log, log_every_n_steps=50).fit(Wide(), DataLoader(_data(32 * 80, hi=400), batch_size=32))
        churn = [(step, m["fiited/churn"]) for step, m in log.records if "fiited/churn" in m]
        assert len(churn) == cb.num_events == 20  # one record per event, whatever log_every_n_steps is
        return cb, [c for step, c in churn if step + 1 >= 32]  # stable: four events after the schedule's end

    cb, stable = run(margin=0.25)  # the default
    _, plain_ranking = run(margin=0.0)  # what FIITED did before the hysteresis
    assert max(stable) < 0.02 and sum(stable) < sum(plain_ranking) / 3
    assert all((t.pool[1:] != 0).any(1).all() for t in cb.tables.values())  # no kept chunk is all zero


@pytest.mark.parametrize("kind", ["row", "prefix", "bytes", "per_table"])
def test_row_prefix_and_byte_budget_variants(kind):
    args = {"row": {"granularity": "row"}, "prefix": {"prefix": True}, "per_table": {"threshold": "per_table"},
            "bytes": {"target_bytes": 1200, "target_sparsity": None}}[kind]  # fmt: skip
    args.setdefault("target_sparsity", 0.8)
    module = Plain()
    cb = FIITED(chunk_size=2, start_step=1, end_step=4, interval=1, **args)
    _trainer([cb], max_steps=5).fit(module, DataLoader(_data(48), batch_size=8))
    for name, t in cb.tables.items():
        keep = t.kept_mask()
        if kind == "row":
            assert (keep.all(1) | ~keep.any(1)).all()  # whole rows
        if kind == "prefix":
            assert torch.equal(keep, torch.cumprod(keep.int(), 1).bool())
        if kind == "per_table":
            assert t.num_kept == 32  # 20% of 40 x 4 in every table
    if kind == "bytes":
        assert 1200 - 16 < cb.embedding_bytes() <= 1200
    elif kind != "per_table":
        assert module.user.num_kept + module.items.num_kept <= 0.2 * 2 * ROWS * 4


def _state(module, cb):
    return {k: v.clone() for k, v in module.state_dict().items()}, cb.state_dict()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("variant", ["chunk", "prefix_floor", "warm"])
def test_resume_from_checkpoint_continues_exactly(tmp_path, variant):
    extra = {"chunk": {}, "prefix_floor": {"prefix": True, "min_chunks": 1, "utility_norm": "mean", "index_block": 4},
             "warm": {"prefix": True, "warm_start": "uniform", "index_block": 4}}[variant]  # fmt: skip

    def run(epochs, ckpt=None, save=None):
        pl.seed_everything(0)
        module = Plain()
        cb = FIITED(chunk_size=2, target_sparsity=0.7, start_step=2, end_step=10, interval=2, readmit_init="normal", **extra)
        trainer = _trainer([cb], max_steps=-1, max_epochs=epochs)
        trainer.fit(module, DataLoader(_data(48), batch_size=8), ckpt_path=ckpt)  # 6 steps per epoch
        if save is not None:
            trainer.save_checkpoint(save)
        return module, cb, trainer

    straight, cb_s, tr_s = run(2)
    half = tmp_path / "half.ckpt"
    run(1, save=half)
    assert torch.load(half, weights_only=False)["callbacks"][cb_s.state_key]["num_events"] == 3
    resumed, cb_r, tr_r = run(2, ckpt=half)
    assert cb_s.num_events == cb_r.num_events == 6
    w_s, st_s = _state(straight, cb_s)
    w_r, st_r = _state(resumed, cb_r)
    assert w_s.keys() == w_r.keys()
    for k in w_s:
        assert torch.equal(w_s[k], w_r[k]), k
    for n in st_s["utility"]:
        assert torch.equal(st_s["utility"][n], st_r["utility"][n])
        assert torch.equal(st_s["grad_norm_acc"][n], st_r["grad_norm_acc"][n])
        assert torch.equal(st_s["layout"][n], st_r["layout"][n])
        assert torch.equal(cb_s.tables[n].pool, cb_r.tables[n].pool)  # the compact pools themselves
    o_s, o_r = tr_s.optimizers[0].state_dict()["state"], tr_r.optimizers[0].state_dict()["state"]
    for i in o_s:
        for k in o_s[i]:
            assert torch.equal(o_s[i][k], o_r[i][k])


@pytest.mark.parametrize("norm", ["none", "sqrt", "mean"])
def test_prefix_floor_keeps_a_first_chunk_for_every_accessed_row(norm):
    module = Plain()
    cb = FIITED(chunk_size=1, target_sparsity=0.8, start_step=1, end_step=4, interval=1, prefix=True, min_chunks=1, utility_norm=norm)
    data = _data(48)
    _trainer([cb], max_steps=6).fit(module, DataLoader(data, batch_size=8))
    for name, t in cb.tables.items():
        assert t.prefix_block == 16 and t.mask.dtype == torch.uint8 and t.base.numel() == -(-ROWS // 16)
        keep = t.kept_mask()
        assert torch.equal(keep, torch.cumprod(keep.int(), 1).bool())
        ids = data.tensors[0] if name == "user" else data.tensors[1].flatten()
        assert keep[ids.unique(), 0].all()  # the floor
        assert (keep.sum(1) > 1).any()  # longer rows where useful
    assert sum(t.num_kept for t in cb.tables.values()) <= 0.2 * 2 * ROWS * DIM  # the budget
    assert cb.training_overhead_bytes() == 2 * (ROWS * DIM * 4 + ROWS * 4)  # after fit: utilities + access counts
    with pytest.raises(ValueError, match="min_chunks needs prefix"):
        FIITED(min_chunks=1)
    with pytest.raises(ValueError, match="utility_norm"):
        FIITED(utility_norm="log")


@pytest.mark.parametrize("mode", ["uniform", "uniform_free"])
def test_warm_start_begins_at_the_uniform_dimension(mode):
    module, seen = Plain(), []

    class Watch(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.global_step == 0:
                seen.extend(t.kept_mask().sum(1) for t in cb.tables.values())

    cb = FIITED(chunk_size=1, target_sparsity=0.7, start_step=2, end_step=4, interval=1, prefix=True, warm_start=mode)
    data = _data(48)
    _trainer([cb, Watch()], max_steps=6).fit(module, DataLoader(data, batch_size=8))
    assert all(bool((k == 2).all()) for k in seen)  # 30% of DIM = 8: every row keeps its first 2 columns
    assert cb.sparsity_at(0) == cb.sparsity_at(5) == 0.7 and cb.num_events == 5  # steps 2..6
    assert sum(t.num_kept for t in cb.tables.values()) <= 0.3 * 2 * ROWS * DIM
    for name, t in cb.tables.items():
        k = t.kept_mask().sum(1)
        ids = (data.tensors[0] if name == "user" else data.tensors[1].flatten()).unique()
        assert (k > 2).any()  # the rest of the budget went to some rows
        if mode == "uniform":
            assert (k[ids] >= 2).all() and cb.floor == 2  # accessed rows never below the uniform dimension
    assert cb.state_dict()["floor"] == (2 if mode == "uniform" else 0)
    with pytest.raises(ValueError, match="warm_start"):
        FIITED(warm_start="uniform")  # needs prefix=True
    with pytest.raises(ValueError, match="warm_start"):
        FIITED(prefix=True, warm_start="dense")
    with pytest.raises(ValueError, match="at least one chunk per row"):  # 10% of one 8-column chunk: k = 0
        tiny = FIITED(chunk_size=8, target_sparsity=0.9, prefix=True, warm_start="uniform")
        _trainer([tiny], max_steps=1).fit(Plain(), DataLoader(data, batch_size=8))


class LazyModel(Plain):
    """Builds its tables in configure_model (idempotent, as Lightning asks)."""

    def __init__(self) -> None:
        pl.LightningModule.__init__(self)
        self.user = self.items = None
        self.head = nn.Linear(DIM, 1)
        self.optimizer = "sgd"

    def configure_model(self) -> None:
        if self.user is None:
            self.user, self.items = nn.Embedding(ROWS, DIM), nn.EmbeddingBag(ROWS, DIM, mode="sum")


def test_tables_built_in_configure_model_are_chunked():
    module = LazyModel()
    cb = FIITED(chunk_size=4, target_sparsity=0.5, start_step=1, end_step=2, interval=1)
    _trainer([cb], max_steps=3).fit(module, DataLoader(_data(24), batch_size=8))
    assert isinstance(module.user, ChunkedEmbedding) and module.user.num_kept + module.items.num_kept == ROWS * 2


def test_bad_arguments_raise_clear_errors():
    for bad in (1.0, -0.1, 1.5):  # the package's policy: a ConfigurationError is both of these
        with pytest.raises(MisconfigurationException, match=r"FIITED: target_sparsity must be a number in \[0, 1\)"):
            FIITED(target_sparsity=bad)
        with pytest.raises(ValueError, match=r"target_sparsity must be a number in \[0, 1\)"):
            FIITED(target_sparsity=bad)
    for bad in ("0.5", True):
        with pytest.raises(TypeError, match="target_sparsity must be a number"):
            FIITED(target_sparsity=bad)
    with pytest.raises(TypeError, match=r"interval must be an integer >= 1, got 2.5 \(float\)"):
        FIITED(interval=2.5)
    with pytest.raises(ValueError, match="either target_sparsity or target_bytes"):
        FIITED(target_sparsity=0.5, target_bytes=100)
    with pytest.raises(ValueError, match="end_step must be an integer >= start_step"):
        FIITED(start_step=10, end_step=5)
    with pytest.raises(ValueError, match=r"granularity must be one of \['chunk', 'row'\]"):
        FIITED(granularity="column")
    with pytest.raises(ValueError, match=r"gamma must be a number in \(0, 1\]"):
        FIITED(gamma=0)
    with pytest.raises(ValueError, match="readmit_margin must be a number >= 0"):
        FIITED(readmit_margin=-0.1)
    with pytest.raises(ValueError, match="readmit_scale must be a number > 0"):
        FIITED(readmit_scale=0)
    with pytest.raises(ValueError, match=r"readmit_init must be one of \['scaled', 'normal', 'zeros'\]"):
        FIITED(readmit_init="ones")
    loader = DataLoader(_data(16), batch_size=8)
    with pytest.raises(ValueError, match="chunk_size=3 does not divide embedding_dim=8"):
        _trainer([FIITED(chunk_size=3)], max_steps=1).fit(Plain(), loader)
    with pytest.raises(ValueError, match=r"pattern 'tower' matches no embedding module; embedding modules are \['items', 'user'\]"):
        _trainer([FIITED(pattern="tower")], max_steps=1).fit(Plain(), loader)
    with pytest.raises(ValueError, match="target_bytes=100 is below the fixed cost"):
        _trainer([FIITED(target_bytes=100)], max_steps=1).fit(Plain(), loader)


def _ddp_worker(rank: int, world_size: int, out: str) -> None:
    os.environ.update(LOCAL_RANK=str(rank), NODE_RANK="0", WORLD_SIZE=str(world_size), RANK=str(rank))
    torch.set_num_threads(1)
    torch.manual_seed(rank)  # different initial tables per rank: FIITED must sync them
    module = Plain()
    module.user.weight.data.normal_()
    cb = FIITED(chunk_size=2, target_sparsity=0.6, start_step=2, end_step=6, interval=2, readmit_init="normal")
    trainer = pl.Trainer(
        accelerator="cpu", devices=world_size, strategy="ddp", max_steps=8, callbacks=[cb], use_distributed_sampler=False,
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    shard = TensorDataset(*(t[rank::world_size] for t in _data(64, seed=3 + rank).tensors))  # different data per rank
    trainer.fit(module, DataLoader(shard, batch_size=8))
    pools = {n: t.pool.detach() for n, t in cb.tables.items()}
    torch.save({"state": module.state_dict(), "pools": pools, "utility": cb.utility, "events": cb.num_events}, Path(out) / f"rank{rank}.pt")


@pytest.mark.timeout(180)
def test_ddp_two_ranks_identical_tables(tmp_path):
    run_distributed(_ddp_worker, str(tmp_path), world_size=2, timeout=150)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2))
    assert r0["events"] == r1["events"] == 4
    for k in r0["state"]:
        assert torch.equal(r0["state"][k], r1["state"][k]), k
    for n in r0["utility"]:
        assert torch.equal(r0["utility"][n], r1["utility"][n])
        assert torch.equal(r0["pools"][n], r1["pools"][n])
    assert r0["pools"]["user"].shape[0] - 1 + r0["pools"]["items"].shape[0] - 1 == int(0.4 * 2 * ROWS * 4)
