"""Tuning records: JSON lines, one per measurement, and applying the best of them.

    {"format": "tvm_patch.records", "version": 1, "model": "3f1c...", "tool": "tvm_patch 0.1.0",
     "schedule": {...}, "instructions": 39474826, "arena_bytes": 96512,
     "arena_excl_io_bytes": 69632, "flash_bytes": 557336, "stack_bytes": 4096,
     "units": [{"unit": "op 0 c", "instructions": 2301234}, ...], "error": null, ...}

`schedule` is the point measured (schedule/schedule.py's JSON: blocks, grids, halos, every
kernel knob); `units` its steps (Unit keys below: a layer with its kernel, a block
with its grid, halo and kernel) with their instructions; a failed measurement keeps its
`error` and no instructions. `model` is the schedule's fingerprint of the graph: records for
another model are skipped with a note, never applied.

Applying records (apply history best, as TVM's tuners do): of the measured points that fit
the budget, the fastest; then each layer outside its blocks, and each block, takes the
kernel that measured fastest for it in any record (a step's cost does not depend on the
others: tune/space.py)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from ..graph import Graph, ModelError
from .schedule import Block, Schedule, fingerprint, parse

FORMAT, VERSION = "tvm_patch.records", 1
# tuned records shipped with tvm_patch: used by default for a model they were made for
DEFAULT_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "schedules")


@dataclass(frozen=True)
class Unit:
    """One step of the firmware: ("op", position, position) or ("block", first, last), with
    the block's grid and halo, and the kernel that runs it ("c" or "tvm")."""
    kind: str
    first: int
    last: int
    kernel: str
    grid: tuple = ()
    halo: tuple = ()

    @property
    def block(self) -> Block:
        return Block(self.first, self.last, self.grid, self.halo)

    @property
    def key(self) -> str:
        if self.kind == "op":
            return f"op {self.first} {self.kernel}"
        return (f"block {self.first}-{self.last} {self.grid[0]}x{self.grid[1]} "
                f"{'/'.join(self.halo)} {self.kernel}")


@dataclass
class Record:
    model: str
    schedule: Schedule
    instructions: int | None
    units: dict                 # unit key -> instructions
    arena_bytes: int | None
    arena_excl_io_bytes: int | None
    error: str | None
    raw: dict

    @property
    def ok(self) -> bool:
        return self.error is None and self.instructions is not None


def record_line(schedule: Schedule, result: dict, units: list, cost, extra: dict) -> str:
    """One measurement as its JSON line. `units`: the point's Units, in the firmware's order
    (result["layers"] follows the same order)."""
    from .. import __version__
    layers = result.get("layers") or []
    rec = {"format": FORMAT, "version": VERSION, "model": schedule.model,
           "tool": f"tvm_patch {__version__}", "schedule": schedule.to_dict(),
           "instructions": result.get("instructions"),
           "arena_bytes": cost.arena_bytes if cost else None,
           "arena_excl_io_bytes": cost.arena_excl_io_bytes if cost else None,
           "flash_bytes": result.get("flash_bytes"), "stack_bytes": result.get("stack_bytes"),
           "units": [{"unit": u.key, "instructions": layer["instructions"]}
                     for u, layer in zip(units, layers)] if len(layers) == len(units) else [],
           "error": result.get("error"), "exact": result.get("exact"),
           "seconds": result.get("seconds"), **extra}
    return json.dumps(rec)


def read_records(path: str, graph: Graph | None = None) -> tuple:
    """(records for `graph`'s model, notes). A file that cannot be read, a line that is not
    JSON or not a record is a ModelError naming the file and line; records for another model
    are left out with a note."""
    try:
        with open(path, "rb") as f:
            lines = f.read().decode("utf-8", errors="replace").splitlines()
    except OSError as e:
        raise ModelError(f"{path}: cannot read the records ({e.strerror})") from None
    fp = fingerprint(graph) if graph is not None else None
    records, foreign = [], {}
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path} line {n}"
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise ModelError(f"{where}: not JSON ({e.msg}); is it a tvm_patch records "
                             f"file?") from None
        if not isinstance(rec, dict) or rec.get("format") != FORMAT:
            raise ModelError(f"{where}: not a tvm_patch record (no \"format\": \"{FORMAT}\")")
        if rec.get("version") != VERSION:
            raise ModelError(f"{where}: records version {rec.get('version')!r}; this "
                             f"tvm_patch reads version {VERSION}")
        schedule = parse(json.dumps(rec.get("schedule")), f"{where}: its schedule")
        if fp is not None and rec.get("model") != fp:
            foreign[rec.get("model")] = foreign.get(rec.get("model"), 0) + 1
            continue
        try:
            units = {u["unit"]: int(u["instructions"]) for u in rec.get("units") or []}
            instructions = None if rec.get("instructions") is None else int(rec["instructions"])
        except (KeyError, TypeError, ValueError):
            raise ModelError(f"{where}: malformed \"units\" or \"instructions\"") from None
        records.append(Record(rec.get("model"), schedule, instructions, units,
                              rec.get("arena_bytes"), rec.get("arena_excl_io_bytes"),
                              rec.get("error"), rec))
    notes = [f"{path}: {count} record(s) for another model (fingerprint {model}) ignored"
             for model, count in foreign.items()]
    return records, notes


def best(records: list, cost_of, sram: int | None = None, objective: str = "arena",
         layer_by_layer: bool = False) -> Schedule | None:
    """The best schedule the records support: the fastest measured point whose `objective`
    bytes (from `cost_of(schedule)`, the planner's) fit `sram`, each of its steps then on the
    kernel measured fastest for it. `layer_by_layer`: only points without blocks. None when no
    record fits."""
    fitting = []
    for r in records:
        if not r.ok or (layer_by_layer and r.schedule.blocks):
            continue
        if sram is not None:
            cost = cost_of(r.schedule)
            size = None if cost is None else (
                cost.arena_bytes if objective == "arena" else cost.arena_excl_io_bytes)
            if size is None or size > sram:
                continue
        fitting.append(r)
    if not fitting:
        return None
    top = min(fitting, key=lambda r: r.instructions)
    measured = {}
    for r in records:
        for key, n in r.units.items():
            measured[key] = min(n, measured.get(key, n))

    def faster(key_of, current):
        options = {k: measured.get(key_of(k)) for k in ("c", "tvm")}
        if options.get(current) is None:
            return current
        alt = "tvm" if current == "c" else "c"
        return alt if options.get(alt) is not None and options[alt] < options[current] \
            else current

    kernels = {p: faster(lambda k, p=p: Unit("op", p, p, k).key, k)
               for p, k in top.schedule.kernels}
    blocks = tuple(Block(b.first, b.last, b.grid, b.halo, faster(
        lambda k, b=b: Unit("block", b.first, b.last, k, b.grid, b.halo).key, b.kernel))
        for b in top.schedule.blocks)
    return Schedule(blocks, top.schedule.model, top.schedule.io_type,
                    note=f"from tuning records ({top.instructions:,} instructions measured)",
                    kernels=tuple(kernels.items()))


def default_records(graph: Graph) -> list:
    """The shipped records files (schedules/*.jsonl) holding records for `graph`'s model."""
    if not os.path.isdir(DEFAULT_DIR):
        return []
    fp = fingerprint(graph)
    found = []
    for name in sorted(os.listdir(DEFAULT_DIR)):
        path = os.path.join(DEFAULT_DIR, name)
        if name.endswith(".jsonl"):
            with open(path) as f:
                head = f.readline()
            if f'"model": "{fp}"' in head:
                found.append(path)
    return found
