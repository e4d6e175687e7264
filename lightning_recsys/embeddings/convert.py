"""Swap a model's embedding tables to chunked storage and back, and export pruned tables.

Example:
    >>> from torch import nn
    >>> from lightning_recsys.embeddings.convert import chunk_modules, to_dense_modules
    >>> model = nn.ModuleDict({"user": nn.Embedding(100, 16), "item": nn.EmbeddingBag(50, 16)})
    >>> sorted(chunk_modules(model, chunk_size=4))
    ['item', 'user']
    >>> type(to_dense_modules(model)["user"]).__name__
    'Embedding'
"""

from __future__ import annotations

import re
from typing import Any

from torch import nn

from .chunked import ChunkedEmbedding, ChunkedEmbeddingBag, ChunkedEmbeddingBase

__all__ = ["chunk_modules", "chunked_modules", "to_dense_modules", "export_compact"]


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


def chunked_modules(model: nn.Module) -> dict[str, ChunkedEmbeddingBase]:
    """Every chunked table of ``model`` by qualified name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, ChunkedEmbeddingBase)}


def _tied_weights(model: nn.Module, selected: dict[str, nn.Module]) -> dict[str, list[str]]:
    """For every selected table, the parameters of *other* modules that are its ``weight`` (tied by identity)."""
    owners: dict[int, list[tuple[str, nn.Module]]] = {}
    for mod_name, module in model.named_modules(remove_duplicate=False):
        for p_name, p in module.named_parameters(recurse=False, remove_duplicate=False):
            owners.setdefault(id(p), []).append((f"{mod_name}.{p_name}" if mod_name else p_name, module))
    tied = {}
    for name, module in selected.items():
        weight = getattr(module, "weight", None)
        others = sorted({n for n, m in owners.get(id(weight), []) if m is not module})
        if others:
            tied[name] = others
    return tied


def chunk_modules(model: nn.Module, chunk_size: int = 4, pattern: str | None = None) -> dict[str, ChunkedEmbeddingBase]:
    """Replace (in place) the ``nn.Embedding`` / ``nn.EmbeddingBag`` submodules whose qualified name matches
    the regex ``pattern`` (``re.search``; ``None`` = all) by chunked copies; return the chunked tables.

    Already chunked tables that match are kept (their ``chunk_size`` must agree); a module registered under
    several names is replaced under all of them. Raises ``ValueError`` when nothing matches (listing the
    embedding modules that exist) and, before changing anything, when a selected table's ``weight`` is tied
    to another module's parameter (e.g. a language model's decoder): chunking would untie them.
    """
    if pattern is not None:
        try:
            regex = re.compile(pattern)
        except re.error as err:
            raise ValueError(f"pattern {pattern!r} is not a valid regular expression: {err}") from None
    candidates = {
        n: m
        for n, m in model.named_modules()
        if isinstance(m, (nn.Embedding, nn.EmbeddingBag, ChunkedEmbeddingBase)) and n
    }
    selected = {n: m for n, m in candidates.items() if pattern is None or regex.search(n)}
    if not selected:
        raise ValueError(
            f"pattern {pattern!r} matches no embedding module; embedding modules are {sorted(candidates) or 'none'}"
        )
    tied = _tied_weights(model, selected)
    if tied:
        rest = [n for n in selected if n not in tied]
        hint = f"pattern='^({'|'.join(re.escape(n) for n in rest)})$'" if rest else "a pattern that leaves them out"
        raise ValueError(
            f"cannot chunk tied weights: {'; '.join(f'{n}.weight is also {others}' for n, others in tied.items())}. "
            f"Chunked storage would untie them (the other module would keep a dense copy); exclude the tied tables "
            f"with pattern= (e.g. {hint}) or untie the weights"
        )
    out: dict[str, ChunkedEmbeddingBase] = {}
    for name, module in selected.items():
        if isinstance(module, ChunkedEmbeddingBase):
            if module.chunk_size != chunk_size:
                raise ValueError(f"{name} is already chunked with chunk_size={module.chunk_size}, not {chunk_size}")
            out[name] = module
            continue
        cls = ChunkedEmbeddingBag if isinstance(module, nn.EmbeddingBag) else ChunkedEmbedding
        try:
            new = cls.from_dense(module, chunk_size)
        except ValueError as err:
            raise ValueError(f"cannot chunk {name!r}: {err}") from None
        new.train(module.training)
        for alias, other in list(model.named_modules(remove_duplicate=False)):
            if other is module:
                _replace(model, alias, new)
        out[name] = new
    return out


def to_dense_modules(model: nn.Module) -> nn.Module:
    """Replace (in place) every chunked table by a plain ``nn.Embedding``/``nn.EmbeddingBag`` (pruned
    chunks as zeros); return ``model``."""
    for name, module in chunked_modules(model).items():
        _replace(model, name, module.to_dense())
    return model


def export_compact(model: nn.Module) -> dict[str, dict[str, Any]]:
    """Compact form of every chunked table (``pool [P, C]``, ``mask``, ``base``, shapes) by name: what the
    quantization toolchain takes (quantize ``pool`` row-wise, keep the index as is)."""
    return {name: module.compact() for name, module in chunked_modules(model).items()}
