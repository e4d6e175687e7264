"""Low-precision deployment of recommendation models: row-wise int8/int4 and fp16 embedding tables,
int8 (dynamic or calibrated static) and fp16 linears, calibration observers, per-module sensitivity
and a search for the smallest plan within an accuracy budget, fast ONNX export (and Torch-TensorRT),
and checkpoint quantization (``lrs quantize``).

Example:
    >>> import torch
    >>> from torch import nn
    >>> from lightning_recsys.quant import quantize_, RecipeConfig
    >>> model = nn.Sequential(nn.EmbeddingBag(1000, 16), nn.Linear(16, 1))
    >>> quantize_(model, RecipeConfig(overrides={"0": {"precision": "int4"}}))
    >>> [type(m).__name__ for m in model]
    ['QuantizedEmbeddingBag', 'Int8Linear']
"""

from .api import is_quantized_module, quantize_, register_dense_exporter, register_quant_handler
from .calibrate import calibrate
from .checkpoint import load_checkpoint, quantize_checkpoint
from .config import (
    FP16Config,
    FP32Config,
    Int8LinearConfig,
    QuantConfig,
    RecipeConfig,
    RowwiseEmbeddingConfig,
    load_recipe,
    recipe_from_dict,
)
from .embedding import QuantizedEmbedding, QuantizedEmbeddingBag
from .export import export_onnx, flatten_batch, layout_feeds
from .linear import FP16Linear, Int8Linear
from .observers import EntropyObserver, MinMaxObserver, MSEObserver, PercentileObserver, make_observer
from .predictor import OnnxPredictor, TorchPredictor, load
from .report import module_report
from .plan_report import write_plan_report
from .rowwise import dequantize_rowwise, pack_rowwise, unpack_rowwise
from .search import Budget, BudgetNotMetError, SearchResult, plan_search, plan_to_recipe, search_plan
from .sensitivity import ModuleSensitivity, SensitivityResult, run_sensitivity, sensitivity_analysis
from .tensorrt import TensorRTPredictor, TensorRTProgram, export_tensorrt, prepare_tensorrt_program, tensorrt_inputs

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
    "RecipeConfig",
    "RowwiseEmbeddingConfig",
    "SearchResult",
    "SensitivityResult",
    "TensorRTPredictor",
    "TensorRTProgram",
    "TorchPredictor",
    "calibrate",
    "dequantize_rowwise",
    "export_onnx",
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
    "plan_search",
    "plan_to_recipe",
    "prepare_tensorrt_program",
    "quantize_",
    "quantize_checkpoint",
    "recipe_from_dict",
    "register_dense_exporter",
    "register_quant_handler",
    "run_sensitivity",
    "search_plan",
    "sensitivity_analysis",
    "tensorrt_inputs",
    "unpack_rowwise",
    "write_plan_report",
]
