"""Low-precision deployment of recommendation models: row-wise int8/int4 and fp16 embedding tables,
int8 (dynamic or calibrated static) and fp16 linears, calibration observers, per-module sensitivity
and a search for the smallest plan within an accuracy budget, fast ONNX export (and Torch-TensorRT),
and checkpoint quantization (``lrs quantize``).

Layout: ``core/`` (configs, the handler registry and ``quantize_``, row-wise packing, quantized
tables and linears, the precision names), ``calibration/`` (observers, ``calibrate``), ``search/``
(trial runs, sensitivity, plan search, accuracy and plan reports), ``export/`` (lowering with
model-specific plug-ins in ``export/lowerings/``, ONNX, graph rewrites, TensorRT, predictors),
``pipeline.py`` (checkpoint -> artifact) and ``cli.py`` (``lrs quantize``) on top.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from lightning_recsys.quant import quantize_, RecipeConfig
    >>> model = nn.Sequential(nn.EmbeddingBag(1000, 16), nn.Linear(16, 1))
    >>> quantize_(model, RecipeConfig(overrides={"0": {"precision": "int4"}}))
    >>> [type(m).__name__ for m in model]
    ['QuantizedEmbeddingBag', 'Int8Linear']
"""

from .calibration.calibrate import calibrate
from .calibration.observers import EntropyObserver, MinMaxObserver, MSEObserver, PercentileObserver, make_observer
from .core.api import is_quantized_module, quantize_, register_dense_exporter, register_quant_handler
from .core.config import (
    FP16Config,
    FP32Config,
    Int8LinearConfig,
    QuantConfig,
    RecipeConfig,
    RowwiseEmbeddingConfig,
    load_recipe,
    recipe_from_dict,
)
from .core.collection import QuantizedEmbeddingBagCollection
from .core.embedding import QuantizedEmbedding, QuantizedEmbeddingBag
from .core.linear import FP16Linear, Int8Linear
from .core.rowwise import dequantize_rowwise, pack_rowwise, unpack_rowwise
from .export import export_onnx, export_torch, flatten_batch, layout_feeds
from .export.predictor import OnnxPredictor, ProgramPredictor, load
from .export.tensorrt import TensorRTPredictor, TensorRTProgram, export_tensorrt, prepare_tensorrt_program, tensorrt_inputs
from .pipeline import load_checkpoint, quantize_checkpoint
from .search.options import TrialOptions
from .search.plan_report import write_plan_report
from .search.report import module_report
from .search.search import Budget, BudgetNotMetError, SearchResult, plan_to_recipe, search_plan
from .search.sensitivity import ModuleSensitivity, SensitivityResult, sensitivity_analysis

__all__ = [
    "Budget",
    "BudgetNotMetError",
    "EntropyObserver",
    "FP16Config",
    "FP16Linear",
    "FP32Config",
    "Int8Linear",
    "Int8LinearConfig",
    "MSEObserver",
    "MinMaxObserver",
    "ModuleSensitivity",
    "OnnxPredictor",
    "PercentileObserver",
    "QuantConfig",
    "QuantizedEmbedding",
    "QuantizedEmbeddingBag",
    "QuantizedEmbeddingBagCollection",
    "RecipeConfig",
    "RowwiseEmbeddingConfig",
    "SearchResult",
    "SensitivityResult",
    "TensorRTPredictor",
    "TensorRTProgram",
    "ProgramPredictor",
    "TrialOptions",
    "calibrate",
    "dequantize_rowwise",
    "export_onnx",
    "export_torch",
    "export_tensorrt",
    "flatten_batch",
    "layout_feeds",
    "is_quantized_module",
    "load",
    "load_checkpoint",
    "load_recipe",
    "make_observer",
    "module_report",
    "pack_rowwise",
    "plan_to_recipe",
    "prepare_tensorrt_program",
    "quantize_",
    "quantize_checkpoint",
    "recipe_from_dict",
    "register_dense_exporter",
    "register_quant_handler",
    "search_plan",
    "sensitivity_analysis",
    "tensorrt_inputs",
    "unpack_rowwise",
    "write_plan_report",
]
