"""DHEN and DCNv2: shapes, gradients, multi-task heads, RecsysModule training, FIITED, quant + ONNX export."""

import copy

import lightning.pytorch as pl
import pytest
import torch
from torch import nn

from lightning_recsys.callbacks.fiited import FIITED
from lightning_recsys.data import FeatureSpec, RecsysBatch, SparseFeature, SyntheticCTRDataModule
from lightning_recsys.embeddings import ChunkedEmbeddingBag
from lightning_recsys.models import DCNv2, DHEN, CrossLayer, DHENLayer, RecsysModule
from lightning_recsys.optim import MLorcAdamW, Muon, route_muon
from lightning_recsys.quant import RecipeConfig, export_onnx, load, quantize_

SPEC = FeatureSpec(3, {"a": 20, "b": 30, "c": 10}, ["click", "buy"])
ALL_MODULES = ("dot", "linear", "attention", "cross", "conv")


def _batch(n: int = 16, seed: int = 0) -> RecsysBatch:
    g = torch.Generator().manual_seed(seed)
    bags = {k: [torch.randint(0, c, (int(torch.randint(1, 3, (1,), generator=g)),), generator=g).tolist() for _ in range(n)]
            for k, c in SPEC.cardinalities.items()}  # fmt: skip
    labels = {t: torch.randint(0, 2, (n,), generator=g).float() for t in SPEC.tasks}
    return RecsysBatch(torch.randn(n, 3, generator=g), {k: SparseFeature.from_lists(b) for k, b in bags.items()}, labels)


def _trainer(**kw) -> pl.Trainer:
    args = dict(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                enable_model_summary=False, num_sanity_val_steps=0)  # fmt: skip
    return pl.Trainer(**{**args, **kw})


@pytest.fixture(scope="module")
def dm():
    return SyntheticCTRDataModule(num_train=2048, num_val=512, num_test=512, batch_size=256, max_rows=50, num_sparse=5, seed=3)


@pytest.mark.parametrize("ensemble", ["sum", "weighted", "concat"])
@pytest.mark.parametrize("slots", [None, (6, 3)])
def test_dhen_shapes_and_gradients_reach_every_parameter(ensemble, slots):
    model = DHEN.from_spec(SPEC, embedding_dim=8, modules=ALL_MODULES, ensemble=ensemble, slots=slots, dense_slots=2)
    batch = _batch()
    assert model.input_slots(batch).shape == (16, 5, 8)  # 2 dense slots + 3 sparse features
    logits = model(batch)
    assert logits.shape == (16, 2)  # one logit per task
    logits.sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert missing == []
    for name, table in model.embeddings.tables.items():
        assert table.weight.grad.abs().sum() > 0, name
    for i, layer in enumerate(model.layers):
        grads = [p.grad.abs().sum() for p in layer.parameters()]
        assert sum(grads) > 0, i
    if slots is not None:  # the slot count changes: learned shortcut projections
        assert all(not isinstance(layer.shortcut, nn.Identity) for layer in model.layers)


def test_dhen_layer_is_layernorm_of_ensemble_plus_shortcut():
    layer = DHENLayer(4, 4, 8, modules=("linear", "cross"), ensemble="sum")
    x = torch.randn(5, 4, 8)
    expected = layer.norm(layer.interactions[0](x) + layer.interactions[1](x) + x)
    torch.testing.assert_close(layer(x), expected)
    lin = layer.interactions[0]
    torch.testing.assert_close(lin(x), torch.einsum("lm,bmd->bld", lin.proj.weight, x))


def test_cross_layer_formula_and_low_rank():
    full, low = CrossLayer(6), CrossLayer(6, rank=2)
    x0, x = torch.randn(4, 6), torch.randn(4, 6)
    torch.testing.assert_close(full(x0, x), x0 * (x @ full.proj.weight.T + full.proj.bias) + x)
    w = low.proj[1].weight @ low.proj[0].weight
    torch.testing.assert_close(low(x0, x), x0 * (x @ w.T + low.proj[1].bias) + x)
    assert sum(p.numel() for p in low.parameters()) == 2 * 6 * 2 + 6
    term = CrossLayer(6, residual=False)  # DHEN's cross module: the cross term without DCN's skip
    term.load_state_dict(full.state_dict())
    torch.testing.assert_close(term(x0, x), full(x0, x) - x)


