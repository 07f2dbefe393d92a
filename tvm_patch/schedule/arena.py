"""The static memory plan: every activation tensor (model input and output included) and
every kernel's scratch gets an offset in ONE arena, from tensor lifetimes. The arena size is
what the generated code allocates. The plan is computed from a list of calls, which the cost
model derives from (graph, schedule) and analysis/memory.py reads back from a built module:
both go through plan_calls, so the two agree by construction (and tests check it)."""

from __future__ import annotations

import functools
import random
from dataclasses import dataclass, field

import numpy as np

ALIGN = 16  # bytes; every buffer starts on this boundary (TFLite Micro uses 16 as well)
PLACE_TRIES = 128  # placement orders tried at most (see place)


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


def plan_calls(params: list, calls: list, outputs: list, exclude_io: bool = False,
               placed: bool = True) -> Plan:
    """The plan of `calls`; placed=False only sets lifetimes (no offsets, no arena size),
    for peak_live."""
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
    if not placed:
        return plan
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


def arena_sizes(params: list, calls: list, outputs: list) -> tuple:
    """(arena, arena_excl_io) of plan_calls with exclude_io False and True, with the full
    placement shared between the two (the same numbers, one placement fewer)."""
    plan = plan_calls(params, calls, outputs)
    io = [b for b in plan.buffers.values() if b.kind in ("input", "output")]
    rest = [b for b in plan.buffers.values() if b.kind not in ("input", "output")]
    footprint = max((b.offset + _align(b.nbytes) for b in rest), default=0)
    return plan.arena_bytes, min(place(rest), footprint) if io else plan.arena_bytes


def peak_live(plan: Plan, exclude: set = frozenset()) -> int:
    """The most aligned bytes live at any step, an in-place output sharing its input's
    bytes (a group of buffers at one offset counts its largest member live at that step):
    a lower bound of any placement's arena, which the placer usually reaches."""
    return max(live_bytes(plan, exclude), default=0)


def live_bytes(plan: Plan, exclude: set = frozenset()) -> list:
    """Per step, the aligned bytes live then (as peak_live counts them)."""
    n = max(len(plan.steps), 1)
    change, live = [0] * (n + 1), [0] * n
    for g in _anchor_groups([b for b in plan.buffers.values() if b.name not in exclude]):
        if len(g) == 1:
            b = g[0]
            lo, hi = max(b.start, 0), min(b.end, n - 1)
            if lo <= hi:
                change[lo] += _align(b.nbytes)
                change[hi + 1] -= _align(b.nbytes)
            continue
        for k in range(max(_start(g), 0), min(_end(g), n - 1) + 1):
            live[k] += max((_align(b.nbytes) for b in g if b.start <= k <= b.end), default=0)
    running = 0
    for k in range(n):
        running += change[k]
        live[k] += running
    return live


def largest_steps(plan: Plan, count: int = 8) -> str:
    """The per-layer memory breakdown of a plan: its `count` steps with the most live bytes
    (aligned; an in-place output sharing its input's bytes, as peak_live counts)."""
    live = live_bytes(plan)
    rows = [(live[k], f"  step {k:>3} {step.op.get('kind', step.func) or step.func:<18} "
                      f"output {step.output:<28} live {live[k]:>10,} B")
            for k, step in enumerate(plan.steps)]
    return "\n".join(r for _, r in sorted(rows, reverse=True)[:count])


def _bytes(shape, dtype) -> int:
    return int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize


