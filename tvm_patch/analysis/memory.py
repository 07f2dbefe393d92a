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
    workspace: bool = False   # scratch passed as the kernel's last parameter


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


@dataclass
class Call:
    """One binding of `main`, as the planner sees it: a kernel call (inputs are value names,
    constants are arrays) or a view (reshape / tuple item) of an earlier value."""
    name: str
    shape: tuple
    dtype: str
    inputs: list
    consts: list = field(default_factory=list)
    func: str = ""
    scratch_bytes: int = 0
    inplace: bool = False
    workspace: bool = False       # the kernel takes its scratch as its last parameter
    macs: int = 0
    op: dict = field(default_factory=dict)
    view: bool = False


def plan_memory(mod, exclude_io: bool = False) -> Plan:
    """The plan for mod["main"]; exclude_io leaves model inputs and outputs out of the
    arena (the rule TVM's workspace, msf-CNN and MCUNetV2's 172 kB figure use)."""
    params, calls, outputs = calls_of(mod)
    return plan_calls(params, calls, outputs, exclude_io)


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


def plan_calls(params: list, calls: list, outputs: list, exclude_io: bool = False) -> Plan:
    buffers, views, steps, constants = {}, {}, [], []
    for name, shape, dtype in params:
        buffers[name] = Buffer(name, _bytes(shape, dtype), 0, 0, "input")
        views[name] = (name, shape, dtype)

    def use(name, step):
        buf = buffers[views[name][0]]
        buf.end = max(buf.end, step)

    for call in calls:
        if call.view:
            src = views[call.inputs[0]]
            views[call.name] = src if call.shape is None else (src[0], call.shape, call.dtype)
            continue
        step = len(steps)
        for n in call.inputs:
            use(n, step)
        consts = list(range(len(constants), len(constants) + len(call.consts)))
        constants.extend(call.consts)
        buffers[call.name] = Buffer(call.name, _bytes(call.shape, call.dtype), step, step,
                                    "activation",
                                    anchor=views[call.inputs[0]][0] if call.inplace else "")
        views[call.name] = (call.name, call.shape, call.dtype)
        scratch = None
        if call.scratch_bytes:
            scratch = f"{call.name}__scratch"
            buffers[scratch] = Buffer(scratch, call.scratch_bytes, step, step, "scratch")
        steps.append(Step(call.func, list(call.inputs), consts, call.name, scratch,
                          call.macs, call.op, call.workspace))
    last = max(len(steps) - 1, 0)
    for o in outputs:
        buf = buffers[views[o][0]]
        buf.end = last
        if buf.kind != "input":
            buf.kind = "output"
    plan = Plan(buffers, steps, views, [p[0] for p in params], outputs, constants=constants)
    placed = [b for b in buffers.values() if not (exclude_io and b.kind in ("input", "output"))]
    plan.arena_bytes = place(placed)
    if exclude_io:  # the full plan without its io buffers is a valid plan too: keep the better
        own = {id(b): b.offset for b in placed}
        place(list(buffers.values()))
        footprint = max((b.offset + _align(b.nbytes) for b in placed), default=0)
        if footprint < plan.arena_bytes:
            plan.arena_bytes = footprint
        else:
            for b in placed:
                b.offset = own[id(b)]
    return plan


def largest_steps(plan: Plan, count: int = 8) -> str:
    """The per-layer memory breakdown of a plan: its `count` steps with the most live bytes."""
    rows = []
    for k, step in enumerate(plan.steps):
        live = sum(b.nbytes for b in plan.live_at(k))
        rows.append((live, f"  step {k:>3} {step.op.get('kind', step.func) or step.func:<18} "
                           f"output {step.output:<28} live {live:>10,} B"))
    return "\n".join(r for _, r in sorted(rows, reverse=True)[:count])


def _bytes(shape, dtype) -> int:
    return int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize


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
