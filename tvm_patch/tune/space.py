"""The tuner's space: every Schedule of one network (its fused blocks, their grids, halo
policies and kernels) times every layer's kernel knob, and the SRAM budget that bounds it.

A point's memory is exact and costs milliseconds (the cost model's arena plan, the planner
the build uses); its speed is what the tuner measures. A point's instructions are the sum of
its *units*, the steps the firmware runs one after another: an operator alone with its
kernel, or a block with its grid, halo and kernel. A unit computes the same whatever runs
before or after it, so one measured schedule teaches the cost of each of its units."""

from __future__ import annotations

import random

from ..graph import Graph, ModelError
from ..kernels.variants import c_kernel, default_knob
from ..schedule.cost import Cost, CostModel, units
from ..schedule.regions import BLOCK_KINDS, CONVS
from ..schedule.records import Unit
from ..schedule.schedule import Block, Schedule, fingerprint
from ..schedule.search import OBJECTIVES, Search

KNOBS = ("c", "tvm")
C_BLOCK_KINDS = CONVS + ("add", "quantize")  # passes/c_block.py's operators
MAX_BLOCK_OPS = 24  # longer blocks lower slowly and never won a front point


class Space:
    """The schedules of `graph` whose `objective` bytes ("arena" or "arena_excl_io") fit
    `sram` (None: any). `mod` is the layer-by-layer module, whose lowered kernels tell which
    layers a C kernel can run and their scratch memory."""

    def __init__(self, graph: Graph, mod, sram: int | None = None, objective: str = "arena"):
        if objective not in OBJECTIVES:
            raise ModelError(f"objective={objective!r}: expected one of {', '.join(OBJECTIVES)}")
        from ..passes import _kernels_of
        self.kernels = kernels = _kernels_of(mod)   # position -> its lowered Kernel
        self.graph, self.sram, self.objective = graph, sram, objective
        self.fp = fingerprint(graph)
        self.model = CostModel(graph, {p: k.scratch_bytes for p, k in kernels.items()})
        self.search = Search(graph, self.model)
        self.cuts = sorted(self.search.cuts)
        # per convolution: the knobs it admits, and the one the build takes by default
        self.knobs, self.default_knob = {}, {}
        for pos, op in enumerate(graph.ops):
            if op.kind in CONVS and pos in kernels:
                k = kernels[pos]
                n = len(k.func.params)
                can = c_kernel(op, graph, n, k.scratch_bytes, default=False) is not None
                self.knobs[pos] = KNOBS if can else ("tvm",)
                self.default_knob[pos] = default_knob(op, graph, k)
        self.segments = self._segments()
        self._costs, self._step_map = {}, None

    def _segments(self) -> dict:
        """{(a, b): [blocks]}: the blocks over operators a..b-1 between single-tensor cuts."""
        out = {}
        for i, a in enumerate(self.cuts[:-1]):
            for b in self.cuts[i + 1:]:
                ops = self.graph.ops[a:b]
                if any(op.kind not in BLOCK_KINDS for op in ops[:-1]) or len(ops) > MAX_BLOCK_OPS:
                    break
                blocks = list(self.search.blocks(a, b))
                if blocks:
                    out[(a, b)] = blocks
        return out

    # --- costs -------------------------------------------------------------------------
    def cost(self, schedule: Schedule) -> Cost | None:
        """The exact memory of a schedule, None when it cannot be built (a block that does not
        tile)."""
        key = schedule.blocks
        if key not in self._costs:
            try:
                self._costs[key] = self.model.cost(Schedule(schedule.blocks, self.fp))
            except ModelError:
                self._costs[key] = None
        return self._costs[key]

    def bytes_of(self, cost: Cost) -> int:
        return cost.arena_bytes if self.objective == "arena" else cost.arena_excl_io_bytes

    def fits(self, schedule: Schedule) -> bool:
        cost = self.cost(schedule)
        return cost is not None and (self.sram is None or self.bytes_of(cost) <= self.sram)

    def units(self, schedule: Schedule) -> list:
        """The schedule's steps as Units, in the order the firmware runs them (reshapes, which
        are views, run nothing)."""
        kernels = dict(schedule.kernels)
        out = []
        for kind, item in units(self.graph, self.cost(schedule).stages):
            if kind == "block":
                b = item.block
                out.append(Unit("block", b.first, b.last, b.kernel or self.block_default(b),
                                b.grid, b.halo))
            elif self.graph.ops[item].kind != "reshape":
                knob = kernels.get(item, self.default_knob.get(item, "tvm"))
                out.append(Unit("op", item, item, knob))
        return out

    def block_default(self, block: Block) -> str:
        """The kernel a block runs without a choice: C when its operators all have one."""
        return "c" if self.c_block_possible(block) else "tvm"

    def c_block_possible(self, block: Block) -> bool:
        ops = self.graph.ops[block.first:block.last + 1]
        return all(op.kind in C_BLOCK_KINDS for op in ops) and all(
            op.attrs.get("depth_multiplier", 1) == 1 and
            (op.kind != "depthwise_conv2d" or max(self.graph.t(op.inputs[1]).shape[1:3]) <= 7)
            for op in ops) and not any(op.kind == "quantize" for op in ops[1:])

    # --- points ------------------------------------------------------------------------
    def complete(self, schedule: Schedule) -> Schedule:
        """The schedule with every knob named: each block's kernel, each convolution's outside
        the blocks (the defaults where it names none), so that equal points compare equal."""
        inside = {p for b in schedule.blocks for p in range(b.first, b.last + 1)}
        given = dict(schedule.kernels)
        kernels = {p: given.get(p, self.default_knob[p]) for p in self.knobs if p not in inside}
        blocks = tuple(Block(b.first, b.last, b.grid, b.halo, b.kernel or self.block_default(b))
                       for b in schedule.blocks)
        return Schedule(blocks, self.fp, schedule.io_type, kernels=tuple(kernels.items()))

    def default(self) -> Schedule:
        """Layer by layer with the default kernels: what a build without a schedule runs."""
        return self.complete(Schedule((), self.fp))

    def searched(self) -> Schedule | None:
        """What the compiler itself builds under the budget: the point of the memory / MAC
        front (schedule/search.py) with the fewest MACs that fits, default kernels."""
        if self.sram is None:
            return None
        fitting = [c for c in self.search.front(self.objective)
                   if self.bytes_of(c) <= self.sram]
        if not fitting:
            return None
        point = self.complete(min(fitting, key=lambda c: (c.macs, len(c.schedule.blocks)))
                              .schedule)
        return point if self.fits(point) else None

    def sample(self, rng: random.Random, tries: int = 64) -> Schedule | None:
        """A random point that fits: a random path over the cuts through steps that each fit
        the budget on their own (each segment layer by layer or a random block over it),
        random kernels; None when `tries` draws all miss."""
        steps = self._steps()
        if self.cuts[0] not in steps:
            return None
        for _ in range(tries):
            blocks, at, end = [], self.cuts[0], self.cuts[-1]
            p_block = rng.choice((0.15, 0.35, 0.6))
            while at < end:
                whole = [s for s in steps[at] if s[1] is None]
                fused = [s for s in steps[at] if s[1] is not None]
                at, block = rng.choice(fused if fused and (not whole or rng.random() < p_block)
                                       else whole)
                if block is not None:
                    blocks.append(self._random_block(rng, block))
            point = self._with_random_kernels(Schedule(tuple(blocks), self.fp), rng)
            if self.fits(point):
                return point
        return None

    def _steps(self) -> dict:
        """{cut: [(next cut, block or None)]}: the ways on from each cut whose own peak of
        live bytes fits the budget and that lead on to the end (msf-CNN's DAG, pruned by
        the budget; the search's segment costs)."""
        if self._step_map is None:
            steps = {}
            for i, a in enumerate(self.cuts[:-1]):
                ways = [(self.cuts[i + 1], None)] + [
                    (b, block) for (a2, b), blocks in self.segments.items() if a2 == a
                    for block in blocks]
                for b, block in ways:
                    if self.sram is not None:
                        try:
                            stages = [self.model.block(block)] if block is not None else []
                        except ModelError:
                            continue
                        peak, _ = self.search._segment(a, b, stages, self.objective)
                        if peak > self.sram:
                            continue
                    steps.setdefault(a, []).append((b, block))
            on = {self.cuts[-1]}
            for a in reversed(self.cuts[:-1]):
                steps[a] = [(b, block) for b, block in steps.get(a, []) if b in on]
                if steps[a]:
                    on.add(a)
            self._step_map = {a: ways for a, ways in steps.items() if ways}
        return self._step_map

    def mutate(self, schedule: Schedule, rng: random.Random) -> Schedule | None:
        """A neighbour: one block's grid, halo or kernel changed, a block dropped, one added
        over a layer-by-layer segment, or one layer's kernel flipped. None when it does not
        fit."""
        blocks = list(schedule.blocks)
        move = rng.randrange(5)
        if move == 0 and blocks:        # another grid or halo for the same span
            k = rng.randrange(len(blocks))
            b = blocks[k]
            blocks[k] = self._random_block(rng, rng.choice(
                self.segments.get((b.first, b.last + 1), [b])), b.kernel)
        elif move == 1 and blocks:      # the other kernel for one block
            k = rng.randrange(len(blocks))
            b = blocks[k]
            kernel = "tvm" if b.kernel == "c" or not self.c_block_possible(b) else "c"
            blocks[k] = Block(b.first, b.last, b.grid, b.halo, kernel)
        elif move == 2 and blocks:
            blocks.pop(rng.randrange(len(blocks)))
        elif move == 3:                 # a block where the schedule runs layer by layer
            taken = {p for b in blocks for p in range(b.first, b.last + 1)}
            free = [s for s in self.segments if not any(p in taken for p in range(*s))]
            if not free:
                return None
            blocks.append(self._random_block(rng, rng.choice(self.segments[rng.choice(free)])))
        else:                           # one layer's kernel
            kernels = dict(schedule.kernels)
            flippable = [p for p in kernels if len(self.knobs[p]) > 1]
            if not flippable:
                return None
            p = rng.choice(flippable)
            kernels[p] = "tvm" if kernels[p] == "c" else "c"
            point = Schedule(tuple(blocks), self.fp, schedule.io_type,
                             kernels=tuple(kernels.items()))
            return point if self.fits(point) else None
        point = self.complete(Schedule(tuple(blocks), self.fp, schedule.io_type,
                                       kernels=schedule.kernels))
        return point if self.fits(point) else None

    def _random_block(self, rng: random.Random, block: Block, kernel: str | None = None):
        if kernel is None or (kernel == "c" and not self.c_block_possible(block)):
            kernel = rng.choice(KNOBS) if self.c_block_possible(block) else "tvm"
        return Block(block.first, block.last, block.grid, block.halo, kernel)

    def _with_random_kernels(self, schedule: Schedule, rng: random.Random) -> Schedule:
        point = self.complete(schedule)
        return Schedule(point.blocks, self.fp, point.io_type, kernels=tuple(
            (p, rng.choice(self.knobs[p])) for p, _ in point.kernels))


__all__ = ["KNOBS", "Space", "Unit"]
