"""``quantize_(model, config, filter_fn=None)``: swap modules in place, torchao style.

A registry maps each config type to a handler; a handler knows which module types it converts (its
default filter) and returns the replacement module. Handlers cover ``nn.Embedding``,
``nn.EmbeddingBag`` and ``nn.Linear`` of any model, and any table that can export itself to a dense
``nn.Embedding`` / ``nn.EmbeddingBag`` (the hook for chunked / pruned tables): a module with a
``to_dense()`` method returning one, registered with :func:`register_dense_exporter` (the FIITED
``ChunkedEmbedding`` / ``ChunkedEmbeddingBag`` are registered when importable).

Example:
    >>> import torch
    >>> from torch import nn
    >>> from lightning_recsys.quant import quantize_, RecipeConfig, RowwiseEmbeddingConfig, FP32Config
    >>> model = nn.Sequential(nn.EmbeddingBag(100, 8), nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 1))
    >>> quantize_(model, RecipeConfig(overrides={"3": FP32Config()}))
    >>> [type(m).__name__ for m in model]
    ['QuantizedEmbeddingBag', 'Int8Linear', 'ReLU', 'Linear']
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from .collection import fuse_collections
from .config import FP16Config, FP32Config, Int8LinearConfig, QuantConfig, RecipeConfig, RowwiseEmbeddingConfig
from .embedding import QuantizedEmbedding, QuantizedEmbeddingBag
from .linear import FP16Linear, Int8Linear

__all__ = ["quantize_", "register_quant_handler", "register_dense_exporter", "QuantHandler", "is_quantized_module", "is_table",
           "is_linear", "apply_config", "set_submodule", "DENSE_EXPORTERS"]

FilterFn = Callable[[nn.Module, str], bool]

#: module types whose ``to_dense()`` returns an ``nn.Embedding`` / ``nn.EmbeddingBag``
DENSE_EXPORTERS: list[type[nn.Module]] = []


def register_dense_exporter(module_type: type[nn.Module]) -> None:
    """Let the embedding handlers convert ``module_type`` through its ``to_dense()`` export."""
    if not callable(getattr(module_type, "to_dense", None)):
        raise TypeError(f"{module_type.__name__} must define to_dense() -> nn.Embedding | nn.EmbeddingBag")
    if module_type not in DENSE_EXPORTERS:
        DENSE_EXPORTERS.append(module_type)


try:  # FIITED chunked tables export a dense table (lightning_recsys.embeddings.chunked)
    from ...embeddings.chunked import ChunkedEmbedding, ChunkedEmbeddingBag

    register_dense_exporter(ChunkedEmbedding)
    register_dense_exporter(ChunkedEmbeddingBag)
except ImportError:  # pragma: no cover - the chunked tables are optional here
    pass


def is_table(m: nn.Module) -> bool:
    """Whether the embedding handlers take ``m``: an ``nn.Embedding`` / ``nn.EmbeddingBag`` or a registered dense exporter."""
    return isinstance(m, (nn.Embedding, nn.EmbeddingBag)) or isinstance(m, tuple(DENSE_EXPORTERS))


def is_linear(m: nn.Module) -> bool:
    """Whether the linear handlers take ``m`` (an ``nn.Linear`` other than attention's out_proj)."""
    # MultiheadAttention reads its out_proj's weight directly: that Linear subclass must stay float
    return isinstance(m, nn.Linear) and not isinstance(m, nn.modules.linear.NonDynamicallyQuantizableLinear)


def _dense_table(m: nn.Module, fqn: str) -> nn.Embedding | nn.EmbeddingBag:
    if isinstance(m, (nn.Embedding, nn.EmbeddingBag)):
        return m
    dense = m.to_dense()
    if not isinstance(dense, (nn.Embedding, nn.EmbeddingBag)):
        raise TypeError(f"{fqn}: {type(m).__name__}.to_dense() returned {type(dense).__name__}, expected an embedding table")
    return dense


def is_quantized_module(m: nn.Module) -> bool:
    """True for the modules ``quantize_`` produces."""
    return isinstance(m, (QuantizedEmbedding, QuantizedEmbeddingBag, Int8Linear, FP16Linear))


@dataclass
class QuantHandler:
    """``supports(module)`` is the default filter; ``convert(module, config, fqn)`` the replacement."""

    supports: Callable[[nn.Module], bool]
    convert: Callable[[nn.Module, QuantConfig, str], nn.Module]


_HANDLERS: dict[type[QuantConfig], QuantHandler] = {}


def register_quant_handler(config_type: type[QuantConfig], supports: Callable[[nn.Module], bool]):
    """Decorator registering ``convert(module, config, fqn) -> nn.Module`` for ``config_type``."""

    def wrap(fn: Callable[[nn.Module, QuantConfig, str], nn.Module]):
        _HANDLERS[config_type] = QuantHandler(supports, fn)
        return fn

    return wrap


def _unsupported(m: nn.Module, fqn: str, config: QuantConfig, what: str) -> TypeError:
    return TypeError(
        f"module {fqn!r} ({type(m).__name__}) is not supported by {type(config).__name__}; it converts {what}"
    )


@register_quant_handler(RowwiseEmbeddingConfig, is_table)
def _rowwise(m: nn.Module, config: RowwiseEmbeddingConfig, fqn: str) -> nn.Module:
    if not is_table(m):
        raise _unsupported(m, fqn, config, "nn.Embedding, nn.EmbeddingBag and dense-exportable tables")
    dense = _dense_table(m, fqn)
    cls = QuantizedEmbeddingBag if isinstance(dense, nn.EmbeddingBag) else QuantizedEmbedding
    return cls.from_float(dense, precision=f"int{config.bits}", clip=config.clip, grid=config.grid)


@register_quant_handler(Int8LinearConfig, is_linear)
def _int8_linear(m: nn.Module, config: Int8LinearConfig, fqn: str) -> nn.Module:
    if not is_linear(m):
        raise _unsupported(m, fqn, config, "nn.Linear")
    return Int8Linear.from_float(m, config.activation, config.observer, config.percentile, config.bins)


@register_quant_handler(FP16Config, lambda m: is_table(m) or is_linear(m))
def _fp16(m: nn.Module, config: FP16Config, fqn: str) -> nn.Module:
    if is_linear(m):
        return FP16Linear.from_float(m)
    if is_table(m):
        dense = _dense_table(m, fqn)
        cls = QuantizedEmbeddingBag if isinstance(dense, nn.EmbeddingBag) else QuantizedEmbedding
        return cls.from_float(dense, precision="fp16")
    raise _unsupported(m, fqn, config, "nn.Embedding, nn.EmbeddingBag and nn.Linear")


@register_quant_handler(FP32Config, lambda m: False)
def _fp32(m: nn.Module, config: FP32Config, fqn: str) -> nn.Module:
    return m


def _recipe_supports(m: nn.Module) -> bool:
    return is_table(m) or is_linear(m)


@register_quant_handler(RecipeConfig, _recipe_supports)
def _recipe(m: nn.Module, config: RecipeConfig, fqn: str) -> nn.Module:
    kind = "embedding" if is_table(m) else "linear" if is_linear(m) else None
    if kind is None:
        raise _unsupported(m, fqn, config, "nn.Embedding, nn.EmbeddingBag and nn.Linear")
    sub, _ = config.resolve(fqn, kind)
    return apply_config(m, sub, fqn)


def apply_config(m: nn.Module, config: QuantConfig, fqn: str) -> nn.Module:
    """The quantized replacement of module ``m`` (at ``fqn``) under ``config``, from the registered handler."""
    handler = _HANDLERS.get(type(config))
    if handler is None:
        raise TypeError(f"no quantization handler registered for {type(config).__name__}; known: {[c.__name__ for c in _HANDLERS]}")
    return handler.convert(m, config, fqn)


def set_submodule(model: nn.Module, fqn: str, new: nn.Module) -> None:
    """Replace the submodule of ``model`` at dotted path ``fqn`` (not the root) with ``new``."""
    parent_name, _, child = fqn.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def quantize_(model: nn.Module, config: QuantConfig, filter_fn: FilterFn | None = None) -> None:
    """Replace, in place, every module of ``model`` selected by ``filter_fn(module, fqn)`` (default:
    the module types the config's handler converts) with its quantized version.

    Afterwards every ``EmbeddingBagCollection`` with two or more row-wise tables of one precision and
    width reads them with one kernel call (:class:`~lightning_recsys.quant.QuantizedEmbeddingBagCollection`).

    Raises ``TypeError`` for a config without handler or a selected module the handler cannot
    convert, and ``ValueError`` when a :class:`RecipeConfig` override pattern matches no module.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if not isinstance(config, QuantConfig):
        raise TypeError(f"config must be a QuantConfig (e.g. RecipeConfig()), got {type(config).__name__}")
    handler = _HANDLERS.get(type(config))
    if handler is None:
        raise TypeError(f"no quantization handler registered for {type(config).__name__}")
    select = filter_fn if filter_fn is not None else (lambda m, fqn: handler.supports(m))
    if isinstance(model, (nn.Embedding, nn.EmbeddingBag, nn.Linear)):
        raise TypeError("quantize_ swaps submodules in place: wrap a single layer in a container (e.g. nn.Sequential)")
    targets = []
    skip_prefixes: list[str] = []
    for fqn, m in model.named_modules():
        if not fqn or any(fqn.startswith(p) for p in skip_prefixes) or is_quantized_module(m):
            continue
        if select(m, fqn):
            targets.append((fqn, m))
            skip_prefixes.append(fqn + ".")
    if isinstance(config, RecipeConfig):
        for pattern in config.overrides:
            if not any(re.fullmatch(pattern, fqn) for fqn, _ in targets):
                raise ValueError(
                    f"override pattern {pattern!r} matches no quantizable module; candidates: "
                    f"{[fqn for fqn, _ in targets][:12]}{' ...' if len(targets) > 12 else ''}"
                )
    if filter_fn is None:
        _warn_unconvertible_weights(model, handler)
    aliases = [(fqn, m) for fqn, m in model.named_modules(remove_duplicate=False) if fqn]  # before any swap
    replaced: dict[int, nn.Module] = {}
    for fqn, m in targets:
        try:
            new = handler.convert(m, config, fqn)
        except (TypeError, ValueError) as e:  # name the module and the way to leave it as it is
            if repr(fqn) in str(e):
                raise
            fix = (f"RecipeConfig(overrides={{{fqn!r}: FP32Config()}})" if isinstance(config, RecipeConfig)
                   else "a filter_fn that leaves it out")  # fmt: skip
            raise type(e)(f"cannot quantize module {fqn!r} ({type(m).__name__}): {e}; keep it in float with {fix}") from e
        if new is not m:
            set_submodule(model, fqn, new)
            replaced[id(m)] = new
    for fqn, m in aliases:  # a module shared under several names (tied tables) is replaced under every name
        if id(m) not in replaced:
            continue
        try:
            current = model.get_submodule(fqn)
        except AttributeError:  # the path runs through a module that was itself replaced
            continue
        if current is m:
            set_submodule(model, fqn, replaced[id(m)])
    fuse_collections(model)


#: share of the model's parameter bytes in weights outside any convertible module from which quantize_ warns
UNCONVERTIBLE_WARN_SHARE = 0.25


def _warn_unconvertible_weights(model: nn.Module, handler: QuantHandler) -> None:
    """Warn when matrices that no handler can see (a table held as a bare ``nn.Parameter`` and read with
    ``F.embedding_bag``, a custom layer's weight) hold much of the model: ``quantize_`` leaves them float."""
    total, left = 0, []
    for fqn, m in model.named_modules():
        seen = is_table(m) or is_linear(m) or is_quantized_module(m) or handler.supports(m)
        for name, p in m.named_parameters(recurse=False):
            total += p.numel() * p.element_size()
            if not seen and p.dim() >= 2 and p.is_floating_point():
                left.append((f"{fqn}.{name}" if fqn else name, p))
    size = sum(p.numel() * p.element_size() for _, p in left)
    if total and size >= UNCONVERTIBLE_WARN_SHARE * total:
        left.sort(key=lambda x: -x[1].numel())
        names = ", ".join(f"{n} {list(p.shape)}" for n, p in left[:4]) + (" ..." if len(left) > 4 else "")
        warnings.warn(f"quantize_ leaves {size / total:.0%} of the model's parameter bytes in float: {names} (held by no "
                      "nn.Embedding / nn.EmbeddingBag / nn.Linear, e.g. a table read with F.embedding_bag); hold such "
                      "weights in those modules to quantize them", UserWarning, stacklevel=3)  # fmt: skip
