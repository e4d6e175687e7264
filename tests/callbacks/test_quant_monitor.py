"""QuantizationMonitor: figures against a direct computation, out-of-range shares, warn / recalibrate /
raise, the planted shift, checkpoint resume, errors."""

from __future__ import annotations

import copy
import math
import os
import warnings
from pathlib import Path

import lightning.pytorch as pl
import pytest
from lightning.pytorch.utilities.exceptions import MisconfigurationException
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from lightning_recsys.callbacks.quant_monitor import DEFAULT_MONITOR_RECIPE, QuantizationBudgetError, QuantizationMonitor
from lightning_recsys.data import SyntheticCTRDataModule
from lightning_recsys.models import RecsysModule
from lightning_recsys.quant import calibrate, quantize_, recipe_from_dict
from lightning_recsys.quant.calibration.calibrate import static_layers
from tests._dist import run_distributed


#: any value outside the calibrated range is a violation: every run after the first recalibrates
ALWAYS_OVER = {"out_of_range_rate": 0.0, "budget_ne": None, "budget_auc": None}


def _trainer(callbacks, **kw) -> pl.Trainer:
    args = dict(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                enable_model_summary=False, num_sanity_val_steps=0)  # fmt: skip
    args.update(kw)
    return pl.Trainer(callbacks=callbacks, **args)


def _loader(batches) -> DataLoader:
    return DataLoader(batches, batch_size=None, shuffle=False)


class TwoHeads(pl.LightningModule):
    """Plain LightningModule on dict batches ``{"x": [B, 4], "y": [B, 2]}``; ``scores`` gives a dict of logits."""

    def __init__(self, lr: float = 0.05) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.tasks = ["a", "b"]
        self.body = nn.Sequential(nn.Linear(4, 8), nn.ReLU())
        self.heads = nn.ModuleDict({t: nn.Linear(8, 1) for t in self.tasks})
        self.lr = lr

    def scores(self, batch):
        z = self.body(batch["x"])
        return {t: h(z).squeeze(1) for t, h in self.heads.items()}

    def probs(self, batch):
        return {t: torch.sigmoid(v) for t, v in self.scores(batch).items()}

    def training_step(self, batch, batch_idx):
        out = self.scores(batch)
        return sum(F.binary_cross_entropy_with_logits(out[t], batch["y"][:, i]) for i, t in enumerate(self.tasks))

    def validation_step(self, batch, batch_idx):
        return None

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)


def _two_head_batches(n: int, seed: int, rows: int = 64) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        x = torch.randn(rows, 4, generator=g)
        p = torch.sigmoid(torch.stack([x[:, 0] - x[:, 1], 2 * x[:, 2] + x[:, 3]], 1))
        out.append({"x": x, "y": torch.bernoulli(p, generator=g)})
    return out


def _ne(logits: torch.Tensor, y: torch.Tensor) -> float:
    p = float(y.mean())
    return float(F.binary_cross_entropy_with_logits(logits.double(), y.double())) / -(p * math.log(p) + (1 - p) * math.log(1 - p))


def _auc(score: torch.Tensor, y: torch.Tensor) -> float:
    pos, neg = score[y == 1][:, None], score[y == 0][None, :]
    return float(((pos > neg).double() + 0.5 * (pos == neg).double()).mean())


