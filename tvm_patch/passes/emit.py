"""A (graph, schedule) as a Relax IRModule: `main` calls one scheduled PrimFunc per operator
with call_tir, weights as Relax constants, reshapes as Relax reshapes (views, no copy), in
the order schedule/cost.py's `units` gives (the cost model plans the same list). Each
PrimFunc carries what the analysis needs (operator, MACs, scratch bytes) as attributes, so
the module alone is enough to plan memory and to profile. `main` carries the graph itself
and its schedule, so that passes can re-plan from it.

Each fused block (schedule/regions.py) becomes one call_tir to its loop nest (fuse.py),
which also returns its workspace (the tile buffers): (output, workspace)."""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import tvm
from tvm import relax

from ..graph import Graph, ModelError, to_record
from ..kernels.lower import activation_inputs, lower_op
from ..kernels.variants import ATTR as VARIANT_ATTR
from ..kernels.variants import with_choice
from ..schedule.arena import Call
from ..schedule.cost import units
from ..schedule.schedule import ATTR as SCHEDULE_ATTR
from ..schedule.schedule import Schedule
from .fuse import lower_stage

GRAPH_ATTR, DATA_ATTR = "tvm_patch.graph", "tvm_patch.graph_data"
POSITION_ATTR = "tvm_patch.position"  # an operator's kernel: its position in the graph


def to_relax(graph: Graph, stages=(), kernels: dict | None = None,
             schedule: Schedule | None = None):
    """`stages` are the planned blocks of `schedule`; `kernels` caches lowered per-operator
    kernels by graph position across calls."""
    kernels = {} if kernels is None else kernels
    record = to_record(graph)
    attrs = {"global_symbol": "main", "tvm_patch.model": graph.name, GRAPH_ATTR: record["json"],
             DATA_ATTR: {k: tvm.runtime.tensor(np.ascontiguousarray(v))
                         for k, v in record["data"].items()}}
    if schedule is not None and (schedule.blocks or schedule.kernels):
        attrs[SCHEDULE_ATTR] = schedule.dumps()
    choices = dict(schedule.kernels) if schedule is not None else {}
    steps = units(graph, list(stages))
    # every kernel before the builder opens (an error inside it would leave it unfinished),
    # on every core: TVM's lowering runs mostly outside Python's lock
    blocks = [item for kind, item in steps if kind == "block"]
    missing = [item for kind, item in steps if kind == "op" and item not in kernels and
               graph.ops[item].kind != "reshape"]
    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        block_kernels = dict(zip(map(id, blocks), pool.map(
            lambda st: lower_stage(st, graph), blocks)))
        kernels.update(zip(missing, pool.map(lambda pos: lower_op(graph.ops[pos], graph),
                                             missing)))
    chosen = {pos: with_choice(kernels[pos].func, graph.ops[pos], graph,
                               kernels[pos].scratch_bytes, choices.get(pos))
              for kind, pos in steps if kind == "op" and graph.ops[pos].kind != "reshape"}
    bb = relax.BlockBuilder()
    params = [relax.Var(_var_name(n), relax.TensorType(graph.t(n).shape, graph.t(n).dtype))
              for n in graph.inputs]
    env = dict(zip(graph.inputs, params))
    with bb.function("main", params, attrs=attrs):
        with bb.dataflow():
            for kind, item in steps:
                if kind == "block":
                    number = [id(st) for st in stages].index(id(item))
                    env[item.output] = _emit_stage(bb, item, block_kernels[id(item)], graph,
                                                   env, number)
                    continue
                pos, op = item, graph.ops[item]
                out = graph.t(op.outputs[0])
                if op.kind == "reshape":
                    env[out.name] = bb.emit(relax.op.reshape(env[op.inputs[0]], out.shape),
                                            name_hint=_var_name(out.name))
                    continue
                kernel = kernels[pos]
                func = chosen[pos].with_attr(
                    "tvm_patch.inplace", int(bool(op.attrs.get("inplace")))).with_attr(
                    POSITION_ATTR, pos)
                name = f"L{pos:03d}_{op.kind}"  # source index may repeat (ONNX inserts ops)
                env[out.name] = _emit_call(bb, name, func, kernel,
                                           [env[n] for n in activation_inputs(op, graph)], out)
            outs = [env[n] for n in graph.outputs]
            result = bb.emit_output(outs[0] if len(outs) == 1 else relax.Tuple(outs))
        bb.emit_func_output(result)
    return bb.finalize()


