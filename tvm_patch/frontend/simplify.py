"""Exact graph simplifications applied to every model after reading."""

from __future__ import annotations

from ..graph import Graph

_PADDED_CONVS = ("conv2d", "depthwise_conv2d")


def fold_pads(graph: Graph) -> Graph:
    """Removes an explicit spatial PAD whose only consumer is a convolution, widening the
    convolution's padding instead. Exact: PAD fills with its output zero point (0 for
    float), which is the convolution's input zero point, the value its own padding reads.
    It saves the padded copy, often the largest tensor (TFLite models pad before every
    stride-2 convolution)."""
    consumers = graph.consumers()
    ops = []
    removed = {}
    for op in graph.ops:
        if op.kind == "pad" and _foldable(graph, op, consumers):
            removed[op.outputs[0]] = op
            continue
        if op.kind in _PADDED_CONVS and op.inputs[0] in removed:
            pad = removed.pop(op.inputs[0])
            (pt, pb), (pl, pr) = pad.attrs["pads"][1], pad.attrs["pads"][2]
            t, left, b, r = op.attrs["padding"]
            op.attrs = dict(op.attrs, padding=(t + pt, left + pl, b + pb, r + pr))
            op.inputs = [pad.inputs[0]] + op.inputs[1:]
        ops.append(op)
    assert not removed
    graph.ops = ops
    return graph


def _foldable(graph: Graph, pad, consumers) -> bool:
    users = consumers.get(pad.outputs[0], [])
    pads = pad.attrs["pads"]
    return (len(users) == 1 and users[0].kind in _PADDED_CONVS
            and users[0].inputs[0] == pad.outputs[0] and pad.outputs[0] not in graph.outputs
            and len(pads) == 4 and tuple(pads[0]) == (0, 0) and tuple(pads[3]) == (0, 0)
            and min(v for p in pads for v in p) >= 0)


def mark_inplace(graph: Graph) -> Graph:
    """Marks each depthwise convolution (multiplier 1) that may write its output over its
    input: the input is not used afterwards, is not a model input, and is no smaller.
    Output channel c lands only on positions of input channel c (NHWC), which the kernel
    has copied aside by then, whatever the stride."""
    last_use = {}
    for k, op in enumerate(graph.ops):
        for name in op.inputs:
            last_use[name] = k
    for k, op in enumerate(graph.ops):
        if op.kind != "depthwise_conv2d" or op.attrs.get("depth_multiplier", 1) != 1:
            continue
        x, y = graph.t(op.inputs[0]), graph.t(op.outputs[0])
        if (last_use[x.name] == k and x.name not in graph.inputs + graph.outputs
                and y.nbytes <= x.nbytes and x.dtype == y.dtype):
            op.attrs = dict(op.attrs, inplace=True)
    return graph