def test_figures_equal_a_direct_computation():
    train, val = _two_head_batches(4, 0), _two_head_batches(3, 1)
    monitor = QuantizationMonitor(forward_fn="scores", task="b", calib_batches=2, max_batches=2, budget_ne=None,
                                  budget_auc=None, out_of_range_rate=None)  # fmt: skip
    module = TwoHeads()
    trainer = _trainer([monitor], max_epochs=1)
    trainer.fit(module, _loader(train), _loader(val))
    (h,) = monitor.history
    # the twin by hand: the default recipe, calibrated on the last 2 training batches
    twin = copy.deepcopy(module).eval()
    quantize_(twin, recipe_from_dict(DEFAULT_MONITOR_RECIPE))
    calibrate(twin, train[-2:], num_batches=2, forward_fn=lambda m, b: m.scores(b))
    with torch.no_grad():
        fp = torch.cat([module.scores(b)["b"] for b in val[:2]])
        q = torch.cat([twin.scores(b)["b"] for b in val[:2]])
        x = torch.cat([b["x"] for b in val[:2]])
        z = twin.body(x)
    y = torch.cat([b["y"][:, 1] for b in val[:2]])
    assert h["num_batches"] == 2 and h["action"] == "none" and h["violations"] == []
    assert h["ne_fp32"] == pytest.approx(_ne(fp, y), rel=1e-5)
    assert h["ne_quant"] == pytest.approx(_ne(q, y), rel=1e-5)
    assert h["delta_ne"] == pytest.approx(_ne(q, y) / _ne(fp, y) - 1, abs=1e-6)
    assert h["delta_auc"] == pytest.approx(_auc(fp, y) - _auc(q, y), abs=1e-6)
    assert h["pred_drift"] == pytest.approx(float(torch.sigmoid(q).mean() - torch.sigmoid(fp).mean()), abs=1e-6)
    assert h["label_rate"] == pytest.approx(float(y.mean()))
    assert not torch.equal(fp, q) and h["delta_ne"] != 0  # a real int8 twin
    layers = static_layers(twin)
    for name, inputs in (("body.0", x), ("heads.a", z), ("heads.b", z)):
        lo, hi = layers[name].calibrated_range()
        assert h["out_of_range_by_layer"][name] == pytest.approx(float(((inputs < lo) | (inputs > hi)).double().mean()))
    assert h["out_of_range_by_layer"]["body.0"] > 0  # val rows beyond the 2 calibration batches' min/max
    assert float(trainer.callback_metrics["quant_monitor/delta_ne"]) == pytest.approx(h["delta_ne"])
    assert float(trainer.callback_metrics["quant_monitor/out_of_range_rate"]) == pytest.approx(h["out_of_range_rate"])


def test_float_twin_has_no_gap():
    recipe = {"embeddings": {"precision": "fp32"}, "linears": {"precision": "fp32"}}
    monitor = QuantizationMonitor(recipe=recipe, forward_fn="scores", task=0)
    _trainer([monitor], max_epochs=1).fit(TwoHeads(), _loader(_two_head_batches(2, 0)), _loader(_two_head_batches(2, 1)))
    (h,) = monitor.history
    assert h["delta_ne"] == 0 and h["delta_auc"] == 0 and h["pred_drift"] == 0 and h["out_of_range_rate"] == 0


def test_probability_outputs_give_the_same_figures():
    figures = []
    for fn, outputs in (("scores", "logits"), ("probs", "probs")):
        monitor = QuantizationMonitor(forward_fn=fn, outputs=outputs, task="b", calib_batches=2)
        _trainer([monitor], max_epochs=1).fit(TwoHeads(), _loader(_two_head_batches(3, 0)), _loader(_two_head_batches(2, 1)))
        figures.append(monitor.history[0])
    for key in ("ne_quant", "delta_ne", "delta_auc", "pred_drift", "out_of_range_rate"):
        assert figures[1][key] == pytest.approx(figures[0][key], rel=1e-4, abs=1e-6), key


def test_yaml_config_builds_the_monitor():
    from jsonargparse import ArgumentParser

    parser = ArgumentParser()
    parser.add_argument("--callback", type=QuantizationMonitor)
    cfg = parser.parse_string(
        "callback:\n"
        "  class_path: lightning_recsys.callbacks.quant_monitor.QuantizationMonitor\n"
        "  init_args: {recipe: {linears: {precision: int8, activation: static, observer: percentile}},"
        " budget_ne: 0.02, on_violation: warn, task: click, forward_fn: forward}\n"
    )
    monitor = parser.instantiate_classes(cfg).callback
    assert monitor.recipe.linears.observer == "percentile" and monitor.budget_ne == 0.02 and monitor.task == "click"


