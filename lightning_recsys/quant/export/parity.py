"""Parity of an exported artifact with the PyTorch model it came from, for every exporter.

:func:`verify_export` runs the model and the artifact's runtime (ONNX Runtime, a ``torch.export``
program) on the example, on a batch of another size made from it (its first half, or its one row
twice: :mod:`.example_rows`; skipped with a warning when the roles of a model's own inputs cannot be
told) and on every batch in ``verify_batches``. A row beyond ``atol + rtol * |logit|`` is accepted
only when it is an int8 rounding tie (:func:`tie_envelope`); anything else raises naming the row.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from lightning_recsys.quant.export.flat import prepare_call
    >>> model = nn.Linear(4, 1).eval()
    >>> call = prepare_call(model, torch.randn(8, 4))
    >>> meta = {"inputs": {**call.inputs, "tensors": [{"name": "input", "dtype": "float32", "shape": ["s0", 4]}]}}
    >>> run = Runtime("eager", lambda feeds: model(torch.from_numpy(feeds["input"])))
    >>> verify_export(model, run, torch.randn(8, 4), meta, 1e-5, 1e-5, caller="doctest")["rows_beyond_tol"]
    0
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ...data.batch import RecsysBatch
from ..core.linear import Int8Linear
from .example_rows import infer_roles, other_rows, recsys_rows, select_rows
from .flat import layout_feeds, output_logits
from .input_spec import Call, bind_example, flatten_call, rebuild_call, resolve_call, tree_feeds

__all__ = ["Runtime", "as_logits", "ort_runtime", "tie_envelope", "verify", "verify_export"]


class _RunFailed(RuntimeError):
    """The artifact's runtime raised on a batch (not a parity failure)."""


@dataclasses.dataclass(frozen=True)
class Runtime:
    """An artifact's runtime: ``run(feeds)`` -> logits for the named input arrays; ``name`` in messages."""

    name: str
    run: Callable[[dict[str, np.ndarray]], Tensor]


def ort_runtime(proto: Any) -> Runtime:
    """An ONNX Runtime CPU session of ``proto`` (a ``ModelProto``)."""
    import onnxruntime as ort

    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return Runtime("ONNX Runtime", lambda feeds: torch.from_numpy(sess.run(None, feeds)[0]))


def verify_export(model: nn.Module, runtime: Runtime, example: Any, meta: dict, atol: float, rtol: float,
                  verify_batches: Sequence[Any] = (), caller: str = "the export") -> dict[str, Any]:  # fmt: skip
    """The parity report (``meta["parity"]``) on the example, a batch of another size and
    ``verify_batches``; raises when the artifact computes something else than the model."""
    report = verify(model, runtime, example, meta, atol, rtol)
    other, why = other_size_batch(model, example, meta)
    checks = [("a batch of another size made from the example", other)] if other is not None else []
    if other is None and not verify_batches:
        warnings.warn(f"{caller} checked the artifact on the example only, not on a batch of another size: {why}; "
                      "pass batches of other sizes as verify_batches=[...]", stacklevel=3)  # fmt: skip
    if other is None:
        report["other_size"] = {"skipped": why}
    checks += [(f"verify_batches[{i}]", b) for i, b in enumerate(verify_batches)]
    for i, (label, batch) in enumerate(checks):
        result = _verify_other(model, runtime, batch, meta, atol, rtol, label)
        if i == 0 and other is not None:
            report["other_size"] = result
        else:
            report.setdefault("verify_batches", []).append(result)
    return report


def other_size_batch(model: nn.Module, example: Any, meta: dict) -> tuple[Any, str | None]:
    """A batch of another size from ``example`` (:mod:`.example_rows`), or ``None`` and why not."""
    if isinstance(example, RecsysBatch):
        return recsys_rows(example, other_rows(example.batch_size)), None
    call = Call(*bind_example(model, example))
    spec, names, leaves = flatten_call(model, call.args, call.kwargs)
    read = {t["name"] for t in meta["inputs"]["tensors"]}
    found = infer_roles(model, call.args, call.kwargs, names, leaves, [n in read for n in names])
    if isinstance(found, str):
        return None, found
    b, roles = found
    args, kwargs = rebuild_call(spec, select_rows(leaves, roles, other_rows(b)), (call.args, call.kwargs))
    try:
        with torch.no_grad():
            model(*args, **kwargs)
    except Exception as e:  # the roles were guessed wrong: the model refuses the batch
        return None, f"the model refuses the batch made of the example's rows {other_rows(b)[:4]}... ({type(e).__name__}: {e})"
    return Call(args, kwargs), None


def _verify_other(model: nn.Module, runtime: Runtime, batch: Any, meta: dict, atol: float, rtol: float, label: str) -> dict:
    """:func:`verify` on another batch; the runtime failing on it (a size fixed at export) names the batch."""
    try:
        return verify(model, runtime, batch, meta, atol, rtol)
    except ValueError as e:
        raise ValueError(f"the exported artifact cannot take {label}: {e}") from e
    except _RunFailed as e:
        raise RuntimeError(f"{runtime.name} fails on {label} with the exported artifact (a size of the example was fixed "
                           f"at export, or an op's dynamic shape is wrong): {e}") from e.__cause__  # fmt: skip


