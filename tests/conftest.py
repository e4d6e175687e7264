import os

# One intra-op thread per process (also for the processes tests spawn): distributed tests run 2-3
# processes on 2 cores, and oversubscribed OpenMP threads stall for scheduler ticks.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
