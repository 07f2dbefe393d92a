"""Static memory plan over the Relax `main`: every activation tensor (model input and
output included) and every kernel's scratch gets an offset in ONE arena, from tensor
lifetimes. The arena size is what the generated code allocates; the analysis and the
runtimes read the same plan object."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
import tvm
from tvm import relax

ALIGN = 16  # bytes; every buffer starts on this boundary (TFLite Micro uses 16 as well)


@dataclass
class Buffer:
    name: str
    nbytes: int
    start: int            # first step at which it is live
    end: int              # last step at which it is live
    kind: str             # "input", "output", "activation" or "scratch"
    offset: int = -1
    anchor: str = ""      # a buffer this one starts at (an in-place kernel's input)

    def overlaps_in_time(self, other) -> bool:
        return self.start <= other.end and other.start <= self.end


@dataclass
class Step:
    """One kernel call: arguments are buffer names (activations) or constant indices."""
    func: str
    inputs: list
    consts: list
    output: str
    scratch: str | None
    macs: int
    op: dict


@dataclass
class Plan:
    buffers: dict                    # name -> Buffer
    steps: list
    views: dict                      # value name -> (buffer name, shape, dtype)
    inputs: list                     # value names, in parameter order
    outputs: list
    arena_bytes: int = 0
    constants: list = field(default_factory=list)

    def live_at(self, step: int) -> list:
        return [b for b in self.buffers.values() if b.start <= step <= b.end]


def _align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def _nbytes(ty) -> int:
    shape = [int(d) for d in ty.shape.values]
    return int(np.prod(shape, dtype=np.int64)) * np.dtype(str(ty.dtype)).itemsize


def plan_memory(mod, exclude_io: bool = False) -> Plan:
    """The plan for mod["main"]; exclude_io leaves model inputs and outputs out of the
    arena (the rule TVM's workspace, msf-CNN and MCUNetV2's 172 kB figure use)."""
    func = mod["main"]
    buffers, views, steps, constants = {}, {}, [], []
    params = [p.name for p in func.params]
    for p in func.params:
        buffers[p.name] = Buffer(p.name, _nbytes(p.ty), 0, 0, "input")
        views[p.name] = (p.name, _shape(p.ty), str(p.ty.dtype))

    def use(name, step):
        buf = buffers[views[name][0]]
        buf.end = max(buf.end, step)

    for block in func.body.blocks:
        for binding in block.bindings:
            name, value = binding.var.name, binding.value
            if isinstance(value, tvm.ir.expr.Var):  # output alias emitted by the dataflow block
                views[name] = views[value.name]
                continue
            if value.op.name == "relax.reshape":
                views[name] = (views[value.args[0].name][0], _shape(binding.var.ty),
                               str(binding.var.ty.dtype))
                continue
            if value.op.name != "relax.call_tir":
                raise ValueError(f"unexpected Relax operation {value.op.name} in main")
            step = len(steps)
            gv, args = value.args[0], value.args[1].fields
            prim = mod[gv]
            ins, consts = [], []
            for a in args:
                if isinstance(a, tvm.ir.expr.GenericConst):
                    consts.append(len(constants))
                    constants.append(a.value.numpy())
                else:
                    ins.append(a.name)
                    use(a.name, step)
            inplace = prim.attrs and int(prim.attrs.get("tvm_patch.inplace", 0))
            buffers[name] = Buffer(name, _nbytes(binding.var.ty), step, step, "activation",
                                   anchor=views[ins[0]][0] if inplace else "")
            views[name] = (name, _shape(binding.var.ty), str(binding.var.ty.dtype))
            scratch_bytes = int(prim.attrs.get("tvm_patch.scratch_bytes", 0)) \
                if prim.attrs else 0
            scratch = None
            if scratch_bytes:
                scratch = f"{name}__scratch"
                buffers[scratch] = Buffer(scratch, scratch_bytes, step, step, "scratch")
            op = json.loads(str(prim.attrs["tvm_patch.op"])) if prim.attrs and \
                "tvm_patch.op" in prim.attrs else {"kind": gv.name_hint}
            steps.append(Step(gv.name_hint, ins, consts, name, scratch,
                              int(prim.attrs.get("tvm_patch.macs", 0)) if prim.attrs else 0, op))
    ret = func.body.body
    outputs = [f.name for f in ret.fields] if isinstance(ret, relax.Tuple) else \
        [ret.name]
    last = max(len(steps) - 1, 0)
    for o in outputs:
        buf = buffers[views[o][0]]
        buf.end = last
        if buf.kind != "input":
            buf.kind = "output"
    plan = Plan(buffers, steps, views, params, outputs, constants=constants)
    placed = [b for b in buffers.values() if not (exclude_io and b.kind in ("input", "output"))]
    plan.arena_bytes = place(placed)
    return plan


def _shape(ty) -> tuple:
    return tuple(int(d) for d in ty.shape.values)


def place(buffers: list) -> int:
    """Offsets for buffers whose lifetimes overlap so that no two live buffers share bytes;
    returns the arena size. A buffer with an anchor starts where its anchor starts (an
    in-place kernel's output over its input) and may overlap it. Greedy placement in
    several orders (by size as TFLite Micro does, by lifetime, by start), keeping the
    smallest arena."""
    groups = _anchor_groups(buffers)
    orders = [
        lambda g: (-_size(g), _start(g)),
        lambda g: (-sum((b.end - b.start + 1) * b.nbytes for b in g), _start(g)),
        lambda g: (_start(g), -_size(g)),
        lambda g: (-(_end(g) - _start(g)), -_size(g)),
    ]
    best, best_offsets = None, None
    for key in orders:
        offsets = _greedy(sorted(groups, key=key))
        size = max((offsets[id(b)] + _align(b.nbytes) for b in buffers), default=0)
        if best is None or size < best:
            best, best_offsets = size, offsets
    for b in buffers:
        b.offset = best_offsets[id(b)]
    return best or 0


def _size(group):
    return max(_align(b.nbytes) for b in group)


def _start(group):
    return min(b.start for b in group)


def _end(group):
    return max(b.end for b in group)


def _anchor_groups(buffers: list) -> list:
    by_name = {b.name: b for b in buffers}
    root = {}

    def find(b):
        while b.anchor and b.anchor in by_name:
            b = by_name[b.anchor]
        return b.name
    for b in buffers:
        root.setdefault(find(b), []).append(b)
    return list(root.values())


def _greedy(groups: list) -> dict:
    offsets, placed = {}, []
    for group in groups:
        busy = sorted((offsets[id(p)], offsets[id(p)] + _align(p.nbytes)) for p in placed
                      if any(p.overlaps_in_time(m) for m in group))
        offset, size = 0, _size(group)
        for lo, hi in busy:
            if offset + size <= lo:
                break
            offset = max(offset, hi)
        for m in group:
            offsets[id(m)] = offset
        placed.extend(group)
    return offsets
