"""FIITED checkpoints and tied weights on models written the usual user way.

A CTR LightningModule with ``nn.EmbeddingBag`` tables taking ``(dense, ids, offsets)`` batches, and a tiny
language model whose decoder is tied to its token embedding (Lightning's demo Transformer pattern).
"""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_recsys.callbacks.fiited import FIITED
from lightning_recsys.embeddings.chunked import ChunkedEmbedding, ChunkedEmbeddingBag
from lightning_recsys.optim import CounterSGD

ROWS, DIM = 60, 8


class BagCTR(pl.LightningModule):
    """A user's CTR model: a dense feature tower and two ``nn.EmbeddingBag`` tables over the same bags."""

    def __init__(self, rows: int = ROWS, dim: int = DIM, lr: float = 0.01) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.user = nn.EmbeddingBag(rows, dim, mode="sum")
        self.item = nn.EmbeddingBag(rows, dim, mode="mean")
        self.bottom = nn.Linear(4, dim)
        self.head = nn.Linear(dim, 1)

    def forward(self, dense: torch.Tensor, ids: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        item_ids = (ids * 7 + 3) % self.hparams.rows
        return self.head(self.bottom(dense) + self.user(ids, offsets) * self.item(item_ids, offsets)).squeeze(1)

    def training_step(self, batch, batch_idx):
        dense, ids, offsets, y = batch
        return F.binary_cross_entropy_with_logits(self(dense, ids, offsets), y)

    def test_step(self, batch, batch_idx):
        dense, ids, offsets, y = batch
        self.log("test_loss", F.binary_cross_entropy_with_logits(self(dense, ids, offsets), y), batch_size=len(y))

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)


class CounterCTR(BagCTR):
    """The same model trained with CounterSGD: one count per pool slot, state without a dense form."""

    def configure_optimizers(self):
        return CounterSGD.from_module(self, lr=0.05)


def _collate(items):
    """Variable-length bags (1 to 3 ids) flattened with offsets, as a user's collate_fn would."""
    dense, ids, lengths, y = (torch.stack(t) for t in zip(*items))
    flat = torch.cat([row[:n] for row, n in zip(ids, lengths)])
    offsets = torch.cat([lengths.new_zeros(1), lengths.cumsum(0)[:-1]])
    return dense, flat, offsets, y


def _loader(n: int = 96, seed: int = 0) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    ids = (ROWS * torch.rand(n, 3, generator=g) ** 2).long()
    lengths = torch.randint(1, 4, (n,), generator=g)
    dense = torch.randn(n, 4, generator=g)
    y = ((ids[:, 0] % 3 == 0).float() + 0.5 * dense[:, 0] > 0.5).float()
    return DataLoader(TensorDataset(dense, ids, lengths, y), batch_size=16, collate_fn=_collate)


def _trainer(callbacks: list, max_steps: int = -1, **kw) -> pl.Trainer:
    return pl.Trainer(
        accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, max_steps=max_steps, callbacks=callbacks, **kw,
    )  # fmt: skip


def _fiited() -> FIITED:
    return FIITED(chunk_size=2, target_sparsity=0.75, start_step=2, end_step=6, interval=2)


@pytest.fixture(scope="module")
def pruned(tmp_path_factory):
    """A BagCTR trained 8 steps with FIITED (75% of the chunks pruned), its checkpoints and a batch."""
    tmp = tmp_path_factory.mktemp("fiited")
    pl.seed_everything(0)
    module = BagCTR()
    cb = _fiited()
    trainer = _trainer([cb], max_steps=8)
    trainer.fit(module, _loader())
    trainer.save_checkpoint(tmp / "full.ckpt")
    trainer.save_checkpoint(tmp / "weights.ckpt", weights_only=True)
    module.eval()
    batch = next(iter(_loader(32, seed=5)))
    with torch.no_grad():
        out = module(*batch[:3])
    return {"module": module, "cb": cb, "dir": tmp, "batch": batch, "out": out}


def test_the_in_training_model_holds_only_the_compact_pools(pruned):
    module = pruned["module"]
    assert isinstance(module.user, ChunkedEmbeddingBag) and isinstance(module.item, ChunkedEmbeddingBag)
    kept = module.user.num_kept + module.item.num_kept
    assert kept == 0.25 * 2 * ROWS * DIM // 2
    table_params = sum(p.numel() for m in (module.user, module.item) for p in m.parameters())
    assert table_params == (kept + 2) * 2  # kept chunks + one zero slot per table, 2 columns each


@pytest.mark.parametrize("name", ["full.ckpt", "weights.ckpt"])
def test_pruned_checkpoint_loads_into_the_plain_module(pruned, name):
    path = pruned["dir"] / name
    loaded = BagCTR.load_from_checkpoint(path)
    assert type(loaded.user) is nn.EmbeddingBag and type(loaded.item) is nn.EmbeddingBag
    loaded.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(*pruned["batch"][:3]), pruned["out"], rtol=0, atol=1e-6)
    plain = BagCTR()
    plain.load_state_dict(torch.load(path, weights_only=True)["state_dict"])  # strict, plain torch.load
    assert torch.equal(plain.user.weight, loaded.user.weight)
    pruned_chunks = (loaded.user.weight.view(ROWS, -1, 2).abs().sum(-1) == 0).sum()
    assert pruned_chunks >= ROWS * DIM // 2 - pruned["module"].user.num_kept  # pruned chunks read 0


