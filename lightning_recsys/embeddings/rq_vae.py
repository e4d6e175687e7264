"""Semantic-ID codes from an RQ-VAE (Lee et al., CVPR 2022; as in TIGER, Rajput et al. 2023, and
Zheng et al., arXiv 2504.02137): an autoencoder whose latent is quantized by ``L`` residual codebooks.

The encoder maps a standardised content vector to a latent ``z``; level ``l`` picks the codeword
nearest the residual ``r_l`` (``r_1 = z``, ``r_{l+1} = r_l - q_l``) and the decoder reconstructs the
content from ``sum_l q_l`` (straight-through gradient). Loss: reconstruction MSE plus, per level, the
codebook term ``||sg(r_l) - q_l||^2`` and the commitment term ``beta ||r_l - sg(q_l)||^2``. The
autoencoder is first trained without quantization, the codebooks start from residual k-means of its
latents (:func:`~lightning_recsys.embeddings.residual_kmeans`), and codewords no item picks are
restarted from random residuals. Everything runs full-batch from ``seed`` with the global RNG left
untouched: the same content, seed and thread count give the same codes.

Example:
    >>> import torch
    >>> content = torch.randn(300, 12, generator=torch.Generator().manual_seed(0))
    >>> codes, codebooks = rq_vae(content, num_levels=2, codebook_size=8, seed=0, epochs=50)
    >>> codes.shape, codebooks.shape, int(codes.max()) < 8
    (torch.Size([300, 2]), torch.Size([2, 8, 16]), True)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._validation import check_int, check_number
from .semantic_codes import check_content, residual_kmeans

__all__ = ["rq_vae"]


def _quantize(z: Tensor, books: Tensor, beta: float) -> tuple[Tensor, Tensor, Tensor, list[Tensor]]:
    """``(codes [N, L], z_q [N, D], vq loss, residuals per level)`` of latents ``z`` with ``books`` [L, K, D]."""
    residual, quantized, loss, codes, residuals = z, torch.zeros_like(z), z.new_zeros(()), [], []
    for book in books:
        residuals.append(residual.detach())
        idx = torch.cdist(residual.detach(), book).argmin(1)
        q = book[idx]
        loss = loss + F.mse_loss(q, residual.detach()) + beta * F.mse_loss(residual, q.detach())
        quantized = quantized + q
        residual = residual - q.detach()
        codes.append(idx)
    return torch.stack(codes, 1), quantized, loss, residuals


def rq_vae(
    content: Tensor,
    num_levels: int = 3,
    codebook_size: int = 256,
    seed: int = 0,
    latent_dim: int = 16,
    hidden: int = 128,
    epochs: int = 400,
    lr: float = 1e-3,
    beta: float = 0.25,
) -> tuple[Tensor, Tensor]:
    """``(codes [N, num_levels] int64 in [0, codebook_size), codebooks [L, K, latent_dim])``; the first
    quarter of ``epochs`` (full-batch Adam steps) trains the plain autoencoder."""
    check_content(content, codebook_size)
    for name, value, low in (("num_levels", num_levels, 1), ("latent_dim", latent_dim, 1), ("hidden", hidden, 1),
                             ("epochs", epochs, 4), ("seed", seed, None)):  # fmt: skip
        check_int(name, value, low=low)
    check_int("codebook_size", codebook_size, low=1)
    check_number("lr", lr, low=0.0, low_open=True)
    check_number("beta", beta, low=0.0)
    x = content.detach().float().cpu()
    x = (x - x.mean(0)) / x.std(0, unbiased=False).clamp(min=1e-6)
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        encoder = nn.Sequential(nn.Linear(x.shape[1], hidden), nn.ReLU(), nn.Linear(hidden, latent_dim))
        decoder = nn.Sequential(nn.Linear(latent_dim, hidden), nn.ReLU(), nn.Linear(hidden, x.shape[1]))
    opt = torch.optim.Adam([*encoder.parameters(), *decoder.parameters()], lr=lr)
    warmup = epochs // 4
    for _ in range(warmup):
        opt.zero_grad()
        F.mse_loss(decoder(encoder(x)), x).backward()
        opt.step()
    with torch.no_grad():
        _, init = residual_kmeans(encoder(x).double(), num_levels, codebook_size, seed=seed, iters=10)
    books = nn.Parameter(init.float())
    opt.add_param_group({"params": [books]})
    for step in range(epochs - warmup):
        z = encoder(x)
        codes, zq, vq, residuals = _quantize(z, books, beta)
        loss = F.mse_loss(decoder(z + (zq - z).detach()), x) + vq
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 50 == 49:  # restart codewords no item picks from random residuals of their level
            with torch.no_grad():
                for level in range(num_levels):
                    dead = torch.ones(codebook_size, dtype=torch.bool)
                    dead[codes[:, level]] = False
                    if dead.any():
                        pick = torch.randint(0, x.shape[0], (int(dead.sum()),), generator=gen)
                        books[level, dead] = residuals[level][pick]
    with torch.no_grad():
        codes, _, _, _ = _quantize(encoder(x), books, beta)
    return codes, books.detach()
