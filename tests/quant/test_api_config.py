"""quantize_ on a plain user model, per-module overrides, YAML recipes and their errors."""

import copy
import warnings

import pytest
import torch
from torch import nn

from lightning_recsys.quant import (
    FP16Config,
    FP32Config,
    Int8Linear,
    Int8LinearConfig,
    QuantizedEmbedding,
    QuantizedEmbeddingBag,
    RecipeConfig,
    RowwiseEmbeddingConfig,
    load_recipe,
    module_report,
    quantize_,
    recipe_from_dict,
)


class UserModel(nn.Module):
    """A model written only with plain torch layers (no lightning_recsys types)."""

    def __init__(self):
        super().__init__()
        self.user = nn.Embedding(100, 8)
        self.items = nn.EmbeddingBag(200, 8, mode="mean")
        self.mlp = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 1))

    def forward(self, user, items):
        return self.mlp(torch.cat([self.user(user), self.items(items)], 1))


def test_recipe_on_user_model_with_overrides():
    model = UserModel()
    ref = copy.deepcopy(model)
    quantize_(model, RecipeConfig(overrides={"items": {"precision": "int4"}, r"mlp\.2": FP32Config()}))
    assert isinstance(model.user, QuantizedEmbedding) and model.user.precision == "int8"
    assert isinstance(model.items, QuantizedEmbeddingBag) and model.items.precision == "int4"
    assert isinstance(model.mlp[0], Int8Linear) and type(model.mlp[2]) is nn.Linear
    user, items = torch.randint(0, 100, (32,)), torch.randint(0, 200, (32, 3))
    assert (model(user, items) - ref(user, items)).abs().max() < 0.05
    rep = module_report(model, ref)
    prec = {r["name"]: r["precision"] for r in rep["modules"]}
    assert prec == {"user": "int8", "items": "int4", "mlp.0": "int8", "mlp.2": "fp32"}
    assert rep["totals"]["bytes"] < rep["totals"]["float_bytes"]


def test_single_configs_and_filter_fn():
    model = UserModel()
    quantize_(model, FP16Config())
    assert model.user.precision == "fp16" and model.mlp[0].precision == "fp16"
    model = UserModel()
    quantize_(model, RowwiseEmbeddingConfig(bits=4), filter_fn=lambda m, fqn: fqn == "items")
    assert isinstance(model.items, QuantizedEmbeddingBag) and isinstance(model.user, nn.Embedding)
    quantize_(model, Int8LinearConfig())  # default filter: only nn.Linear
    assert isinstance(model.mlp[2], Int8Linear)


def test_unsupported_modules_and_bad_patterns():
    model = nn.Sequential(nn.Conv1d(2, 2, 1), nn.Linear(2, 2))
    with pytest.raises(TypeError, match=r"'0' \(Conv1d\) is not supported by Int8LinearConfig"):
        quantize_(model, Int8LinearConfig(), filter_fn=lambda m, fqn: True)
    with pytest.raises(ValueError, match="matches no quantizable module"):
        quantize_(nn.Sequential(nn.Linear(2, 2)), RecipeConfig(overrides={"does_not_exist": FP32Config()}))
    with pytest.raises(TypeError, match=r"module '0' \(EmbeddingBag\): .*max_norm.*overrides=\{'0': FP32Config\(\)\}"):
        quantize_(nn.Sequential(nn.EmbeddingBag(4, 2, max_norm=1.0)), RecipeConfig())
    with pytest.raises(TypeError, match="QuantConfig"):
        quantize_(UserModel(), {"embeddings": {"precision": "int8"}})


