"""The model's I/O type. io_type="int8" removes the QUANTIZE that turns each float model
input into int8 and the DEQUANTIZE that turns each int8 result into a float model output, so
the model takes and returns int8 with its own quantization (TFLite's
`inference_input_type=int8`): a camera's bytes need no float copy of the image."""

from __future__ import annotations

import dataclasses

from ..graph import Graph, ModelError, Op

IO_TYPES = ("int8",)


def with_io_type(graph: Graph, io_type: str | None) -> Graph:
    """`graph` with int8 inputs and outputs for io_type "int8"; unchanged for None."""
    if io_type is None:
        return graph
    if io_type not in IO_TYPES:
        raise ModelError(f"io_type={io_type!r}: expected {' or '.join(map(repr, IO_TYPES))}")
    consumers, producers = graph.consumers(), graph.producers()
    removed, inputs, outputs = [], [], []
    for k, name in enumerate(graph.inputs):
        users = consumers.get(name, [])
        _check(graph, io_type, f"input {k}", name, "QUANTIZE",
               users[0] if len(users) == 1 else None, _names(users) or "no operator")
        removed.append(users[0])
        inputs.append(users[0].outputs[0])
    for k, name in enumerate(graph.outputs):
        op = producers.get(name)
        _check(graph, io_type, f"output {k}", name, "DEQUANTIZE", op,
               _names([op]) if op else "no operator", verb="comes from")
        removed.append(op)
        outputs.append(op.inputs[0])
    gone = {id(op) for op in removed}
    tensors = {n: t for n, t in graph.tensors.items()
               if n not in graph.inputs and n not in graph.outputs}
    ops = [_not_inplace(op) if set(op.inputs) & set(inputs) else op
           for op in graph.ops if id(op) not in gone]
    return Graph(tensors, ops, inputs, outputs, graph.name)


def _not_inplace(op: Op) -> Op:
    """A model input is never overwritten (simplify.mark_inplace)."""
    return dataclasses.replace(op, attrs={k: v for k, v in op.attrs.items() if k != "inplace"})


def _check(graph, io_type, what, name, expected, op, found, verb="feeds"):
    """`op` must be the QUANTIZE/DEQUANTIZE between float tensor `name` and an int8 one."""
    if graph.t(name).dtype == io_type:
        raise ModelError(f"io_type={io_type!r}: {what} is already {io_type}")
    kind = "quantize" if expected == "QUANTIZE" else "dequantize"
    if op is None or op.kind != kind:
        raise ModelError(f"io_type={io_type!r}: {what} {verb} {found}, not {expected}")
    inner = op.outputs[0] if kind == "quantize" else op.inputs[0]
    if graph.t(inner).dtype != io_type or graph.t(name).dtype != "float32":
        raise ModelError(f"io_type={io_type!r}: {what} is {graph.t(name).dtype} and its "
                         f"{expected} {'gives' if kind == 'quantize' else 'takes'} "
                         f"{graph.t(inner).dtype}: expected float32 and {io_type}")


def _names(ops) -> str:
    return ", ".join(op.source or op.kind.upper() for op in ops)


def io_specs(graph: Graph) -> dict:
    """The model's inputs and outputs as a caller quantizes them: shape, dtype, scale and
    zero point (None for float tensors)."""
    def spec(name):
        t = graph.t(name)
        q = t.quant if t.dtype != "float32" else None
        return {"shape": [int(d) for d in t.shape], "dtype": t.dtype,
                "scale": None if q is None else float(q.scale[0]),
                "zero_point": None if q is None else q.zp}
    return {"inputs": [spec(n) for n in graph.inputs],
            "outputs": [spec(n) for n in graph.outputs]}
