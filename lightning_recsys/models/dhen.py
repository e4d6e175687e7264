"""DHEN (Zhang et al., arXiv 2203.11014): stacked layers of an ensemble of interaction modules on
feature slots ``X`` [B, m, d], each layer ``LayerNorm(Ensemble_i Module_i(X) + ShortCut(X))``.

* Slots: one per sparse feature (a sum-pooled ``nn.EmbeddingBag`` from
  :class:`~lightning_recsys.models.EmbeddingBagCollection`, so FIITED and quantization see standard
  tables), plus ``dense_slots`` slots made from the dense features by a bottom MLP.
* Modules map ``m`` slots to ``l`` slots: ``"dot"`` (DLRM-style pairwise dot products + MLP, the open
  stand-in for AdvancedDLRM), ``"linear"`` (``W X`` over the slots), ``"attention"`` (a Transformer
  encoder layer over the slots), ``"cross"`` (DCNv2's cross term ``x * (W x + b)`` on the flattened slots,
  without DCN's own skip: the layer's shortcut plays that role) and ``"conv"`` (2-D convolution over
  the m x d grid). Modules that keep ``m`` slots end with a slot projection when ``l != m``.
* Ensemble: ``"sum"``, ``"weighted"`` (a learned weight per module) or ``"concat"`` (along the slots,
  then projected to ``l``); shortcut: identity when ``l == m``, else a learned slot projection.
* Head: flatten -> MLP -> one logit per task.

Every layer is a plain ``nn.Linear`` / ``nn.LayerNorm`` / ``nn.Conv2d`` or a standard op (the attention
is written out with ``nn.Linear`` projections), so ``quantize_`` finds the linears and ONNX export
works (opset 18).

Example:
    >>> from lightning_recsys.data import SyntheticCTRDataModule
    >>> from lightning_recsys.models import DHEN
    >>> dm = SyntheticCTRDataModule(num_train=512, num_val=256, num_test=256, max_rows=100, batch_size=128)
    >>> model = DHEN.from_spec(dm.feature_spec, embedding_dim=8, modules=("dot", "attention"), num_layers=2)
    >>> model(next(iter(dm.train_dataloader()))).shape  # one logit per task
    torch.Size([128, 2])
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn

from .._validation import ConfigurationError, check_int
from ..data.batch import FeatureSpec, RecsysBatch
from .dcn import CrossLayer
from .dlrm import MLP, DotInteraction, EmbeddingBagCollection

__all__ = [
    "ConvInteraction",
    "CrossInteraction",
    "DHEN",
    "DHENLayer",
    "DotMLPInteraction",
    "INTERACTIONS",
    "SelfAttentionInteraction",
    "SlotLinear",
]


class SlotLinear(nn.Module):
    """``W X``: a linear map over the slot axis, ``[B, m, d] -> [B, l, d]`` (one ``nn.Linear(m, l)``).

    A float ``nn.Linear`` runs as ``W @ X`` on the ``[m, B d]`` layout (about 3x faster on CPU than
    ``nn.Linear`` on the transposed slots, whose GEMM has an inner dimension of ``m``); a module that
    replaced it (a quantized linear from ``quantize_``) is called on the transposed slots.
    """

    def __init__(self, num_slots_in: int, num_slots_out: int, bias: bool = False) -> None:
        super().__init__()
        self.proj = nn.Linear(num_slots_in, num_slots_out, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        if type(self.proj) is not nn.Linear:
            return self.proj(x.transpose(1, 2)).transpose(1, 2)
        b, m, d = x.shape
        y = torch.matmul(self.proj.weight, x.transpose(0, 1).reshape(m, b * d)).reshape(-1, b, d).transpose(0, 1)
        return y if self.proj.bias is None else y + self.proj.bias.view(1, -1, 1)


def _to_slots(num_slots_in: int, num_slots_out: int) -> nn.Module:
    return nn.Identity() if num_slots_in == num_slots_out else SlotLinear(num_slots_in, num_slots_out)


class DotMLPInteraction(nn.Module):
    """DLRM-style: the pairwise dot products of the ``m`` slots (lower triangle of ``X X^T``) -> MLP
    (``mlp`` hidden sizes, ReLU) -> ``[B, l, d]``."""

    def __init__(self, num_slots_in: int, num_slots_out: int, dim: int, mlp: Sequence[int] = (64,)) -> None:
        super().__init__()
        if num_slots_in < 2:
            raise ValueError(f"the 'dot' module needs at least 2 slots, got {num_slots_in}")
        self.num_slots_out, self.dim = num_slots_out, dim
        self.dot = DotInteraction(num_slots_in, include_dense=False)
        self.mlp = MLP(num_slots_in * (num_slots_in - 1) // 2, [*mlp, num_slots_out * dim])

    def forward(self, x: Tensor) -> Tensor:
        return self.mlp(self.dot(None, x)).reshape(-1, self.num_slots_out, self.dim)


class SelfAttentionInteraction(nn.Module):
    """A post-norm Transformer encoder layer over the slots (multi-head self-attention with
    ``nn.Linear`` projections, then a ReLU feed-forward of width ``ffn``), then a slot projection to ``l``."""

    def __init__(self, num_slots_in: int, num_slots_out: int, dim: int, heads: int = 2, ffn: int | None = None) -> None:
        super().__init__()
        if dim % check_int("heads", heads, low=1):
            raise ConfigurationError(f"heads must be a positive integer dividing embedding_dim ({dim}), got {heads!r}")
        self.heads, self.scale = heads, 1.0 / math.sqrt(dim // heads)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.ffn = MLP(dim, [ffn or 2 * dim, dim])
        self.norm2 = nn.LayerNorm(dim)
        self.slots = _to_slots(num_slots_in, num_slots_out)

    def forward(self, x: Tensor) -> Tensor:
        b, m, d = x.shape
        q, k, v = self.qkv(x).reshape(b, m, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        # scores as [key, query] with the softmax over the keys (dim -2): the CPU softmax on a last
        # dimension of a few slots is ~3x slower than on this layout
        att = torch.softmax(torch.matmul(k, q.transpose(-1, -2)) * self.scale, dim=-2)
        mixed = torch.matmul(att.transpose(-1, -2), v).transpose(1, 2).reshape(b, m, d)
        y = self.norm1(x + self.out(mixed))
        return self.slots(self.norm2(y + self.ffn(y)))


class CrossInteraction(nn.Module):
    """DCN-style cross on the flattened slots: ``x * (W x + b)`` (DCNv2's cross term, ``W`` full rank or
    of rank ``rank``), back to ``[B, m, d]``, then a slot projection to ``l``."""

    def __init__(self, num_slots_in: int, num_slots_out: int, dim: int, rank: int | None = None) -> None:
        super().__init__()
        self.cross = CrossLayer(num_slots_in * dim, rank, residual=False)
        self.slots = _to_slots(num_slots_in, num_slots_out)

    def forward(self, x: Tensor) -> Tensor:
        return self.slots(self.cross(x.flatten(1)).reshape(x.shape))


class ConvInteraction(nn.Module):
    """2-D convolution over the m x d grid: ``Conv2d(1, channels, kernel_size, same padding)`` -> ReLU ->
    ``Conv2d(channels, 1, 1)`` -> ``[B, m, d]``, then a slot projection to ``l``."""

    def __init__(self, num_slots_in: int, num_slots_out: int, dim: int, channels: int = 4, kernel_size: int = 3) -> None:
        super().__init__()
        if check_int("kernel_size", kernel_size, low=1) % 2 == 0:
            raise ConfigurationError(f"kernel_size must be an odd positive integer, got {kernel_size!r}")
        check_int("channels", channels, low=1)
        self.conv = nn.Sequential(
            nn.Conv2d(1, channels, kernel_size, padding=kernel_size // 2), nn.ReLU(), nn.Conv2d(channels, 1, 1)
        )
        self.slots = _to_slots(num_slots_in, num_slots_out)

    def forward(self, x: Tensor) -> Tensor:
        return self.slots(self.conv(x.unsqueeze(1)).squeeze(1))


#: module name -> class taking ``(num_slots_in, num_slots_out, dim, **options)``
INTERACTIONS: dict[str, type[nn.Module]] = {
    "dot": DotMLPInteraction,
    "linear": SlotLinear,
    "attention": SelfAttentionInteraction,
    "cross": CrossInteraction,
    "conv": ConvInteraction,
}
ENSEMBLES = ("sum", "weighted", "concat")


def _build_interaction(name: str, m: int, l: int, dim: int, options: Mapping[str, Any]) -> nn.Module:
    cls = INTERACTIONS[name]
    if name == "linear":
        allowed = {"bias"}
        args: tuple = (m, l)
    else:
        allowed = set(inspect.signature(cls.__init__).parameters) - {"self", "num_slots_in", "num_slots_out", "dim"}
        args = (m, l, dim)
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise ValueError(f"module_options[{name!r}] has unknown options {unknown}; valid: {sorted(allowed)}")
    return cls(*args, **options)


class DHENLayer(nn.Module):
    """``LayerNorm(Ensemble_i Module_i(X) + ShortCut(X))``: ``[B, m, d] -> [B, l, d]``.

    Args:
        num_slots_in, num_slots_out: ``m`` and ``l``.
        dim: slot width ``d`` (the LayerNorm runs over it).
        modules: names from :data:`INTERACTIONS`.
        ensemble: ``"sum"``, ``"weighted"`` (learned weight per module, initialised to 1) or
            ``"concat"`` (along the slots, then a slot projection ``k l -> l``).
        module_options: keyword arguments per module name, e.g. ``{"attention": {"heads": 4}}``.
    """

    def __init__(
        self,
        num_slots_in: int,
        num_slots_out: int,
        dim: int,
        modules: Sequence[str] = ("dot", "linear"),
        ensemble: Literal["sum", "weighted", "concat"] = "sum",
        module_options: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> None:
        super().__init__()
        if isinstance(modules, str) or not modules:
            raise ValueError(f"modules must be a non-empty list of names from {sorted(INTERACTIONS)}, got {modules!r}")
        unknown = sorted(set(modules) - set(INTERACTIONS))
        if unknown:
            raise ValueError(f"modules names unknown interaction modules {unknown}; choose from {sorted(INTERACTIONS)}")
        if ensemble not in ENSEMBLES:
            raise ValueError(f"ensemble must be one of {ENSEMBLES}, got {ensemble!r}")
        options = dict(module_options or {})
        extra = sorted(set(options) - set(INTERACTIONS))
        if extra:
            raise ValueError(f"module_options names unknown modules {extra}; choose from {sorted(INTERACTIONS)}")
        self.ensemble = ensemble
        self.interactions = nn.ModuleList(
            [_build_interaction(n, num_slots_in, num_slots_out, dim, options.get(n, {})) for n in modules]
        )
        k = len(modules)
        if ensemble == "concat":
            self.combine = SlotLinear(k * num_slots_out, num_slots_out)
        elif ensemble == "weighted":
            self.weights = nn.Parameter(torch.ones(k))
        self.shortcut = _to_slots(num_slots_in, num_slots_out)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor) -> Tensor:
        outs = [f(x) for f in self.interactions]
        if self.ensemble == "concat":
            y = self.combine(torch.cat(outs, dim=1))
        elif self.ensemble == "weighted":
            y = (torch.stack(outs, 0) * self.weights.view(-1, 1, 1, 1)).sum(0)
        else:
            y = outs[0]
            for o in outs[1:]:
                y = y + o
        return self.norm(y + self.shortcut(x))


class DHEN(nn.Module):
    """DHEN: slots from embeddings (+ dense slots) -> ``num_layers`` :class:`DHENLayer` s -> head.

    ``forward(batch) -> logits [B, num_tasks]``.

    Args:
        num_dense: dense feature count (pushed through ``bottom_mlp`` to ``dense_slots`` slots).
        cardinalities: table size per sparse feature (one slot each).
        embedding_dim: slot width ``d``.
        num_layers: stacked DHEN layers.
        modules, ensemble, module_options: every layer's ensemble (see :class:`DHENLayer`).
        slots: output slot count of each layer (``num_layers`` entries); default: the input slot count.
        dense_slots: slots made from the dense features (ignored without dense features).
        bottom_mlp: hidden sizes of the dense features' MLP.
        top_mlp: hidden sizes of the head on the flattened last layer.
        num_tasks: logits per sample.
    """

    def __init__(
        self,
        num_dense: int,
        cardinalities: Mapping[str, int],
        embedding_dim: int = 16,
        num_layers: int = 2,
        modules: Sequence[str] = ("dot", "linear"),
        ensemble: Literal["sum", "weighted", "concat"] = "sum",
        module_options: Mapping[str, Mapping[str, Any]] | None = None,
        slots: Sequence[int] | None = None,
        dense_slots: int = 1,
        bottom_mlp: Sequence[int] = (64,),
        top_mlp: Sequence[int] = (64, 32),
        num_tasks: int = 1,
    ) -> None:
        super().__init__()
        if not cardinalities:
            raise ValueError("cardinalities must name at least one sparse feature")
        for arg, val, lo in (("num_layers", num_layers, 1), ("dense_slots", dense_slots, 0), ("num_tasks", num_tasks, 1)):
            check_int(arg, val, low=lo)
        self.embeddings = EmbeddingBagCollection(cardinalities, embedding_dim)
        self.dense_slots = dense_slots if num_dense > 0 else 0
        self.bottom_mlp = (
            MLP(num_dense, [*bottom_mlp, self.dense_slots * embedding_dim], final_activation=True) if self.dense_slots else None
        )
        m = len(cardinalities) + self.dense_slots
        sizes = [m] * num_layers if slots is None else [int(s) for s in slots]
        if len(sizes) != num_layers or any(s < 1 for s in sizes):
            raise ValueError(f"slots must hold {num_layers} (num_layers) positive slot counts, got {slots!r}")
        self.layers = nn.ModuleList()
        for out in sizes:
            self.layers.append(DHENLayer(m, out, embedding_dim, modules, ensemble, module_options))
            m = out
        self.head = MLP(m * embedding_dim, [*top_mlp, num_tasks])

    @classmethod
    def from_spec(cls, spec: FeatureSpec, **kwargs) -> DHEN:
        """Build with table sizes and task count from a data module's :class:`FeatureSpec`."""
        return cls(spec.num_dense, spec.cardinalities, num_tasks=len(spec.tasks), **kwargs)

    def input_slots(self, batch: RecsysBatch) -> Tensor:
        """The input slots ``X0`` [B, m, d]: dense slots first, then one per sparse feature."""
        x = self.embeddings(batch.sparse)
        if self.bottom_mlp is None:
            return x
        dense = self.bottom_mlp(batch.dense).reshape(x.shape[0], self.dense_slots, x.shape[2])
        return torch.cat([dense, x], dim=1)

    def forward(self, batch: RecsysBatch) -> Tensor:
        x = self.input_slots(batch)
        for layer in self.layers:
            x = layer(x)
        return self.head(x.flatten(1))
