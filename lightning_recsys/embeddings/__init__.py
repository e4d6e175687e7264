"""Embedding storage: chunked (FIITED) tables and the table-wise sharded collection (DCT)."""

from .chunked import ChunkedEmbedding, ChunkedEmbeddingBag, ChunkedEmbeddingBase
from .convert import chunk_modules, chunked_modules, export_compact, to_dense_modules
from .sharded import ShardedEmbeddingBagCollection, shard_embeddings, unshard_embeddings

__all__ = [
    "ChunkedEmbedding",
    "ChunkedEmbeddingBag",
    "ChunkedEmbeddingBase",
    "ShardedEmbeddingBagCollection",
    "chunk_modules",
    "chunked_modules",
    "export_compact",
    "shard_embeddings",
    "to_dense_modules",
    "unshard_embeddings",
]
