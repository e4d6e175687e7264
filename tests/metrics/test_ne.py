import math

import pytest
import torch

from lightning_recsys.metrics import NormalizedEntropy


def _hand_ne(logits, y):
    p = [1 / (1 + math.exp(-z)) for z in logits]
    ll = -sum(t * math.log(q) + (1 - t) * math.log(1 - q) for q, t in zip(p, y)) / len(y)
    base = sum(y) / len(y)
    return ll / -(base * math.log(base) + (1 - base) * math.log(1 - base))


def test_matches_hand_computation_and_batches():
    logits = [2.0, -1.0, 0.5, -3.0, 0.2, 1.5]
    y = [1.0, 0.0, 1.0, 0.0, 0.0, 1.0]
    ne = NormalizedEntropy()
    ne.update(torch.tensor(logits[:4]), torch.tensor(y[:4]))
    ne.update(torch.tensor(logits[4:]), torch.tensor(y[4:]))
    assert float(ne.compute()) == pytest.approx(_hand_ne(logits, y), rel=1e-6)


def test_probabilities_and_base_rate_predictor_gives_one():
    y = torch.tensor([1.0, 0.0, 0.0, 0.0])
    ne = NormalizedEntropy(from_logits=False)
    ne.update(torch.full((4,), 0.25), y)
    assert float(ne.compute()) == pytest.approx(1.0, rel=1e-6)


def test_degenerate_and_bad_input():
    ne = NormalizedEntropy()
    ne.update(torch.tensor([0.1, 0.2]), torch.tensor([1.0, 1.0]))
    assert math.isnan(float(ne.compute()))
    with pytest.raises(ValueError, match="only 0 and 1"):
        ne.update(torch.tensor([0.1]), torch.tensor([0.5]))
    with pytest.raises(ValueError, match="same number of elements"):
        ne.update(torch.tensor([0.1, 0.3]), torch.tensor([1.0]))
    with pytest.raises(ValueError, match=r"probabilities in \[0, 1\]"):
        NormalizedEntropy(from_logits=False).update(torch.tensor([1.5]), torch.tensor([1.0]))


def _ddp_ne(rank, world_size, out_path):
    logits = [2.0, -1.0, 0.5, -3.0, 0.2, 1.5]
    y = [1.0, 0.0, 1.0, 0.0, 0.0, 1.0]
    ne = NormalizedEntropy()
    ne.update(torch.tensor(logits[rank::2]), torch.tensor(y[rank::2]))
    value = float(ne.compute())  # synced across ranks
    if rank == 0:
        with open(out_path, "w") as f:
            f.write(repr(value))
    expected = _hand_ne(logits, y)
    if abs(value - expected) > 1e-6 * expected:
        raise AssertionError(f"rank {rank}: NE {value} != {expected}")


@pytest.mark.timeout(120)
def test_ne_is_exact_under_ddp_sync(tmp_path):
    from tests._dist import run_distributed

    out = tmp_path / "ne.txt"
    run_distributed(_ddp_ne, str(out))
    assert float(out.read_text()) == pytest.approx(_hand_ne([2.0, -1.0, 0.5, -3.0, 0.2, 1.5], [1.0, 0.0, 1.0, 0.0, 0.0, 1.0]))
