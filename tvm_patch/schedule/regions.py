"""A fused block planned as plain data: which operators it fuses, the grid of output tiles,
and for every tensor of the block the region one tile needs (tile plus halo). Everything here
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

import functools
from dataclasses import dataclass, field

import numpy as np

from .. import quant as Q
from ..graph import DTYPE_BYTES, Graph, ModelError, Op
from ..kernels.ops import macs as op_macs
from .schedule import Block

CONVS = ("conv2d", "depthwise_conv2d")
POOLS = ("avg_pool2d", "max_pool2d")
WINDOWED = CONVS + POOLS   # read a window of their input: a halo
ELEMENTWISE = ("quantize", "relu", "relu6")  # tile in, tile out, same region
BLOCK_KINDS = WINDOWED + ELEMENTWISE + ("add", "pad")
REDUCE_SUM = "mean_sum"   # the buffer a block ending in a global MEAN accumulates into


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
    output: str             # the one tensor it writes (full size, or the reduction's)
    grid: tuple             # tiles along (H, W)
    tile: tuple             # output rows/columns per tile (of the tiled output)
    regions: dict           # tensor name -> (Span for H, Span for W)
    buffers: dict           # tile buffer name (tile_buffer(k)) -> bytes
    macs: int               # multiply-accumulates of the loop nest, halos included
    layer_macs: int         # the same operators run layer by layer
    graph: Graph = field(repr=False, default=None)
    block: Block = None     # the schedule's block this plans
    reduce: Op = None       # a global MEAN the tiles accumulate into (the last operator)
    first_tile: int = 0     # along a cached axis, where the run starts (see _first_tile)

    @property
    def tiled_ops(self) -> list:
        return self.ops[:-1] if self.reduce is not None else self.ops

    @property
    def tiled_output(self) -> str:
        return self.tiled_ops[-1].outputs[0]

    @property
    def cached_axis(self):
        """The axis whose halo rows are kept between consecutive tiles, or None."""
        cached = self.block.cached if self.block is not None else (False, False)
        return cached.index(True) if any(cached) else None

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
        for op in self.tiled_ops:
            ins = [_tile_bytes(graph, self.regions, n) for n in op.inputs
                   if n and not graph.t(n).is_const]
            out = _tile_bytes(graph, self.regions, op.outputs[0])
            if op.kind == "depthwise_conv2d":
                peak = max(peak, max(ins[0], out))
            else:
                peak = max(peak, max(ins) + out)
        return peak + graph.t(self.output).nbytes

    @functools.cached_property
    def workspace(self) -> int:
        """Bytes of the stage's workspace (its tile buffers, planned by lifetime)."""
        return plan_tiles(self, self.buffers)[1]

    @property
    def mac_overhead(self) -> float:
        return self.macs / self.layer_macs if self.layer_macs else 1.0

    def kept(self, name: str) -> int:
        """Rows (along the cached axis) of `name`'s region that the next tile shares with
        this one: kept and shifted to the front instead of recomputed (0 without caching)."""
        ax = self.cached_axis
        if ax is None:
            return 0
        span = self.regions[name][ax]
        return max(0, span.extent - self.tile[ax] * span.stride)


def tile_buffer(k: int) -> str:
    """The name of the tile buffer holding the output of the stage's k-th operator."""
    return f"P{k}_tile"


