"""MultiBalance / parameter-level MetaBalance on real Lightning Trainers, checked against hand computations."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_recsys.callbacks.multibalance import MultiBalance
from lightning_recsys.data import SyntheticCTRDataModule
from lightning_recsys.models import RecsysModule

SCALE_B = 20.0  # task b's loss is on a much larger scale than task a's


def _data(n: int = 16) -> TensorDataset:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 20, (n, 3), generator=g)
    dense = torch.randn(n, 4, generator=g)
    ya = (torch.rand(n, generator=g) < 0.4).float()
    yb = torch.randn(n, generator=g)
    return TensorDataset(ids, dense, ya, yb)


class Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.EmbeddingBag(20, 6, mode="sum")
        self.dense = nn.Linear(4, 6)

    def forward(self, ids, dense):
        return torch.relu(self.emb(ids) + self.dense(dense))


class UserModule(pl.LightningModule):
    """A user's own two-task module: plain nn layers, adopting the protocol in two lines."""

    def __init__(self, protocol: bool = True, set_losses: bool = True) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.encoder = Encoder()
        self.head_a = nn.Linear(6, 1)
        self.head_b = nn.Linear(6, 1)
        if protocol:
            self.shared_representation = "encoder"  # protocol line 1
        self.set_losses = set_losses

    def losses(self, batch, z=None):
        ids, dense, ya, yb = batch
        z = self.encoder(ids, dense) if z is None else z
        return {
            "a": F.binary_cross_entropy_with_logits(self.head_a(z).squeeze(1), ya),
            "b": SCALE_B * F.mse_loss(self.head_b(z).squeeze(1), yb),
        }

    def training_step(self, batch, batch_idx):
        losses = self.losses(batch)
        if self.set_losses:
            self.task_losses = losses  # protocol line 2
        return losses["a"] + losses["b"]

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


class RecordGrads(pl.Callback):
    def __init__(self) -> None:
        self.grads: list[dict[str, torch.Tensor]] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.grads.append({n: p.grad.detach().clone() for n, p in pl_module.named_parameters()})


def _trainer(callbacks, max_steps: int, **kwargs) -> pl.Trainer:
    return pl.Trainer(
        accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, max_steps=max_steps, callbacks=callbacks, **kwargs,
    )  # fmt: skip


def _fit(callbacks, max_steps: int = 1, batch_size: int = 8, module=None, **kwargs):
    module = module or UserModule()
    rec = RecordGrads()
    _trainer([*callbacks, rec], max_steps, **kwargs).fit(module, DataLoader(_data(), batch_size=batch_size))
    return module, rec.grads


def _per_task(module: UserModule, batch):
    """Per-task gradients on the representation Z, the parameters, and Z itself (for the shared backward)."""
    z = module.encoder(*batch[:2])
    losses = module.losses(batch, z)
    g = {t: torch.autograd.grad(loss, z, retain_graph=True)[0] for t, loss in losses.items()}
    return z, losses, g


def _expected(module: UserModule, batch, scale: dict[str, float], factor: float = 1.0) -> dict[str, torch.Tensor]:
    """Shared grads = backward of Z with sum_i scale_i g_i; heads = grads of the plain sum of losses."""
    z, losses, g = _per_task(module, batch)
    enc = dict(module.encoder.named_parameters())
    heads = {n: p for n, p in module.named_parameters() if n.startswith("head")}
    out = {}
    gz = sum(scale[t] * g[t] for t in g)
    for n, gp in zip(enc, torch.autograd.grad(z, list(enc.values()), gz, retain_graph=True)):
        out[f"encoder.{n}"] = factor * gp
    for n, gp in zip(heads, torch.autograd.grad(losses["a"] + losses["b"], list(heads.values()))):
        out[n] = factor * gp
    return out


def _close(actual: dict, expected: dict, **tol) -> None:
    for n, e in expected.items():
        torch.testing.assert_close(actual[n], e, **(tol or {"rtol": 1e-5, "atol": 1e-6}))


@pytest.mark.parametrize("level", ["representation", "parameter"])
def test_relax_zero_equals_plain_sum(level):
    _, plain = _fit([], max_steps=3)
    _, balanced = _fit([MultiBalance(relax_factor=0.0, level=level)], max_steps=3)
    for step in range(3):
        _close(balanced[step], plain[step])


