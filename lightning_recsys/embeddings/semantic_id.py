"""Semantic-ID prefix-ngram embeddings (Zheng et al., arXiv 2504.02137) and the random-hashing baseline.

An item with Semantic-ID codes ``(c1, ..., cL)`` (:func:`~lightning_recsys.embeddings.residual_kmeans`
over its content vector) gets one token per prefix ``(c1)``, ``(c1, c2)``, ..., ``(c1..cn)``
(``n = ngram <= L``); its embedding is the SUM of the tokens' rows. Every prefix length owns its own
id range of the ``num_rows``-row table (the paper's "shifting factor": prefixes of different lengths
never share a row); a length whose prefix space ``K^n`` fits its range maps prefixes one-to-one,
a larger one is hashed (a seeded cubic polynomial over a prime field) into its range. Ranges are sized shortest first,
each taking ``min(K^n, equal share of the rows left)``.

Cold start (:class:`SemanticIdEmbedding`, ``backoff=True``): the table records which ids it was
trained on (buffer ``seen``); in evaluation an id reads only the prefixes that some trained id shares,
so a new item is the sum of its shared coarse prefixes instead of also reading rows that its unseen
deep prefixes collide into (rows trained for unrelated items). ``prefix_dropout`` drops an access's
deepest prefixes at random in training, so that coarse prefixes also learn to stand alone.

Both modules here are drop-in ``nn.EmbeddingBag(mode="sum")`` tables of item ids (``forward(input,
offsets=None, per_sample_weights=None)``; bags of ids sum) that map each id to a fixed list of tokens
(buffer ``tokens`` [num_embeddings, G], saved with the model) and look the tokens up in an inner
``nn.EmbeddingBag`` ``bag`` of ``num_rows`` rows: FIITED prunes it, ``quantize_`` quantizes it and
``export_onnx`` lowers it like any table (export layouts: padded ``[B, L]`` ids with ``-1`` padding,
and one id per bag with ``-1`` for an empty bag).

Example:
    >>> import torch
    >>> from lightning_recsys.embeddings import SemanticIdEmbedding
    >>> content = torch.randn(100, 6, generator=torch.Generator().manual_seed(0))
    >>> table = SemanticIdEmbedding(100, 8, num_rows=60, num_levels=2, codebook_size=8)
    >>> table.fit_codes(content)  # residual k-means, deterministic from ``seed``
    >>> table.range_starts, table.range_sizes  # prefix length 1: 8 rows, length 2: 52 rows (hashed)
    ([0, 8], [8, 52])
    >>> table(torch.tensor([3, 7, 9]), torch.tensor([0, 1])).shape  # bags [3] and [7, 9]
    torch.Size([2, 8])
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
import torch.distributed as dist
from torch import Tensor, nn

from .._validation import ConfigurationError, check_choice, check_int, check_number
from .rq_vae import rq_vae
from .semantic_codes import residual_kmeans

__all__ = [
    "HashedEmbeddingBag",
    "SemanticIdEmbedding",
    "TokenizedEmbeddingBag",
    "fit_semantic_ids",
    "prefix_ranges",
    "prefix_tokens",
]

_PRIME = 2**31 - 1  # products of two residues stay below 2**62: exact in int64


def _hash_coefficients(seed: int, count: int) -> Tensor:
    """``count`` rows of 4 coefficients in ``[1, P)`` of cubic polynomials mod ``P`` (drawn from ``seed``)."""
    return torch.randint(1, _PRIME, (count, 4), generator=torch.Generator().manual_seed(int(seed)))


def _hash(values: Tensor, coefficients: Tensor, size: int) -> Tensor:
    """``poly(values) mod P mod size`` for residues ``values`` in ``[0, P)``: a cubic polynomial over the
    prime field (a 4-wise independent family, so consecutive ids scatter like random draws), Horner's rule."""
    h = torch.zeros_like(values)
    for c in coefficients.tolist():
        h = (h * values + c) % _PRIME
    return h % size


