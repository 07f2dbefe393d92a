"""tvm_patch's Relax passes.

    mod = tvm_patch.load("model.tflite")
    mod = PatchBasedInference(schedule)(mod)          # a Schedule (tvm_patch.schedule)
    mod = PatchBasedInference(split=5, patches=2)(mod)  # or a search: "auto", sram=, ...
    ex = relax.build(mod, "llvm", relax_pipeline=tvm_patch.pipeline())

The pass re-emits `main` from the graph the module carries, with each block of the schedule
fused into one patch-tiled loop nest (schedule/regions.py plans it, fuse.py lowers it).
Without a Schedule it searches one (schedule/search.py). The schedule is recorded in main's
"tvm_patch.schedule" attribute (schedule_of reads it back) and its cost in "tvm_patch.cost".
"""

from __future__ import annotations

import dataclasses
import json

import tvm
import tvm_ffi

from ..graph import ModelError
from ..kernels.lower import Kernel
from ..kernels.variants import default_knob
from ..schedule import Schedule, choose
from ..schedule.cost import CostModel
from ..schedule.records import best, default_records, read_records
from ..schedule.regions import plan_stage, stage_ops  # noqa: F401  (public helpers)
from ..schedule.search import OBJECTIVES
from .emit import POSITION_ATTR, calls_of, carries_graph, graph_of, to_relax

# a ModelError raised inside the pass reaches the caller as itself, not as a RuntimeError
tvm_ffi.register_error("ModelError", ModelError)

COST_ATTR = "tvm_patch.cost"
SHIPPED = "shipped"  # records=SHIPPED: tvm_patch's own records (schedules/) for this model


def PatchBasedInference(schedule: Schedule | None = None, split="auto",  # noqa: N802
                        patches="auto", sram: int | None = None,
                        max_mac_overhead: float = 1.2,
                        objective: str = "arena",
                        records: str | None = None) -> tvm.transform.Pass:
    """A module pass building `schedule`; or the best schedule of a tuning `records` file
    (tvm_patch.tune) whose `objective` bytes fit `sram`; or (without either) the schedule
    `choose` finds for the given split / patches / sram / max_mac_overhead / objective. When
    no record is for this model or none fits, the search runs instead, with a note."""
    if objective not in OBJECTIVES:
        raise ModelError(f"objective={objective!r}: expected one of {', '.join(OBJECTIVES)}")

    @tvm.transform.module_pass(opt_level=0, name="PatchBasedInference")
    def _pass(mod, _ctx):
        if records == SHIPPED and (not carries_graph(mod) or cost_of(mod) is not None):
            return mod  # not tvm_patch.load's, or already scheduled: kept as it is
        graph = graph_of(mod)
        kernels = _kernels_of(mod)
        scratch = {pos: k.scratch_bytes for pos, k in kernels.items()}
        chosen, note = schedule, ""
        if records == SHIPPED:
            chosen = _shipped(graph, kernels)
            if chosen is None:
                return mod
        elif records is not None:
            chosen, note = _from_records(records, graph, scratch, sram, objective)
        if chosen is not None:
            cost = CostModel(graph, scratch).cost(chosen)
        else:
            cost = choose(graph, split, patches, sram, max_mac_overhead, scratch, objective)
            if note:
                cost.schedule = dataclasses.replace(
                    cost.schedule, note=f"{note}; {cost.schedule.note or 'searched instead'}")
        out = to_relax(graph, cost.stages, kernels, cost.schedule)
        out["main"] = out["main"].with_attr(COST_ATTR, json.dumps(cost.as_dict()))
        return out
    return _pass


def _from_records(path: str, graph, scratch: dict, sram, objective) -> tuple:
    """(the records' best schedule or None, a note on what was left out)."""
    found, notes = read_records(path, graph)
    model = CostModel(graph, scratch)

    def cost_of(s):
        try:
            return model.cost(Schedule(s.blocks, s.model))
        except ModelError:
            return None
    chosen = best(found, cost_of, sram, objective)
    if chosen is None:
        notes.append(f"{path}: no record for this model" + (
            f" fits {sram:,} B" if found and sram is not None else ""))
    return chosen, "; ".join(notes)


def _shipped(graph, kernels: dict):
    """The fastest layer-by-layer point of the records shipped for this model (its kernel
    knobs; the same arena as the default build), or None when there is none or it runs
    the kernels the build takes anyway: the module stays as it is."""
    found = [r for path in default_records(graph) for r in read_records(path, graph)[0]]
    chosen = best(found, None, layer_by_layer=True) if found else None
    if chosen is None or all(knob == default_knob(graph.ops[pos], graph, kernels.get(pos))
                             for pos, knob in chosen.kernels):
        return None
    return chosen


def cost_of(mod) -> dict | None:
    """The cost record of a module the pass made (None for one it did not touch)."""
    attrs = mod["main"].attrs
    return json.loads(str(attrs[COST_ATTR])) if attrs is not None and COST_ATTR in attrs \
        else None


def _kernels_of(mod) -> dict:
    """The per-operator kernels already in a module, by graph position (their attribute)."""
    kernels = {}
    _, calls, _ = calls_of(mod)
    for call in calls:
        attrs = mod[call.func].attrs if call.func else None
        if attrs is not None and POSITION_ATTR in attrs:
            kernels[int(attrs[POSITION_ATTR])] = Kernel(mod[call.func], call.consts, call.macs,
                                                        call.scratch_bytes, call.workspace)
    return kernels


__all__ = ["PatchBasedInference", "choose", "cost_of", "plan_stage", "stage_ops"]
