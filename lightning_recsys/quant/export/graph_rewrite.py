"""Exact rewrites of an exported ONNX graph that make ONNX Runtime faster.

:func:`quantize_before_concat`: a float ``Concat`` read only by a per-tensor ``QuantizeLinear`` becomes
one ``QuantizeLinear`` per concat input and a ``Concat`` of the uint8 results. ``QuantizeLinear`` with
one scale and zero point is elementwise, so the output is identical; the concat moves a quarter of the
bytes (a DLRM's ``[x, E x, E E^T]`` feeding a static int8 layer: 1-4% of the whole graph's time at
batch 512 on 2 cores).

Example:
    >>> import onnx  # doctest: +SKIP
    >>> proto = onnx.load("model.onnx")  # doctest: +SKIP
    >>> quantize_before_concat(proto)  # number of rewritten concats  # doctest: +SKIP
    1
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["quantize_before_concat"]


def _scalar(name: str, initializers: dict[str, Any], constants: dict[str, Any]) -> bool:
    """Whether input ``name`` is a constant with one element (a per-tensor scale or zero point)."""
    if name in initializers:
        return math.prod(initializers[name].dims) == 1
    node = constants.get(name)
    if node is None:
        return False
    value = next((a.t for a in node.attribute if a.name == "value"), None)
    return value is not None and math.prod(value.dims) == 1


def quantize_before_concat(proto: Any) -> int:
    """Rewrite ``QuantizeLinear(Concat(a, b, ...))`` into ``Concat(QuantizeLinear(a), QuantizeLinear(b),
    ...)`` in ``proto.graph`` (in place) where the concat output has no other reader, is not a graph
    output, and the scale and zero point are single constants. Returns how many were rewritten."""
    from onnx import NodeProto

    graph = proto.graph
    nodes = [NodeProto() for _ in graph.node]  # detached copies: the graph's node list is rebuilt below
    for copy, node in zip(nodes, graph.node):
        copy.CopyFrom(node)
    producer = {out: n for n in nodes for out in n.output}
    readers: dict[str, int] = {}
    for n in nodes:
        for name in n.input:
            readers[name] = readers.get(name, 0) + 1
    outputs = {o.name for o in graph.output}
    initializers = {i.name: i for i in graph.initializer}
    constants = {n.output[0]: n for n in nodes if n.op_type == "Constant" and n.domain in ("", "ai.onnx")}
    rewritten, removed = 0, set()
    for q in [n for n in nodes if n.op_type == "QuantizeLinear" and n.domain in ("", "ai.onnx")]:
        cat = producer.get(q.input[0])
        if cat is None or cat.op_type != "Concat" or cat.domain not in ("", "ai.onnx"):
            continue
        if readers.get(q.input[0], 0) != 1 or q.input[0] in outputs:
            continue
        if not all(_scalar(name, initializers, constants) for name in q.input[1:3] if name):
            continue
        parts = []
        for k, name in enumerate(cat.input):
            part = NodeProto()
            part.CopyFrom(q)
            part.name = f"{q.name or q.output[0]}_part{k}"
            part.input[0] = name
            part.output[0] = f"{q.output[0]}_part{k}"
            parts.append(part)
        joined = NodeProto()
        joined.CopyFrom(cat)
        joined.name = f"{cat.name or cat.output[0]}_quantized"
        del joined.input[:]
        joined.input.extend(p.output[0] for p in parts)
        joined.output[0] = q.output[0]
        # keep the node list topologically sorted: the new nodes take the QuantizeLinear's place
        position = nodes.index(q)
        nodes[position : position + 1] = [*parts, joined]
        nodes.remove(cat)
        removed.add(q.input[0])
        rewritten += 1
    if rewritten:
        del graph.node[:]
        graph.node.extend(nodes)
        stale = [v for v in graph.value_info if v.name in removed]  # shape info of the float concats
        for v in stale:
            graph.value_info.remove(v)
    return rewritten
