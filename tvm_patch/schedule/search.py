"""Searching schedules: the memory / compute front of a network, and the one point `auto`
picks from it.

The network is a DAG over its single-tensor cuts (positions where exactly one tensor is live
between two operators; inside a residual block the shortcut is live too, so blocks begin and
end at residual boundaries or between plain layers). An edge from cut a to cut b runs the
operators between them either layer by layer or as one fused block, for each grid and halo
policy that block admits. Its cost is (peak live bytes of that segment's own plan, MACs). A
path's peak is the largest of its edges', its MACs their sum; a label-setting pass over the
cuts in order keeps, at every cut, the Pareto-minimal (peak, MACs) of all paths reaching it,
so the front is exact for these edge costs (msf-CNN's formulation, solved without the
k-shortest-path approximation). Peak live bytes are the arena a perfect placer would reach,
which the greedy one usually does; so every front point is then planned whole by the cost
model and the front is re-filtered on those exact numbers: what is reported is what the build
allocates."""

from __future__ import annotations

from dataclasses import dataclass

from ..graph import Graph, ModelError
from .arena import peak_live, plan_calls
from .cost import Cost, CostModel
from .regions import BLOCK_KINDS, CONVS, ELEMENTWISE, split_block
from .schedule import Block, Schedule, fingerprint

OBJECTIVES = ("arena", "arena_excl_io")
MAX_PATCHES = 8


def single_cuts(graph: Graph) -> dict:
    """{c: [tensor]} for the positions c (0..len(ops)) before which exactly one activation
    tensor is live, plus the start and the end (the model's inputs and outputs)."""
    last_use = {}
    for pos, op in enumerate(graph.ops):
        for n in op.inputs:
            if n and not graph.t(n).is_const:
                last_use[n] = pos
    end = len(graph.ops)
    made = [(n, -1) for n in graph.inputs] + [(n, pos) for pos, op in enumerate(graph.ops)
                                              for n in op.outputs]
    cuts = {}
    for c in range(1, end):
        live = [n for n, at in made
                if at < c and (n in graph.outputs or last_use.get(n, -1) >= c)]
        if len(live) == 1:
            cuts[c] = live
    return {0: list(graph.inputs), **cuts, end: list(graph.outputs)}


@dataclass
class _Edge:
    a: int
    b: int
    block: Block | None     # None: the operators run layer by layer
    peak: int
    macs: int