def prefix_ranges(codebook_size: int, ngram: int, num_rows: int) -> list[tuple[int, int]]:
    """``(start, size)`` of each prefix length's id range (lengths ``1..ngram``): disjoint, covering at
    most ``num_rows`` rows; a length gets ``min(K^n, equal share of the rows left)``."""
    check_int("codebook_size", codebook_size, low=1)
    check_int("ngram", ngram, low=1)
    if check_int("num_rows", num_rows) < ngram:
        raise ConfigurationError(f"num_rows must be an integer >= ngram ({ngram}: one row per prefix length at least), got {num_rows!r}")
    ranges, start = [], 0
    for n in range(1, ngram + 1):
        size = min(codebook_size**n, (num_rows - start) // (ngram - n + 1))
        ranges.append((start, size))
        start += size
    return ranges


def prefix_tokens(codes: Tensor, codebook_size: int, num_rows: int, ngram: int | None = None, seed: int = 0) -> Tensor:
    """Token ids ``[N, ngram]`` of every item's prefixes: column ``n - 1`` is prefix ``(c1..cn)``, in the
    range :func:`prefix_ranges` gives length ``n``, exact when ``K^n`` fits the range, hashed otherwise."""
    if not isinstance(codes, Tensor) or codes.dim() != 2 or codes.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"codes must be an integer tensor [num_items, num_levels], got {getattr(codes, 'shape', codes)!r}")
    ngram = codes.shape[1] if ngram is None else ngram
    if not 1 <= ngram <= codes.shape[1]:
        raise ValueError(f"ngram must be in [1, {codes.shape[1]}] (the number of code levels), got {ngram!r}")
    if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= codebook_size):
        raise ValueError(f"codes must lie in [0, codebook_size={codebook_size}), got [{int(codes.min())}, {int(codes.max())}]")
    codes = codes.long()
    coefficients = _hash_coefficients(seed, ngram)
    value = torch.zeros(codes.shape[0], dtype=torch.long)  # exact prefix value mod P
    columns = []
    for n, (start, size) in enumerate(prefix_ranges(codebook_size, ngram, num_rows), start=1):
        value = (value * codebook_size + codes[:, n - 1]) % _PRIME
        if codebook_size**n <= size:  # the whole prefix space fits: one row per prefix (value < K^n < P)
            local = value
        else:
            local = _hash(value, coefficients[n - 1], size)
        columns.append(start + local)
    return torch.stack(columns, 1)


def _shared_depth(codes: Tensor, seen: Tensor) -> Tensor:
    """Per id, how many of its leading prefixes ``(c1)``, ``(c1, c2)``, ... some seen id shares ``[N]``."""
    group = torch.zeros(codes.shape[0], dtype=torch.long, device=codes.device)
    shared = torch.ones_like(seen)
    depth = torch.zeros_like(group)
    for n in range(codes.shape[1]):  # exact prefix identity: group of (c1..cn) = unique (group of c1..c(n-1), cn)
        _, group = torch.unique(group * (int(codes[:, n].max()) + 1) + codes[:, n], return_inverse=True)
        hit = torch.zeros(int(group.max()) + 1 if group.numel() else 0, dtype=torch.bool, device=codes.device)
        hit[group[seen]] = True
        shared &= hit[group]
        depth += shared.long()
    return depth


def _gather_ids(ids: Tensor) -> Tensor:
    """The ids of every rank (padded to the longest, all-gathered, padding dropped)."""
    n = torch.tensor([ids.numel()], device=ids.device)
    dist.all_reduce(n, op=dist.ReduceOp.MAX)
    padded = ids.new_full((int(n),), -1)
    padded[: ids.numel()] = ids
    parts = [torch.empty_like(padded) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, padded)
    out = torch.cat(parts)
    return out[out >= 0]


