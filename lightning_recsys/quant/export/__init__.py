"""Deployment export: lowering of tables for graphs (with model-specific plug-ins in ``lowerings/``),
ONNX export and graph rewrites, torch.export programs, Torch-TensorRT, and the predictors that load an artifact."""

from . import lowerings  # noqa: F401  (registers the project's model-specific lowerings)
from .onnx import METADATA_KEY, export_onnx, flatten_batch, layout_feeds
from .torch_program import export_torch

__all__ = ["export_onnx", "export_torch", "flatten_batch", "layout_feeds", "METADATA_KEY"]