class Search:
    """The front of one graph. `halos` are the halo policies tried for blocks."""

    def __init__(self, graph: Graph, model: CostModel | None = None,
                 halos=(("recompute", "recompute"), ("cache", "recompute"))):
        self.graph, self.halos = graph, halos
        self.model = model or CostModel(graph)
        self.fp = fingerprint(graph)
        self.cuts = single_cuts(graph)
        self.edges_tried = 0

    def _segment(self, a: int, b: int, stages: list, objective: str) -> tuple:
        """(peak, macs) of ops a..b-1 with `stages`, planned on their own."""
        graph = self.graph
        sub = CostModel(Graph(graph.tensors, graph.ops[a:b], self.cuts[a], self.cuts[b],
                              graph.name),
                        {k: self.model.scratch_of(a + k) for k in range(b - a)})
        params, calls = sub.calls(stages)
        plan = plan_calls(params, calls, sub.graph.outputs, placed=False)
        macs = sum(c.macs for c in calls if not c.view)
        io = set(graph.inputs) | set(graph.outputs) if objective == "arena_excl_io" else set()
        return peak_live(plan, io), macs

    def blocks(self, a: int, b: int):
        """The blocks over ops a..b-1 worth trying: grids and halo policies."""
        graph = self.graph
        ops = graph.ops[a:b]
        if not any(op.kind in CONVS for op in ops):
            return
        out = graph.t(ops[-1].outputs[0] if ops[-1].kind != "mean" else ops[-1].inputs[0])
        if len(out.shape) != 4:
            return
        h, w = int(out.shape[1]), int(out.shape[2])
        # across a cached axis: a few tiles, or tiles a few pixels wide
        across = lambda n: {g for k in (1, 2, 3, 4, 6, 8) for g in (k, -(-n // k))}  # noqa
        for halo in self.halos:
            if halo[0] == "cache":  # one output row per tile: the fewest rows kept
                grids = {(h, g) for g in across(w)} | {(-(-h // 2), 1)}
            elif halo[1] == "cache":
                grids = {(g, w) for g in across(h)}
            else:  # down to one output pixel per tile
                grids = {(p, p) for p in (*range(2, MAX_PATCHES + 1), 10, 12, 16, 24)} | \
                    {(h, w), (-(-h // 2), -(-w // 2))}
            for grid in sorted(grids):
                if grid[0] <= h and grid[1] <= w and grid != (1, 1):
                    yield Block(a, b - 1, grid, halo)

    def edges(self, objective: str, max_factor: float | None):
        graph, cuts = self.graph, sorted(self.cuts)
        for i, a in enumerate(cuts[:-1]):
            peak, macs = self._segment(a, cuts[i + 1], [], objective)
            yield _Edge(a, cuts[i + 1], None, peak, macs)
            for b in cuts[i + 1:]:
                if any(op.kind not in BLOCK_KINDS for op in graph.ops[a:b - 1]):
                    break  # no block from `a` can hold these operators
                for block in self.blocks(a, b):
                    self.edges_tried += 1
                    try:
                        stage = self.model.block(block)
                    except ModelError:
                        continue
                    if max_factor is not None and stage.macs - stage.layer_macs > \
                            (max_factor - 1) * self.model.layer_macs:
                        continue
                    peak, macs = self._segment(a, b, [stage], objective)
                    yield _Edge(a, b, block, peak, macs)

    def front(self, objective: str = "arena", max_factor: float | None = None) -> list:
        """Pareto-optimal schedules (exact costs), fewest MACs first."""
        if objective not in OBJECTIVES:
            raise ModelError(f"objective={objective!r}: expected one of {', '.join(OBJECTIVES)}")
        by_end = {}
        for e in self.edges(objective, max_factor):
            by_end.setdefault(e.b, []).append(e)
        cuts = sorted(self.cuts)
        labels = {cuts[0]: [(0, 0, ())]}   # cut -> [(peak, macs, blocks)]
        for b in cuts[1:]:
            found = []
            for e in by_end.get(b, []):
                for peak, macs, blocks in labels.get(e.a, []):
                    found.append((max(peak, e.peak), macs + e.macs,
                                  blocks + ((e.block,) if e.block else ())))
            # a tie in bytes and MACs keeps the fewest blocks: the simpler schedule
            labels[b] = _pareto(found, key=lambda t: (t[0], t[1], len(t[2])))
        # layer by layer too: the edge peaks estimate, and an exact tie keeps it
        paths = [()] + [blocks for _, _, blocks in labels.get(cuts[-1], []) if blocks]
        exact = [self.model.cost(Schedule(blocks, self.fp)) for blocks in paths]
        first = "arena_bytes" if objective == "arena" else "arena_excl_io_bytes"
        front = _pareto(exact, key=lambda c: (getattr(c, first), c.macs,
                                             len(c.schedule.blocks)))
        return sorted(front, key=lambda c: c.macs)


def _pareto(items, key) -> list:
    """The items no other item beats on both first coordinates of key (smaller is better;
    among equal ones, the first in key order)."""
    best, kept = None, []
    for item in sorted(items, key=key):
        if best is None or key(item)[1] < best:
            kept.append(item)
            best = key(item)[1]
    return kept


def choose(graph: Graph, split="auto", patches="auto", sram=None, max_mac_overhead=1.2,
           scratch: dict | None = None, objective: str = "arena") -> Cost:
    """The schedule the pass builds. Fixed split and patches: MCUNetV2's one block (the
    smaller of quantizing inside it or first). Otherwise candidates are the search's front
    plus every one-block schedule (only those, for a fixed split or patches), and: with
    `sram`, the fewest MACs whose arena fits; without, the smallest `objective` bytes whose
    whole-network MAC factor is at most `max_mac_overhead`. Layer by layer is kept when
    nothing lowers it."""
    if objective not in OBJECTIVES:
        raise ModelError(f"objective={objective!r}: expected one of {', '.join(OBJECTIVES)}")
    model = CostModel(graph, scratch)
    fp, first = fingerprint(graph), ("arena_bytes" if objective == "arena"
                                     else "arena_excl_io_bytes")
    base = model.cost(Schedule((), fp))
    if split == "auto" and patches == "auto":  # the front, and MCUNetV2's one blocks
        cap = max_mac_overhead if sram is None else None  # prunes blocks above it
        candidates = [base] + Search(graph, model).front(objective, cap) + \
            _one_block(graph, model, split, patches, fp)[0]
    else:
        candidates, errors = _one_block(graph, model, split, patches, fp)
        if not candidates:
            raise errors[0]
        if split != "auto" and patches != "auto":
            return min(candidates, key=lambda c: (getattr(c, first), c.arena_bytes))
        candidates.append(base)
    if sram is not None:
        fitting = [c for c in candidates if c.arena_bytes <= sram]
        if not fitting:
            raise ModelError(model.too_big(min(candidates, key=lambda c: c.arena_bytes), sram))
        # ties in MACs go to fewer blocks: a cached block computes no more MACs than layer
        # by layer but spends instructions on its tiles
        return min(fitting, key=lambda c: (c.macs, len(c.schedule.blocks), c.arena_bytes))
    allowed = [c for c in candidates if c.macs_overhead <= max_mac_overhead]
    best = min(allowed, key=lambda c: (getattr(c, first), c.arena_bytes, c.macs))
    if best.schedule.layer_by_layer:
        best.schedule = Schedule((), fp, note=(
            f"patching does not lower {objective} ({getattr(base, first):,} B layer by layer) "
            f"within a MAC factor of {max_mac_overhead}: kept layer by layer"))
    return best


def _one_block(graph, model, split, patches, fp) -> tuple:
    costs, errors = [], []
    splits = [int(split)] if split != "auto" else range(1, _max_split(graph) + 1)
    grids = [int(patches)] if patches != "auto" else range(2, MAX_PATCHES + 1)
    for k in splits:
        for p in grids:
            for quantize_first in (False, True):
                try:
                    block = split_block(graph, k, p, quantize_first)
                    costs.append(model.cost(Schedule((block,), fp)))
                except ModelError as e:
                    if not quantize_first:
                        errors.append(e)
    return costs, errors


def _max_split(graph: Graph) -> int:
    count = 0
    for op in graph.ops:
        if op.kind in CONVS:
            count += 1
        elif op.kind not in ELEMENTWISE + ("add",):
            break
    return count
