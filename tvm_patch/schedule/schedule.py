"""A schedule as plain data: which parts of the network run as fused, tiled blocks, and how.
This module is the only one that reads or writes a schedule's JSON; the pass, the CLI, the
search and (later) the tuner and the NAS all exchange `Schedule` objects.

    {"format": "tvm_patch.schedule", "version": 1, "model": "3f1c...", "io_type": null,
     "blocks": [{"first": 0, "last": 12, "grid": [4, 4], "halo": ["recompute", "cache"]}],
     "kernels": {"14": "c", "16": "tvm"}}

A block fuses the operators at graph positions first..last (inclusive, contiguous, in the
order of tvm_patch.read's graph) into one loop nest over a grid of output tiles (rows,
columns). Its halo policy per axis is "recompute" (each tile computes the rows it shares with
its neighbour again) or "cache" (the rows shared with the previous tile along that axis are
kept from it, not recomputed). Its output is handed on whole, except when its last operator
is a global reduction (MEAN over H and W): then the tiles accumulate into it and the map
before it never exists whole. No blocks means layer by layer. `model` fingerprints the graph
the schedule was made for, so one made for another model is refused. `kernels` (optional)
overrides, per convolution outside the blocks (by graph position), which code runs it on the
microcontroller: "c" our hand-written kernel (mcu/firmware/tvmp_nn.c), "tvm" TVM's generated
C; unnamed layers get kernels/variants.py's default choice. A block's own "kernel" does the
same for the whole block: "c" runs it by the hand-written kernels over its tiles
(passes/c_block.py), "tvm" runs TVM's C of its loop nest; without it, C wherever every
operator of the block has a C kernel. Kernels change no memory."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

from ..graph import Graph, ModelError

FORMAT, VERSION = "tvm_patch.schedule", 1
HALOS = ("recompute", "cache")
KERNELS = ("c", "tvm")
ATTR = "tvm_patch.schedule"   # where a patched module's `main` records its schedule


@dataclass(frozen=True)
class Block:
    first: int
    last: int
    grid: tuple                          # tiles along (H, W) of the block's tiled output
    halo: tuple = ("recompute", "recompute")
    kernel: str | None = None            # "c", "tvm", or None: the default (see the module doc)

    def __post_init__(self):
        object.__setattr__(self, "grid", tuple(int(g) for g in self.grid))
        object.__setattr__(self, "halo", tuple(self.halo))

    @property
    def cached(self) -> tuple:
        return tuple(h == "cache" for h in self.halo)


@dataclass(frozen=True)
class Schedule:
    blocks: tuple = ()
    model: str = ""                      # fingerprint(graph) of the model it was made for
    io_type: str | None = None           # None: the model's own; "int8": integer I/O
    note: str = field(default="", compare=False)
    kernels: tuple = ()                  # ((position, "c" | "tvm"), ...): kernel overrides

    def __post_init__(self):
        object.__setattr__(self, "blocks", tuple(sorted(self.blocks, key=lambda b: b.first)))
        object.__setattr__(self, "kernels", tuple(sorted(
            (int(p), str(k)) for p, k in dict(self.kernels).items())))

    @property
    def layer_by_layer(self) -> bool:
        return not self.blocks

    def to_dict(self) -> dict:
        return {"format": FORMAT, "version": VERSION, "model": self.model,
                "io_type": self.io_type,
                "blocks": [{"first": b.first, "last": b.last, "grid": list(b.grid),
                            "halo": list(b.halo), **({"kernel": b.kernel} if b.kernel else {})}
                           for b in self.blocks],
                "kernels": {str(p): k for p, k in self.kernels}}

    def dumps(self) -> str:
        return json.dumps(self.to_dict())

    def describe(self, graph: Graph | None = None) -> str:
        """One line for people: the blocks with their operators' source names."""
        kernels = "; kernels " + ", ".join(f"{p} {k}" for p, k in self.kernels) \
            if self.kernels else ""
        if not self.blocks:
            return "layer by layer" + kernels
        parts = []
        for b in self.blocks:
            span = f"ops {b.first}-{b.last}"
            if graph is not None:
                ops = graph.ops[b.first:b.last + 1]
                span += f" ({ops[0].source or ops[0].kind}@{ops[0].index} .. " \
                        f"{ops[-1].source or ops[-1].kind}@{ops[-1].index})"
            halo = "" if b.halo == ("recompute", "recompute") else \
                f", halo {'/'.join(b.halo)}"
            kernel = f", kernel {b.kernel}" if b.kernel else ""
            parts.append(f"{b.grid[0]}x{b.grid[1]} tiles over {span}{halo}{kernel}")
        return "; ".join(parts) + kernels


