"""Turns one operator's TE compute into a scheduled PrimFunc and measures the scratch
memory its lowered TIR really allocates."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import tvm
import tvm_ffi
from tvm import s_tir, te, tirx

from ..graph import Graph, ModelError, Op
from .ops import COMPUTES, macs


@dataclass
class Kernel:
    func: tirx.PrimFunc     # params: activation inputs, constants, output
    consts: list            # numpy arrays, in parameter order after the activations
    macs: int
    scratch_bytes: int      # bytes of the kernel's own buffers (its workspace)
    workspace: bool = False  # those buffers live in a workspace passed as the last parameter


def activation_inputs(op: Op, graph: Graph) -> list:
    return [n for n in op.inputs if n and not graph.t(n).is_const]


def lower_op(op: Op, graph: Graph) -> Kernel:
    compute = COMPUTES.get(op.kind)
    if compute is None:
        raise ModelError(f"no kernel for operator {op.source or op.kind} at index {op.index}")
    xs = [te.placeholder(graph.t(n).shape, graph.t(n).dtype, name=f"x{k}")
          for k, n in enumerate(activation_inputs(op, graph))]
    try:
        out, consts = compute(op, graph, xs)
    except ModelError:
        raise
    except (NotImplementedError, ValueError) as e:
        raise ModelError(f"operator {op.source or op.kind} at index {op.index}: {e}") from None
    func = te.create_prim_func([*xs, *[ph for ph, _ in consts], out])
    func = schedule_local(func)
    func = func.with_attr("tvm_patch.op", json.dumps(_describe(op, graph)))
    scratch = scratch_bytes(func)
    if scratch:
        func = _scratch_into_workspace(func)
    return Kernel(func, [arr for _, arr in consts], macs(op, graph), scratch, bool(scratch))


def _describe(op: Op, graph: Graph) -> dict:
    return {"kind": op.kind, "index": op.index, "source": op.source,
            "attrs": {k: v for k, v in op.attrs.items()}}


def schedule_local(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """Inline element-wise stages and compute each reduction inside the loops of its
    consumer, so intermediates shrink to the part one consumer iteration needs instead
    of a full-size buffer (an int32 accumulator would otherwise be 4x the output)."""
    sch = s_tir.Schedule(tvm.IRModule({"main": func}))
    root = sch.get_sblock("root")
    blocks = sch.get_child_blocks(root)
    output_blocks = sch.get_output_blocks(root)
    outputs = {sch.get(b).name_hint for b in output_blocks}
    planes = [b for b in blocks if sch.get(b).name_hint.endswith("_keep_plane")]
    if planes:  # in place: channel outermost, each channel's plane copied before its writes
        n, h, w, c = sch.get_loops(output_blocks[0])
        sch.reorder(n, c, h, w)
    for block in reversed(blocks):
        name = sch.get(block).name_hint
        if name in outputs:
            continue
        if name.endswith("_keep_plane"):
            try:
                sch.compute_at(block, sch.get_loops(output_blocks[0])[1],
                               preserve_unit_loops=True)
            except s_tir.ScheduleError:  # a constant output (a clamp to one value) reads none
                pass
            continue
        if "_keep" not in name:  # "_keep": its author keeps it separate (ops.add_mul, softmax)
            try:
                sch.compute_inline(block)
                continue
            except s_tir.ScheduleError:
                pass
        consumers = sch.get_consumers(block)
        if len(consumers) != 1:
            continue
        spatial = sum(1 for iv in sch.get(block).iter_vars if iv.iter_type == 0)
        loops = sch.get_loops(consumers[0])
        for depth in range(min(spatial, len(loops)), 0, -1):
            try:
                sch.compute_at(block, loops[depth - 1], preserve_unit_loops=True)
                break
            except s_tir.ScheduleError:
                continue
    return sch.mod["main"]


def scratch_bytes(func: tirx.PrimFunc) -> int:
    """Arena bytes the kernel needs for itself: every buffer of more than one element that
    its lowered, compacted TIR allocates. One-element buffers become C locals (registers
    or stack; the device measures the stack by painting), not arena space."""
    return sum(allocated_buffers(func).values())


def _scratch_into_workspace(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """The kernel with its scratch buffers packed into a workspace parameter (widest
    element type first, so each stays aligned), for the memory plan to place in the arena:
    on a microcontroller they would otherwise be stack arrays."""
    func = compact(func)
    scratch = sorted((b for b in allocations(func.body)
                      if int(np.prod([int(d) for d in b.shape])) > 1),
                     key=lambda b: -tvm.runtime.DataType(b.dtype).bits)
    offsets, size = {}, 0
    for b in scratch:
        offsets[b.name] = size
        size += buffer_bytes(b)
    return into_workspace(func, {b.name: b for b in scratch}, offsets, size)


def into_workspace(func, buffers: dict, offsets: dict, size: int) -> tirx.PrimFunc:
    """Moves `buffers` (name -> buffer allocated in func) out of their allocations into
    views of a new last parameter, an int8 workspace of `size` bytes, at `offsets`."""
    ws = tirx.decl_buffer((max(size, 1),), "int8", name="workspace")

    def drop(block, mutator):
        block = mutator.default_mutate(block)
        keep = [b for b in block.alloc_buffers if b.name not in buffers]
        if len(keep) == len(block.alloc_buffers):
            return block
        return s_tir.SBlock(block.iter_vars, block.reads, block.writes, block.name_hint,
                            block.body, block.init, keep, block.match_buffers,
                            block.annotations)
    body = tvm_ffi.structural_mutate(func.body, [(s_tir.SBlock, drop)])
    decls = [tirx.DeclBuffer(b, data=tirx.address_of(ws[offsets[name]]))
             for name, b in buffers.items()]
    body = tirx.SeqStmt([*decls, body]) if decls else body
    return tirx.PrimFunc([*func.params, ws], body, func.ret_type, func.attrs)


def allocated_buffers(func: tirx.PrimFunc) -> dict:
    """Buffer name -> bytes, for each buffer of more than one element in the compacted TIR."""
    if not allocations(func.body):
        return {}
    return {b.name: buffer_bytes(b) for b in allocations(compact(func).body)
            if int(np.prod([int(d) for d in b.shape])) > 1}


def compact(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """The function with each allocation moved to where it is used and shrunk to the
    region accessed there (TVM's own passes, as its lowering runs them)."""
    return tvm.transform.Sequential(compaction_passes())(tvm.IRModule({"main": func}))["main"]


def compaction_passes() -> list:
    """TVM's passes that move each allocation to where it is used and shrink it there."""
    return [s_tir.transform.LowerInitBlock(),
            s_tir.transform.PlanAndUpdateBufferAllocationLocation(),
            s_tir.transform.ConvertBlocksToOpaque(), s_tir.transform.CompactBufferAllocation()]


def allocations(body) -> list:
    bufs = []
    tvm_ffi.structural_walk(body, [(s_tir.SBlock, lambda b: bufs.extend(b.alloc_buffers))],
                            order="post")
    return bufs


def buffer_bytes(buf) -> int:
    return int(np.prod([int(d) for d in buf.shape])) * tvm.runtime.DataType(buf.dtype).bits // 8
