"""What a (graph, schedule) costs, computed without compiling: the module the pass would emit
as a list of steps (`units`, the one place that order is defined: the emitter walks the same
list), planned by the same arena planner the build uses. A query takes milliseconds once
the model's per-operator kernel scratch is known (lowered once per model and kept)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..graph import Graph, ModelError
from ..kernels.ops import macs as op_macs
from .arena import Call, Plan, arena_sizes, largest_steps, plan_calls
from .regions import Stage, plan_block
from .schedule import Schedule, check_model, fingerprint


@dataclass
class Cost:
    """The numbers of one schedule, all from its arena plan and its loop nests."""
    arena_bytes: int
    arena_excl_io_bytes: int
    macs: int
    layer_macs: int
    schedule: Schedule = field(repr=False, default=None)
    stages: list = field(repr=False, default_factory=list)

    @property
    def macs_overhead(self) -> float:
        return self.macs / self.layer_macs if self.layer_macs else 1.0

    def as_dict(self) -> dict:
        """The numbers, the schedule, and per block what it fuses and its tiles."""
        blocks = [{"ops": [f"{op.source or op.kind}@{op.index}" for op in st.ops],
                   "grid": list(st.grid), "halo": list(st.block.halo),
                   "input_tile_hw": list(st.input_tile_hw), "workspace_bytes": st.workspace,
                   "macs_overhead": round(st.mac_overhead, 6)} for st in self.stages]
        return {"arena_bytes": self.arena_bytes, "arena_excl_io_bytes": self.arena_excl_io_bytes,
                "macs": self.macs, "macs_overhead": round(self.macs_overhead, 6),
                "schedule": self.schedule.to_dict() if self.schedule is not None else None,
                "blocks": blocks, "note": self.schedule.note if self.schedule else ""}


def units(graph: Graph, stages: list) -> list:
    """The steps of the emitted `main`, in order: ("op", position) for an operator run alone
    (a reshape is a view), ("block", stage) where a fused block's last operator was."""
    at_end = {id(st.ops[-1]): st for st in stages}
    inside = {id(op) for st in stages for op in st.ops}
    out = []
    for pos, op in enumerate(graph.ops):
        if id(op) in at_end:
            out.append(("block", at_end[id(op)]))
        elif id(op) not in inside:
            out.append(("op", pos))
    return out


class CostModel:
    """Costs of schedules for one graph. `scratch` (kernel scratch bytes by operator
    position) may be given from already-lowered kernels; missing ones are lowered here."""

    def __init__(self, graph: Graph, scratch: dict | None = None):
        self.graph = graph
        self.scratch = dict(scratch or {})
        self._op_macs = [op_macs(op, graph) for op in graph.ops]
        self.layer_macs = sum(self._op_macs)
        self._blocks, self._consumers, self._fp = {}, None, None

    def scratch_of(self, pos: int) -> int:
        if pos not in self.scratch:
            from ..kernels.lower import lower_op
            self.scratch[pos] = lower_op(self.graph.ops[pos], self.graph).scratch_bytes
        return self.scratch[pos]

    @property
    def fingerprint(self) -> str:
        if self._fp is None:
            self._fp = fingerprint(self.graph)
        return self._fp

    def stages(self, schedule: Schedule) -> list:
        check_model(schedule, self.graph, fp=self.fingerprint)
        return [self.block(b) for b in schedule.blocks]

    def block(self, block):
        """A block's plan (regions, tile buffers, MACs), kept: a search asks for the same
        blocks in many schedules."""
        if block not in self._blocks:
            self._consumers = self._consumers or self.graph.consumers()
            self._blocks[block] = plan_block(self.graph, block, self._consumers)
        return self._blocks[block]

    def calls(self, stages: list) -> tuple:
        """(params, calls): the planner's view of the module the pass emits."""
        from ..kernels.lower import activation_inputs
        graph = self.graph
        params = [(n, tuple(graph.t(n).shape), graph.t(n).dtype) for n in graph.inputs]
        calls = []
        for kind, item in units(graph, stages):
            if kind == "block":
                out = graph.t(item.output)
                shape = tuple(int(d) for d in out.shape)
                calls.append(Call(out.name + "__stage", shape, out.dtype, [item.input],
                                  scratch_bytes=max(item.workspace, 1), workspace=True,
                                  macs=item.macs, func="patch_stage",
                                  op={"kind": "patch_stage"}))
                calls.append(Call(out.name, shape, out.dtype, [out.name + "__stage"],
                                  view=True))
                continue
            op = graph.ops[item]
            out = graph.t(op.outputs[0])
            shape = tuple(int(d) for d in out.shape)
            if op.kind == "reshape":
                calls.append(Call(out.name, shape, out.dtype, [op.inputs[0]], view=True))
                continue
            scratch = self.scratch_of(item)
            calls.append(Call(out.name, shape, out.dtype, activation_inputs(op, graph),
                              func=f"L{item:03d}_{op.kind}", scratch_bytes=scratch,
                              inplace=bool(op.attrs.get("inplace")), workspace=scratch > 0,
                              macs=self._op_macs[item],
                              op={"kind": op.kind, "index": op.index}))
        return params, calls

    def plan(self, schedule: Schedule, exclude_io: bool = False) -> Plan:
        params, calls = self.calls(self.stages(schedule))
        return plan_calls(params, calls, self.graph.outputs, exclude_io)

    def cost(self, schedule: Schedule, stages: list | None = None) -> Cost:
        stages = self.stages(schedule) if stages is None else stages
        params, calls = self.calls(stages)
        arena, excl = arena_sizes(params, calls, self.graph.outputs)
        macs = sum(c.macs for c in calls if not c.view)
        return Cost(arena, excl, macs, self.layer_macs, schedule, stages)

    def too_big(self, cost: Cost, sram: int) -> str:
        """The error for a model that cannot fit, with the per-layer breakdown."""
        params, calls = self.calls(cost.stages)
        worst = largest_steps(plan_calls(params, calls, self.graph.outputs))
        return (f"the model cannot fit in {sram:,} B: the smallest arena found is "
                f"{cost.arena_bytes:,} B ({cost.schedule.describe()}); the largest layers:\n"
                f"{worst}")


__all__ = ["Cost", "CostModel", "units", "ModelError"]