class OneLinear(pl.LightningModule):
    """A single nn.Linear; ``forward(batch)`` takes the dict batch ``{"x": [B, 4], "y": [B]}``."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Linear(4, 1)

    def forward(self, batch):
        return self.lin(batch["x"]).squeeze(1)

    def training_step(self, batch, batch_idx):
        return F.binary_cross_entropy_with_logits(self(batch), batch["y"])

    def validation_step(self, batch, batch_idx):
        return None

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def _range_data():
    """Train batch 0 spans exactly [0, 1]; train batch 1 and the val batch have 25 % of their values at 3 or -2."""
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(64, 4, generator=g)
    x0[0, 0], x0[0, 1] = 0.0, 1.0
    wide = torch.full((64, 4), 0.5)
    wide.view(-1)[0::8], wide.view(-1)[4::8] = 3.0, -2.0  # every 4th value
    y = (torch.arange(64) % 2).float()
    return [{"x": x0, "y": y}, {"x": wide, "y": y}], [{"x": wide.clone(), "y": y}]


@pytest.mark.parametrize("action", ["warn", "recalibrate", "raise"])
def test_out_of_range_share_and_violation_paths(action):
    train, val = _range_data()
    monitor = QuantizationMonitor(on_violation=action, calib_batches=1, budget_ne=None, budget_auc=None, out_of_range_rate=0.1)
    trainer = _trainer([monitor], max_steps=2, val_check_interval=1)
    if action == "raise":
        with pytest.raises(QuantizationBudgetError, match="25.00% of the inputs of 'lin' outside the calibrated range"):
            trainer.fit(OneLinear(), _loader(train), _loader(val))
        assert monitor.history[-1]["action"] == "raised"
        return
    with pytest.warns(UserWarning, match="outside the calibrated range") as record:
        trainer.fit(OneLinear(), _loader(train), _loader(val))
    first, second = monitor.history
    assert first["calibration_step"] == 1 and monitor.ranges is not None
    assert first["out_of_range_rate"] == 0.25 and first["out_of_range_by_layer"] == {"lin": 0.25}
    assert first["action"] == "warned"  # calibrated in this very run: nothing fresher to recalibrate on
    assert second["out_of_range_rate"] == 0.25
    if action == "warn":
        assert second["action"] == "warned" and second["after"] is None and len(record) >= 2
        assert monitor.ranges["lin"] == [0.0, 1.0] and monitor.num_calibrations == 1
    else:  # recalibrated on the most recent training batch, which spans [-2, 3]
        assert second["action"] == "recalibrated" and monitor.calibration_step == 2
        assert second["after"]["out_of_range_rate"] == 0.0 and second["after"]["violations"] == []
        assert monitor.ranges["lin"] == [-2.0, 3.0] and monitor.num_calibrations == 2
        assert any("back under budget" in str(w.message) for w in record)
    assert monitor.num_violations == 2


def test_planted_shift_is_flagged_and_recalibration_recovers():
    dm = SyntheticCTRDataModule(num_train=160 * 128, num_val=512, num_test=128, batch_size=128, max_rows=500, num_sparse=8,
                                shift_at_step=100, shift_dense_scale=4.0)  # fmt: skip
    module = RecsysModule(feature_spec=dm.feature_spec, embedding_dim=8, optimizer=lambda p: torch.optim.Adam(p, lr=3e-3))
    budget = dict(budget_ne=0.01, budget_auc=0.005, out_of_range_rate=0.01, max_batches=4)
    monitor, stale = QuantizationMonitor(**budget), QuantizationMonitor(on_violation="warn", **budget)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="QuantizationMonitor")
        _trainer([monitor, stale], max_steps=160, val_check_interval=40, limit_val_batches=4).fit(module, dm)
    steps = [h["step"] for h in monitor.history]
    assert steps == [40, 80, 120, 160]
    assert [bool(h["violations"]) for h in monitor.history[:2]] == [False, False]  # no false alarm before the shift
    flagged = [h for h in monitor.history[2:] if h["violations"]]
    assert flagged and flagged[0]["step"] in (120, 160)  # within 2 validation runs after the shift
    assert any("model.backbone.bottom_mlp.0" in v for v in flagged[0]["violations"])
    after = flagged[0]["after"]
    assert flagged[0]["action"] == "recalibrated" and after["violations"] == []
    assert after["out_of_range_rate_max"] <= 0.01 and after["delta_ne"] <= 0.01 and after["delta_auc"] <= 0.005
    assert stale.history[-1]["violations"] and stale.history[-1]["out_of_range_rate_max"] > 0.1  # stale twin stays off


def test_synthetic_shift_option():
    dm = SyntheticCTRDataModule(num_train=256, num_val=256, num_test=256, batch_size=128, max_rows=100, shift_at_step=5,
                                shift_dense_scale=3.0, shift_dense_offset=1.0)  # fmt: skip
    plain = SyntheticCTRDataModule(num_train=256, num_val=256, num_test=256, batch_size=128, max_rows=100)
    (a, pa), (b, pb), (c, _) = dm.make_batch("val", 1), dm.make_batch("val", 1, shifted=True), plain.make_batch("val", 1)
    assert not dm.shift_active() and torch.equal(a.dense, c.dense)  # no trainer: not shifted yet
    assert torch.allclose(b.dense, a.dense * 3.0 + 1.0) and torch.equal(pa, pb)
    assert all(torch.equal(a.labels[t], b.labels[t]) for t in a.labels)
    with pytest.raises(ValueError, match="shift_at_step"):
        SyntheticCTRDataModule(shift_at_step=-1)
    with pytest.raises(ValueError, match="num_workers=0"):
        SyntheticCTRDataModule(shift_at_step=3, num_workers=1)
    with pytest.raises(ValueError, match="shift_dense_scale"):
        SyntheticCTRDataModule(shift_at_step=3, shift_dense_scale=float("nan"))


@pytest.mark.timeout(120)
def test_resume_from_checkpoint_continues_exactly(tmp_path):
    train, val = _two_head_batches(3, 0), _two_head_batches(2, 1)

    def run(max_epochs, ckpt=None):
        monitor = QuantizationMonitor(forward_fn="scores", task="a", calib_batches=2, **ALWAYS_OVER)
        module = TwoHeads()
        trainer = _trainer([monitor], max_epochs=max_epochs)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="QuantizationMonitor")
            trainer.fit(module, _loader(train), _loader(val), ckpt_path=ckpt)
        return trainer, module, monitor

    _, straight, full = run(4)
    trainer, _, _ = run(2)
    trainer.save_checkpoint(tmp_path / "half.ckpt")
    _, resumed, cont = run(4, tmp_path / "half.ckpt")
    assert [h["action"] for h in full.history] == ["warned", "recalibrated", "recalibrated", "recalibrated"]
    assert [h["after"]["calibration_step"] for h in full.history[1:]] == [6, 9, 12]
    assert cont.history == full.history and cont.ranges == full.ranges and cont.num_calibrations == full.num_calibrations == 4
    assert cont.calibration_step == full.calibration_step and cont.num_val_runs == full.num_val_runs == 4
    for (n, p), (_, q) in zip(straight.named_parameters(), resumed.named_parameters()):
        assert torch.equal(p, q), n


def test_every_n_val_epochs_and_state_round_trip():
    monitor = QuantizationMonitor(forward_fn="scores", every_n_val_epochs=2)
    _trainer([monitor], max_epochs=4).fit(TwoHeads(), _loader(_two_head_batches(2, 0)), _loader(_two_head_batches(1, 1)))
    assert [h["val_run"] for h in monitor.history] == [1, 3] and monitor.num_val_runs == 4
    other = QuantizationMonitor(forward_fn="scores", every_n_val_epochs=2)
    other.load_state_dict(monitor.state_dict())
    assert other.history == monitor.history and other.ranges == monitor.ranges and other.num_val_runs == 4


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"budget_ne": -0.1}, ValueError, r"QuantizationMonitor: budget_ne must be None or a number >= 0, got -0.1"),
        ({"budget_auc": 2.0}, ValueError, r"budget_auc must be None or a number in \[0, 1\]"),
        ({"out_of_range_rate": "high"}, TypeError, "out_of_range_rate must be None or a number"),
        ({"on_violation": "ignore"}, ValueError, r"on_violation must be one of \['warn', 'recalibrate', 'raise'\]"),
        ({"calibrate_on": "test"}, ValueError, "calibrate_on"),
        ({"outputs": "scores"}, ValueError, "outputs"),
        ({"calib_batches": 0}, ValueError, "calib_batches must be an integer >= 1, got 0"),
        ({"max_batches": 1.5}, TypeError, r"max_batches must be an integer >= 1, got 1.5 \(float\)"),
        ({"every_n_val_epochs": True}, TypeError, "every_n_val_epochs"),
        ({"task": -1}, ValueError, "task must be an integer >= 0"),
        ({"label_key": 1.0}, TypeError, "label_key"),
        ({"forward_fn": "not a name"}, ValueError, "forward_fn"),
        ({"recipe": {"linears": {"precision": "int3"}}}, ValueError, "precision"),
    ],
)
def test_bad_options_raise_clear_errors(kwargs, error, match):
    """The package's policy: a wrong type is a TypeError; a bad value a ConfigurationError, which Lightning
    users catch as MisconfigurationException and everyone else as ValueError."""
    with pytest.raises(error, match=match) as info:
        QuantizationMonitor(**kwargs)
    if error is ValueError and "recipe" not in kwargs:
        assert isinstance(info.value, MisconfigurationException)


def test_bad_recipe_type_and_model_mismatches():
    with pytest.raises(TypeError, match="recipe must be"):
        QuantizationMonitor(recipe=3)
    train, val = _loader(_two_head_batches(1, 0)), _loader(_two_head_batches(1, 1))
    with pytest.raises(ValueError, match="forward_fn='predict': TwoHeads has no such method"):
        _trainer([QuantizationMonitor(forward_fn="predict")], max_epochs=1).fit(TwoHeads(), train, val)
    with pytest.raises(ValueError, match="task=5 is out of range: the model gives 2 outputs"):
        _trainer([QuantizationMonitor(forward_fn="scores", task=5)], max_epochs=1).fit(TwoHeads(), train, val)
    with pytest.raises(ValueError, match="task='c'"):
        _trainer([QuantizationMonitor(forward_fn="scores", task="c")], max_epochs=1).fit(TwoHeads(), train, val)
    with pytest.raises(ValueError, match="cannot find the labels"):
        _trainer([QuantizationMonitor(forward_fn="scores", label_key="click")], max_epochs=1).fit(TwoHeads(), train, val)


def _ddp_worker(rank: int, world_size: int, out: str) -> None:
    os.environ.update(LOCAL_RANK=str(rank), NODE_RANK="0", WORLD_SIZE=str(world_size), RANK=str(rank))
    torch.set_num_threads(1)
    train, val = _two_head_batches(4, 0), _two_head_batches(2, 1)
    monitor = QuantizationMonitor(forward_fn="scores", task="b", calib_batches=1, **ALWAYS_OVER)
    trainer = _trainer([monitor], strategy="ddp", devices=world_size, max_epochs=2, use_distributed_sampler=False)
    module = TwoHeads(lr=0.0)  # fixed weights: the reference below needs no DDP
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="QuantizationMonitor")
        trainer.fit(module, _loader(train[rank::world_size]), _loader(val[rank::world_size]))
    torch.save({"history": monitor.history, "ranges": monitor.ranges}, Path(out) / f"rank{rank}.pt")


@pytest.mark.timeout(180)
def test_ddp_ranks_agree_and_match_the_pooled_computation(tmp_path):
    run_distributed(_ddp_worker, str(tmp_path), world_size=2, timeout=150)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert r0 == r1 and len(r0["history"]) == 2
    assert r0["history"][1]["action"] == "recalibrated"
    # one process over both ranks' data: metrics over the union of the val shards, ranges over the union
    # of the ranks' last training batches (train[2] on rank 0, train[3] on rank 1)
    train, val = _two_head_batches(4, 0), _two_head_batches(2, 1)
    monitor = QuantizationMonitor(forward_fn="scores", task="b", calib_batches=2, **ALWAYS_OVER)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="QuantizationMonitor")
        _trainer([monitor], max_epochs=1).fit(TwoHeads(lr=0.0), _loader(train), _loader(val))
    ref, got = monitor.history[0], r0["history"][0]
    assert r0["history"][0]["calibration_step"] == 2 and set(r0["ranges"]) == set(monitor.ranges)
    for name in monitor.ranges:  # (epoch 2 repeats epoch 1's batches: its recalibration finds the same ranges)
        assert r0["ranges"][name] == pytest.approx(monitor.ranges[name])
    keys = ("ne_fp32", "ne_quant", "auc_fp32", "auc_quant", "delta_ne", "delta_auc", "pred_drift")
    keys += ("out_of_range_rate", "out_of_range_rate_max")
    for key in keys:
        assert got[key] == pytest.approx(ref[key], rel=1e-5, abs=1e-7), key