class TokenizedEmbeddingBag(nn.Module):
    """``nn.EmbeddingBag(mode="sum")``-like table whose id ``i`` is the sum of the inner ``bag``'s rows
    ``tokens[i]`` (buffer [num_embeddings, tokens_per_id]).

    Args:
        num_embeddings: ids accepted (``0..num_embeddings - 1``).
        embedding_dim: row width.
        num_rows: rows of the inner ``nn.EmbeddingBag`` (uniform ``+-1 / sqrt(num_rows * tokens_per_id)``
            initialisation: an id's sum has DLRM's scale).
        tokens_per_id: tokens summed per id.
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, num_rows: int, tokens_per_id: int) -> None:
        super().__init__()
        for arg, val in (("num_embeddings", num_embeddings), ("embedding_dim", embedding_dim), ("num_rows", num_rows),
                         ("tokens_per_id", tokens_per_id)):  # fmt: skip
            check_int(arg, val, low=1)
        self.num_embeddings, self.embedding_dim, self.num_rows = num_embeddings, embedding_dim, num_rows
        self.bag = nn.EmbeddingBag(num_rows, embedding_dim, mode="sum")
        bound = (num_rows * tokens_per_id) ** -0.5
        nn.init.uniform_(self.bag.weight, -bound, bound)
        self.register_buffer("tokens", torch.zeros(num_embeddings, tokens_per_id, dtype=torch.long))

    def _tokens_of(self, ids: Tensor) -> Tensor:
        """``[*ids.shape, G]`` tokens of ids ``>= 0``; ``-1`` marks a token left out (subclasses)."""
        return self.tokens[ids]

    def _lookup(self, ids: Tensor) -> Tensor:
        """``[*ids.shape, G]`` tokens; id ``-1`` (export padding) gives tokens ``-1``."""
        tokens = self._tokens_of(ids.clamp(min=0))
        return torch.where(ids.unsqueeze(-1) >= 0, tokens, -1)

    @staticmethod
    def _left_out_as_weights(tokens: Tensor, weights: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """Eager lookups: tokens ``-1`` read row 0 with weight 0 (``nn.EmbeddingBag`` has no padding id ``-1``;
        the export's lowered tables treat ``-1`` as padding)."""
        keep = tokens >= 0
        if torch.compiler.is_exporting() or bool(keep.all()):
            return tokens, weights
        w = keep.to(torch.float32 if weights is None else weights.dtype)
        return tokens.clamp(min=0), w if weights is None else weights * w

    def forward(self, input: Tensor, offsets: Tensor | None = None, per_sample_weights: Tensor | None = None) -> Tensor:
        """``[num_bags, embedding_dim]``: 1-D ``input`` with ``offsets`` (bag starts), or 2-D fixed-length bags."""
        g = self.tokens.shape[1]
        exporting = torch.compiler.is_exporting()  # export layouts: padded ids, -1 = padding; offsets unused
        if input.dim() == 2:
            if offsets is not None and not exporting:
                raise ValueError("offsets must be None when input is 2-D (fixed-length bags), as in nn.EmbeddingBag")
            w = None if per_sample_weights is None else per_sample_weights.repeat_interleave(g, dim=1)
            tokens, w = self._left_out_as_weights(self._lookup(input).flatten(1), w)
            return self.bag(tokens, None, w)
        if input.dim() != 1 or offsets is None or offsets.dim() != 1:
            raise ValueError(f"input must be 1-D with 1-D offsets, or 2-D, as in nn.EmbeddingBag; got input {tuple(input.shape)}")
        if exporting and input.shape[0] == offsets.shape[0]:  # single-hot: one id per bag, -1 = empty bag
            w = None if per_sample_weights is None else per_sample_weights.unsqueeze(1).expand(-1, g)
            return self.bag(self._lookup(input), None, w)
        w = None if per_sample_weights is None else per_sample_weights.repeat_interleave(g)
        tokens, w = self._left_out_as_weights(self._lookup(input).flatten(), w)
        return self.bag(tokens, offsets * g, w)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, num_rows={self.num_rows}, tokens_per_id={self.tokens.shape[1]}"


class HashedEmbeddingBag(TokenizedEmbeddingBag):
    """Random hashing of ids into ``num_rows`` rows (the usual baseline): id ``i`` reads row
    ``poly(i) mod P mod num_rows``, ``poly`` a cubic with coefficients drawn from ``seed``.

    Example:
        >>> import torch
        >>> table = HashedEmbeddingBag(1000, 8, num_rows=100)
        >>> table(torch.tensor([1, 2, 3]), torch.tensor([0, 2])).shape
        torch.Size([2, 8])
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, num_rows: int, seed: int = 0) -> None:
        super().__init__(num_embeddings, embedding_dim, num_rows, tokens_per_id=1)
        ids = torch.arange(num_embeddings) % _PRIME
        self.tokens.copy_(_hash(ids, _hash_coefficients(seed, 1)[0], num_rows).unsqueeze(1))


class SemanticIdEmbedding(TokenizedEmbeddingBag):
    """Semantic-ID prefix-ngram table (see the module docstring).

    Args:
        num_embeddings: item ids accepted.
        embedding_dim: row width.
        num_rows: row budget ``H`` shared by all prefix lengths (default ``num_embeddings``); the table
            holds ``sum(range_sizes)`` rows, fewer than ``H`` when the prefix spaces are smaller.
        num_levels: code levels ``L``; codebook_size: values per level ``K``.
        ngram: longest prefix used (default ``L``): ``ngram`` tokens per item.
        seed: seeds the codes (residual k-means or RQ-VAE) and the hashing.
        code_method: ``"residual_kmeans"`` (:func:`~lightning_recsys.embeddings.residual_kmeans`) or
            ``"rq_vae"`` (:func:`~lightning_recsys.embeddings.rq_vae`), how :meth:`fit_codes` finds codes.
        codes: optional precomputed codes ``[num_embeddings, L]``; otherwise call :meth:`fit_codes`
            (``RecsysModule`` does it in ``setup`` from the data module's ``content_vectors(feature)``).
        backoff: in evaluation, an id reads only the prefixes shared with some id seen in training
            (:meth:`served_tokens`); ids seen in training, and every id before any training, read all.
        prefix_dropout: in training, the share of accesses whose deepest prefixes (a random number of
            them, at least one prefix kept) are left out; ``0`` keeps all.

    Buffers ``codes``, ``tokens``, ``fitted`` and ``seen`` travel in the state dict (the codes are part of
    the model). Under ``torch.distributed`` the ids a training step marks as seen are gathered from every
    rank (like ``SyncBatchNorm``, every rank must run the training forward).
    """

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        num_rows: int | None = None,
        num_levels: int = 3,
        codebook_size: int = 256,
        ngram: int | None = None,
        seed: int = 0,
        code_method: Literal["residual_kmeans", "rq_vae"] = "residual_kmeans",
        codes: Tensor | None = None,
        backoff: bool = True,
        prefix_dropout: float = 0.0,
    ) -> None:
        check_int("num_levels", num_levels, low=1)
        check_number("prefix_dropout", prefix_dropout, low=0.0, high=1.0, high_open=True)
        if not isinstance(backoff, bool):
            raise TypeError(f"backoff must be True or False, got {backoff!r}")
        check_choice("code_method", code_method, ("residual_kmeans", "rq_vae"))
        check_int("codebook_size", codebook_size, low=1)
        ngram = num_levels if ngram is None else ngram
        if not 1 <= check_int("ngram", ngram) <= num_levels:
            raise ConfigurationError(f"ngram must be an integer in [1, num_levels={num_levels}], got {ngram!r}")
        ranges = prefix_ranges(codebook_size, ngram, num_embeddings if num_rows is None else num_rows)
        super().__init__(num_embeddings, embedding_dim, sum(size for _, size in ranges), tokens_per_id=ngram)
        self.budget = num_embeddings if num_rows is None else num_rows
        self.ranges = ranges
        self.num_levels, self.codebook_size, self.ngram, self.seed = num_levels, codebook_size, ngram, seed
        self.code_method = code_method
        self.register_buffer("codes", torch.full((num_embeddings, num_levels), -1, dtype=torch.long))
        self.register_buffer("fitted", torch.tensor(False))
        self.backoff, self.prefix_dropout = bool(backoff), float(prefix_dropout)
        self.register_buffer("seen", torch.zeros(num_embeddings, dtype=torch.bool))
        self.register_buffer("served", self.tokens.clone(), persistent=False)  # see served_tokens
        self._served_key: tuple | None = None
        if codes is not None:
            self.set_codes(codes)

    # ------------------------------------------------------------------ cold start
    def _tokens_of(self, ids: Tensor) -> Tensor:
        if torch.compiler.is_exporting():
            return self.served[ids]
        if not self.training:
            return self.served_tokens()[ids]
        self._mark_seen(ids)
        tokens = self.tokens[ids]
        g = tokens.shape[-1]
        if self.prefix_dropout > 0 and g > 1:  # leave out the deepest (g - cut) prefixes of a random share
            drop = torch.rand(ids.shape, device=ids.device) < self.prefix_dropout
            cut = torch.randint(1, g, ids.shape, device=ids.device)
            left_out = drop.unsqueeze(-1) & (torch.arange(g, device=ids.device) >= cut.unsqueeze(-1))
            tokens = tokens.masked_fill(left_out, -1)
        return tokens

    @torch.no_grad()
    def _mark_seen(self, ids: Tensor) -> None:
        ids = ids.flatten()
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            ids = _gather_ids(ids)
        self.seen[ids] = True

    @torch.no_grad()
    def served_tokens(self) -> Tensor:
        """Tokens read in evaluation ``[num_embeddings, G]``: with ``backoff``, an id's prefixes beyond the
        longest one shared with an id seen in training are ``-1`` (left out); all tokens without ``backoff``
        or before any training. Cached until ``seen`` or the tokens change."""
        key = (self.seen._version, self.tokens._version, self.backoff, self.seen.data_ptr())
        if key != self._served_key:
            depth = _shared_depth(self.codes[:, : self.ngram], self.seen) if self.backoff and bool(self.seen.any()) else None
            g = self.tokens.shape[1]
            served = self.tokens if depth is None else self.tokens.masked_fill(
                torch.arange(g, device=depth.device) >= depth.unsqueeze(1), -1)  # fmt: skip
            self.served.copy_(served)
            self._served_key = key
        return self.served

    def train(self, mode: bool = True) -> SemanticIdEmbedding:
        super().train(mode)
        if not mode:  # fresh for the export's trace, which cannot refresh it
            self.served_tokens()
        return self

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        old = prefix + "seen" not in state_dict and prefix + "tokens" in state_dict  # saved before ``seen`` existed
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)
        if old:
            if prefix + "seen" in missing_keys:
                missing_keys.remove(prefix + "seen")
            self.seen.fill_(True)  # every id counts as seen: no back-off

    @property
    def range_starts(self) -> list[int]:
        return [s for s, _ in self.ranges]

    @property
    def range_sizes(self) -> list[int]:
        return [n for _, n in self.ranges]

    @property
    def hashed_lengths(self) -> list[int]:
        """Prefix lengths whose prefix space is larger than their range (hashed)."""
        return [n for n, (_, size) in enumerate(self.ranges, start=1) if self.codebook_size**n > size]

    @torch.no_grad()
    def set_codes(self, codes: Tensor) -> None:
        """Store ``codes`` [num_embeddings, num_levels] (values in ``[0, codebook_size)``) and their tokens."""
        expected = (self.num_embeddings, self.num_levels)
        if not isinstance(codes, Tensor) or tuple(codes.shape) != expected:
            got = getattr(codes, "shape", codes)
            raise ValueError(f"codes must be a tensor of shape {expected} (num_embeddings, num_levels), got {got!r}")
        tokens = prefix_tokens(codes.cpu(), self.codebook_size, self.budget, self.ngram, self.seed)
        self.codes.copy_(codes)
        self.tokens.copy_(tokens)
        self.fitted.fill_(True)

    def fit_codes(self, content: Tensor, iters: int = 25) -> None:
        """Codes of ``content`` [num_embeddings, C], one content vector per id, by ``code_method``
        (seeded with ``seed``; ``iters``: k-means iterations); stores them."""
        if not isinstance(content, Tensor) or content.dim() != 2 or content.shape[0] != self.num_embeddings:
            got = getattr(content, "shape", content)
            raise ValueError(f"content must be a [num_embeddings={self.num_embeddings}, features] tensor, got {got!r}")
        if self.code_method == "rq_vae":
            codes, _ = rq_vae(content.cpu(), self.num_levels, self.codebook_size, seed=self.seed)
        else:
            codes, _ = residual_kmeans(content.cpu(), self.num_levels, self.codebook_size, seed=self.seed, iters=iters)
        self.set_codes(codes)

    def forward(self, input: Tensor, offsets: Tensor | None = None, per_sample_weights: Tensor | None = None) -> Tensor:
        if not torch.compiler.is_exporting() and not bool(self.fitted):
            raise RuntimeError(
                "SemanticIdEmbedding has no codes yet: call fit_codes(content) or set_codes(codes), or train it with "
                "RecsysModule and a data module that has content_vectors(feature) (e.g. MovieLens100KItemsDataModule)"
            )
        return super().forward(input, offsets, per_sample_weights)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, num_levels={self.num_levels}, codebook_size={self.codebook_size}, ranges={self.ranges}"


def fit_semantic_ids(model: nn.Module, content_vectors: Callable[[str], Tensor] | None) -> list[str]:
    """Fit the codes of every :class:`SemanticIdEmbedding` in ``model`` that has none, from
    ``content_vectors(feature)`` (the feature is the table's name in its parent, e.g. its key in an
    ``EmbeddingBagCollection``); returns the qualified names fitted. Raises ``ValueError`` when some
    table needs codes and ``content_vectors`` is ``None``."""
    pending = [(n, m) for n, m in model.named_modules() if isinstance(m, SemanticIdEmbedding) and not bool(m.fitted)]
    if pending and content_vectors is None:
        raise ValueError(
            f"Semantic-ID tables {[n for n, _ in pending]} have no codes and no content_vectors source was given: use a "
            "data module with content_vectors(feature) (e.g. MovieLens100KItemsDataModule) or call fit_codes(content)"
        )
    for name, table in pending:
        table.fit_codes(content_vectors(name.rpartition(".")[2]))
    return [n for n, _ in pending]
