"""The patch stage as plain data: which operators it fuses, the grid of output tiles, and
for every tensor of the stage the region one tile needs (tile plus halo). Everything here
is arithmetic on the graph, fast enough for a tuner or a NAS to call thousands of times; the
lowered loop nest (passes/fuse.py) is generated from these regions and is checked against
them (tile buffer bytes and MACs).

Coordinates, per spatial axis. The stage output is cut into `grid` tiles of `tile` rows
(ceil division; the last tile may be partial). Tile t of a stage tensor covers the rows
[t * tile * stride - lo, t * tile * stride - lo + extent): `stride` is how many of its rows
one output row advances, `lo` how far its region starts before the tile's own rows (the
halo above), `extent` the region's size. The region is the union of what every consumer
of the tensor in the stage reads, so it is exact for interior tiles; at image borders the
rows outside the image are padding, never computed."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .. import quant as Q
from ..graph import DTYPE_BYTES, Graph, ModelError, Op
from ..kernels.ops import macs as op_macs

CONVS = ("conv2d", "depthwise_conv2d")
ELEMENTWISE = ("quantize", "relu", "relu6")  # tile in, tile out, same region


@dataclass(frozen=True)
class Span:
    """One axis of a tensor's per-tile region (see the module docstring)."""
    stride: int
    lo: int
    extent: int

    def origin(self, tile_index: int, tile: int) -> int:
        return tile_index * tile * self.stride - self.lo

    def merge(self, other: "Span") -> "Span":
        if other.stride != self.stride:
            raise ModelError("a tensor read at two different strides inside the patch stage")
        lo = max(self.lo, other.lo)
        return Span(self.stride, lo, lo + max(self.extent - self.lo, other.extent - other.lo))


@dataclass
class Stage:
    ops: list               # the fused operators, in graph order
    input: str              # the one tensor the stage reads (full size)
    output: str             # the one tensor it writes (full size)
    grid: tuple             # tiles along (H, W)
    tile: tuple             # output rows/columns per tile
    regions: dict           # tensor name -> (Span for H, Span for W)
    buffers: dict           # tile buffer name (tile_buffer(k)) -> bytes
    macs: int               # multiply-accumulates of the loop nest, halos included
    layer_macs: int         # the same operators run layer by layer
    graph: Graph = field(repr=False, default=None)

    @property
    def patches(self) -> int:
        return self.grid[0]

    @property
    def split(self) -> int:
        return sum(op.kind in CONVS for op in self.ops)

    @property
    def input_tile_hw(self) -> tuple:
        """The input region of an interior tile (border tiles need less)."""
        h, w = self.regions[self.input]
        return h.extent, w.extent

    @property
    def paper_bytes(self) -> int:
        """MCUNetV2's rule on one tile: per operator its input and output tile regions
        (depthwise in place, shortcut not counted), peak over the stage, plus the full
        stage output that the tiles fill."""
        graph, peak = self.graph, 0
        for op in self.ops:
            ins = [_tile_bytes(graph, self.regions, n) for n in op.inputs
                   if n and not graph.t(n).is_const]
            out = _tile_bytes(graph, self.regions, op.outputs[0])
            if op.kind == "depthwise_conv2d":
                peak = max(peak, max(ins[0], out))
            else:
                peak = max(peak, max(ins) + out)
        return peak + graph.t(self.output).nbytes

    @property
    def workspace(self) -> int:
        """Bytes of the stage's workspace (its tile buffers, planned by lifetime)."""
        return plan_tiles(self, self.buffers)[1]

    @property
    def mac_overhead(self) -> float:
        return self.macs / self.layer_macs if self.layer_macs else 1.0

    def valid(self, name: str, axis: int, tile_index: int) -> tuple:
        """Rows [a, b) of tile `tile_index`'s region of `name` that lie inside the image,
        relative to the region's origin."""
        span, size = self.regions[name][axis], _spatial(self.graph.t(name))[axis]
        org = span.origin(tile_index, self.tile[axis])
        first = min(max(0, -org), span.extent)
        return first, max(first, min(span.extent, size - org))


def tile_buffer(k: int) -> str:
    """The name of the tile buffer holding the output of the stage's k-th operator."""
    return f"P{k}_tile"


def plan_tiles(stage: Stage, sizes: dict) -> tuple:
    """Offsets of the tile buffers in the stage's workspace, and its size: a tile buffer
    lives from the operator that writes it to the last one that reads it (within one tile);
    buffers whose lifetimes do not overlap share bytes."""
    from ..analysis.memory import Buffer, place
    bufs = []
    for k, op in enumerate(stage.ops):
        name = tile_buffer(k)
        if name in sizes:
            last = max(j for j, user in enumerate(stage.ops) if op.outputs[0] in user.inputs)
            bufs.append(Buffer(name, sizes[name], k, last, "scratch"))
    size = place(bufs)
    return {b.name: b.offset for b in bufs}, size


