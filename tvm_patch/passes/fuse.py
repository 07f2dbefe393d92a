"""The patch stage as one PrimFunc: a loop over output tiles, inside which every layer of the
stage computes its tile region (schedule/regions.py) into a buffer of exactly that size.

Each stage tensor becomes a "tile tensor" of shape (tiles, region H, region W, C) in the
region's local coordinates. In those coordinates every convolution is a VALID convolution
at a constant offset, so the operator computes of kernels/ops.py are reused unchanged on a
copy of the graph whose stage tensors have tile shapes. Region rows outside the image hold
the tensor's padding value (its zero point), written by a mask stage; consumers then read
their halo without bounds checks, and a predicate on each accumulator skips computing rows
outside the image, so border tiles do less work than interior ones. Every region has the
same size for every tile, so the buffers compact to constants: nothing stays full size but
the stage output."""

from __future__ import annotations

import dataclasses

import numpy as np
import tvm
import tvm_ffi
from tvm import s_tir, te, tirx

from ..graph import Graph, ModelError, Op
from .c_block import c_block
from ..kernels.lower import Kernel, allocations, buffer_bytes, compact, into_workspace
from ..kernels.ops import COMPUTES
from ..schedule.regions import (CONVS, POOLS, REDUCE_SUM, WINDOWED, Stage, plan_tiles,
                                tile_buffer)

OUT = "P_out"
SUM, MEAN = REDUCE_SUM, "mean"   # the blocks of kernels/nonlinear.py's MEAN


@dataclasses.dataclass
class StageKernel(Kernel):
    tile_buffers: dict = None   # tile buffer name -> bytes, as the lowered TIR allocates them
    offsets: dict = None        # tile buffer name -> byte offset in the workspace
    c_table: dict = None        # the block for the firmware's C kernels (passes/c_block.py)


def lower_stage(stage: Stage, graph: Graph) -> StageKernel:
    """The stage's PrimFunc: params (input, constants..., output, workspace). The tile
    buffers are views into the workspace at offsets planned from their lifetimes within one
    tile, so the workspace size is the stage's scratch memory, and the memory plan puts it
    in the arena like any kernel's scratch."""
    builder = _Builder(stage, graph)
    func = te.create_prim_func([builder.x, *[ph for ph, _ in builder.consts], builder.out])
    func = _schedule(func, stage)
    func = _start_early(func, stage)
    func = _predicate_accumulators(func, builder)
    func = _skip_cached_rows(func, builder)
    macs = count_macs(func, builder.accumulators)
    if macs != stage.macs:  # the loop nest must compute exactly the planned rows
        raise ModelError(f"patch stage: the loop nest computes {macs:,} MACs, the plan "
                         f"{stage.macs:,}")
    func = compact(func)
    tiles = {b.name: b for b in allocations(func.body)
             if b.name.endswith("_tile") or b.name == SUM}
    sizes = {name: buffer_bytes(b) for name, b in tiles.items()}
    if sizes != stage.buffers:  # the loop nest must allocate exactly the planned regions
        raise ModelError(f"patch stage: lowered tile buffers {sizes} differ from the "
                         f"planned regions {stage.buffers}")
    offsets, workspace = plan_tiles(stage, sizes)
    func = into_workspace(func, tiles, offsets, workspace)
    func = _shift_cached_rows(func, builder, tiles)
    table = c_block(stage, graph, [ph.name for ph, _ in builder.consts], offsets)
    return StageKernel(func, [arr for _, arr in builder.consts], macs, workspace, True,
                       sizes, offsets, table)


