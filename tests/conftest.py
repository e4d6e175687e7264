import os

import pytest
import torch

# keep the suite predictable on 2-core machines
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