def test_checkpoint_tests_and_resumes_without_the_callback(pruned):
    path = pruned["dir"] / "full.ckpt"
    expected = _trainer([]).test(pruned["module"], _loader(32, seed=5), verbose=False)[0]["test_loss"]
    got = _trainer([]).test(BagCTR(), _loader(32, seed=5), ckpt_path=path, verbose=False)[0]["test_loss"]
    assert got == pytest.approx(expected, abs=1e-6)
    module = BagCTR()
    trainer = _trainer([], max_steps=11)
    with pytest.warns(UserWarning, match="callbacks used to create the checkpoint"):
        trainer.fit(module, _loader(), ckpt_path=path)  # 3 more dense steps from the pruned state
    assert trainer.global_step == 11 and type(module.user) is nn.EmbeddingBag
    exp_avg = trainer.optimizers[0].state[module.user.weight]["exp_avg"]
    assert exp_avg.shape == (ROWS, DIM) and torch.isfinite(module.user.weight).all()


def test_checkpoint_with_the_callback_restores_the_compact_tables(pruned):
    path = pruned["dir"] / "full.ckpt"
    module = BagCTR()
    _trainer([_fiited()]).test(module, _loader(32, seed=5), ckpt_path=path, verbose=False)
    for name in ("user", "item"):
        table, ref = getattr(module, name), getattr(pruned["module"], name)
        assert isinstance(table, ChunkedEmbeddingBag) and torch.equal(table.mask, ref.mask) and torch.equal(table.pool, ref.pool)
    module.eval()
    with torch.no_grad():
        assert torch.equal(module(*pruned["batch"][:3]), pruned["out"])


@pytest.mark.parametrize("cls", [BagCTR, CounterCTR])
def test_resume_with_the_callback_continues_exactly(tmp_path, cls):
    def run(epochs: int, ckpt=None, save=None):
        pl.seed_everything(0)
        module, cb = cls(), FIITED(chunk_size=2, target_sparsity=0.7, start_step=2, end_step=8, interval=2)
        trainer = _trainer([cb], max_epochs=epochs)
        trainer.fit(module, _loader(), ckpt_path=ckpt)  # 6 steps per epoch
        if save is not None:
            trainer.save_checkpoint(save)
        return module, trainer

    straight, tr_s = run(2)
    run(1, save=tmp_path / "half.ckpt")  # at an epoch end: a plain DataLoader does not resume mid-epoch
    resumed, tr_r = run(2, ckpt=tmp_path / "half.ckpt")
    for name in ("user", "item"):
        a, b = getattr(straight, name), getattr(resumed, name)
        assert torch.equal(a.mask, b.mask) and torch.equal(a.pool, b.pool), name
    for k, v in straight.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k
    o_s, o_r = tr_s.optimizers[0].state_dict()["state"], tr_r.optimizers[0].state_dict()["state"]
    assert o_s.keys() == o_r.keys()
    for i in o_s:
        for k in o_s[i]:
            assert torch.equal(o_s[i][k], o_r[i][k]), (i, k)
    plain = _trainer([], max_epochs=2)  # and the same checkpoint resumes the plain module
    with pytest.warns(UserWarning, match="callbacks used to create the checkpoint"):
        plain.fit(cls(), _loader(), ckpt_path=tmp_path / "half.ckpt")
    assert plain.global_step == 12


class TinyLM(pl.LightningModule):
    """A tiny language model in the style of Lightning's demo Transformer, weights tied."""

    def __init__(self, vocab: int = 24, dim: int = 8, context: int = 6) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab, dim)
        self.pos = nn.Embedding(context, dim)
        self.mix = nn.Linear(dim, dim)
        self.decoder = nn.Linear(dim, vocab)
        self.decoder.weight = self.embedding.weight  # tying

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.embedding(tokens) + self.pos(torch.arange(tokens.shape[1]))
        return self.decoder(torch.tanh(self.mix(h)))

    def training_step(self, batch, batch_idx):
        (tokens,) = batch
        logits = self(tokens[:, :-1])
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _tokens() -> DataLoader:
    return DataLoader(TensorDataset(torch.randint(0, 24, (64, 7), generator=torch.Generator().manual_seed(0))), batch_size=8)


def _param_bytes(module: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())  # tied parameters counted once


def test_tied_weights_are_refused_with_a_clear_error_before_training():
    module = TinyLM()
    before = {k: v.clone() for k, v in module.state_dict().items()}
    trainer = _trainer([FIITED(chunk_size=2)], max_steps=4)
    with pytest.raises(ValueError, match=r"embedding\.weight is also \['decoder\.weight'\].*pattern="):
        trainer.fit(module, _tokens())
    assert trainer.global_step == 0 and type(module.embedding) is nn.Embedding
    assert module.decoder.weight is module.embedding.weight
    assert all(torch.equal(v, module.state_dict()[k]) for k, v in before.items())


def test_excluding_the_tied_table_keeps_the_tie_and_memory_shrinks():
    module = TinyLM()
    dense_bytes = _param_bytes(module)
    cb = FIITED(chunk_size=2, target_sparsity=0.5, start_step=2, end_step=4, interval=2, pattern="^pos$")
    _trainer([cb], max_steps=6).fit(module, _tokens())
    assert isinstance(module.pos, ChunkedEmbedding) and module.pos.num_kept == 6 * 4 // 2
    assert module.decoder.weight is module.embedding.weight  # still tied, trained as one parameter
    assert _param_bytes(module) < dense_bytes
