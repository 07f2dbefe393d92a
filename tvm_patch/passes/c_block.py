"""A fused block (schedule/regions.py's Stage) on the microcontroller by the hand-written
kernels: the block as a table that mcu/firmware/tvmp_block.c walks (tvmp_block_run), in place
of the TVM-generated C of its loop nest (passes/fuse.py). The table is data from the Stage:
per operator its kernel, its output region per tile, its tile buffer's offset in the
workspace as the lowered loop nest has it, and its quantization. The host (LLVM) always runs
the loop nest, so every firmware run checks the table against it.

A block runs this way when every operator has a C kernel for a rectangle of its output:
int8 convolutions (dilation 1), depthwise convolutions with 3x3, 5x5 or 7x7 windows
(depth multiplier 1), int8 ADDs, and a leading QUANTIZE of a float input read only by
convolutions (their windows quantize as they are gathered). Other blocks (pools, pads,
element-wise operators, a global MEAN) keep the loop nest."""

from __future__ import annotations

import numpy as np

from ..graph import Graph, Op
from ..quant import activation_range
from ..schedule.regions import Stage, tile_buffer
from ..kernels.ops import add_rescale
from ..kernels.variants import COL_MAX, _requantization

CONV, CONV_F32, DEPTHWISE, ADD = range(4)  # tvmp_block.h's TVMP_BLOCK_*
ADD_LEFT_SHIFT = 20  # TFLite's int8 ADD (kernels/ops.py add_rescale), tvmp_add_s8's shift


def c_block(stage: Stage, graph: Graph, const_names: list, offsets: dict) -> dict | None:
    """The table of `stage` for tvmp_block_run, or None when an operator has no C kernel.
    `const_names`: the loop nest's constant parameters in order (its parameters are the
    input, these, the output, the workspace); `offsets`: tile buffer -> workspace offset."""
    if stage.reduce is not None:
        return None
    src = graph.t(stage.input)
    where = {stage.input: -1}  # tensor -> table index of the op writing it (-1: the input)
    quantized = None           # a leading QUANTIZE's output, read as the float input
    ops = []
    for k, op in enumerate(stage.tiled_ops):
        out = op.outputs[0]
        if k == 0 and op.kind == "quantize" and _float_to_int8(op, graph):
            quantized = out
            where[out] = -1
            continue
        buffered = tile_buffer(k) in stage.buffers
        if not buffered and out != stage.tiled_output:
            return None  # a view (element-wise, pad): computed inside its consumer
        entry = _entry(op, graph, quantized, where, [1 + const_names.index(f"L{k}_{n}")
                                                     for n in ("w", "bias", "mult", "shift")]
                       if op.kind in ("conv2d", "depthwise_conv2d") else None)
        if entry is None:
            return None
        h, w = stage.regions[out]
        t = graph.t(out)
        entry.update(h=int(t.shape[1]), w=int(t.shape[2]), c=int(t.shape[3]),
                     region=[[s.stride, s.lo, s.extent] for s in (h, w)],
                     offset=int(offsets[tile_buffer(k)]) if buffered else -1,
                     kept=stage.kept(out) if buffered else 0)
        where[out] = len(ops)
        ops.append(entry)
    n_consts = len(const_names)
    return {"ops": ops, "grid": list(stage.grid), "tile": list(stage.tile),
            "cached": -1 if stage.cached_axis is None else stage.cached_axis,
            "first_tile": stage.first_tile, "input_shape": [int(d) for d in src.shape[1:]],
            "input": 0, "output": 1 + n_consts, "workspace": 2 + n_consts}


def _float_to_int8(op: Op, graph: Graph) -> bool:
    x, y = graph.t(op.inputs[0]), graph.t(op.outputs[0])
    return x.dtype == "float32" and y.dtype == "int8" and y.quant is not None