def plan_tiles(stage: Stage, sizes: dict) -> tuple:
    """Offsets of the tile buffers in the stage's workspace, and its size. The loop nest
    computes the operators in some order of their dependencies, not necessarily the graph's
    (branches of a residual block in either order), so a tile buffer lives from the
    operator that writes it until every operator that need not run after all of its
    readers (or for the whole run if it keeps rows for the next tile); buffers whose
    lifetimes do not overlap share bytes."""
    from .arena import Buffer, place
    ops, everything = stage.ops, len(stage.ops)
    made = {op.outputs[0]: k for k, op in enumerate(ops)}
    after = [set() for _ in ops]  # after[j]: the operators j depends on, transitively
    for j, op in enumerate(ops):
        for n in op.inputs:
            if n in made:
                after[j] |= after[made[n]] | {made[n]}
    bufs = []
    for k, op in enumerate(ops):
        name = tile_buffer(k)
        if name in sizes:
            readers = {j for j, user in enumerate(ops) if op.outputs[0] in user.inputs}
            last = max(j for j in range(everything)
                       if j in readers or not readers <= after[j])
            if stage.kept(op.outputs[0]):  # it keeps rows for the next tile
                k, last = 0, everything
            bufs.append(Buffer(name, sizes[name], k, last, "scratch"))
    for name in set(sizes) - {b.name for b in bufs}:  # a reduction's sum: for every tile
        bufs.append(Buffer(name, sizes[name], 0, everything, "scratch"))
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


def split_block(graph: Graph, split: int, patches: int, quantize_first=False) -> Block:
    """MCUNetV2's one-block schedule: the first `split` convolution layers (stage_ops), on a
    `patches` x `patches` grid; with quantize_first a leading QUANTIZE stays outside."""
    lead = quantize_first and graph.ops and graph.ops[0].kind == "quantize" and \
        graph.ops[0].inputs[0] in graph.inputs
    if quantize_first and not lead:
        raise ModelError("quantize_first: the model does not start by quantizing its input")
    body = Graph(graph.tensors, graph.ops[1:], [graph.ops[0].outputs[0]], graph.outputs,
                 graph.name) if lead else graph
    ops = stage_ops(body, split)
    return Block(int(lead), int(lead) + len(ops) - 1, (patches, patches))


def block_ops(graph: Graph, block: Block, consumers: dict | None = None) -> list:
    """The operators of `block`, checked: kinds a tiled loop nest can hold, NHWC images, one
    input tensor from outside, one output tensor read outside. `consumers`: the graph's, if
    already at hand."""
    where = f"block {block.first}-{block.last}"
    if block.last >= len(graph.ops):
        raise ModelError(f"{where}: the model has {len(graph.ops)} operators")
    ops = graph.ops[block.first:block.last + 1]
    first_acts = _acts(graph, ops[0])
    if len(first_acts) != 1:
        raise ModelError(f"{where}: a block starts from one input tensor; operator "
                         f"{_name(ops[0])} reads {len(first_acts)}")
    entry, produced = first_acts[0], set()
    for k, op in enumerate(ops):
        last_reduce = k == len(ops) - 1 and k > 0 and is_global_mean(op, graph)
        if op.kind not in BLOCK_KINDS and not last_reduce:
            raise ModelError(f"{where}: operator {_name(op)} cannot join a fused block (it "
                             f"holds convolutions, depthwise, pools, pads, adds, element-wise "
                             f"operators, and may end with a global MEAN)")
        outside = [n for n in _acts(graph, op) if n not in produced and n != entry]
        if outside:
            raise ModelError(f"{where}: operator {_name(op)} reads tensor {outside[0]} from "
                             f"outside the block")
        for n in ([] if last_reduce else _acts(graph, op) + op.outputs):
            t = graph.t(n)
            if len(t.shape) != 4 or t.shape[0] != 1:
                raise ModelError(f"{where}: tensor {n} {tuple(t.shape)} of operator "
                                 f"{_name(op)} is not a single NHWC image")
        _check_tileable(graph, op, where)
        produced.update(op.outputs)
    out = ops[-1].outputs[0]
    ids, consumers = {id(op) for op in ops}, consumers or graph.consumers()
    for name in sorted(produced - {out}):
        if any(id(u) not in ids for u in consumers.get(name, [])):
            raise ModelError(f"{where} cuts a connection: tensor {name} is also read after "
                             f"the block")
    for name in graph.outputs:
        if name in produced and name != out:
            raise ModelError(f"{where} cuts a connection: tensor {name} is a model output "
                             f"inside the block")
    return ops