def verify(model: nn.Module, runtime: Runtime, example: Any, meta: dict, atol: float, rtol: float) -> dict[str, Any]:
    """``runtime`` against the PyTorch model on ``example`` (in ``example_batch``'s form); raises
    naming the cause when they disagree.

    Both run the same integer arithmetic, but float sums in another order can move an int8 activation
    that sits on a rounding tie (``x / scale`` within float error of ``k + 0.5``) by one code; the
    logit then moves by that code's weight, far beyond ``atol``. A row beyond ``atol + rtol |ref|`` is
    accepted only when the PyTorch model itself reaches the runtime's value once its int8 layers'
    inputs are jittered by a relative ``1e-5`` (:func:`tie_envelope`); any other difference is a
    lowering error.
    """
    kwargs: dict = {}
    if meta["inputs"]["kind"] == "recsys":
        feeds = layout_feeds(example, meta["inputs"])
        args: tuple = (example,)
    elif meta["inputs"]["kind"] == "tree":
        args, kwargs, _ = resolve_call(meta["inputs"], (example,))
        feeds = tree_feeds(meta["inputs"], args, kwargs)
    else:
        args = (example,) if isinstance(example, Tensor) else tuple(example)
        feeds = {n: t.detach().cpu().numpy() for n, t in zip(meta["inputs"]["names"], args)}
    with torch.no_grad():
        ref = as_logits(model(*args, **kwargs))
        try:
            got = as_logits(runtime.run(feeds))
        except Exception as e:
            raise _RunFailed(f"{type(e).__name__}: {str(e)[:1000]}") from e
    if got.shape != ref.shape:
        raise RuntimeError(f"{runtime.name} returns shape {tuple(got.shape)}, the PyTorch model {tuple(ref.shape)}: the "
                           "lowering changed the model's output (export the module whose forward returns the logits)")  # fmt: skip
    diff, bound = (got - ref).abs(), atol + rtol * ref.abs()
    off = (diff > bound).reshape(len(ref), -1).any(1) if ref.dim() else (diff > bound).reshape(1)
    worst = int(diff.reshape(len(ref), -1).amax(1).argmax()) if ref.dim() and ref.numel() else 0
    report: dict[str, Any] = {
        "rows": int(off.numel()), "max_abs_diff": float(diff.max()) if diff.numel() else 0.0,
        "rows_beyond_tol": int(off.sum()), "share_beyond_tol": float(off.float().mean()) if off.numel() else 0.0,
        "worst_row": worst, "rounding_ties": 0,
    }  # fmt: skip
    if not bool(off.any()):
        return report
    lo, hi, jittered = tie_envelope(model, args, ref, kwargs)
    inside = (got >= lo - bound) & (got <= hi + bound)
    unexplained = ~inside.reshape(len(ref), -1).all(1) & off if ref.dim() else ~inside.reshape(1)
    report["rounding_ties"] = int((off & ~unexplained).sum())
    if bool(unexplained.any()):
        i = int(unexplained.nonzero()[0, 0])
        why = ("it is not an int8 rounding tie (the PyTorch model under input jitter of its int8 layers spans "
               f"[{float(lo.reshape(len(ref), -1)[i].min()):.6g}, {float(hi.reshape(len(ref), -1)[i].max()):.6g}] there)"
               if jittered else "the model has no int8 layer whose rounding could explain it")  # fmt: skip
        raise RuntimeError(
            f"{runtime.name} output differs from the PyTorch model in {int(unexplained.sum())} of {len(ref)} rows "
            f"(row {i}: {runtime.name} {got.reshape(len(ref), -1)[i].tolist()} vs PyTorch "
            f"{ref.reshape(len(ref), -1)[i].tolist()}, tolerance atol={atol} + rtol={rtol}*|ref|); {why}. The exported "
            "artifact computes something else than forward: a forward that does more with sparse features than pass "
            "values / offsets to its tables cannot be lowered, or an op is exported differently"
        )
    return report


def as_logits(out: Any) -> Tensor:
    """``out`` as the detached float32 CPU logits tensor an artifact returns (:func:`~.flat.output_logits`)."""
    return output_logits(out).detach().float().cpu()


_TIE_JITTER = 1e-5  # relative; float32 sums in another order differ by ~1e-7 relative
_TIE_DRAWS = 16


@torch.no_grad()
def tie_envelope(model: nn.Module, args: tuple, ref: Tensor, kwargs: dict | None = None) -> tuple[Tensor, Tensor, bool]:
    """Element-wise min / max of the model's output over runs whose int8 linears see inputs scaled by
    ``1 + u * _TIE_JITTER``: ``u = +1`` everywhere (every tie rounds up), ``u = -1`` (down), then
    ``_TIE_DRAWS`` draws of ``u`` uniform in [-1, 1] (mixed): the values reachable when activations on
    a rounding tie round the other way. ``False`` when the model has no int8 linear."""
    layers = [m for m in model.modules() if isinstance(m, Int8Linear)]
    if not layers:
        return ref, ref, False
    gen = torch.Generator().manual_seed(0)
    sign: list[float | None] = [None]

    def jitter(_m: nn.Module, inputs: tuple) -> tuple:
        x = inputs[0]
        u = torch.full(x.shape, sign[0]) if sign[0] is not None else 2 * torch.rand(x.shape, generator=gen) - 1
        return (x * (1 + _TIE_JITTER * u).to(x.dtype), *inputs[1:])

    handles = [m.register_forward_pre_hook(jitter) for m in layers]
    lo, hi = ref.clone(), ref.clone()
    try:
        for sign[0] in (1.0, -1.0, *[None] * _TIE_DRAWS):
            out = as_logits(model(*args, **(kwargs or {})))
            lo, hi = torch.minimum(lo, out), torch.maximum(hi, out)
    finally:
        for h in handles:
            h.remove()
    return lo, hi, True
