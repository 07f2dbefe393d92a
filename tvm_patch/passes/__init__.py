"""tvm_patch's Relax passes.

    mod = tvm_patch.load("model.tflite")
    mod = PatchBasedInference(split=5, patches=2)(mod)        # or "auto", sram=..., ...
    ex = relax.build(mod, "llvm", relax_pipeline=tvm_patch.pipeline())

The pass re-emits `main` from the graph the module carries, with the first `split`
convolution layers fused into one patch-tiled loop nest (stage.py plans it, fuse.py lowers
it). With "auto" it enumerates (patches, split) like MCUNetV2 and keeps the best under the
memory plan; the choice and its numbers are recorded in main's "tvm_patch.stage" attribute.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import tvm
import tvm_ffi

from ..analysis.memory import Call, calls_of, largest_steps, plan_calls
from ..graph import Graph, ModelError
from ..kernels.lower import Kernel
from .stage import CONVS, ELEMENTWISE, Stage, plan_stage, stage_ops

MAX_PATCHES = 8

# a ModelError raised inside the pass reaches the caller as itself, not as a RuntimeError
tvm_ffi.register_error("ModelError", ModelError)


@dataclass
class Choice:
    """One schedule and what it costs; patches == 0 means layer by layer."""
    patches: int
    split: int
    arena_bytes: int
    arena_excl_io_bytes: int
    macs: int
    macs_overhead: float           # whole network, vs layer by layer
    stage_macs_overhead: float = 1.0
    input_tile_hw: tuple = ()
    note: str = ""
    quantize_first: bool = False   # a leading QUANTIZE runs as its own layer before the stage


OBJECTIVES = ("arena", "arena_excl_io")


def PatchBasedInference(split="auto", patches="auto", sram: int | None = None,  # noqa: N802
                        max_mac_overhead: float = 1.2,
                        objective: str = "arena") -> tvm.transform.Pass:
    """A module pass fusing the first `split` convolution layers into a `patches` x
    `patches` tiled loop nest; "auto" for either searches it (see `choose`)."""
    if objective not in OBJECTIVES:
        raise ModelError(f"objective={objective!r}: expected one of {', '.join(OBJECTIVES)}")

    @tvm.transform.module_pass(opt_level=0, name="PatchBasedInference")
    def _pass(mod, _ctx):
        from ..frontend.relax_emit import graph_of, to_relax
        graph = graph_of(mod)
        kernels = _kernels_of(mod)
        choice, stage = choose(graph, split, patches, sram, max_mac_overhead,
                               _scratch(kernels, graph), objective)
        out = to_relax(graph, stage, kernels)
        main = out["main"].with_attr("tvm_patch.stage", json.dumps(asdict(choice)))
        out["main"] = main
        return out
    return _pass


def choose(graph: Graph, split="auto", patches="auto", sram=None, max_mac_overhead=1.2,
           scratch: dict | None = None, objective: str = "arena") -> tuple:
    """(Choice, Stage or None). Fixed split and patches give that schedule. Otherwise every
    (patches, split) is planned (no compilation: stage.py's regions and the same memory
    planner the build uses) and the one kept is: with `sram`, the fewest MACs whose arena
    fits; without, the smallest arena whose whole-network MAC factor is at most
    `max_mac_overhead` (`objective` names the accounting rule: "arena", or "arena_excl_io"
    as TinyEngine and msf-CNN count). Layer by layer is kept when patching does not lower
    it. `sram` always bounds the full arena. A model starting with a QUANTIZE has each
    (patches, split) planned twice, quantizing tiles inside the stage or the whole input
    first (the float input then dies before the stage); the one `objective` prefers is kept."""
    scratch = scratch if scratch is not None else _scratch({}, graph)
    base = _evaluate(graph, None, scratch)
    first = "arena_bytes" if objective == "arena" else "arena_excl_io_bytes"
    fixed = split != "auto" and patches != "auto"
    candidates, errors = [] if fixed else [(base, None)], []
    for k in ([int(split)] if split != "auto" else range(1, _max_split(graph) + 1)):
        for p in ([int(patches)] if patches != "auto" else range(2, MAX_PATCHES + 1)):
            for stage_graph in stage_graphs(graph):
                try:
                    stage = plan_stage(stage_graph, k, p)
                except ModelError as e:
                    errors.append(e)
                    continue
                candidates.append((_evaluate(graph, stage, scratch, base), stage))
    if fixed:
        if not candidates:
            raise errors[0]
        return min(candidates, key=lambda c: (getattr(c[0], first), c[0].arena_bytes))
    if len(candidates) == 1 and "auto" in (split, patches) and (split, patches) != \
            ("auto", "auto") and errors:
        raise errors[0]  # the fixed half admits no schedule: say why
    if sram is not None:
        fitting = [c for c in candidates if c[0].arena_bytes <= sram]
        if not fitting:
            best = min(candidates, key=lambda c: c[0].arena_bytes)
            raise ModelError(_no_fit(graph, best, sram, scratch))
        return min(fitting, key=lambda c: (c[0].macs, c[0].arena_bytes))
    allowed = [c for c in candidates if c[0].macs_overhead <= max_mac_overhead]
    best = min(allowed, key=lambda c: (getattr(c[0], first), c[0].arena_bytes, c[0].macs))
    if best[1] is None:
        base.note = (f"patching does not lower {objective} ({getattr(base, first):,} B layer "
                     f"by layer) within a MAC factor of {max_mac_overhead}: kept layer by layer")
    return best


def stage_graphs(graph: Graph) -> list:
    """The graphs a stage is planned on: the model's own, and when it starts by quantizing an
    input, the same without that QUANTIZE, reading its output (it then runs on its own)."""
    lead = graph.ops[0] if graph.ops else None
    if lead is None or lead.kind != "quantize" or lead.inputs[0] not in graph.inputs:
        return [graph]
    inputs = [lead.outputs[0] if n == lead.inputs[0] else n for n in graph.inputs]
    return [graph, Graph(graph.tensors, graph.ops[1:], inputs, graph.outputs, graph.name)]


def _max_split(graph: Graph) -> int:
    count = 0
    for op in graph.ops:
        if op.kind in CONVS:
            count += 1
        elif op.kind not in ELEMENTWISE + ("add",):
            break
    return count


def _evaluate(graph: Graph, stage: Stage | None, scratch: dict, base: Choice | None = None):
    params, calls = _calls(graph, stage, scratch)
    arena = plan_calls(params, calls, graph.outputs).arena_bytes
    excl = plan_calls(params, calls, graph.outputs, exclude_io=True).arena_bytes
    macs = sum(c.macs for c in calls if not c.view)
    if stage is None:
        return Choice(0, 0, arena, excl, macs, 1.0)
    return Choice(stage.patches, stage.split, arena, excl, macs, macs / base.macs,
                  stage.mac_overhead, tuple(stage.input_tile_hw),
                  quantize_first=stage.input not in graph.inputs)


def _calls(graph: Graph, stage: Stage | None, scratch: dict) -> tuple:
    """The planner's view of the module to_relax would emit (same order, same sizes)."""
    from ..kernels.lower import activation_inputs
    from ..kernels.ops import macs as op_macs
    in_stage = {id(op) for op in stage.ops} if stage is not None else set()
    params = [(n, tuple(graph.t(n).shape), graph.t(n).dtype) for n in graph.inputs]
    calls = []
    for pos, op in enumerate(graph.ops):
        out = graph.t(op.outputs[0])
        shape, dtype = tuple(int(d) for d in out.shape), out.dtype
        if id(op) in in_stage:
            if op is stage.ops[-1]:
                calls.append(Call(out.name + "__stage", shape, dtype, [stage.input],
                                  scratch_bytes=max(stage.workspace, 1), workspace=True,
                                  macs=stage.macs, func="patch_stage",
                                  op={"kind": "patch_stage"}))
                calls.append(Call(out.name, shape, dtype, [out.name + "__stage"], view=True))
            continue
        if op.kind == "reshape":
            calls.append(Call(out.name, shape, dtype, [op.inputs[0]], view=True))
            continue
        calls.append(Call(out.name, shape, dtype, activation_inputs(op, graph),
                          func=f"L{pos:03d}_{op.kind}", scratch_bytes=scratch[pos],
                          inplace=bool(op.attrs.get("inplace")), workspace=scratch[pos] > 0,
                          macs=op_macs(op, graph),
                          op={"kind": op.kind, "index": op.index}))
    return params, calls