def is_global_mean(op: Op, graph: Graph) -> bool:
    """MEAN over H and W of an NHWC image: a block can end with it, accumulating per tile."""
    if op.kind != "mean":
        return False
    x = graph.t(op.inputs[0])
    return len(x.shape) == 4 and x.shape[0] == 1 and \
        sorted(int(a) % 4 for a in op.attrs["axes"]) == [1, 2] and x.dtype == "int8" and \
        not op.attrs.get("real_valued")


def _check_tileable(graph: Graph, op: Op, where: str) -> None:
    out_t = graph.t(op.outputs[0])
    if "activation" in op.attrs and out_t.quant is not None and out_t.dtype != "float32":
        lo, hi = Q.activation_range(op.attrs["activation"], out_t.quant.s, out_t.quant.zp,
                                    out_t.dtype)
        if lo >= hi:  # nothing is computed for it, so there is no loop nest to tile
            raise ModelError(f"{where}: operator {_name(op)} has a constant output (its "
                             f"activation range is the single value {lo})")
    if op.kind in POOLS and op.attrs.get("real_valued"):
        raise ModelError(f"{where}: operator {_name(op)} pools dequantized values (an ONNX "
                         f"model's rule) and runs layer by layer")
    if op.kind == "pad":
        x = graph.t(op.inputs[0])
        pads = op.attrs["pads"]
        if any(tuple(pads[d]) != (0, 0) for d in (0, 3)):
            raise ModelError(f"{where}: operator {_name(op)} pads channels or batch")
        if x.dtype != out_t.dtype or (x.quant is not None and (
                out_t.quant is None or x.quant.zp != out_t.quant.zp)):
            raise ModelError(f"{where}: operator {_name(op)} pads with a value other than "
                             f"its input's zero point")


def _acts(graph: Graph, op: Op) -> list:
    return [n for n in op.inputs if n and not graph.t(n).is_const]


def _name(op: Op) -> str:
    return f"{op.source or op.kind} at index {op.index}"


def _spatial(t) -> tuple:
    return int(t.shape[1]), int(t.shape[2])


def _needs(op: Op, graph: Graph, out: tuple) -> tuple:
    """The input region (per axis) that `op` reads to produce region `out`."""
    if op.kind == "pad":  # the same rows, shifted by the padding before them
        pads = op.attrs["pads"]
        return tuple(Span(o.stride, o.lo + pads[ax + 1][0], o.extent)
                     for ax, o in enumerate(out))
    if op.kind not in WINDOWED:
        return out
    a = op.attrs
    kh, kw = a["kernel"] if op.kind in POOLS else graph.t(op.inputs[1]).shape[1:3]
    spans = []
    for ax, k in ((0, kh), (1, kw)):
        s, d, p = a["stride"][ax], a.get("dilation", (1, 1))[ax], a["padding"][ax]
        o = out[ax]
        spans.append(Span(o.stride * s, o.lo * s + p, (o.extent - 1) * s + (k - 1) * d + 1))
    return tuple(spans)


def plan_stage(graph: Graph, split: int, patches: int) -> Stage:
    """MCUNetV2's stage: the first `split` convolution layers on a `patches` grid."""
    return plan_block(graph, split_block(graph, split, patches))


