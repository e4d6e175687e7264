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


def chunk_modules(model: nn.Module, chunk_size: int = 4, pattern: str | None = None) -> dict[str, ChunkedEmbeddingBase]:
    """Replace (in place) the ``nn.Embedding`` / ``nn.EmbeddingBag`` submodules whose qualified name matches
    the regex ``pattern`` (``re.search``; ``None`` = all) by chunked copies; return the chunked tables.

    Already chunked tables that match are kept (their ``chunk_size`` must agree). Raises ``ValueError``
    when nothing matches, listing the embedding modules that exist.
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
        _replace(model, name, new)
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