@pytest.mark.parametrize("structure", ["stacked", "parallel"])
def test_dcn_shapes_and_gradients(structure):
    model = DCNv2.from_spec(SPEC, embedding_dim=4, cross_rank=[None, 3, 2], deep_mlp=(16, 8), structure=structure)
    assert len(model.cross.layers) == 3
    assert isinstance(model.cross.layers[0].proj, nn.Linear) and isinstance(model.cross.layers[1].proj, nn.Sequential)
    logits = model(_batch())
    assert logits.shape == (16, 2)
    logits.sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    assert model.head.in_features == (8 + 3 * 4 + 3 if structure == "parallel" else 8)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("arch,options", [("dhen", {"modules": ["dot", "attention"], "ensemble": "weighted"}),
                                          ("dcn", {"cross_rank": 8, "structure": "parallel"})])  # fmt: skip
def test_recsys_module_trains_and_tests(dm, arch, options):
    torch.manual_seed(0)
    module = RecsysModule(feature_spec=dm.feature_spec, arch=arch, embedding_dim=8, arch_options=options,
                          optimizer=lambda p: torch.optim.Adam(p, lr=3e-3))  # fmt: skip
    assert type(module.model) is (DHEN if arch == "dhen" else DCNv2)
    before = copy.deepcopy(module.model.state_dict())
    trainer = _trainer(max_steps=6, limit_val_batches=1)
    trainer.fit(module, dm)
    res = trainer.test(module, dm, verbose=False)[0]
    assert set(res) >= {"test_auc_click", "test_auc_conversion", "test_ne_click", "test_ne_conversion"}
    assert all(torch.isfinite(torch.tensor(v)) for v in res.values())
    changed = [k for k, v in module.model.state_dict().items() if not torch.equal(v, before[k])]
    assert any(k.startswith("embeddings.") for k in changed) and len(changed) > len(before) // 2
    reloaded = RecsysModule(feature_spec=dm.feature_spec, arch=arch, embedding_dim=8, arch_options=options)
    reloaded.load_state_dict(module.state_dict())
    batch = dm.make_batch("test", 0)[0]
    torch.testing.assert_close(reloaded.eval()(batch), module.eval()(batch))


@pytest.mark.parametrize("make", [lambda m: Muon.from_module(m, lr=0.02, adamw_lr=1e-3), lambda m: MLorcAdamW(m, lr=1e-3)],
                         ids=["muon", "mlorc"])  # fmt: skip
def test_package_optimizers_route_and_step_dhen(make):
    model = DHEN.from_spec(SPEC, embedding_dim=8, modules=ALL_MODULES, ensemble="weighted")
    routes = route_muon(model)  # tables by module type (AdamW), hidden matrices (slot projections) to Muon
    assert routes["embeddings.tables.a.weight"] is False and routes["layers.0.interactions.1.proj.weight"] is True
    before = copy.deepcopy(model.state_dict())
    opt = make(model)
    batch = _batch()
    loss = nn.functional.binary_cross_entropy_with_logits(model(batch), torch.stack([batch.labels[t] for t in SPEC.tasks], 1))
    loss.backward()
    opt.step()
    after = model.state_dict()
    assert all(torch.isfinite(v).all() for v in after.values())
    assert not torch.equal(after["layers.0.weights"], before["layers.0.weights"])
    assert not torch.equal(after["layers.1.interactions.2.qkv.weight"], before["layers.1.interactions.2.qkv.weight"])


