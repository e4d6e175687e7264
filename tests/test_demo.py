import pytest
import torch

from lightning_recsys.demo import main
from lightning_recsys.models import RecsysModule


@pytest.mark.timeout(300)
def test_quick_demo_trains_evaluates_and_saves_new_run_dirs(tmp_path, capsys):
    res = main(["--quick", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert "planted AUC" in out and res["test"]["test_auc"] > 0.55  # 60k rows, one epoch
    ckpt = res["checkpoint"]
    loaded = RecsysModule.load_from_checkpoint(ckpt, weights_only=True)
    batch = res["datamodule"].make_batch("test", 0)[0]
    loaded.eval()
    with torch.no_grad():
        assert loaded(batch).shape == (batch.batch_size, 2)
    # a second run never reuses the first run's directory
    res2 = main(["--quick", "--out", str(tmp_path)])
    assert res2["checkpoint"] != ckpt
    assert len([p for p in tmp_path.iterdir() if p.is_dir()]) == 2


def test_skip_unknown_step_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="--skip names unknown steps"):
        main(["--quick", "--out", str(tmp_path), "--skip", "nope"])
