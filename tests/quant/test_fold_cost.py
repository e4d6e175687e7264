"""The DLRM export folds the interaction into its int8 consumers only while widening them is cheap."""

import pytest
import torch

from lightning_recsys.models import DLRM
from lightning_recsys.quant import Int8LinearConfig, RecipeConfig, quantize_
from lightning_recsys.quant.export.lowering import lower_tables
from lightning_recsys.quant.export.lowerings.dlrm import FOLD_MACS_PER_VALUE, FoldedDotInteraction, LoweredDotInteraction

CARDS = {"a": 50, "b": 30, "c": 40}


@pytest.mark.parametrize("top", [8, 600])
def test_wide_int8_consumers_keep_the_selection(top):
    # [x (6), E x (3), E E^T (9)] = 18 folded inputs vs 12 selected: 6 * top extra MACs per sample
    torch.manual_seed(0)
    model = DLRM(4, CARDS, embedding_dim=6, bottom_mlp=(8,), top_mlp=(top,)).eval()
    quantize_(model, RecipeConfig(linears=Int8LinearConfig()))
    inter = lower_tables(model).backbone.interaction
    folds = 6 * top <= FOLD_MACS_PER_VALUE * 18
    assert isinstance(inter, FoldedDotInteraction if folds else LoweredDotInteraction)
    assert folds == (top == 8)