class _Builder:
    def __init__(self, stage: Stage, graph: Graph):
        self.stage, self.graph = stage, graph
        # tile tensors index every tile of the loop, warm-up tiles of a cached run included
        self.first = tuple(stage.first_tile if ax == stage.cached_axis else 0 for ax in (0, 1))
        self.cols = stage.grid[1] - self.first[1]
        tiles = (stage.grid[0] - self.first[0]) * self.cols
        tensors = dict(graph.tensors)
        for name, (h, w) in stage.regions.items():
            t = graph.t(name)
            tensors[name] = dataclasses.replace(t, shape=(tiles, h.extent, w.extent, t.shape[3]))
        self.tile_graph = Graph(tensors, [], [], [], graph.name)
        src = graph.t(stage.input)
        self.x = te.placeholder(src.shape, src.dtype, name="x")
        env = {stage.input: self._mask(stage.input, lambda n, gh, gw, c, r, q:
                                       self.x[0, gh, gw, c], "P_in_view")}
        self.consts, self.accumulators, self.tile_writers = [], {}, {}
        for k, op in enumerate(stage.tiled_ops):
            tile_op, xs = self._tile_op(op, k, env)
            if op.kind == "pad":  # in tile coordinates, a shifted view (regions.py checks)
                out = xs[0]
            else:
                out, consts = COMPUTES[op.kind](tile_op, self.tile_graph, xs)
                self.consts += consts
            name = op.outputs[0]
            if op.kind in CONVS:
                self.accumulators[f"L{k}_acc"] = name
            tag = tile_buffer(k) if tile_buffer(k) in stage.buffers else f"P{k}_view"
            if tag == tile_buffer(k):
                self.tile_writers[tag] = name
                if op.kind in WINDOWED:
                    self.tile_writers[f"L{k}_acc"] = name
            env[name] = self._mask(name, lambda n, gh, gw, c, r, q, out=out: out[n, r, q, c],
                                   tag)
        final, (th, tw), (fh, fw) = env[stage.tiled_output], stage.tile, self.first
        self.out = te.compute(graph.t(stage.tiled_output).shape, lambda n, h, w, c: final[
            (h // th - fh) * self.cols + w // tw - fw, h % th, w % tw, c], name=OUT)
        if stage.reduce is not None:  # the tiles accumulate into it: OUT is only a view
            self.out, consts = COMPUTES["mean"](stage.reduce, graph, [self.out])
            self.consts += consts

    def _tile_op(self, op: Op, k: int, env: dict):
        """`op` on tile tensors: convolutions read their input at a constant offset (given
        as negative padding), other operators read shifted views of their inputs."""
        stage, graph = self.stage, self.graph
        attrs = {key: v for key, v in op.attrs.items() if key != "inplace"}
        out = stage.regions[op.outputs[0]]
        acts = [n for n in op.inputs if n and not graph.t(n).is_const]
        if op.kind in WINDOWED:
            src = stage.regions[acts[0]]
            off = [src[ax].lo - (out[ax].lo * attrs["stride"][ax] + attrs["padding"][ax])
                   for ax in (0, 1)]
            attrs["padding"] = (-off[0], -off[1], 0, 0)
            if op.kind in POOLS:  # taps are tested against the image (kernels/ops.py pool)
                attrs["image_hw"] = tuple(graph.t(acts[0]).shape[1:3])
                attrs["origin"] = lambda n, name=acts[0]: self._global(name, n, 0, 0)
            xs = [env[acts[0]]]
        else:
            before = [op.attrs["pads"][ax + 1][0] if op.kind == "pad" else 0 for ax in (0, 1)]
            xs = [self._shifted(env[n], [stage.regions[n][ax].lo - out[ax].lo - before[ax]
                                         for ax in (0, 1)],
                                self.tile_graph.t(op.outputs[0]).shape, f"P{k}_in{j}")
                  for j, n in enumerate(acts)]
        return Op(op.kind, op.inputs, op.outputs, attrs, index=k, source=op.source), xs

    @staticmethod
    def _shifted(t, off, shape, name):
        if off == [0, 0] and tuple(t.shape) == tuple(shape):
            return t
        return te.compute(shape, lambda n, r, q, c: t[n, r + off[0], q + off[1], c], name=name)

    def inside(self, name: str, n, r, q):
        gh, gw = self._global(name, n, r, q)
        _, h, w, _ = self.graph.t(name).shape
        return tirx.all(gh >= 0, gh < h, gw >= 0, gw < w)

    def _global(self, name, n, r, q):
        (sh, sw), (th, tw) = self.stage.regions[name], self.stage.tile
        row, col = self.tile_of(n)
        return row * (th * sh.stride) - sh.lo + r, col * (tw * sw.stride) - sw.lo + q

    def tile_of(self, n):
        """(row, column) in the grid of tile n of the tile tensors."""
        return n // self.cols + self.first[0], n % self.cols + self.first[1]

    def _mask(self, name, value, tag):
        t = self.graph.t(name)
        pad = tirx.const(t.quant.zp if t.quant is not None and t.dtype != "float32" else 0,
                         t.dtype)
        shape = self.tile_graph.t(name).shape

        def f(n, r, q, c):
            gh, gw = self._global(name, n, r, q)
            return tirx.if_then_else(self.inside(name, n, r, q), value(n, gh, gw, c, r, q), pad)
        return te.compute(shape, f, name=tag)


def _schedule(func, stage: Stage):
    """Tile loops outermost; each tile buffer computed under them; accumulators and kept
    stages inside their consumer's innermost loop; everything element-wise inlined."""
    sch = s_tir.Schedule(tvm.IRModule({"main": func}))
    if stage.reduce is not None:  # tile loops over the reduction's H and W
        sch.compute_inline(sch.get_sblock(OUT))
        out = sch.get_sblock(SUM)
        *spatial, h, w = sch.get_loops(out)
    else:
        out = sch.get_sblock(OUT)
        n, h, w, c = sch.get_loops(out)
        spatial = None
    ho, hi = sch.split(h, [stage.grid[0], stage.tile[0]])
    wo, wi = sch.split(w, [stage.grid[1], stage.tile[1]])
    outer = (wo, ho) if stage.cached_axis == 0 else (ho, wo)  # a cached axis runs inside
    inner = (*spatial, hi, wi) if spatial is not None else (n, hi, wi, c)
    sch.reorder(*outer, *inner)
    wo = outer[1]
    for block in reversed(sch.get_child_blocks(sch.get_sblock("root"))):
        name = sch.get(block).name_hint
        if name in (OUT, SUM, MEAN):
            continue
        if name.endswith("_tile"):
            sch.compute_at(block, wo, preserve_unit_loops=True)
        elif name.endswith("_acc") or "_keep" in name:
            consumer = sch.get_consumers(block)[0]
            sch.compute_at(block, sch.get_loops(consumer)[-1], preserve_unit_loops=True)
        else:
            sch.compute_inline(block)
    return sch.mod["main"]


def _predicate_accumulators(func, builder: _Builder):
    """Adds "inside the image" to each convolution accumulator's block predicate: border
    tiles skip the rows of their region that are padding."""
    def visit(realize, mutator):
        name = realize.block.name_hint
        tensor = builder.accumulators.get(name)
        if tensor is None:
            return mutator.default_mutate(realize)
        n, r, q = realize.iter_values[:3]
        return s_tir.SBlockRealize(realize.iter_values, tirx.all(
            realize.predicate, builder.inside(tensor, n, r, q)), realize.block)
    return func.with_body(tvm_ffi.structural_mutate(func.body, [(s_tir.SBlockRealize, visit)]))


def _skip_cached_rows(func, builder):
    """With a cached axis, every tile after the first of a run computes only the region rows
    its predecessor did not: the blocks writing a tile buffer (and their accumulators) get
    "first tile, or a new row" in their predicate."""
    stage = builder.stage
    ax = stage.cached_axis
    if ax is None:
        return func
    writers = {name: tensor for name, tensor in builder.tile_writers.items()
               if stage.kept(tensor)}

    def visit(realize, mutator):
        tensor = writers.get(realize.block.name_hint)
        if tensor is None:
            return mutator.default_mutate(realize)
        n, r, q = realize.iter_values[:3]
        index, row = builder.tile_of(n)[ax], (r, q)[ax]
        fresh = tirx.Or(index == stage.first_tile, row >= stage.kept(tensor))
        return s_tir.SBlockRealize(realize.iter_values, tirx.all(realize.predicate, fresh),
                                   realize.block)
    return func.with_body(tvm_ffi.structural_mutate(func.body, [(s_tir.SBlockRealize, visit)]))


def _start_early(func, stage: Stage):
    """Along a cached axis, the run of tiles starts at stage.first_tile (<= 0): the tile
    loop is extended back to it and the output (or the reduction) is written only from
    tile 0 on."""
    ax = stage.cached_axis
    if ax is None or stage.first_tile == 0:
        return func

    def extend(loop, mutator):
        inner = loop.body
        if not isinstance(inner, tirx.For) or done:
            return mutator.default_mutate(loop)
        done.append(inner)
        first = stage.first_tile
        inner = tirx.For(inner.loop_var, first, inner.extent - first, inner.kind,
                         inner.body, inner.thread_binding, inner.annotations)
        return tirx.For(loop.loop_var, loop.min, loop.extent, loop.kind, inner,
                        loop.thread_binding, loop.annotations)

    def written_from_zero(realize, mutator):
        if realize.block.name_hint not in (OUT, SUM):
            return mutator.default_mutate(realize)
        values = realize.iter_values
        row = values[1 + ax] if realize.block.name_hint == OUT else values[len(values) - 2 + ax]
        return s_tir.SBlockRealize(values, tirx.all(realize.predicate, row >= 0),
                                   realize.block)
    done = []
    body = tvm_ffi.structural_mutate(func.body, [(tirx.For, extend)])
    body = tvm_ffi.structural_mutate(body, [(s_tir.SBlockRealize, written_from_zero)])
    return func.with_body(body)


def _shift_cached_rows(func, builder, tiles: dict):
    """At the start of every tile after the first of a run along the cached axis, each
    cached tile buffer moves the rows the new tile shares with the old one to its front
    (ascending, so a row is read before it is overwritten)."""
    stage = builder.stage
    ax = stage.cached_axis
    if ax is None:
        return func
    moves = []
    for k, op in enumerate(stage.tiled_ops):
        name = tile_buffer(k)
        keep = stage.kept(op.outputs[0]) if name in tiles else 0
        if not keep:
            continue
        buf = tiles[name]
        step = stage.tile[ax] * stage.regions[op.outputs[0]][ax].stride
        dims = [int(d) for d in buf.shape]
        lead = len(dims) - 3  # compacted shapes keep a unit tile dimension
        loops = [tirx.Var(f"{name}_i{d}", "int32") for d in range(len(dims))]
        src = list(loops)
        src[lead + ax] = loops[lead + ax] + step
        extents = list(dims)
        extents[lead + ax] = keep
        stmt = tirx.BufferStore(buf, tirx.BufferLoad(buf, src), loops)
        for var, extent in reversed(list(zip(loops, extents))):
            stmt = tirx.For(var, 0, extent, tirx.ForKind.SERIAL, stmt)
        moves.append(stmt)
    if not moves:
        return func
    inner = []

    def visit(loop, mutator):
        if inner or not isinstance(loop, tirx.For):
            return mutator.default_mutate(loop)
        outer_body = loop.body
        if not isinstance(outer_body, tirx.For):
            return mutator.default_mutate(loop)
        tile_loop = outer_body  # the second loop of the nest: the run along the cached axis
        inner.append(tile_loop)
        shift = tirx.IfThenElse(tile_loop.loop_var > tile_loop.min, tirx.SeqStmt(moves)
                                if len(moves) > 1 else moves[0], None)
        new_inner = tirx.For(tile_loop.loop_var, tile_loop.min, tile_loop.extent,
                             tile_loop.kind, tirx.SeqStmt([shift, tile_loop.body]),
                             tile_loop.thread_binding, tile_loop.annotations)
        return tirx.For(loop.loop_var, loop.min, loop.extent, loop.kind, new_inner,
                        loop.thread_binding, loop.annotations)
    body = tvm_ffi.structural_mutate(func.body, [(tirx.For, visit)])
    if not inner:
        raise ModelError("patch stage: no tile loop found for the halo cache")
    return func.with_body(body)


def count_macs(func, blocks) -> int:
    """Executions of the given (multiply-accumulate) blocks in the loop nest: for each block,
    the iterations of its enclosing loops where its predicate holds. Loops the predicate
    does not mention contribute their extent; the others are enumerated with numpy."""
    total = 0

    def visit(stmt, loops):
        nonlocal total
        if isinstance(stmt, tirx.For):
            visit(stmt.body, loops + [stmt])
        elif isinstance(stmt, tirx.SeqStmt):
            for s in stmt.seq:
                visit(s, loops)
        elif isinstance(stmt, s_tir.SBlockRealize):
            if stmt.block.name_hint in blocks:
                total += _executions(loops, stmt.predicate)
            visit(stmt.block.body, loops)
    visit(func.body, [])
    return total


def _executions(loops, predicate) -> int:
    used = set()
    tvm_ffi.structural_walk(predicate, [(tirx.Var, lambda v: used.add(v))], order="post")
    count, env, axes = 1, {}, []
    for loop in loops:
        lo, extent = int(loop.min), int(loop.extent)
        if loop.loop_var in used:
            env[loop.loop_var] = len(axes), np.arange(lo, lo + extent)
            axes.append(extent)
        else:
            count *= extent
    grid = {}
    for var, (axis, values) in env.items():
        shape = [1] * len(axes)
        shape[axis] = len(values)
        grid[var] = values.reshape(shape)
    mask = np.broadcast_to(_np_eval(predicate, grid), axes or [1])
    return count * int(np.count_nonzero(mask))


_BINARY = {
    "Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "FloorDiv": np.floor_divide,
    "FloorMod": np.mod, "Min": np.minimum, "Max": np.maximum, "LT": np.less,
    "LE": np.less_equal, "GT": np.greater, "GE": np.greater_equal, "EQ": np.equal,
    "NE": np.not_equal, "And": np.logical_and, "Or": np.logical_or,
}


def _np_eval(expr, env):
    """An integer/boolean TIR expression over numpy arrays bound to its variables."""
    kind = type(expr).__name__
    if kind in _BINARY:
        return _BINARY[kind](_np_eval(expr.a, env), _np_eval(expr.b, env))
    if kind == "Not":
        return np.logical_not(_np_eval(expr.a, env))
    if kind in ("IntImm", "Bool"):
        return np.int64(int(expr.value))
    if isinstance(expr, tirx.Var):
        return env[expr]
    if kind == "Cast":
        return _np_eval(expr.value, env)
    raise NotImplementedError(f"predicate term {kind}: {expr}")