def stage_ops(graph: Graph, split: int) -> list:
    """The first `split` convolution layers from the model input, with the element-wise
    operators and the residual adds that belong to them."""
    if split < 1:
        raise ModelError(f"split={split}: the patch stage needs at least one convolution")
    ops, produced, convs = [], set(), 0
    for op in graph.ops:
        acts = [n for n in op.inputs if n and not graph.t(n).is_const]
        inside = bool(acts) and all(n in produced for n in acts)
        if convs == split:  # riders: ops that finish the last layer
            if op.kind in ELEMENTWISE + ("add",) and inside and ops[-1].outputs[0] in acts:
                ops.append(op)
                produced.add(op.outputs[0])
                continue
            break
        if op.kind not in CONVS + ELEMENTWISE + ("add",):
            raise ModelError(
                f"split={split}: operator {op.source or op.kind} at index {op.index} follows "
                f"{convs} convolution layer(s) and cannot join the patch stage (it holds "
                f"convolutions, adds and element-wise operators only)")
        if ops and not inside:
            raise ModelError(f"split={split}: operator {op.source or op.kind} at index "
                             f"{op.index} reads a tensor from outside the patch stage")
        if not ops and len(acts) != 1:
            raise ModelError("the patch stage must start from one input tensor")
        for n in acts + op.outputs:
            t = graph.t(n)
            if len(t.shape) != 4 or t.shape[0] != 1:
                raise ModelError(f"split={split}: tensor {n} {tuple(t.shape)} of operator "
                                 f"{op.source or op.kind} at index {op.index} is not a "
                                 f"single NHWC image; the patch stage tiles H and W")
        out_t = graph.t(op.outputs[0])
        if "activation" in op.attrs and out_t.quant is not None:
            lo, hi = Q.activation_range(op.attrs["activation"], out_t.quant.s, out_t.quant.zp,
                                        out_t.dtype)
            if lo >= hi:  # nothing is computed for it, so there is no loop nest to tile
                raise ModelError(f"split={split}: operator {op.source or op.kind} at index "
                                 f"{op.index} has a constant output (its activation range "
                                 f"is the single value {lo}) and cannot join the patch stage")
        ops.append(op)
        produced.update(op.outputs)
        convs += op.kind in CONVS
    if convs < split:
        raise ModelError(f"split={split}: the model has only {convs} convolution layer(s) "
                         f"that can form a patch stage")
    out = ops[-1].outputs[0]
    stage_ids = {id(op) for op in ops}
    for name, users in graph.consumers().items():
        if name in produced and name != out and any(id(u) not in stage_ids for u in users):
            raise ModelError(f"split={split} cuts a connection: tensor {name} is also read "
                             f"after the patch stage")
    for name in graph.outputs:  # the stage writes only its last tensor in full
        if name in produced and name != out:
            raise ModelError(f"split={split} cuts a connection: tensor {name} is a model "
                             f"output inside the patch stage")
    if out in graph.outputs and len(ops) == len(graph.ops):
        raise ModelError(f"split={split}: the patch stage would be the whole model")
    return ops


def _spatial(t) -> tuple:
    return int(t.shape[1]), int(t.shape[2])


def _needs(op: Op, graph: Graph, out: tuple) -> tuple:
    """The input region (per axis) that `op` reads to produce region `out`."""
    if op.kind not in CONVS:
        return out
    a = op.attrs
    _, kh, kw, _ = graph.t(op.inputs[1]).shape
    spans = []
    for ax, k in ((0, kh), (1, kw)):
        s, d, p = a["stride"][ax], a["dilation"][ax], a["padding"][ax]
        o = out[ax]
        spans.append(Span(o.stride * s, o.lo * s + p, (o.extent - 1) * s + (k - 1) * d + 1))
    return tuple(spans)


def plan_stage(graph: Graph, split: int, patches: int) -> Stage:
    ops = stage_ops(graph, split)
    first = [n for n in ops[0].inputs if n and not graph.t(n).is_const][0]
    out = ops[-1].outputs[0]
    size = _spatial(graph.t(out))
    if patches < 1:
        raise ModelError(f"patches={patches}: need at least 1 patch per side")
    tile = tuple(-(-s // patches) for s in size)
    for ax, (s, t) in enumerate(zip(size, tile)):
        if (patches - 1) * t >= s:
            raise ModelError(
                f"patches={patches}: the stage output is {size[0]}x{size[1]}; a grid of "
                f"{patches} tiles of {t} leaves the last one empty along {'HW'[ax]}")
    regions = {out: (Span(1, 0, tile[0]), Span(1, 0, tile[1]))}
    for op in reversed(ops):
        need = _needs(op, graph, regions[op.outputs[0]])
        for n in op.inputs:
            if n and not graph.t(n).is_const:
                regions[n] = tuple(r.merge(q) for r, q in zip(regions[n], need)) \
                    if n in regions else need
    buffers = {tile_buffer(k): _tile_bytes(graph, regions, op.outputs[0])
               for k, op in enumerate(ops)
               if op.kind in CONVS + ("add",) and op.outputs[0] != out}
    stage = Stage(ops, first, out, (patches, patches), tile, regions, buffers, 0,
                  sum(op_macs(op, graph) for op in ops), graph)
    stage.macs = sum(_stage_macs(stage, op, graph) for op in ops)
    return stage


def _tile_bytes(graph, regions, name) -> int:
    t = graph.t(name)
    h, w = regions[name]
    return h.extent * w.extent * int(t.shape[3]) * DTYPE_BYTES[t.dtype]


def _stage_macs(stage: Stage, op: Op, graph: Graph) -> int:
    """MACs of `op` over all tiles, computing only the region rows inside the image."""
    total = op_macs(op, graph)
    if not total:
        return 0
    out = graph.t(op.outputs[0])
    per_position = total // (out.shape[1] * out.shape[2])
    rows = [sum(b - a for a, b in (stage.valid(out.name, ax, t) for t in range(g)))
            for ax, g in enumerate(stage.grid)]
    return int(np.int64(rows[0]) * rows[1] * per_position)
