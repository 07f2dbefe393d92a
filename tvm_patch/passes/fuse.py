"""The patch stage as one PrimFunc: a loop over output tiles, inside which every layer of the
stage computes its tile region (passes/stage.py) into a buffer of exactly that size.

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
from ..kernels.lower import Kernel, allocations, buffer_bytes, compact, into_workspace
from ..kernels.ops import COMPUTES
from .stage import CONVS, Stage, plan_tiles, tile_buffer

OUT = "P_out"


@dataclasses.dataclass
class StageKernel(Kernel):
    tile_buffers: dict = None   # tile buffer name -> bytes, as the lowered TIR allocates them
    offsets: dict = None        # tile buffer name -> byte offset in the workspace


def lower_stage(stage: Stage, graph: Graph) -> StageKernel:
    """The stage's PrimFunc: params (input, constants..., output, workspace). The tile
    buffers are views into the workspace at offsets planned from their lifetimes within one
    tile, so the workspace size is the stage's scratch memory, and the memory plan puts it
    in the arena like any kernel's scratch."""
    builder = _Builder(stage, graph)
    func = te.create_prim_func([builder.x, *[ph for ph, _ in builder.consts], builder.out])
    func = _schedule(func, stage)
    func = _predicate_accumulators(func, builder)
    macs = count_macs(func, builder.accumulators)
    func = compact(func)
    tiles = {b.name: b for b in allocations(func.body) if b.name.endswith("_tile")}
    sizes = {name: buffer_bytes(b) for name, b in tiles.items()}
    if sizes != stage.buffers:  # the loop nest must allocate exactly the planned regions
        raise ModelError(f"patch stage: lowered tile buffers {sizes} differ from the "
                         f"planned regions {stage.buffers}")
    offsets, workspace = plan_tiles(stage, sizes)
    func = into_workspace(func, tiles, offsets, workspace)
    return StageKernel(func, [arr for _, arr in builder.consts], macs, workspace, True,
                       sizes, offsets)


class _Builder:
    def __init__(self, stage: Stage, graph: Graph):
        self.stage, self.graph = stage, graph
        tiles = stage.grid[0] * stage.grid[1]
        tensors = dict(graph.tensors)
        for name, (h, w) in stage.regions.items():
            t = graph.t(name)
            tensors[name] = dataclasses.replace(t, shape=(tiles, h.extent, w.extent, t.shape[3]))
        self.tile_graph = Graph(tensors, [], [], [], graph.name)
        src = graph.t(stage.input)
        self.x = te.placeholder(src.shape, src.dtype, name="x")
        env = {stage.input: self._mask(stage.input, lambda n, gh, gw, c, r, q:
                                       self.x[0, gh, gw, c], "P_in_view")}
        self.consts, self.accumulators = [], {}
        for k, op in enumerate(stage.ops):
            tile_op, xs = self._tile_op(op, k, env)
            out, consts = COMPUTES[op.kind](tile_op, self.tile_graph, xs)
            self.consts += consts
            name = op.outputs[0]
            if op.kind in CONVS:
                self.accumulators[f"L{k}_acc"] = name
            tag = tile_buffer(k) if tile_buffer(k) in stage.buffers else f"P{k}_view"
            env[name] = self._mask(name, lambda n, gh, gw, c, r, q, out=out: out[n, r, q, c],
                                   tag)
        final, (th, tw), pw = env[stage.output], stage.tile, stage.grid[1]
        self.out = te.compute(graph.t(stage.output).shape, lambda n, h, w, c: final[
            (h // th) * pw + w // tw, h % th, w % tw, c], name=OUT)

    def _tile_op(self, op: Op, k: int, env: dict):
        """`op` on tile tensors: convolutions read their input at a constant offset (given
        as negative padding), other operators read shifted views of their inputs."""
        stage, graph = self.stage, self.graph
        attrs = {key: v for key, v in op.attrs.items() if key != "inplace"}
        out = stage.regions[op.outputs[0]]
        acts = [n for n in op.inputs if n and not graph.t(n).is_const]
        if op.kind in CONVS:
            src = stage.regions[acts[0]]
            off = [src[ax].lo - (out[ax].lo * attrs["stride"][ax] + attrs["padding"][ax])
                   for ax in (0, 1)]
            attrs["padding"] = (-off[0], -off[1], 0, 0)
            xs = [env[acts[0]]]
        else:
            xs = [self._shifted(env[n], [stage.regions[n][ax].lo - out[ax].lo for ax in (0, 1)],
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
        (sh, sw), (th, tw), pw = self.stage.regions[name], self.stage.tile, self.stage.grid[1]
        return (n // pw) * (th * sh.stride) - sh.lo + r, (n % pw) * (tw * sw.stride) - sw.lo + q

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
    out = sch.get_sblock(OUT)
    n, h, w, c = sch.get_loops(out)
    ho, hi = sch.split(h, [stage.grid[0], stage.tile[0]])
    wo, wi = sch.split(w, [stage.grid[1], stage.tile[1]])
    sch.reorder(ho, wo, n, hi, wi, c)
    for block in reversed(sch.get_child_blocks(sch.get_sblock("root"))):
        name = sch.get(block).name_hint
        if name == OUT:
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