def _emit_stage(bb, stage, kernel, graph, env, number):
    first = stage.ops[0]
    describe = {"kind": "patch_stage", "index": first.index, "source": "PATCH_STAGE", "attrs": {
        "grid": list(stage.grid), "halo": list(stage.block.halo), "split": stage.split,
        "tile": list(stage.tile), "input_tile_hw": list(stage.input_tile_hw),
        "layer_macs": stage.layer_macs, "paper_bytes": stage.paper_bytes,
        "ops": [f"{op.source or op.kind}@{op.index}" for op in stage.ops],
        "tile_buffers": kernel.tile_buffers}}
    func = kernel.func.with_attr("tvm_patch.op", json.dumps(describe))
    func = _block_choice(func, stage, kernel)
    name = "patch_stage" if number == 0 else f"patch_stage_{number}"  # blocks in order
    return _emit_call(bb, name, func, kernel, [env[stage.input]], graph.t(stage.output))


def _block_choice(func, stage, kernel):
    """The block's kernel (Block.kernel): the firmware's C kernels over its tiles
    (passes/c_block.py) when every operator has one, unless it asks for "tvm" (TVM's C of
    its loop nest); "c" for a block that cannot run in C is a ModelError."""
    b = stage.block
    if kernel.c_table is None and b.kernel == "c":
        raise ModelError(f"block {b.first}-{b.last}: not every operator has a C kernel for a "
                         f"tile (the schedule asks for kernel \"c\"); blocks run in C when "
                         f"they hold int8 convolutions, depthwise 3x3-7x7, ADDs and a leading "
                         f"QUANTIZE only")
    if kernel.c_table is None or b.kernel == "tvm":
        return func
    return func.with_attr(VARIANT_ATTR, json.dumps({"block": kernel.c_table}))


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


def carries_graph(mod) -> bool:
    """Whether `mod` was made by tvm_patch.load (its `main` carries the model graph)."""
    main = mod["main"] if "main" in [gv.name_hint for gv in mod.get_global_vars()] else None
    return main is not None and main.attrs is not None and GRAPH_ATTR in main.attrs


def graph_of(mod) -> Graph:
    """The graph a module was emitted from (modules from tvm_patch.load carry it)."""
    from ..graph import from_record
    if not carries_graph(mod):
        raise ModelError("this module was not made by tvm_patch.load: it carries no model "
                         "graph to plan the patch stage from")
    main = mod["main"]
    data = {k: v.numpy() for k, v in main.attrs[DATA_ATTR].items()}
    return from_record(str(main.attrs[GRAPH_ATTR]), data)


def _var_name(tensor_name: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in tensor_name)


def calls_of(mod) -> tuple:
    """(params as (name, shape, dtype), calls, output value names) of mod["main"]."""
    func = mod["main"]
    params = [(p.name, _shape(p.ty), str(p.ty.dtype)) for p in func.params]
    calls, tuples = [], {}  # tuples: the model's outputs as one value, by name
    for block in func.body.blocks:
        for binding in block.bindings:
            name, value, ty = binding.var.name, binding.value, binding.var.ty
            if isinstance(value, relax.Tuple):
                tuples[name] = [f.name for f in value.fields]
                continue
            if isinstance(value, tvm.ir.expr.Var):  # output alias emitted by the dataflow block
                if value.name in tuples:
                    tuples[name] = tuples[value.name]
                else:
                    calls.append(Call(name, None, None, [value.name], view=True))
                continue
            if isinstance(value, relax.TupleGetItem):  # (output, workspace) of a stage
                calls.append(Call(name, _shape(ty), str(ty.dtype), [value.tuple_value.name],
                                  view=True))
                continue
            if value.op.name == "relax.reshape":
                calls.append(Call(name, _shape(ty), str(ty.dtype), [value.args[0].name],
                                  view=True))
                continue
            if value.op.name != "relax.call_tir":
                raise ValueError(f"unexpected Relax operation {value.op.name} in main")
            gv, args = value.args[0], value.args[1].fields
            prim = mod[gv]
            attrs = prim.attrs or {}
            out_ty = ty.fields[0] if isinstance(ty, relax.TupleType) else ty
            calls.append(Call(
                name, _shape(out_ty), str(out_ty.dtype),
                [a.name for a in args if not isinstance(a, tvm.ir.expr.GenericConst)],
                [a.value.numpy() for a in args if isinstance(a, tvm.ir.expr.GenericConst)],
                gv.name_hint, int(attrs.get("tvm_patch.scratch_bytes", 0)),
                bool(int(attrs.get("tvm_patch.inplace", 0))),
                bool(int(attrs.get("tvm_patch.workspace", 0))),
                int(attrs.get("tvm_patch.macs", 0)),
                json.loads(str(attrs["tvm_patch.op"])) if "tvm_patch.op" in attrs
                else {"kind": gv.name_hint}))
    ret = func.body.body
    outputs = [f.name for f in ret.fields] if isinstance(ret, relax.Tuple) else \
        tuples.get(ret.name, [ret.name])
    return params, calls, outputs

def _shape(ty) -> tuple:
    return tuple(int(d) for d in ty.shape.values)
