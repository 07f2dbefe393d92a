"""The graph IR as a Relax IRModule: `main` calls one scheduled PrimFunc per operator with
call_tir, weights as Relax constants, reshapes as Relax reshapes (views, no copy). Each
PrimFunc carries what the analysis needs (operator, MACs, scratch bytes) as attributes, so
the module alone is enough to plan memory and to profile."""

from __future__ import annotations

import numpy as np
from tvm import relax

from ..graph import Graph
from ..kernels.lower import activation_inputs, lower_op


def to_relax(graph: Graph):
    bb = relax.BlockBuilder()
    params = [relax.Var(_var_name(n), relax.TensorType(graph.t(n).shape, graph.t(n).dtype))
              for n in graph.inputs]
    env = dict(zip(graph.inputs, params))
    with bb.function("main", params, attrs={"global_symbol": "main",
                                            "tvm_patch.model": graph.name}):
        with bb.dataflow():
            for pos, op in enumerate(graph.ops):
                out = graph.t(op.outputs[0])
                if op.kind == "reshape":
                    env[out.name] = bb.emit(relax.op.reshape(env[op.inputs[0]], out.shape),
                                            name_hint=_var_name(out.name))
                    continue
                kernel = lower_op(op, graph)
                name = f"L{pos:03d}_{op.kind}"  # source index may repeat (ONNX inserts ops)
                func = kernel.func.with_attr("tvm_patch.macs", kernel.macs).with_attr(
                    "tvm_patch.scratch_bytes", kernel.scratch_bytes).with_attr(
                    "tvm_patch.inplace", int(bool(op.attrs.get("inplace")))).with_attr(
                    "global_symbol", name)
                gv = bb.add_func(func, name)
                args = [env[n] for n in activation_inputs(op, graph)] + \
                    [relax.const(np.ascontiguousarray(c)) for c in kernel.consts]
                env[out.name] = bb.emit(
                    relax.call_tir(gv, args, relax.TensorType(out.shape, out.dtype)),
                    name_hint=_var_name(out.name))
            outs = [env[n] for n in graph.outputs]
            result = bb.emit_output(outs[0] if len(outs) == 1 else relax.Tuple(outs))
        bb.emit_func_output(result)
    return bb.finalize()


def _var_name(tensor_name: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in tensor_name)
