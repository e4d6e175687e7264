"""Per-module sensitivity: a deliberately fragile layer / table is ranked first; the cached-activation
trials agree with quantizing the module for real; the float model is left untouched."""

import copy
import json
import re

import pytest
import torch

from lightning_recsys.quant import RecipeConfig, calibrate, quantize_
from lightning_recsys.quant.core.config import FP32Config, Int8LinearConfig
from lightning_recsys.quant.search.report import eval_metrics
from lightning_recsys.quant.search.sensitivity import sensitivity_analysis
from lightning_recsys.quant.search.trials import TrialOptions, TrialRunner

from .budget_models import bag_batches, bag_labels, dlrm_data, fragile_bag_model, fragile_dlrm

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def dlrm():
    dm = dlrm_data()
    return dm, fragile_dlrm(dm)


def test_fragile_linear_ranked_first_and_model_untouched(dlrm):
    dm, module = dlrm
    before = {k: v.clone() for k, v in module.state_dict().items()}
    res = sensitivity_analysis(module, dm.train_dataloader(), dm.val_dataloader(), eval_batches=6)
    assert res.ranking("int8")[0] == "model.top_mlp.2"
    assert res.ranking("int8", by="sqnr")[0] == "model.top_mlp.2"
    assert res.ranking("int8", by="auc")[0] == "model.top_mlp.2"
    fragile = res.module("model.top_mlp.2")
    assert fragile.trials["int8"]["ne_rel_delta"] > 0.05  # int8 wrecks it (> 5% relative NE) ...
    assert abs(fragile.trials["fp16"]["ne_rel_delta"]) < 1e-3  # ... fp16 does not
    assert fragile.trials["int8"]["sqnr_db"] < 10 < fragile.trials["fp16"]["sqnr_db"]
    others = [m for m in res.modules if m.name != "model.top_mlp.2"]
    assert all(m.trials["int8"]["ne_rel_delta"] < 0.01 for m in others)
    tables = [m for m in res.modules if m.kind == "embedding"]
    assert len(tables) == 4 and all(set(m.trials) == {"int4", "int8", "fp16"} for m in tables)
    assert all(set(m.trials) == {"int8", "int8_static", "fp16"} for m in res.modules if m.kind == "linear")
    assert res.tasks == ["click", "conversion"] and res.task == "mean" and res.num_rows == 6 * 256
    json.loads(json.dumps(res.to_dict()))
    assert all(torch.equal(before[k], v) for k, v in module.state_dict().items())
    assert type(module.model.top_mlp[2]).__name__ == "Linear"


def test_fragile_table_ranked_first_plain_module():
    model = fragile_bag_model()
    res = sensitivity_analysis(model, None, bag_batches(6, seed=1), label_fn=bag_labels, eval_batches=6)
    assert res.ranking("int8")[0] == "bag_a"
    bag_a = res.module("bag_a")
    assert bag_a.trials["int8"]["ne_rel_delta"] > 0.05 and abs(bag_a.trials["fp16"]["ne_rel_delta"]) < 1e-3
    # int4 stores scale/bias in fp16: a table holding 1e4 cannot be int4, and the result says why
    assert "int4" not in bag_a.trials and "2047" in bag_a.unavailable["int4"]
    assert res.tasks == ["task0"] and list(res.baseline) == ["task0"]  # the model contract names the one logit column


@pytest.mark.parametrize("name", ["model.top_mlp.2", "model.backbone.embeddings.tables.C3", "model.backbone.bottom_mlp.0"])
def test_cached_trial_matches_quantizing_for_real(dlrm, name):
    """A trial replays cached float activations upstream: it must equal converting the module for real
    (static activations: a real calibrate() pass on the same batches)."""
    dm, module = dlrm
    lin = Int8LinearConfig(activation="static", observer="minmax")
    runner = TrialRunner(module, dm.train_dataloader(), dm.val_dataloader(), TrialOptions(calib_batches=3, eval_batches=4, linear_config=lin))
    ev = runner.evaluate({name: "int8"})
    assert runner.state.hits > 0  # float modules upstream were replayed, not recomputed
    real = copy.deepcopy(module)
    only = {"precision": "int8", "activation": "static", "observer": "minmax"} if "mlp" in name else {"precision": "int8"}
    quantize_(real, RecipeConfig(embeddings=FP32Config(), linears=FP32Config(), overrides={re.escape(name): only}))
    calibrate(real, dm.train_dataloader(), num_batches=3)
    batches = [b for _, b in zip(range(4), dm.val_dataloader())]
    with torch.no_grad():
        logits_q = torch.cat([real(b) for b in batches])
        logits_f = torch.cat([module(b) for b in batches])
    for j, task in enumerate(["click", "conversion"]):
        y = torch.cat([b.labels[task] for b in batches])
        q, f = eval_metrics(logits_q[:, j], y), eval_metrics(logits_f[:, j], y)
        assert ev["per_task"][task]["ne_rel_delta"] == pytest.approx((q["ne"] - f["ne"]) / f["ne"], abs=1e-6)
        assert ev["per_task"][task]["auc_delta"] == pytest.approx(q["auc"] - f["auc"], abs=1e-6)
    torch.testing.assert_close(runner.logits({name: "int8"}), logits_q, rtol=1e-5, atol=1e-5)


