"""The main job as a user runs it: ``lrs demo --quick`` (every step, small data) in a fresh directory."""

from __future__ import annotations

import json

from .conftest import run, warnings_in

STEPS = ["quant", "optim", "fiited", "multibalance", "dct"]


def test_quick_demo_runs_every_step_and_writes_its_summary(tmp_path):
    proc = run(["lrs", "demo", "--quick", "--out", "runs"], tmp_path, timeout=600)
    (run_dir,) = (tmp_path / "runs").iterdir()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert list(summary["steps"]) == STEPS
    assert (run_dir / "summary.png").stat().st_size > 10_000
    assert summary["test"]["test_auc"] > 0.55 and summary["checkpoint"].startswith(str(run_dir))
    assert summary["steps"]["quant"]["budget"]["budget_met"] is True
    assert summary["steps"]["fiited"]["export_matches"] is True and summary["steps"]["fiited"]["memory_ratio"] < 0.2
    assert summary["steps"]["dct"]["dp_compression_ratio"] > 5
    for row in ("int8 artifact (ONNX)", "0.1% NE budget plan", "FIITED, 90% pruned", "DCT, 2 processes"):
        assert row in proc.stdout
    assert warnings_in(proc.stderr) == []
    # a second run never touches the first one's directory; an unknown step is a usage error
    run(["lrs", "demo", "--quick", "--out", "runs", "--skip", "optim,fiited,multibalance,dct,quant"], tmp_path, timeout=300)
    assert len(list((tmp_path / "runs").iterdir())) == 2
    assert "unknown steps" in run(["lrs", "demo", "--skip", "nope"], tmp_path, ok=(2,)).stderr
