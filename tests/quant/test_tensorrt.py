"""Torch-TensorRT backend: everything before the engine build runs on CPU; clear errors without the
package or CUDA. (No test here builds a TensorRT engine: that needs an NVIDIA GPU.)"""

import importlib.util
import json
import sys
import types

import lightning.pytorch as pl
import pytest
import torch
from torch import nn

from lightning_recsys.data import RecsysBatch, SparseFeature
from lightning_recsys.models import DLRM
from lightning_recsys.quant import FP32Config, RecipeConfig, quantize_
from lightning_recsys.quant.export.tensorrt import (
    TensorRTPredictor,
    export_tensorrt,
    import_torch_tensorrt,
    prepare_tensorrt_program,
    tensorrt_inputs,
)

from .test_api_config import UserModel

pytestmark = pytest.mark.timeout(120)

CARDS = {"a": 50, "b": 30, "c": 40}
HAS_TRT = importlib.util.find_spec("torch_tensorrt") is not None
HAS_MODELOPT = importlib.util.find_spec("modelopt") is not None


def _batch(n, seed, max_len=3, single=()):
    g = torch.Generator().manual_seed(seed)
    sparse = {}
    for name, card in CARDS.items():
        if name in single:
            f = SparseFeature.single_hot(torch.randint(0, card, (n,), generator=g))
        else:  # 0..max_len ids per bag: empty bags included
            lens = torch.randint(0, max_len + 1, (n,), generator=g).tolist()
            f = SparseFeature.from_lists([torch.randint(0, card, (k,), generator=g).tolist() for k in lens])
        if name == "c":
            f.weights = torch.rand(f.values.numel(), generator=g)
        sparse[name] = f
    return RecsysBatch(torch.rand(n, 4, generator=g), sparse)


@pytest.fixture(scope="module")
def dlrm():
    torch.manual_seed(0)
    return DLRM(4, CARDS, embedding_dim=6, bottom_mlp=(8,), top_mlp=(8,), num_tasks=2).eval()


@pytest.fixture(scope="module")
def programs(dlrm):
    """One prepared program per float precision, shared by the tests (each export takes ~1 s)."""
    return {p: prepare_tensorrt_program(dlrm, _batch(16, 1), p, max_batch=64, opt_batch=32) for p in ("fp32", "fp16")}


def _ops(program):
    return {str(n.target) for n in program.graph.nodes if n.op == "call_function"}


@pytest.mark.parametrize(("precision", "tol"), [("fp32", 1e-5), ("fp16", 1e-2)])
def test_prepared_program_matches_eager_with_dynamic_batch(dlrm, programs, precision, tol):
    prepared = programs[precision]
    ops = _ops(prepared.program)
    assert not any("embedding_bag" in op for op in ops) and "aten.embedding.default" in ops
    run = prepared.program.module()
    for n in (1, 7):  # batch dim is dynamic: neither size was exported
        batch = _batch(n, 10 + n)
        with torch.no_grad():
            ref, got = dlrm(batch), run(*tensorrt_inputs(batch, prepared.meta))
        assert got.dtype == torch.float32 and got.shape == ref.shape == (n, 2)
        torch.testing.assert_close(got, ref, atol=tol, rtol=tol)
    meta = json.loads(json.dumps(prepared.meta))  # JSON-ready, as written to meta.json
    assert meta["precision"] == precision and meta["input_names"][0] == "dense"
    assert meta["dynamic_dims"]["dense"] == {"0": "batch"} and meta["dynamic_dims"]["c__weights"] == {"0": "batch", "1": "len_c"}
    assert meta["shapes"]["a__ids"]["dtype"] == "int64"  # ids stay integer in every precision
    assert meta["shapes"]["dense"] == {"min": [1, 4], "opt": [32, 4], "max": [64, 4],
                                       "dtype": "float32" if precision == "fp32" else "float16"}  # fmt: skip
    assert [s["name"] for s in prepared.input_specs()] == meta["input_names"]


def test_fp16_graph_computes_in_half(programs):
    prepared = programs["fp16"]
    dtypes = {str(n.target): n.meta["val"].dtype for n in prepared.program.graph.nodes
              if n.op == "call_function" and str(n.target) in ("aten.linear.default", "aten.bmm.default", "aten.embedding.default")}  # fmt: skip
    assert dtypes and set(dtypes.values()) == {torch.float16}
    params = prepared.program.state_dict
    assert {v.dtype for k, v in params.items() if k.endswith("weight")} == {torch.float16}
    assert [a.dtype for a in prepared.example_inputs] == [torch.float16, torch.int64, torch.int64, torch.int64, torch.float16]