def test_config_validation_and_unknown_keys(tmp_path):
    with pytest.raises(ValueError, match=r"RowwiseEmbeddingConfig.bits must be one of \[8, 4\], got 2"):
        RowwiseEmbeddingConfig(bits=2)
    with pytest.raises(ValueError, match="observer must be one of"):
        Int8LinearConfig(observer="median")
    with pytest.raises(ValueError, match=r"unknown quantization config keys \['embedings'\]"):
        recipe_from_dict({"embedings": {"precision": "int8"}})
    with pytest.raises(ValueError, match=r"unknown keys \['observer'\]"):
        recipe_from_dict({"embeddings": {"precision": "int8", "observer": "mse"}})
    with pytest.raises(ValueError, match="precision for linear modules"):
        recipe_from_dict({"linears": {"precision": "int4"}})
    with pytest.raises(ValueError, match="invalid regular expression"):
        recipe_from_dict({"overrides": {"(": {"precision": "fp32"}}})
    path = tmp_path / "q.yaml"
    path.write_text("embeddings: {precision: int4, int4_clip: greedy}\nlinears: {precision: int8, activation: static, observer: entropy}\n")
    recipe = load_recipe(path)
    assert recipe.embeddings == RowwiseEmbeddingConfig(bits=4, clip="greedy")
    assert recipe.linears == Int8LinearConfig(activation="static", observer="entropy")


def test_anchored_int8_grid_from_config_and_yaml(tmp_path):
    """``grid="anchored"`` reaches the tables from the config and from a recipe's ``int8_grid`` key, and
    round-trips through the YAML form; int4 has no anchored grid."""
    from lightning_recsys.quant import pack_rowwise
    from lightning_recsys.quant.core.config import config_to_dict

    path = tmp_path / "q.yaml"
    path.write_text("embeddings: {precision: int8, int8_grid: anchored}\n")
    recipe = load_recipe(path)
    assert recipe.embeddings == RowwiseEmbeddingConfig(bits=8, grid="anchored")
    assert recipe_from_dict(config_to_dict(recipe)) == recipe
    model = UserModel()
    weight = model.user.weight.detach().clone()
    quantize_(model, recipe)
    assert torch.equal(model.user.packed, pack_rowwise(weight, 8, grid="anchored"))
    assert not torch.equal(model.user.packed, pack_rowwise(weight, 8))  # not the default (exact) grid
    with pytest.raises(ValueError, match=r"grid='anchored' needs bits=8"):
        RowwiseEmbeddingConfig(bits=4, grid="anchored")
    with pytest.raises(ValueError, match=r"unknown keys \['int8_grid'\]"):
        recipe_from_dict({"embeddings": {"precision": "int4", "int8_grid": "anchored"}})


def test_chunked_tables_are_quantized_through_their_dense_export():
    chunked = pytest.importorskip("lightning_recsys.embeddings.chunked")
    bag = nn.EmbeddingBag(50, 8, mode="sum")
    model = nn.Sequential(chunked.ChunkedEmbeddingBag.from_dense(bag, chunk_size=4))
    quantize_(model, RecipeConfig())
    assert isinstance(model[0], QuantizedEmbeddingBag)
    ids, offsets = torch.tensor([1, 2, 3]), torch.tensor([0, 2])
    assert (model[0](ids, offsets) - bag(ids, offsets)).abs().max() < 0.05


class RawTable(nn.Module):
    """A table held as a bare parameter and read with F.embedding_bag: no module for quantize_ to swap."""

    def __init__(self):
        super().__init__()
        self.table = nn.Parameter(torch.randn(1000, 16))
        self.head = nn.Linear(16, 1)

    def forward(self, ids, offsets):
        return self.head(torch.nn.functional.embedding_bag(ids, self.table, offsets))


def test_weights_no_handler_can_see_are_named_not_skipped_silently():
    with pytest.warns(UserWarning, match=r"leaves 100% of the model's parameter bytes in float: table \[1000, 16\]"):
        quantize_(RawTable(), RecipeConfig())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        quantize_(nn.Sequential(nn.EmbeddingBag(1000, 16), nn.Linear(16, 1)), RecipeConfig())  # nothing left behind
