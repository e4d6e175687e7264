"""A LightningModule the package did not write (``forward(dense, ids, offsets)``, tuple batches, its own
data module) goes Trainer -> checkpoint -> ``lrs quantize --module-class`` -> ``quant.load`` -> score."""

from __future__ import annotations

import json
import os
import shutil

from .conftest import ROOT, run

# the user's package: the module part of the README's example (its __main__ block does not run on import)
MYMOD = ROOT / "examples" / "readme" / "own_deploy.py"

TRAIN = '''
import lightning.pytorch as pl
from mymod import CTR, CTRData

trainer = pl.Trainer(max_epochs=1, log_every_n_steps=10)
trainer.fit(CTR(), CTRData())
trainer.save_checkpoint("ctr.ckpt")
'''

SAVE_BATCH = '''
import torch
from mymod import Bags, collate

torch.save(collate([Bags(777, 5)[i] for i in range(777)]), "held_out.pt")
'''

# run where the user's package is not importable: the torch.export artifact needs no class of theirs
SCORE_WITHOUT_CLASS = '''
import importlib.util
import torch
from torchmetrics.functional.classification import binary_auroc
from lightning_recsys.quant import load

assert importlib.util.find_spec("mymod") is None
dense, ids, offsets, click = torch.load("held_out.pt")
logits = load("art_torch")(dense, ids, offsets)
assert logits.shape[0] == 777 and torch.isfinite(logits).all(), logits.shape
print("auc", float(binary_auroc(torch.sigmoid(logits.reshape(-1)), click.long())))
'''

SCORE = '''
import torch
from torchmetrics.functional.classification import binary_auroc
from lightning_recsys.quant import load
from mymod import Bags, collate

predictor = load("art")
dense, ids, offsets, click = collate([Bags(777, 5)[i] for i in range(777)])
logits = predictor(dense, ids, offsets)
assert logits.shape[0] == 777 and torch.isfinite(logits).all(), logits.shape
print("auc", float(binary_auroc(torch.sigmoid(logits.reshape(-1)), click.long())))
'''


def test_own_lightning_module_trains_quantizes_loads_and_scores(tmp_path, monkeypatch):
    shutil.copy(MYMOD, tmp_path / "mymod.py")
    (tmp_path / "train.py").write_text(TRAIN)
    (tmp_path / "score.py").write_text(SCORE)
    (tmp_path / "data.yaml").write_text("class_path: mymod.CTRData\ninit_args: {batch_size: 512}\n")
    outside = os.environ.get("PYTHONPATH", "")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(tmp_path), outside])))  # the user's package
    run(["python", "train.py"], tmp_path)
    refused = run(["lrs", "quantize", "ctr.ckpt", "--out", "art"], tmp_path, ok=(2,))
    assert "--module-class" in refused.stderr  # the option that fixes it is named
    proc = run(["lrs", "quantize", "ctr.ckpt", "--out", "art", "--module-class", "mymod.CTR", "--data", "data.yaml"], tmp_path)
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["auc_fp32"] > 0.7 and abs(summary["auc_fp32"] - summary["auc_quant"]) < 0.01
    report = json.loads((tmp_path / "art" / "report.json").read_text())
    assert report["export_parity"]["rows"] == 512
    auc = float(run(["python", "score.py"], tmp_path).stdout.split()[-1])
    assert auc > 0.7
    # --format torch: a self-contained torch.export program, scored by a process that cannot import mymod
    run(["lrs", "quantize", "ctr.ckpt", "--out", "art_torch", "--format", "torch", "--module-class", "mymod.CTR",
         "--data", "data.yaml"], tmp_path)  # fmt: skip
    assert (tmp_path / "art_torch" / "model.pt2").is_file()
    parity = json.loads((tmp_path / "art_torch" / "report.json").read_text())["export_parity"]
    # rows off by more than the tolerance must be int8 rounding ties (float sums in another order on
    # this CPU's kernels), and rare
    assert parity["rows_beyond_tol"] == parity["rounding_ties"] and parity["share_beyond_tol"] <= 0.01
    run(["python", "-c", SAVE_BATCH], tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for name in ("art_torch", "held_out.pt"):
        shutil.move(str(tmp_path / name), elsewhere / name)
    monkeypatch.setenv("PYTHONPATH", outside)
    auc_torch = float(run(["python", "-c", SCORE_WITHOUT_CLASS], elsewhere).stdout.split()[-1])
    assert abs(auc_torch - auc) < 1e-3, (auc_torch, auc)