def test_quantized_tables_single_hot_and_empty_bags(dlrm):
    model = DLRM(4, CARDS, embedding_dim=6, bottom_mlp=(8,), top_mlp=(8,), num_tasks=2).eval()
    model.load_state_dict(dlrm.state_dict())
    recipe = RecipeConfig(linears=FP32Config(), overrides={r".*tables\.b": {"precision": "int4"}, r".*tables\.c": {"precision": "fp16"}})
    quantize_(model, recipe)  # a: row-wise int8 (default), b: int4, c: fp16 tables
    prepared = prepare_tensorrt_program(model, _batch(8, 3, single=("a",)), "fp16", max_batch=32)
    assert prepared.meta["inputs"]["single_hot"] == ["a"] and prepared.meta["shapes"]["a__ids"]["max"] == [32]
    state = prepared.program.state_dict
    assert {v.dtype for k, v in state.items() if k.endswith("scale_bias")} == {torch.float32}  # int8/int4 scales
    assert {v.dtype for k, v in state.items() if k.endswith(".q")} == {torch.uint8}  # codes stay packed
    run = prepared.program.module()
    empty = RecsysBatch(torch.rand(2, 4), {"a": SparseFeature.from_lists([[3], []]), "b": SparseFeature.from_lists([[], []]),
                                          "c": SparseFeature(torch.tensor([4]), torch.tensor([0, 0, 1]), torch.tensor([0.5]))})  # fmt: skip
    for batch in (_batch(5, 4, single=("a",)), empty):
        with torch.no_grad():
            torch.testing.assert_close(run(*tensorrt_inputs(batch, prepared.meta)), model(batch), atol=1e-2, rtol=1e-2)


class PlainModule(UserModel, pl.LightningModule):
    """Any LightningModule: the API tests' plain nn.Embedding / nn.EmbeddingBag / nn.Linear model taking tensors."""


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_plain_lightning_module_taking_tensors(precision):
    torch.manual_seed(1)
    model = PlainModule().eval()
    example = (torch.randint(0, 100, (6,)), torch.randint(0, 200, (6, 5)))
    prepared = prepare_tensorrt_program(model, example, precision, max_batch=16)
    assert not any("embedding_bag" in op for op in _ops(prepared.program))
    assert prepared.meta["inputs"]["kind"] == "tree" and prepared.meta["input_names"] == ["user", "items"]
    run = prepared.program.module()
    for n in (1, 7):
        inputs = (torch.randint(0, 100, (n,)), torch.randint(0, 200, (n, 5)))
        with torch.no_grad():
            got, ref = run(*tensorrt_inputs(inputs, prepared.meta)), model(*inputs)
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, ref, atol=1e-5 if precision == "fp32" else 1e-2, rtol=1e-2)


class BagsDLRM(nn.Module):
    """A DLRM written the usual way: ``forward(dense, ids, offsets)`` with per-table 1-D ids and offsets
    (one table with ``include_last_offset``, one with ``per_sample_weights`` and max pooling)."""

    def __init__(self) -> None:
        super().__init__()
        self.bags = nn.ModuleList([nn.EmbeddingBag(60, 8, mode="mean"), nn.EmbeddingBag(40, 8, mode="sum"),
                                   nn.EmbeddingBag(30, 8, mode="sum", include_last_offset=True)])  # fmt: skip
        self.bottom = nn.Sequential(nn.Linear(4, 8), nn.ReLU())
        self.top = nn.Sequential(nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 2))

    def forward(self, dense, ids, offsets, weights):
        pooled = [self.bags[0](ids[0], offsets[0]), self.bags[1](ids[1], offsets[1], per_sample_weights=weights),
                  self.bags[2](ids[2], offsets[2])]  # fmt: skip
        return self.top(torch.cat([self.bottom(dense), *pooled], 1))