def plan_block(graph: Graph, block: Block, consumers: dict | None = None) -> Stage:
    ops = block_ops(graph, block, consumers)
    reduce = ops[-1] if is_global_mean(ops[-1], graph) else None
    tiled_ops = ops[:-1] if reduce is not None else ops
    first = _acts(graph, ops[0])[0]
    out = tiled_ops[-1].outputs[0]
    size = _spatial(graph.t(out))
    grid = block.grid
    if all(block.cached):
        raise ModelError(f"block {block.first}-{block.last}: halo caching on both axes is not "
                         f"supported; cache one axis (its tiles then run consecutively)")
    for ax, g in enumerate(grid):
        if block.cached[ax] and g < 2:
            raise ModelError(f"block {block.first}-{block.last}: halo caching along "
                             f"{'HW'[ax]} needs at least 2 tiles along it")
    tile = tuple(-(-s // g) for s, g in zip(size, grid))
    for ax, (s, g, t) in enumerate(zip(size, grid, tile)):
        if g < 1 or (g - 1) * t >= s:
            raise ModelError(
                f"patches={g}: the block output is {size[0]}x{size[1]}; a grid of {g} tiles "
                f"of {t} leaves the last one empty along {'HW'[ax]}")
    regions = {out: (Span(1, 0, tile[0]), Span(1, 0, tile[1]))}
    cached = block.cached.index(True) if any(block.cached) else None
    buffered = [op.outputs[0] for op in tiled_ops
                if op.kind in WINDOWED + ("add",) and op.outputs[0] != out]
    for op in reversed(tiled_ops):
        produced = regions[op.outputs[0]]
        if cached is not None and op.outputs[0] in buffered:
            # a tile buffer computes only its fresh rows along the cached axis (views of it
            # are read whole, so they need their producer's whole region)
            produced = tuple(_fresh(span, tile[ax]) if ax == cached else span
                             for ax, span in enumerate(produced))
        need = _needs(op, graph, produced)
        for n in _acts(graph, op):
            regions[n] = tuple(r.merge(q) for r, q in zip(regions[n], need)) \
                if n in regions else need
    buffers = {tile_buffer(k): _tile_bytes(graph, regions, op.outputs[0])
               for k, op in enumerate(tiled_ops) if op.outputs[0] in buffered}
    if reduce is not None:  # kernels/nonlinear.py's int32 sum per channel
        buffers[REDUCE_SUM] = int(graph.t(out).shape[3]) * 4
    stage = Stage(ops, first, ops[-1].outputs[0], grid, tile, regions, buffers, 0,
                  sum(op_macs(op, graph) for op in ops), graph, block, reduce)
    if cached is not None:
        stage.first_tile = _first_tile(stage, cached, buffered)
    stage.macs = sum(_stage_macs(stage, op, graph) for op in tiled_ops)
    return stage


def _fresh(span: Span, tile: int) -> Span:
    """The rows of a region a tile computes itself when rows are cached along the axis:
    the last tile * stride of them (the others were computed by earlier tiles)."""
    step = tile * span.stride
    if span.extent <= step:
        return span
    return Span(span.stride, span.lo - (span.extent - step), step)


def _first_tile(stage: Stage, ax: int, buffered: list) -> int:
    """The tile the run along a cached axis starts from (<= 0). Regions hold only the rows
    that consumers' fresh rows read, so the run starts early enough (warm-up tiles, whose
    output rows lie before the image) that at its first tile every kept row of every
    region is padding: nothing kept is ever missing."""
    first = 0
    for name in buffered:
        span = stage.regions[name][ax]
        step = stage.tile[ax] * span.stride
        kept = span.extent - step
        if kept > 0:  # t * step - lo + kept <= 0
            first = min(first, (span.lo - kept) // step)
    return first


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
    cached = stage.cached_axis
    rows = [_axis_rows(stage.regions[out.name][ax], stage.tile[ax], _spatial(out)[ax],
                       stage.first_tile if ax == cached else 0, g, ax == cached)
            for ax, g in enumerate(stage.grid)]
    return int(np.int64(rows[0]) * rows[1] * per_position)


@functools.lru_cache(maxsize=4096)
def _axis_rows(span: Span, tile: int, size: int, first: int, grid: int, once: bool) -> int:
    """Rows of one axis that tiles first..grid-1 compute: the rows of each tile's region
    that lie inside the image, summed, or, along a cached axis (`once`), each row once."""
    total, end = 0, None
    for t in range(first, grid):
        org = span.origin(t, tile)
        a = max(org, 0)                                # the region clipped to [0, size)
        b = max(a, min(org + span.extent, size))
        if once and end is not None:  # tiles advance along the axis: their regions in order
            a = max(a, end)
            end = max(end, b)
        elif once:
            end = b
        if b > a:
            total += b - a
    return total
