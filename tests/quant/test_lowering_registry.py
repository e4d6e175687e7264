"""The export lowering registry: model-specific lowerings plug into ``lower_tables`` by module type."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_recsys.models.dlrm import DLRMBackbone, DotInteraction, EmbeddingBagCollection
from lightning_recsys.quant.export.lowering import _LOWERINGS, lower_tables, register_lowering


class _Square(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * x


class _SquareExport(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.pow(2)


def test_project_lowerings_are_registered_on_import_in_order():
    keys = list(_LOWERINGS)
    assert keys.index(EmbeddingBagCollection) < keys.index(DLRMBackbone) < keys.index(DotInteraction)


def test_registered_lowering_replaces_modules_but_not_the_root():
    register_lowering(_Square, lambda model, m, native: _SquareExport())
    model = nn.Sequential(nn.Linear(3, 3), _Square())
    lowered = lower_tables(model)
    assert isinstance(lowered[1], _SquareExport) and isinstance(model[1], _Square)  # a copy is lowered
    x = torch.randn(2, 3)
    torch.testing.assert_close(lowered(x), model(x))
    assert isinstance(lower_tables(_Square()), _Square)  # the root is never replaced


@pytest.mark.parametrize(("module_type", "fn", "match"), [
    (int, lambda *a: None, "module_type must be an nn.Module subclass"),
    (_Square, "not callable", "fn must be callable"),
])  # fmt: skip
def test_register_lowering_validates(module_type, fn, match):
    with pytest.raises(TypeError, match=match):
        register_lowering(module_type, fn)