@pytest.mark.parametrize("anchor", ["target", "max", "mean"])
def test_relax_one_matches_anchor_magnitude(anchor):
    batch = _data()[:8]
    module0 = UserModule()
    _, _, g = _per_task(module0, batch)
    norms = {t: float(v.norm()) for t, v in g.items()}
    assert norms["b"] > 5 * norms["a"]  # very different loss scales
    a = {"target": norms["a"], "max": max(norms.values()), "mean": sum(norms.values()) / 2}[anchor]
    mb = MultiBalance(relax_factor=1.0, beta=0.0, anchor=anchor, target_task="a", eps=1e-12)
    _, grads = _fit([mb])
    # each task's balanced gradient on the representation has the anchor's magnitude
    for t in "ab":
        assert mb.last_weights[t] * norms[t] == pytest.approx(a, rel=1e-5)
    # and the shared parameters got exactly the backward of sum_i scale_i g_i
    _close(grads[0], _expected(module0, batch, {t: a / norms[t] for t in "ab"}))


def test_per_task_gradients_are_separate():
    """Balanced shared gradients are not a rescaling of the summed gradient; heads keep the plain gradients."""
    _, plain = _fit([])
    _, balanced = _fit([MultiBalance(relax_factor=1.0, beta=0.0, target_task="a")])
    for n in ("head_a.weight", "head_b.weight"):
        torch.testing.assert_close(balanced[0][n], plain[0][n])
    p, b = plain[0]["encoder.dense.weight"].flatten(), balanced[0]["encoder.dense.weight"].flatten()
    cosine = float(p @ b / (p.norm() * b.norm()))
    assert cosine < 0.99, cosine  # a different direction: task a now weighs as much as task b
    assert float(b.norm()) < 0.5 * float(p.norm())  # task b pulled down to task a's magnitude


def test_parameter_level_balances_each_shared_parameter():
    batch = _data()[:8]
    module0 = UserModule()
    z, losses, _ = _per_task(module0, batch)
    enc = dict(module0.encoder.named_parameters())
    per_task = {t: dict(zip(enc, torch.autograd.grad(loss, list(enc.values()), retain_graph=True))) for t, loss in losses.items()}
    mb = MultiBalance(relax_factor=1.0, beta=0.0, anchor="target", target_task="a", level="parameter", eps=1e-12)
    _, grads = _fit([mb])
    for n in enc:
        ga, gb = per_task["a"][n], per_task["b"][n]
        expected = ga + gb * (ga.norm() / gb.norm())
        torch.testing.assert_close(grads[0][f"encoder.{n}"], expected, rtol=1e-5, atol=1e-6)


def test_gradient_accumulation_and_moving_average():
    """Two micro-batches, beta=0.5: EMA over both, each micro-batch's gradient divided by 2 like the loss."""
    beta, r = 0.5, 0.7
    module0 = UserModule()
    data = _data()
    mb = MultiBalance(relax_factor=r, beta=beta, target_task="a")
    _, grads = _fit([mb], batch_size=4, accumulate_grad_batches=2)
    n = torch.zeros(2)
    expected: dict[str, torch.Tensor] = {}
    for k in range(2):
        batch = data[4 * k : 4 * k + 4]
        _, _, g = _per_task(module0, batch)
        n = beta * n + (1 - beta) * torch.stack([g["a"].norm(), g["b"].norm()])
        scale = r * n[0] / (n + 1e-8) + (1 - r)
        for name, v in _expected(module0, batch, {"a": float(scale[0]), "b": float(scale[1])}, factor=0.5).items():
            expected[name] = expected.get(name, 0) + v
    _close(grads[0], expected)
    torch.testing.assert_close(mb.norms, n)
    assert mb.steps == 2


def test_resume_from_checkpoint_is_exact(tmp_path):
    def run(max_epochs: int, ckpt=None, save=None):
        dm = SyntheticCTRDataModule(num_train=384, num_val=128, num_test=128, batch_size=128, max_rows=50, num_sparse=4, base_rates=(0.3, 0.02))
        torch.manual_seed(0)
        module = RecsysModule(feature_spec=dm.feature_spec, arch="multitask", embedding_dim=4, bottom_mlp=(8,), shared_mlp=(8,), tower_mlp=(4,))
        mb = MultiBalance(relax_factor=0.7, beta=0.9, target_task="conversion")
        trainer = pl.Trainer(
            accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
            enable_model_summary=False, max_epochs=max_epochs, callbacks=[mb], limit_val_batches=0,
        )  # fmt: skip
        trainer.fit(module, dm, ckpt_path=ckpt)
        if save:
            trainer.save_checkpoint(save)
        return module, mb

    straight, mb_straight = run(2)
    run(1, save=tmp_path / "half.ckpt")
    resumed, mb_resumed = run(2, ckpt=tmp_path / "half.ckpt")
    assert mb_resumed.steps == mb_straight.steps == 6
    assert torch.equal(mb_resumed.norms, mb_straight.norms)
    for (n, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), n
    ckpt = torch.load(tmp_path / "half.ckpt", weights_only=False)
    assert any("MultiBalance" in k for k in ckpt["callbacks"])


