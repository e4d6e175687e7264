"""Semantic-ID codes: residual k-means over item content vectors -> ``L`` codes in ``[0, K)`` per item.

Level 1 clusters the content vectors; level ``l`` clusters the residuals ``r_l = x - sum_{i<l} v^i_{c_i}``
that the earlier levels leave (Singh et al., arXiv 2306.08121; Zheng et al., arXiv 2504.02137 use an
RQ-VAE, :mod:`.rq_vae`, of which this is the simple, deterministic alternative). k-means++ seeding and Lloyd's
iterations run in float64 from a ``torch.Generator`` seeded with ``seed``: the same content and seed
give the same codes on every machine and rank.

Example:
    >>> import torch
    >>> from lightning_recsys.embeddings import residual_kmeans
    >>> content = torch.randn(200, 8, generator=torch.Generator().manual_seed(0))
    >>> codes, codebooks = residual_kmeans(content, num_levels=3, codebook_size=4, seed=0)
    >>> codes.shape, codebooks.shape
    (torch.Size([200, 3]), torch.Size([3, 4, 8]))
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._validation import ConfigurationError, check_int

__all__ = ["check_content", "kmeans", "residual_kmeans"]


def _plus_plus(x: Tensor, k: int, gen: torch.Generator) -> Tensor:
    """k-means++ seeding: each next centre drawn with probability proportional to its squared distance."""
    first = int(torch.randint(x.shape[0], (1,), generator=gen))
    centres = [x[first]]
    d2 = (x - x[first]).square().sum(1)
    for _ in range(1, k):
        total = float(d2.sum())
        if total <= 0:  # fewer distinct points than centres: repeat one (its cluster stays empty)
            idx = int(torch.randint(x.shape[0], (1,), generator=gen))
        else:
            idx = int(torch.multinomial(d2 / total, 1, generator=gen))
        centres.append(x[idx])
        d2 = torch.minimum(d2, (x - x[idx]).square().sum(1))
    return torch.stack(centres)


def _assign(x: Tensor, centres: Tensor) -> tuple[Tensor, Tensor]:
    """Nearest centre and squared distance per point (ties: the lowest index)."""
    d2 = x.square().sum(1, keepdim=True) - 2 * x @ centres.T + centres.square().sum(1)
    best, idx = d2.min(1)
    return idx, best.clamp_min(0)


def kmeans(x: Tensor, k: int, seed: int = 0, iters: int = 25) -> tuple[Tensor, Tensor]:
    """Lloyd's k-means with k-means++ seeding: ``(assignment [N] int64, centres [k, C])`` in float64.

    An empty cluster is moved to the point farthest from its centre (deterministic)."""
    check_int("k", k, low=1)
    check_int("iters", iters, low=1)
    if x.dim() != 2 or x.shape[0] < 1:
        raise ValueError(f"x must be a 2-D [num_points, features] tensor with rows, got shape {tuple(x.shape)}")
    if k > x.shape[0]:
        raise ValueError(f"k ({k}) must not exceed the number of points ({x.shape[0]})")
    x = x.detach().to(torch.float64)
    gen = torch.Generator().manual_seed(int(seed))
    centres = _plus_plus(x, k, gen)
    idx, d2 = _assign(x, centres)
    for _ in range(iters):
        counts = torch.bincount(idx, minlength=k)
        sums = torch.zeros_like(centres).index_add_(0, idx, x)
        new = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1)[:, None], centres)
        for c in (counts == 0).nonzero().flatten().tolist():
            far = int(d2.argmax())
            new[c] = x[far]
            d2[far] = 0
        if torch.equal(new, centres):
            break
        centres = new
        idx, d2 = _assign(x, centres)
    return idx, centres


def check_content(content: Tensor, codebook_size: int) -> None:
    """Raise unless ``content`` is a finite 2-D float tensor with at least ``codebook_size`` rows."""
    check_int("codebook_size", codebook_size, low=1)
    if not isinstance(content, Tensor) or not content.is_floating_point():
        raise TypeError(f"content must be a floating-point tensor, got {getattr(content, 'dtype', type(content).__name__)}")
    if content.dim() != 2 or content.shape[0] < 1:
        raise ConfigurationError(f"content must be a 2-D [num_items, features] tensor with rows, got shape {tuple(content.shape)}")
    if codebook_size > content.shape[0]:
        raise ConfigurationError(f"codebook_size ({codebook_size}) must not exceed the number of items ({content.shape[0]})")
    if not torch.isfinite(content).all():
        raise ConfigurationError("content holds NaN or infinite values")


def residual_kmeans(
    content: Tensor, num_levels: int = 3, codebook_size: int = 256, seed: int = 0, iters: int = 25
) -> tuple[Tensor, Tensor]:
    """Residual k-means: ``(codes [N, num_levels] int64 in [0, codebook_size), codebooks [L, K, C])``.

    Level ``l`` runs :func:`kmeans` with seed ``seed + l`` on what the previous levels left unexplained.
    """
    check_int("num_levels", num_levels, low=1)
    check_int("iters", iters, low=1)
    check_content(content, codebook_size)
    residual = content.detach().to(torch.float64)
    codes, books = [], []
    for level in range(num_levels):
        idx, centres = kmeans(residual, codebook_size, seed=seed + level, iters=iters)
        codes.append(idx)
        books.append(centres)
        residual = residual - centres[idx]
    return torch.stack(codes, 1), torch.stack(books).to(content.dtype)