def _entry(op: Op, graph: Graph, quantized, where: dict, params) -> dict | None:
    acts = [n for n in op.inputs if n and not graph.t(n).is_const]
    if any(n not in where for n in acts) or (quantized in acts and op.kind != "conv2d"):
        return None
    y = graph.t(op.outputs[0])
    if y.dtype != "int8" or y.quant is None:
        return None
    lo, hi = activation_range(op.attrs.get("activation", "none"), y.quant.s, y.quant.zp,
                              y.dtype)
    entry = {"src": [where[n] for n in acts] + [0] * (2 - len(acts)), "wide": 0,
             "window": [0] * 6, "params": [0] * 4, "in_offset": 0, "out_offset": int(y.quant.zp),
             "lo": int(lo), "hi": int(hi), "fast": 0, "scale": 1.0, "add": [0] * 8}
    if op.kind == "add":
        return _add(op, graph, entry)
    if op.kind not in ("conv2d", "depthwise_conv2d") or \
            tuple(op.attrs["dilation"]) != (1, 1):
        return None
    fast = _requantization(op, graph)
    if fast is None:
        return None
    a, wt = op.attrs, graph.t(op.inputs[1])
    x = graph.t(acts[0])
    _, kh, kw, wc = (int(d) for d in wt.shape)
    entry.update(window=[kh, kw, *map(int, a["stride"]), int(a["padding"][0]),
                         int(a["padding"][1])], params=params, fast=int(fast),
                 in_offset=-int(x.quant.zp))
    taps = kh * kw * wc
    if op.kind == "depthwise_conv2d":
        if a["depth_multiplier"] != 1 or kh > 7 or kw not in (3, 5, 7) or acts[0] == quantized:
            return None
        entry["kind"] = DEPTHWISE
        return entry
    if wc != int(x.shape[3]):
        return None
    if acts[0] == quantized:
        if taps > COL_MAX:
            return None
        entry.update(kind=CONV_F32, scale=float(np.float32(x.quant.s)))
        return entry
    entry["kind"] = CONV
    entry["wide"] = int((kh, kw) == (1, 1) and tuple(a["stride"]) == (1, 1) and
                        not any(a["padding"]) and taps > COL_MAX)
    return entry


def _add(op: Op, graph: Graph, entry: dict) -> dict | None:
    """TFLite's int8 ADD of two images of the output's shape (kernels/ops.py add_mul)."""
    names = [n for n in op.inputs if n]
    ta, tb = (graph.t(n) for n in names)
    y = graph.t(op.outputs[0])
    if len(names) != 2 or any(t.is_const or t.dtype != "int8" or t.quant is None or
                              tuple(t.shape) != tuple(y.shape) for t in (ta, tb)):
        return None
    left_shift, (ma, sa), (mb, sb), (mo, so) = add_rescale(ta.quant, tb.quant, y.quant, "int8")
    assert left_shift == ADD_LEFT_SHIFT  # tvmp_add_s8 shifts by 20
    entry.update(kind=ADD, add=[-int(ta.quant.zp), -int(tb.quant.zp), int(ma), int(sa),
                                int(mb), int(sb), int(mo), int(so)])
    return entry


def block_source(name: str, table: dict, n_params: int) -> str:
    """C: the table and the kernel `name` (TVM's output form) that runs it."""
    def op_c(e):
        region = ", ".join(f"{{{', '.join(map(str, s))}}}" for s in e["region"])
        return (f"  {{{e['kind']}, {e['wide']}, {{{e['src'][0]}, {e['src'][1]}}}, {e['h']}, "
                f"{e['w']}, {e['c']}, {{{region}}}, {e['offset']}, {e['kept']}, "
                f"{', '.join(map(str, e['window']))}, {{{', '.join(map(str, e['params']))}}}, "
                f"{e['in_offset']}, {e['out_offset']}, {e['lo']}, {e['hi']}, {e['fast']}, "
                f"{float(e['scale']).hex()}f, {{{', '.join(map(str, e['add']))}}}}}")
    params = [f"p{k}" for k in range(n_params)]
    t = table
    signature = f"TVM_DLL void {name}({', '.join(f'void* {p}' for p in params)})"
    return (f"{signature};\n{signature} {{\n"
            "  static const tvmp_block_op_t ops[] = {\n"
            + ",\n".join("  " + op_c(e) for e in t["ops"]) + "\n  };\n"
            f"  static const tvmp_block_t block = {{ops, {len(t['ops'])}, "
            f"{{{t['grid'][0]}, {t['grid'][1]}}}, {{{t['tile'][0]}, {t['tile'][1]}}}, "
            f"{t['cached']}, {t['first_tile']}, {', '.join(map(str, t['input_shape']))}, "
            f"{t['input']}, {t['output']}, {t['workspace']}}};\n"
            f"  void* const params[] = {{{', '.join(params)}}};\n"
            f"  tvmp_block_run(&block, params);\n}}\n")
