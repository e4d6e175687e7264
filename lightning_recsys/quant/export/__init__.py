"""Deployment export: lowering of tables for graphs (with model-specific plug-ins in ``lowerings/``),
ONNX export and graph rewrites, Torch-TensorRT, and the predictors that load an artifact."""

from . import lowerings  # noqa: F401  (registers the project's model-specific lowerings)
from .onnx import METADATA_KEY, export_onnx, flatten_batch, layout_feeds

__all__ = ["export_onnx", "flatten_batch", "layout_feeds", "METADATA_KEY"]