def place(buffers: list, tries: int = PLACE_TRIES) -> int:
    """Offsets for buffers whose lifetimes overlap so that no two live buffers share bytes;
    returns the arena size. A buffer with an anchor starts where its anchor starts (an
    in-place kernel's output over its input) and may overlap it. Greedy first-fit placement
    in several orders (by size as TFLite Micro does, by lifetime, by start), then in seeded
    random orders, keeping the smallest arena; it stops early at the most bytes live at one
    step, which no placement can beat. Deterministic: the same buffers, the same offsets."""
    groups = _anchor_groups(buffers)
    if not groups:
        return 0
    conflicts, sizes = _conflicts(groups), [_size(g) for g in groups]
    bound = _live_bound(groups)
    starts, ends = [_start(g) for g in groups], [_end(g) for g in groups]
    areas = [sum((b.end - b.start + 1) * b.nbytes for b in g) for g in groups]
    orders = [sorted(range(len(groups)), key=key) for key in (
        lambda i: (-sizes[i], starts[i]),
        lambda i: (-areas[i], starts[i]),
        lambda i: (starts[i], -sizes[i]),
        lambda i: (starts[i] - ends[i], -sizes[i]),
    )]
    orders += _random_orders(len(groups), max(tries - len(orders), 0))
    best, best_offsets = None, None
    for order in orders:
        offsets, size = _greedy(sizes, order, conflicts, best)
        if offsets is not None:
            best, best_offsets = size, offsets
            if best <= bound:
                break
    for k, group in enumerate(groups):
        for b in group:
            b.offset = best_offsets[k]
    return best


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


def _members(groups: list) -> tuple:
    """Every group's members as arrays (start, end, aligned bytes), each group's members
    contiguous, and the index at which each group's members begin."""
    members = [b for g in groups for b in g]
    first = np.cumsum([0] + [len(g) for g in groups[:-1]])
    return (np.array([b.start for b in members]), np.array([b.end for b in members]),
            np.array([_align(b.nbytes) for b in members], dtype=np.int64), first)


def _conflicts(groups: list) -> list:
    """For each group, [(j, bytes)]: the groups j live at some same step as it, and how many
    bytes from its offset group j occupies then (its largest member live at such a step)."""
    start, end, size, first = _members(groups)
    overlap = (start[:, None] <= end[None, :]) & (start[None, :] <= end[:, None])
    touches = np.add.reduceat(overlap.astype(np.int32), first, axis=0) > 0  # group x member
    ext = np.maximum.reduceat(touches * size[None, :], first, axis=1)      # group x group
    np.fill_diagonal(ext, 0)
    rows, cols = np.nonzero(ext)
    out = [[] for _ in groups]
    for i, j, nbytes in zip(rows.tolist(), cols.tolist(), ext[rows, cols].tolist()):
        out[i].append((j, nbytes))
    return out


def _live_bound(groups: list) -> int:
    """The most aligned bytes live at one step (a group counts its live members' largest):
    no placement is smaller."""
    start, end, size, first = _members(groups)
    steps = np.arange(start.min(), end.max() + 1)
    live = (start[:, None] <= steps[None, :]) & (steps[None, :] <= end[:, None])
    return int(np.maximum.reduceat(live * size[:, None], first, axis=0).sum(axis=0).max())


@functools.lru_cache(maxsize=64)
def _random_orders(n: int, count: int) -> tuple:
    """`count` seeded random orders of n groups: the same for every plan of n groups, so
    computed once."""
    rng, orders = random.Random(n), []
    for _ in range(count):
        order = list(range(n))
        rng.shuffle(order)
        orders.append(order)
    return tuple(orders)


def _greedy(sizes: list, order: list, conflicts: list, beat: int | None = None) -> tuple:
    """First-fit offsets of the groups (of `sizes` bytes) placed in `order`, and the arena
    size; (None, None) as soon as the arena reaches `beat` (it cannot be smaller)."""
    offsets, top = [None] * len(sizes), 0
    for i in order:
        size = sizes[i]
        busy = [(offsets[j], ext) for j, ext in conflicts[i] if offsets[j] is not None]
        busy.sort()
        offset = 0
        for lo, ext in busy:
            if offset + size <= lo:
                break
            if lo + ext > offset:
                offset = lo + ext
        offsets[i] = offset
        if offset + size > top:
            top = offset + size
            if beat is not None and top >= beat:
                return None, None
    return offsets, top