def test_logs_norms_and_weights():
    mb = MultiBalance(relax_factor=1.0, beta=0.0, target_task="a")
    module = UserModule()
    trainer = _trainer([mb], max_steps=1)
    trainer.fit(module, DataLoader(_data(), batch_size=8))
    logged = trainer.callback_metrics
    assert float(logged["multibalance/weight_a"]) == pytest.approx(1.0, rel=1e-5)
    assert float(logged["multibalance/weight_b"]) == pytest.approx(mb.last_weights["b"], rel=1e-6)
    assert float(logged["multibalance/grad_norm_b"]) > float(logged["multibalance/grad_norm_a"])


def test_representation_argument_overrides_attribute():
    mb = MultiBalance(relax_factor=0.0, representation="encoder")
    _, grads = _fit([mb], module=UserModule(protocol=False))
    _, plain = _fit([])
    _close(grads[0], plain[0])


@pytest.mark.parametrize(
    ("module", "cb", "match"),
    [
        (lambda: UserModule(protocol=False), {}, "shared_representation"),
        (UserModule, {"representation": "encoderr"}, "no submodule 'encoderr'"),
        (lambda: UserModule(set_losses=False), {}, "task_losses"),
        (UserModule, {"representation": "head_a"}, "does not depend"),
        (UserModule, {"target_task": "click"}, "target_task 'click'"),
        (UserModule, {"task_weights": {"c": 1.0}}, r"unknown tasks \['c'\]"),
    ],
)
def test_clear_errors_when_protocol_is_not_followed(module, cb, match):
    with pytest.raises((MisconfigurationException, ValueError), match=match):
        _fit([MultiBalance(**cb)], module=module())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"relax_factor": 1.5}, "relax_factor"),
        ({"beta": 1.0}, "beta"),
        ({"anchor": "median"}, "anchor must be one of"),
        ({"level": "layer"}, "level must be one of"),
        ({"eps": 0}, "eps"),
        ({"task_weights": {"a": -1}}, r"task_weights\['a'\]"),
    ],
)
def test_invalid_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MultiBalance(**kwargs)


class DetachedLossModule(UserModule):
    """Returns a loss that does not reach the representation: only the callback can train the encoder."""

    def training_step(self, batch, batch_idx):
        self.task_losses = self.losses(batch)
        return 0.0 * sum(p.sum() for n, p in self.named_parameters() if n.startswith("head"))


def test_loss_not_reaching_representation_still_trains_bottom():
    """The balanced gradient reaches the shared bottom even when Lightning's backward never visits it."""
    batch = _data()[:8]
    module0 = UserModule()
    mb = MultiBalance(relax_factor=1.0, beta=0.0, target_task="a", eps=1e-12)
    _, grads = _fit([mb], module=DetachedLossModule())
    _, _, g = _per_task(module0, batch)
    norms = {t: float(v.norm()) for t, v in g.items()}
    expected = _expected(module0, batch, {t: norms["a"] / norms[t] for t in "ab"})
    _close(grads[0], {n: v for n, v in expected.items() if n.startswith("encoder")})
    for n in ("head_a.weight", "head_a.bias", "head_b.weight", "head_b.bias"):
        assert torch.count_nonzero(grads[0][n]) == 0


class ManualModule(UserModule):
    """Manual optimization: ``manual_backward`` runs the callback; a bare ``loss.backward()`` does not."""

    def __init__(self, bare_backward: bool) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.bare_backward = bare_backward
        self.grads: list[dict[str, torch.Tensor]] = []

    def training_step(self, batch, batch_idx):
        opt = self.optimizers()
        opt.zero_grad()
        self.task_losses = self.losses(batch)
        loss = self.task_losses["a"] + self.task_losses["b"]
        if self.bare_backward:
            loss.backward()
        else:
            self.manual_backward(loss)
        self.grads.append({n: p.grad.detach().clone() for n, p in self.named_parameters()})
        opt.step()


@pytest.mark.parametrize("bare_backward", [False, True])
def test_manual_optimization(bare_backward):
    """manual_backward balances like automatic optimization; a backward that bypasses Lightning gets the plain sum."""
    _, automatic = _fit([MultiBalance(relax_factor=1.0, beta=0.0, target_task="a")])
    _, plain = _fit([])
    module = ManualModule(bare_backward)
    _trainer([MultiBalance(relax_factor=1.0, beta=0.0, target_task="a")], 1).fit(module, DataLoader(_data(), batch_size=8))
    _close(module.grads[0], plain[0] if bare_backward else automatic[0])
    if not bare_backward:  # the balancing really changed the shared gradient
        assert not torch.allclose(automatic[0]["encoder.dense.weight"], plain[0]["encoder.dense.weight"], rtol=1e-3)