def _bags_batch(n, max_len, seed):
    g = torch.Generator().manual_seed(seed)
    ids, offsets = [], []
    for card, csr in ((60, False), (40, False), (30, True)):
        lens = torch.randint(0, max_len + 1, (n,), generator=g)  # empty bags included
        ids.append(torch.randint(0, card, (int(lens.sum()),), generator=g))
        starts = torch.cat([torch.zeros(1, dtype=torch.long), lens.cumsum(0)])
        offsets.append(starts if csr else starts[:-1])
    return torch.rand(n, 4, generator=g), ids, offsets, torch.rand(ids[1].numel(), generator=g)


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_model_taking_bag_ids_and_offsets(precision):
    """1-D ids + offsets (and include_last_offset, per_sample_weights): the batch, the offsets and the ids
    of every bag group are dynamic, each with its own range; other batch sizes and bag lengths run."""
    torch.manual_seed(0)
    model = BagsDLRM().eval()
    quantize_(model, RecipeConfig(linears=FP32Config()))  # row-wise int8 tables; TensorRT compiles float linears
    prepared = prepare_tensorrt_program(model, _bags_batch(6, 3, 0), precision, max_batch=32, max_bag_len=8)
    shapes, labels = prepared.meta["shapes"], prepared.meta["dynamic_dims"]
    assert shapes["dense"]["max"] == [32, 4] and shapes["offsets.2"]["max"] == [33] and shapes["ids.0"]["max"] == [256]
    assert labels["offsets.2"] == {"0": "batch+1"} or labels["offsets.2"] == {0: "batch+1"}
    assert labels["ids.1"] == labels["weights"]  # per_sample_weights share their ids' dim
    assert not any("embedding_bag" in op for op in _ops(prepared.program))
    run = prepared.program.module()
    for n, max_len, seed in ((2, 1, 1), (9, 6, 2), (32, 8, 3)):
        batch = _bags_batch(n, max_len, seed)
        with torch.no_grad():
            got, ref = run(*tensorrt_inputs(batch, prepared.meta)), model(*batch)
        assert got.dtype == torch.float32 and got.shape == (n, 2)
        torch.testing.assert_close(got, ref, atol=1e-5 if precision == "fp32" else 2e-2, rtol=1e-2)
    with pytest.raises(ValueError, match=r"input 'dense' has shape \(33, 4\), outside the exported range"):
        tensorrt_inputs(_bags_batch(33, 2, 4), prepared.meta)
    with pytest.raises(ValueError, match=r"input 'dense' has shape \(1, 4\), outside the exported range \[2, 4\]"):
        tensorrt_inputs(_bags_batch(1, 2, 4), prepared.meta)  # include_last_offset bags: 2 rows or more


@pytest.mark.skipif(HAS_TRT, reason="checks the error raised when torch_tensorrt is NOT installed")
def test_missing_package_error_names_the_extra(dlrm, tmp_path):
    out = tmp_path / "trt"
    with pytest.raises(ImportError, match=r"pip install 'lightning-recsys\[tensorrt\]'.*CUDA"):
        export_tensorrt(dlrm, out, _batch(4, 0))
    assert not out.exists()  # nothing written


def test_missing_cuda_and_old_version_errors(dlrm, tmp_path, monkeypatch):
    # A stand-in module object exercises OUR checks (version, CUDA probe), not TensorRT itself.
    fake = types.ModuleType("torch_tensorrt")
    fake.__version__ = "2.13.0"
    monkeypatch.setitem(sys.modules, "torch_tensorrt", fake)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match=r"needs a CUDA GPU.*torch.cuda.is_available\(\) is False"):
        import_torch_tensorrt()
    out = tmp_path / "trt"
    with pytest.raises(RuntimeError, match="CUDA"):
        export_tensorrt(dlrm, out, _batch(4, 0), "fp32")
    assert not out.exists()
    fake.__version__ = "2.3.1"
    with pytest.raises(ImportError, match=r"2\.3\.1 is too old.*>= 2\.9"):
        import_torch_tensorrt()


@pytest.mark.skipif(HAS_MODELOPT, reason="checks the error raised when NVIDIA ModelOpt is NOT installed")
def test_int8_without_modelopt_names_it(dlrm):
    # checked before anything touches the device, so this runs on a CPU-only machine too
    with pytest.raises(ImportError, match="pip install nvidia-modelopt"):
        prepare_tensorrt_program(dlrm, _batch(8, 0), "int8", calibration_batches=[_batch(8, 1)], device="cuda")


def test_int8_needs_cuda_device(dlrm):
    with pytest.raises(ValueError, match="int8' must be prepared on device='cuda', got 'cpu'.*tensorrt::quantize_op"):
        prepare_tensorrt_program(dlrm, _batch(8, 0), "int8", calibration_batches=[_batch(8, 1)])


def test_predictor_checks_the_artifact_then_the_package(programs, tmp_path):
    with pytest.raises(FileNotFoundError, match="no meta.json"):
        TensorRTPredictor(tmp_path)
    prepared = programs["fp32"]
    meta = {**prepared.meta, "artifact": "model.ep", "output_format": "exported_program"}
    (tmp_path / "meta.json").write_text(json.dumps({**meta, "format": "onnx"}))
    with pytest.raises(ValueError, match="format 'onnx'.*is not a TensorRT artifact"):
        TensorRTPredictor(tmp_path)
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(FileNotFoundError, match="model.ep named in"):
        TensorRTPredictor(tmp_path)
    torch.export.save(prepared.program, tmp_path / "model.ep")  # a real program file (without TensorRT engines)
    if not HAS_TRT:
        with pytest.raises(ImportError, match=r"lightning-recsys\[tensorrt\]"):
            TensorRTPredictor(tmp_path)