@pytest.mark.timeout(120)
def test_fiited_prunes_dhen_tables(dm):
    module = RecsysModule(feature_spec=dm.feature_spec, arch="dhen", embedding_dim=8,
                          arch_options={"modules": ["dot", "linear"]})  # fmt: skip
    cb = FIITED(chunk_size=4, target_sparsity=0.5, start_step=0, end_step=4, interval=2)
    _trainer(max_steps=6, callbacks=[cb], limit_val_batches=0).fit(module, dm)
    tables = module.model.embeddings.tables
    assert all(isinstance(t, ChunkedEmbeddingBag) for t in tables.values())
    kept = sum(t.num_kept for t in tables.values())
    total = sum(t.num_embeddings * t.embedding_dim // 4 for t in tables.values())
    assert kept < 0.75 * total
    assert module.model(dm.make_batch("test", 0)[0]).shape == (256, 2)


@pytest.mark.timeout(180)
def test_quantized_dhen_exports_to_onnx_with_parity(tmp_path):
    torch.manual_seed(0)
    model = DHEN.from_spec(SPEC, embedding_dim=8, modules=ALL_MODULES, ensemble="concat", slots=(5, 3)).eval()
    quantized = copy.deepcopy(model)
    quantize_(quantized, RecipeConfig())
    assert sum(type(m).__name__ == "Int8Linear" for m in quantized.modules()) >= 10
    meta = export_onnx(quantized, tmp_path / "dhen.onnx", _batch(32, seed=1))
    assert meta["parity"]["rows"] == 32 and meta["parity"]["max_abs_diff"] < 0.05
    batch = _batch(8, seed=2)
    with torch.no_grad():
        torch.testing.assert_close(load(tmp_path / "dhen.onnx")(batch), quantized(batch), atol=0.05, rtol=0.01)
        assert (quantized(batch) - model(batch)).abs().max() < 0.5  # int8 stays close to float


def test_bad_arguments_name_the_argument():
    cases = [
        (dict(modules=("dot", "mlp")), "modules names unknown"),
        (dict(modules=()), "modules must be"),
        (dict(ensemble="max"), "ensemble must be one of"),
        (dict(slots=(3,), num_layers=2), "slots must hold 2"),
        (dict(num_layers=0), "num_layers must be"),
        (dict(modules=("attention",), module_options={"attention": {"heads": 3}}), "heads must be"),
        (dict(modules=("conv",), module_options={"conv": {"kernel_size": 2}}), "kernel_size must be"),
        (dict(modules=("dot",), module_options={"dot": {"width": 3}}), r"module_options\['dot'\] has unknown options"),
        (dict(module_options={"mlp": {}}), "module_options names unknown modules"),
        (dict(modules=("cross",), module_options={"cross": {"rank": 0}}), "cross_rank must be"),
    ]
    for kwargs, match in cases:
        with pytest.raises(ValueError, match=match):
            DHEN.from_spec(SPEC, embedding_dim=8, **kwargs)
    with pytest.raises(ValueError, match="structure must be"):
        DCNv2.from_spec(SPEC, structure="tower")
    with pytest.raises(ValueError, match="cross_rank must be"):
        DCNv2.from_spec(SPEC, cross_rank=[None, -1])
    with pytest.raises(ValueError, match="num_cross_layers must be"):
        DCNv2.from_spec(SPEC, num_cross_layers=0)
    with pytest.raises(ValueError, match="arch must be 'dlrm' or 'multitask', or one of 'dhen', 'dcn', 'semantic_id'"):
        RecsysModule(feature_spec=SPEC, arch="dcnv2")
    with pytest.raises(ValueError, match=r"arch_options has unknown keys \['depth'\] for arch='dhen'"):
        RecsysModule(feature_spec=SPEC, arch="dhen", arch_options={"depth": 3})
    with pytest.raises(ValueError, match=r"arch_options has unknown keys \['embedding_dim'\]"):
        RecsysModule(feature_spec=SPEC, arch="dcn", arch_options={"embedding_dim": 3})
    with pytest.raises(ValueError, match="arch_options apply to arch"):
        RecsysModule(feature_spec=SPEC, arch="dlrm", arch_options={"num_layers": 3})