def _kernels_of(mod) -> dict:
    """The per-operator kernels already in a layer-by-layer module, by graph position."""
    kernels = {}
    _, calls, _ = calls_of(mod)
    for call in calls:
        if call.func.startswith("L") and call.func[1:4].isdigit():
            func = mod[call.func]
            kernels[int(call.func[1:4])] = Kernel(func, call.consts, call.macs,
                                                  call.scratch_bytes, call.workspace)
    return kernels


def _scratch(kernels: dict, graph: Graph) -> dict:
    """Kernel scratch bytes by graph position, lowering the operators not in `kernels`."""
    missing = [pos for pos, op in enumerate(graph.ops)
               if pos not in kernels and op.kind != "reshape"]
    if missing:  # e.g. a module already patched: its stage operators have no kernels yet
        from ..kernels.lower import lower_op
        for pos in missing:
            kernels[pos] = lower_op(graph.ops[pos], graph)
    return {pos: k.scratch_bytes for pos, k in kernels.items()}


def _no_fit(graph, best, sram, scratch) -> str:
    choice, stage = best
    params, calls = _calls(graph, stage, scratch)
    worst = largest_steps(plan_calls(params, calls, graph.outputs))
    sched = "layer by layer" if stage is None else \
        f"patches={choice.patches} split={choice.split}"
    return (f"the model cannot fit in {sram:,} B: the smallest arena found is "
            f"{choice.arena_bytes:,} B ({sched}); the largest layers:\n{worst}")


__all__ = ["PatchBasedInference", "choose", "Choice", "plan_stage", "stage_graphs", "stage_ops"]