def test_bad_arguments(dlrm, programs, tmp_path):
    b = _batch(8, 0)
    with pytest.raises(ValueError, match=r"precision must be one of \['fp32', 'fp16', 'int8'\], got 'int4'"):
        prepare_tensorrt_program(dlrm, b, "int4")
    with pytest.raises(ValueError, match="max_batch must be an integer >= 2, got 1"):
        prepare_tensorrt_program(dlrm, b, max_batch=1)
    with pytest.raises(ValueError, match=r"opt_batch must be an integer in \[1, 16\], got 32"):
        prepare_tensorrt_program(dlrm, b, max_batch=16, opt_batch=32)
    with pytest.raises(ValueError, match="int8' needs calibration_batches"):
        prepare_tensorrt_program(dlrm, b, "int8")
    with pytest.raises(ValueError, match="calibration_batches is only used with precision='int8'"):
        prepare_tensorrt_program(dlrm, b, "fp16", calibration_batches=[b])
    with pytest.raises(ValueError, match="has 6 ids in a bag, more than max_bag_len=4"):
        prepare_tensorrt_program(dlrm, _batch(8, 0, max_len=6), max_bag_len=4)
    with pytest.raises(ValueError, match="has 8 rows, more than max_batch=4"):
        prepare_tensorrt_program(dlrm, b, max_batch=4)
    with pytest.raises(ValueError, match=r"single_hot names features \['zz'\]"):
        prepare_tensorrt_program(dlrm, b, single_hot=["zz"])
    with pytest.raises(TypeError, match="model must be an nn.Module"):
        prepare_tensorrt_program("model.ckpt", b)
    with pytest.raises(TypeError, match="example_batch holds no tensor"):
        prepare_tensorrt_program(dlrm, [1, 2])
    int8 = DLRM(4, CARDS, embedding_dim=6, bottom_mlp=(8,), top_mlp=(8,))
    quantize_(int8, RecipeConfig())  # default recipe: Int8Linear layers (ONNX Runtime kernels)
    with pytest.raises(ValueError, match="Int8Linear.*precision='int8'"):
        prepare_tensorrt_program(int8, b)
    with pytest.raises(ValueError, match=r"input 'dense' has shape \(65, 4\), outside the exported range"):
        tensorrt_inputs(_batch(65, 1), programs["fp32"].meta)
    with pytest.raises(ValueError, match="output_format must be one of"):
        export_tensorrt(dlrm, tmp_path / "x", b, output_format="onnx")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "mine.txt").write_text("keep")
    with pytest.raises(FileExistsError, match="never overwrites"):
        export_tensorrt(dlrm, tmp_path / "full", b)
    assert (tmp_path / "full" / "mine.txt").read_text() == "keep"


def test_lrs_quantize_format_tensorrt_names_the_extra_and_writes_nothing(tmp_path, capsys):
    """``lrs quantize --format tensorrt`` on this CPU machine (no torch_tensorrt): exit 2, a message naming
    the extra, no output directory, the checkpoint untouched."""
    import lightning.pytorch as pl

    from lightning_recsys.cli import main as lrs_main
    from lightning_recsys.data import SyntheticCTRDataModule
    from lightning_recsys.models import RecsysModule

    dm = SyntheticCTRDataModule(num_train=256, num_val=128, num_test=128, batch_size=64, max_rows=50, num_sparse=3)
    module = RecsysModule(feature_spec=dm.feature_spec, embedding_dim=4, bottom_mlp=(8,), top_mlp=(8,))
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, max_steps=1)  # fmt: skip
    trainer.fit(module, dm)
    ckpt = tmp_path / "m.ckpt"
    trainer.save_checkpoint(ckpt)
    before = ckpt.read_bytes()
    out = tmp_path / "trt"
    assert lrs_main(["quantize", str(ckpt), "--out", str(out), "--format", "tensorrt"]) == 2
    assert "lightning-recsys[tensorrt]" in capsys.readouterr().err
    assert not out.exists() and ckpt.read_bytes() == before
    assert lrs_main(["quantize", str(ckpt), "--out", str(out), "--format", "tensorrt", "--budget-ne", "0.001"]) == 2
    assert "applies to the onnx / torch formats" in capsys.readouterr().err and not out.exists()