def fingerprint(graph: Graph) -> str:
    """The model's structure (operators, their activation shapes and dtypes), not its
    weights: a schedule stays valid for a retrained model of the same architecture."""
    rows = [[op.kind, [[list(graph.t(n).shape), graph.t(n).dtype] for n in op.inputs + op.outputs
                       if n and not graph.t(n).is_const]] for op in graph.ops]
    text = json.dumps([rows, graph.inputs, graph.outputs], default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def parse(text: str, where: str = "schedule") -> Schedule:
    """A schedule from its JSON text; a ModelError naming the problem otherwise."""
    try:
        rec = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelError(f"{where}: not JSON ({e})") from None
    if not isinstance(rec, dict) or rec.get("format") != FORMAT:
        raise ModelError(f"{where}: not a tvm_patch schedule (no \"format\": \"{FORMAT}\")")
    if rec.get("version") != VERSION:
        raise ModelError(f"{where}: schedule version {rec.get('version')!r}; this tvm_patch "
                         f"reads version {VERSION}")
    io_type = rec.get("io_type")
    if io_type not in (None, "float32", "int8"):
        raise ModelError(f"{where}: io_type {io_type!r}: expected null, \"float32\" or \"int8\"")
    blocks = rec.get("blocks")
    if not isinstance(blocks, list):
        raise ModelError(f"{where}: \"blocks\" must be a list")
    kernels = rec.get("kernels", {})
    if not (isinstance(kernels, dict) and all(
            isinstance(p, str) and p.isdigit() and k in KERNELS for p, k in kernels.items())):
        raise ModelError(f"{where}: \"kernels\" must map operator positions to one of "
                         f"{', '.join(KERNELS)}, e.g. {{\"14\": \"c\"}}")
    return Schedule(tuple(_block(b, k, where) for k, b in enumerate(blocks)),
                    str(rec.get("model", "")), io_type,
                    kernels=tuple((int(p), k) for p, k in kernels.items()))


def _block(rec, k: int, where: str) -> Block:
    bad = f"{where}: block {k}"
    if not isinstance(rec, dict):
        raise ModelError(f"{bad} must be an object")
    for key in ("first", "last", "grid"):
        if key not in rec:
            raise ModelError(f"{bad} has no \"{key}\"")
    first, last, grid = rec["first"], rec["last"], rec["grid"]
    halo = rec.get("halo", ["recompute", "recompute"])
    if not (_int(first) and _int(last) and 0 <= first <= last):
        raise ModelError(f"{bad}: first {first!r} and last {last!r} must be operator "
                         f"positions with first <= last")
    if not (isinstance(grid, list) and len(grid) == 2 and all(_int(g) and g >= 1 for g in grid)):
        raise ModelError(f"{bad}: grid {grid!r} must be two positive integers [rows, columns]")
    if not (isinstance(halo, list) and len(halo) == 2 and all(h in HALOS for h in halo)):
        raise ModelError(f"{bad}: halo {halo!r} must be two of {', '.join(HALOS)}")
    kernel = rec.get("kernel")
    if kernel is not None and kernel not in KERNELS:
        raise ModelError(f"{bad}: kernel {kernel!r} must be one of {', '.join(KERNELS)}")
    return Block(first, last, tuple(grid), tuple(halo), kernel)


def _int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def read_schedule(path: str) -> Schedule:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ModelError(f"{path}: cannot read the schedule ({e.strerror})") from None
    return parse(data.decode("utf-8", errors="replace"), path)


def check_model(schedule: Schedule, graph: Graph, where: str = "schedule",
                fp: str | None = None) -> None:
    """Refuses a schedule made for another model, or naming operators it does not have.
    `fp`: the graph's fingerprint, when already known."""
    if schedule.model and schedule.model != (fp := fp or fingerprint(graph)):
        raise ModelError(f"{where} was made for another model (fingerprint {schedule.model}, "
                         f"this model's is {fp})")
    for k, b in enumerate(schedule.blocks):
        if b.last >= len(graph.ops):
            raise ModelError(f"{where}: block {k} ends at operator position {b.last}; the "
                             f"model has {len(graph.ops)} operators")
    for a, b in zip(schedule.blocks, schedule.blocks[1:]):
        if b.first <= a.last:
            raise ModelError(f"{where}: blocks at {a.first}-{a.last} and {b.first}-{b.last} "
                             f"overlap")
    for pos, _ in schedule.kernels:
        op = graph.ops[pos] if pos < len(graph.ops) else None
        if op is None or op.kind not in ("conv2d", "depthwise_conv2d"):
            raise ModelError(f"{where}: kernels names operator position {pos}, which is not a "
                             f"convolution of this model")
        if any(b.first <= pos <= b.last for b in schedule.blocks):
            raise ModelError(f"{where}: kernels names operator position {pos} "
                             f"({op.source or op.kind}@{op.index}), which runs inside a fused "
                             f"block")


def schedule_of(mod) -> Schedule:
    """The schedule a module was built with (layer by layer when it records none)."""
    main = mod["main"]
    if main.attrs is None or ATTR not in main.attrs:
        return Schedule()
    return parse(str(main.attrs[ATTR]), "the module's schedule")
