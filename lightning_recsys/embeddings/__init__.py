"""Embedding storage: chunked (FIITED) tables, the table-wise sharded collection (DCT), Semantic-ID tables."""

from .chunked import ChunkedEmbedding, ChunkedEmbeddingBag, ChunkedEmbeddingBase
from .convert import chunk_modules, chunked_modules, export_compact, to_dense_modules
from .semantic_codes import kmeans, residual_kmeans
from .semantic_id import (
    HashedEmbeddingBag,
    SemanticIdEmbedding,
    TokenizedEmbeddingBag,
    fit_semantic_ids,
    prefix_ranges,
    prefix_tokens,
)
from .sharded import ShardedEmbeddingBagCollection, shard_embeddings, unshard_embeddings

__all__ = [
    "ChunkedEmbedding",
    "ChunkedEmbeddingBag",
    "ChunkedEmbeddingBase",
    "HashedEmbeddingBag",
    "SemanticIdEmbedding",
    "ShardedEmbeddingBagCollection",
    "TokenizedEmbeddingBag",
    "chunk_modules",
    "chunked_modules",
    "export_compact",
    "fit_semantic_ids",
    "kmeans",
    "prefix_ranges",
    "prefix_tokens",
    "residual_kmeans",
    "shard_embeddings",
    "to_dense_modules",
    "unshard_embeddings",
]
