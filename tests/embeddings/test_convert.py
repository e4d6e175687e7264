"""chunk_modules on user-written models: tied weights are refused, shared modules stay shared."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_recsys.embeddings.chunked import ChunkedEmbedding
from lightning_recsys.embeddings.convert import chunk_modules


class TiedLM(nn.Module):
    """Lightning's demo Transformer pattern: the decoder reuses the token embedding's weight."""

    def __init__(self) -> None:
        super().__init__()
        self.embedding = nn.Embedding(20, 8)
        self.pos = nn.Embedding(6, 8)
        self.decoder = nn.Linear(8, 20)
        self.decoder.weight = self.embedding.weight


def test_tied_weights_are_refused_before_anything_changes():
    model = TiedLM()
    with pytest.raises(ValueError, match=r"embedding\.weight is also \['decoder\.weight'\].*pattern='\^\(pos\)\$'"):
        chunk_modules(model, chunk_size=4)
    assert type(model.embedding) is nn.Embedding and type(model.pos) is nn.Embedding
    assert model.decoder.weight is model.embedding.weight
    tables = chunk_modules(model, chunk_size=4, pattern="^(pos)$")  # the suggested pattern works
    assert list(tables) == ["pos"] and model.decoder.weight is model.embedding.weight


def test_a_table_registered_twice_is_replaced_everywhere():
    model = nn.Module()
    model.items = nn.Embedding(10, 8)
    model.tower = nn.ModuleDict({"shared": model.items})  # the same module under two names: not a tie
    tables = chunk_modules(model, chunk_size=4)
    assert list(tables) == ["items"] and isinstance(model.items, ChunkedEmbedding) and model.tower["shared"] is model.items
    assert sum(p.numel() for p in model.parameters()) == 10 * 8 + 4  # one pool, no dense copy left behind
    assert torch.equal(model.tower["shared"](torch.tensor([3])), model.items(torch.tensor([3])))
