"""Embedding storage: chunked (FIITED) tables and the table-wise sharded collection (DCT)."""

from .chunked import ChunkedEmbedding, ChunkedEmbeddingBag, ChunkedEmbeddingBase
from .convert import chunk_modules, chunked_modules, export_compact, to_dense_modules

__all__ = [
    "ChunkedEmbedding",
    "ChunkedEmbeddingBag",
    "ChunkedEmbeddingBase",
    "chunk_modules",
    "chunked_modules",
    "export_compact",
    "to_dense_modules",
]
