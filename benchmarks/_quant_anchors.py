"""Extra candidates of benchmarks/quant.py: the anchors a user would deploy instead of ours, and the
anchored-grid variant of ours.

* :func:`fbgemm_torch_int8`: torch's own quantized modules, i.e. FBGEMM via torch
  (``torch.ao.nn.quantized.EmbeddingBag`` with row-wise int8 weights + dynamic int8 linears);
* :func:`compiled_fp32`: ``torch.compile`` of the fp32 model (inductor, default mode, static shapes);
* :func:`with_anchored_tables`: ours with the int8 tables re-packed on the anchored grid
  (``pack_rowwise(grid="anchored")``, integer zero points: no bias add in the graph).

Example::

    ao = fbgemm_torch_int8(fp32)            # a quantized copy; fp32 is untouched
    fast = compiled_fp32(fp32)              # compiled on its first call
"""

from __future__ import annotations

import copy
import warnings

import torch
from torch import nn

from lightning_recsys.quant import QuantizedEmbeddingBag, pack_rowwise


def fbgemm_torch_int8(fp32: nn.Module) -> nn.Module:
    """A copy of ``fp32`` on torch's FBGEMM quantized modules: every sum-pooled ``nn.EmbeddingBag``
    becomes ``torch.ao.nn.quantized.EmbeddingBag`` (row-wise int8, ``float_qparams_weight_only_qconfig``,
    read by ``quantized::embedding_bag_byte_rowwise_offsets``) and every ``nn.Linear`` a dynamic int8
    linear (``quantized::linear_dynamic``)."""
    from torch.ao.nn.quantized import EmbeddingBag as QEmbeddingBag
    from torch.ao.quantization import float_qparams_weight_only_qconfig, quantize_dynamic

    model = copy.deepcopy(fp32).eval()
    with warnings.catch_warnings():  # torch.ao.quantization is deprecated in torch 2.13 but present
        warnings.simplefilter("ignore")
        for name, m in list(model.named_modules()):
            if type(m) is nn.EmbeddingBag and m.mode == "sum" and m.padding_idx is None:
                m.qconfig = float_qparams_weight_only_qconfig
                model.set_submodule(name, QEmbeddingBag.from_float(m))
        return quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)


def compiled_fp32(fp32: nn.Module) -> nn.Module:
    """``torch.compile(fp32, dynamic=False)``: inductor, one graph specialised for each batch size."""
    return torch.compile(fp32, dynamic=False)


def with_anchored_tables(ours: nn.Module, fp32: nn.Module) -> nn.Module:
    """A copy of ``ours`` whose int8 tables are re-packed from ``fp32``'s weights on the anchored grid
    (same module names in both models)."""
    floats = dict(fp32.named_modules())
    out = copy.deepcopy(ours)
    for name, m in out.named_modules():
        if isinstance(m, QuantizedEmbeddingBag) and m.precision == "int8":
            m.packed.copy_(pack_rowwise(floats[name].weight, 8, grid="anchored"))
    return out