def test_task_selection_and_reduction(dlrm):
    dm, module = dlrm
    plan = {"model.top_mlp.2": "int8", "model.backbone.embeddings.tables.C1": "int4"}
    evs = {t: TrialRunner(module, None, dm.val_dataloader(), TrialOptions(eval_batches=3, task=t)).evaluate(plan)
           for t in ("mean", "worst", "click", "conversion", 1)}  # fmt: skip
    per = evs["mean"]["per_task"]
    assert evs["mean"]["ne_rel_delta"] == pytest.approx((per["click"]["ne_rel_delta"] + per["conversion"]["ne_rel_delta"]) / 2)
    assert evs["worst"]["ne_rel_delta"] == max(per["click"]["ne_rel_delta"], per["conversion"]["ne_rel_delta"])
    assert evs["worst"]["auc_delta"] == min(per["click"]["auc_delta"], per["conversion"]["auc_delta"])
    assert evs["click"]["ne_rel_delta"] == per["click"]["ne_rel_delta"]
    assert evs[1]["auc_delta"] == evs["conversion"]["auc_delta"] == per["conversion"]["auc_delta"]
    with pytest.raises(ValueError, match=r"task must be 'mean', 'worst'.*\['click', 'conversion'\].*'ctr'"):
        TrialRunner(module, None, dm.val_dataloader(), TrialOptions(eval_batches=1, task="ctr"))


def test_clear_errors(dlrm):
    dm, module = dlrm
    quantized = copy.deepcopy(module)
    quantize_(quantized, RecipeConfig())
    with pytest.raises(ValueError, match="already quantized.*pass the float model"):
        sensitivity_analysis(quantized, None, dm.val_dataloader(), eval_batches=1)
    with pytest.raises(ValueError, match=r"table_precisions: unknown precisions \['int2'\]"):
        sensitivity_analysis(module, None, dm.val_dataloader(), table_precisions=["int2", "int8"])
    with pytest.raises(ValueError, match="static int8 activations need calibration data"):
        sensitivity_analysis(module, None, dm.val_dataloader(), linear_config=Int8LinearConfig(activation="static"))
    with pytest.raises(ValueError, match="eval_batches must be an integer >= 1"):
        sensitivity_analysis(module, None, dm.val_dataloader(), eval_batches=0)
    unnamed = [{("click" if k == "label" else k): v for k, v in b.items()} for b in bag_batches(1, seed=1)]
    with pytest.raises(ValueError, match="cannot find the labels in a dict batch.*label_fn="):
        sensitivity_analysis(fragile_bag_model(), None, unnamed, eval_batches=1)
    one_class = [{**b, "label": torch.zeros_like(b["label"])} for b in bag_batches(1, seed=1)]
    with pytest.raises(ValueError, match="single class"):
        sensitivity_analysis(fragile_bag_model(), None, one_class, label_fn=bag_labels, eval_batches=1)


class _InPlace(torch.nn.Module):
    """Modifies a linear's output in place (``h += 1``): replaying a cached output must not leak it."""

    def __init__(self) -> None:
        super().__init__()
        self.bag = torch.nn.EmbeddingBag(50, 4, mode="sum")
        self.fc1 = torch.nn.Linear(4, 8)
        self.fc2 = torch.nn.Linear(8, 1)

    def forward(self, batch: dict) -> torch.Tensor:
        h = self.fc1(self.bag(batch["a"][:, :1] % 50))
        h += 1.0
        return self.fc2(torch.relu(h)).squeeze(1)


def test_in_place_change_of_a_cached_output_is_caught():
    torch.manual_seed(0)
    model = _InPlace().eval()
    batches = bag_batches(3, seed=2)
    runner = TrialRunner(model, None, batches, TrialOptions(label_fn=bag_labels, eval_batches=3))
    assert runner.evaluate({})["ne_rel_delta"] == 0.0
    ev = runner.evaluate({"fc2": "int8"})
    assert runner.state.enabled is False  # the version check saw the in-place change and stopped replaying
    real = copy.deepcopy(model)
    quantize_(real, RecipeConfig(embeddings=FP32Config(), linears=FP32Config(), overrides={"fc2": {"precision": "int8"}}))
    with torch.no_grad():
        q = torch.cat([real(b) for b in batches])
        f = torch.cat([model(b) for b in batches])
    y = torch.cat([b["label"] for b in batches])
    expected = (eval_metrics(q, y)["ne"] - eval_metrics(f, y)["ne"]) / eval_metrics(f, y)["ne"]
    assert ev["ne_rel_delta"] == pytest.approx(expected, abs=1e-7)
    assert runner.evaluate({})["ne_rel_delta"] == 0.0
