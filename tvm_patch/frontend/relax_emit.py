"""The graph IR as a Relax IRModule: `main` calls one scheduled PrimFunc per operator with
call_tir, weights as Relax constants, reshapes as Relax reshapes (views, no copy). Each
PrimFunc carries what the analysis needs (operator, MACs, scratch bytes) as attributes, so
the module alone is enough to plan memory and to profile. `main` carries the graph itself,
so that passes can re-plan from it.

With a patch stage (passes/stage.py), its operators become one call_tir to the stage's
loop nest, which also returns its workspace (the tile buffers): (output, workspace)."""

from __future__ import annotations

import json

import numpy as np
import tvm
from tvm import relax

from ..graph import Graph, ModelError, to_record
from ..kernels.lower import activation_inputs, lower_op

GRAPH_ATTR, DATA_ATTR = "tvm_patch.graph", "tvm_patch.graph_data"


def to_relax(graph: Graph, stage=None, kernels: dict | None = None):
    """`kernels` caches lowered per-operator kernels by graph position across calls."""
    kernels = {} if kernels is None else kernels
    record = to_record(graph)
    attrs = {"global_symbol": "main", "tvm_patch.model": graph.name, GRAPH_ATTR: record["json"],
             DATA_ATTR: {k: tvm.runtime.tensor(np.ascontiguousarray(v))
                         for k, v in record["data"].items()}}
    if stage is not None:
        attrs["tvm_patch.stage"] = json.dumps({"patches": stage.patches, "split": stage.split})
    in_stage = {id(op) for op in stage.ops} if stage is not None else set()
    # every kernel before the builder opens: an error inside it would leave it unfinished
    for pos, op in enumerate(graph.ops):
        if id(op) not in in_stage and op.kind != "reshape" and pos not in kernels:
            kernels[pos] = lower_op(op, graph)
    if stage is not None:
        from ..passes.fuse import lower_stage  # the stage compiler builds on the op kernels
        stage_kernel = lower_stage(stage, graph)
    bb = relax.BlockBuilder()
    params = [relax.Var(_var_name(n), relax.TensorType(graph.t(n).shape, graph.t(n).dtype))
              for n in graph.inputs]
    env = dict(zip(graph.inputs, params))
    with bb.function("main", params, attrs=attrs):
        with bb.dataflow():
            for pos, op in enumerate(graph.ops):
                out = graph.t(op.outputs[0])
                if id(op) in in_stage:
                    if op is stage.ops[-1]:
                        env[out.name] = _emit_stage(bb, stage, stage_kernel, graph, env)
                    continue
                if op.kind == "reshape":
                    env[out.name] = bb.emit(relax.op.reshape(env[op.inputs[0]], out.shape),
                                            name_hint=_var_name(out.name))
                    continue
                kernel = kernels[pos]
                func = kernel.func.with_attr(
                    "tvm_patch.inplace", int(bool(op.attrs.get("inplace"))))
                name = f"L{pos:03d}_{op.kind}"  # source index may repeat (ONNX inserts ops)
                env[out.name] = _emit_call(bb, name, func, kernel,
                                           [env[n] for n in activation_inputs(op, graph)], out)
            outs = [env[n] for n in graph.outputs]
            result = bb.emit_output(outs[0] if len(outs) == 1 else relax.Tuple(outs))
        bb.emit_func_output(result)
    return bb.finalize()


def _emit_stage(bb, stage, kernel, graph, env):
    first = stage.ops[0]
    describe = {"kind": "patch_stage", "index": first.index, "source": "PATCH_STAGE", "attrs": {
        "patches": stage.patches, "split": stage.split, "tile": list(stage.tile),
        "input_tile_hw": list(stage.input_tile_hw), "layer_macs": stage.layer_macs,
        "paper_bytes": stage.paper_bytes,
        "ops": [f"{op.source or op.kind}@{op.index}" for op in stage.ops],
        "tile_buffers": kernel.tile_buffers}}
    func = kernel.func.with_attr("tvm_patch.op", json.dumps(describe))
    return _emit_call(bb, "patch_stage", func, kernel, [env[stage.input]],
                      graph.t(stage.output))


def _emit_call(bb, name, func, kernel, inputs, out):
    """call_tir of a kernel; one with a workspace also returns it, (output, workspace), so
    that Relax allocates it like any tensor."""
    workspace = max(kernel.scratch_bytes, 1) if kernel.workspace else 0
    func = func.with_attr("tvm_patch.macs", kernel.macs).with_attr(
        "tvm_patch.scratch_bytes", workspace or kernel.scratch_bytes).with_attr(
        "tvm_patch.workspace", int(kernel.workspace)).with_attr("global_symbol", name)
    gv = bb.add_func(func, name)
    args = inputs + [relax.const(np.ascontiguousarray(c)) for c in kernel.consts]
    out_ty = relax.TensorType(out.shape, out.dtype)
    if not workspace:
        return bb.emit(relax.call_tir(gv, args, out_ty), name_hint=_var_name(out.name))
    both = bb.emit(relax.call_tir(gv, args, [out_ty, relax.TensorType((workspace,), "int8")]),
                   name_hint=_var_name(out.name) + "__ws")
    return bb.emit(relax.TupleGetItem(both, 0), name_hint=_var_name(out.name))


def graph_of(mod) -> Graph:
    """The graph a module was emitted from (modules from tvm_patch.load carry it)."""
    from ..graph import from_record
    main = mod["main"] if "main" in [gv.name_hint for gv in mod.get_global_vars()] else None
    if main is None or main.attrs is None or GRAPH_ATTR not in main.attrs:
        raise ModelError("this module was not made by tvm_patch.load: it carries no model "
                         "graph to plan the patch stage from")
    data = {k: v.numpy() for k, v in main.attrs[DATA_ATTR].items()}
    return from_record(str(main.attrs[GRAPH_ATTR]), data)


def _var_name(tensor_name: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in tensor_name)
