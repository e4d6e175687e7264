"""Plain embedding modules: the embedding-bag collection, chunked (FIITED) tables, Semantic-ID tables.

The table-wise sharded collection lives in :mod:`lightning_recsys.distributed`."""

from .chunked import ChunkedEmbedding, ChunkedEmbeddingBag, ChunkedEmbeddingBase
from .collection import EmbeddingBagCollection
from .convert import chunk_modules, chunked_modules, export_compact, to_dense_modules
from .rq_vae import rq_vae
from .semantic_codes import kmeans, residual_kmeans
from .semantic_id import (
    HashedEmbeddingBag,
    SemanticIdEmbedding,
    TokenizedEmbeddingBag,
    fit_semantic_ids,
    prefix_ranges,
    prefix_tokens,
)

__all__ = [
    "ChunkedEmbedding",
    "ChunkedEmbeddingBag",
    "ChunkedEmbeddingBase",
    "EmbeddingBagCollection",
    "HashedEmbeddingBag",
    "SemanticIdEmbedding",
    "TokenizedEmbeddingBag",
    "chunk_modules",
    "chunked_modules",
    "export_compact",
    "fit_semantic_ids",
    "kmeans",
    "prefix_ranges",
    "prefix_tokens",
    "residual_kmeans",
    "rq_vae",
    "to_dense_modules",
]
