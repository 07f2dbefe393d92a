"""The memory / MAC front of fused-block schedules (schedule/search.py) beside msf-CNN's
published points, per model: search time, cost-query time, every front point with its
bytes under each rule, and, optionally, the built module's plan checked against the cost
model and the emulated Cortex-M7's instruction count.

    python benchmarks/front.py [--models DIR] [--only NAME] [--verify] [--emulate N]

Accounting rules (bytes): arena_excl_io = the arena plan without the model input and
output buffers (msf-CNN's TVM workspace rule); arena = the whole static arena with the
model's float input; arena int8 io = the same blocks on the model with io_type="int8"
(input QUANTIZE / output DEQUANTIZE removed). MAC factor = whole-network MACs / layer by
layer. A front point is Pareto-optimal in (arena_excl_io, MACs)."""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # benchmark the checkout this script belongs to

import tvm_patch  # noqa: E402
from tvm_patch import zoo  # noqa: E402
from tvm_patch.analysis.memory import plan_memory  # noqa: E402
from tvm_patch.frontend import read  # noqa: E402
from tvm_patch.graph import ModelError  # noqa: E402
from tvm_patch.passes import PatchBasedInference  # noqa: E402
from tvm_patch.schedule import Block, Schedule, Search, fingerprint  # noqa: E402
from tvm_patch.schedule.cost import CostModel  # noqa: E402

from patch import DEFAULT_MODELS, b, table  # noqa: E402

MODELS = {
    "mcunet-vww1 r80": ("tflite", "mcunet-vww1.tflite"),
    "mbv2-w0.35 r144": ("config", "mbv2-w0.35-r144_imagenet.json"),
    "mcunet-in3 r176": ("config", "mcunet-320kb-1mb_imagenet.json"),
}
# msf-CNN (NeurIPS 2025), arena_excl_io rule: (bytes, whole-network MAC factor)
MSF_CNN = {
    "mcunet-vww1 r80": [(45_283, 1.02), (26_240, 1.11), (20_568, 1.30), (17_904, 1.35),
                        (15_368, 1.96)],
    "mbv2-w0.35 r144": [(67_996, 1.10), (25_803, 1.25), (21_389, 1.30), (15_199, 1.38),
                        (8_560, 1.68)],
    "mcunet-in3 r176": [(217_891, 1.04), (156_864, 1.37), (94_224, 1.45), (63_456, 2.02),
                        (51_164, 2.69)],
}


def source(models_dir: str, label: str):
    kind, name = MODELS[label]
    if kind == "config":
        return zoo.build(os.path.join(models_dir, "configs", name))
    return os.path.join(models_dir, name)


def on_int8_io(schedule: Schedule, graph, int8) -> Schedule:
    """The same blocks on the int8-I/O graph (operators matched by source index)."""
    if int8 is graph:
        return schedule
    where = {(op.index, op.kind): k for k, op in enumerate(int8.ops)}
    blocks = []
    for blk in schedule.blocks:
        ops = graph.ops[blk.first:blk.last + 1]
        kept = [where[(op.index, op.kind)] for op in ops if (op.index, op.kind) in where]
        if kept:
            blocks.append(Block(kept[0], kept[-1], blk.grid, blk.halo))
    return Schedule(tuple(blocks), fingerprint(int8), "int8")


def describe(schedule: Schedule) -> str:
    if not schedule.blocks:
        return "layer by layer"
    cached = sum("cache" in blk.halo for blk in schedule.blocks)
    spans = " ".join(f"{blk.first}-{blk.last}:{blk.grid[0]}x{blk.grid[1]}"
                     f"{'c' if 'cache' in blk.halo else ''}" for blk in schedule.blocks)
    return f"{len(schedule.blocks)} blocks ({cached} cached) {spans}"


def instructions(mod, x) -> int:
    from tvm_patch import mcu
    with tempfile.TemporaryDirectory() as d:
        mcu.compile(mod, "qemu-m7", d)
        with mcu.Session(d) as session:
            session.run_model(x)
            return session.counters.instructions


def bench(label: str, src, args) -> list:
    graph = read(src)
    try:
        int8 = read(src, io_type="int8")
    except ModelError:  # its input and output are int8 already
        int8 = graph
    t = time.perf_counter()
    search = Search(graph)
    front = search.front("arena_excl_io")
    search_s = time.perf_counter() - t
    base = search.model.cost(Schedule((), fingerprint(graph)))
    model8 = CostModel(int8)
    query_ms = []
    for cost in front:  # cold: a fresh model, kernel scratch bytes known (once per model)
        cold = CostModel(graph, search.model.scratch)
        t = time.perf_counter()
        cold.cost(cost.schedule)
        query_ms.append(1000 * (time.perf_counter() - t))
    print(f"\n{label}: {len(graph.ops)} operators, {len(search.cuts)} cuts, "
          f"{search.edges_tried:,} candidate blocks; search {search_s:.1f} s "
          f"(2-core machine, kernel scratch lowering included); one cold cost query "
          f"{min(query_ms):.2f} ms min, {statistics.median(query_ms):.2f} ms median, "
          f"{max(query_ms):.2f} ms max (a loaded machine adds to all three)")

    emulate = set()
    if args.emulate and label == "mcunet-vww1 r80":
        step = max(1, len(front) // args.emulate)
        emulate = {id(c) for c in front[::step][:args.emulate]} | {id(base)}
    x = np.random.default_rng(0).uniform(-1, 1, graph.t(graph.inputs[0]).shape).astype(
        np.float32)
    layered = tvm_patch.load(src) if (args.verify or emulate) else None
    rows, problems = [], []
    for cost in [base] + front:
        int8_cost = model8.cost(on_int8_io(cost.schedule, graph, int8))
        row = [b(cost.arena_excl_io_bytes), b(cost.arena_bytes), b(int8_cost.arena_bytes),
               b(cost.macs), f"{cost.macs_overhead:.3f}"]
        built = None
        if args.verify or id(cost) in emulate:
            built = PatchBasedInference(cost.schedule)(layered) if cost.schedule.blocks \
                else layered
            got = (plan_memory(built).arena_bytes, plan_memory(built, True).arena_bytes)
            if got != (cost.arena_bytes, cost.arena_excl_io_bytes):
                problems.append(f"{label}: {describe(cost.schedule)}: built plan {got}, "
                                f"cost model {(cost.arena_bytes, cost.arena_excl_io_bytes)}")
        row.append(f"{instructions(built, x):,}" if id(cost) in emulate else "")
        rows.append(row + [describe(cost.schedule)])
    print(table(["arena_excl_io", "arena", "arena int8 io", "MACs", "MAC x",
                 "M7 instructions", "schedule (first-last op: grid, c = cached)"], rows,
                left=(6,)))
    verdicts = []
    for nbytes, factor in MSF_CNN[label]:
        ours = [c for c in front if c.macs_overhead <= factor] or [base]
        best = min(ours, key=lambda c: c.arena_excl_io_bytes)
        verdicts.append([label, f"{b(nbytes)} @ {factor:.2f}x",
                         f"{b(best.arena_excl_io_bytes)} @ {best.macs_overhead:.3f}x",
                         f"{best.arena_excl_io_bytes / nbytes:.2f}",
                         "at or below" if best.arena_excl_io_bytes <= nbytes else "ABOVE"])
    if args.verify:
        print("built modules' plans: " + ("all equal to the cost model" if not problems
                                          else "\n  " + "\n  ".join(problems)))
    return verdicts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=DEFAULT_MODELS, help="the shared models directory")
    parser.add_argument("--only", choices=list(MODELS), help="one model")
    parser.add_argument("--verify", action="store_true",
                        help="build every front point and compare its plan with the cost model")
    parser.add_argument("--emulate", type=int, default=0, metavar="N",
                        help="mcunet-vww1: instructions of N front points on the emulator")
    args = parser.parse_args()
    print(__doc__.split("\n\n", 2)[2].strip())
    start = time.perf_counter()
    verdicts = []
    for label in ([args.only] if args.only else MODELS):
        verdicts += bench(label, source(args.models, label), args)
    print("\nmsf-CNN's points beside ours (arena_excl_io; ours = the smallest front point "
          "with at most msf-CNN's MAC factor)")
    print(table(["model", "msf-CNN", "tvm_patch", "ours / msf-CNN", ""], verdicts,
                left=(0, 4)))
    print(f"\nTotal runtime {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
