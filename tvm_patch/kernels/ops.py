"""One TE compute per graph-IR operator kind, int8 (bit-exact with TFLite Micro's reference
kernels) and float32.

Every compute has the form `fn(op, graph, xs) -> (out, consts)`: `xs` are te.Tensors for the
operator's non-constant inputs, in order; `consts` lists (te.placeholder, numpy array) pairs
for the constant data the kernel reads (weights, biases, multipliers, tables). Keeping the
constants as parameters lets identical layers share one compiled kernel, and lets the patch
pass compose these computes into one loop nest."""

from __future__ import annotations

import math

import numpy as np
from tvm import te, tirx

from .. import quant as Q
from ..graph import Graph, ModelError, Op, Tensor
from .fixedpoint import clamp, mbqm, round_half_away

I32 = "int32"


class _Consts:
    """Collects the constant arrays a compute reads, as placeholders."""

    def __init__(self, prefix):
        self.prefix, self.pairs = prefix, []

    def __call__(self, name, array):
        array = np.ascontiguousarray(array)
        ph = te.placeholder(array.shape, str(array.dtype), name=f"{self.prefix}{name}")
        self.pairs.append((ph, array))
        return ph


def _quantized(graph, op):
    return graph.t(op.outputs[0]).dtype in ("int8", "int16", "uint8") and \
        graph.t(op.outputs[0]).quant is not None


def _clamp_range(graph, op, activation):
    out = graph.t(op.outputs[0])
    return Q.activation_range(activation, out.quant.s, out.quant.zp, out.dtype)


def _inputs_with_consts(op, graph, xs, consts):
    """The operator's inputs as te.Tensors: activations from xs, constants as placeholders."""
    it = iter(xs)
    res = []
    for k, name in enumerate(op.inputs):
        if not name:
            res.append(None)
        elif graph.t(name).is_const:
            res.append(consts(f"in{k}", graph.t(name).data))
        else:
            res.append(next(it))
    return res


def _window_input(x, pad_value, padding, stride, dilation, plane=None):
    """x read at the input position of output (h, w) and kernel tap (ky, kx), with pad;
    from `plane` (x as N,C,H,W) instead when given."""
    _, H, W, _ = x.shape
    pt, pl = padding[0], padding[1]

    def read(n, h, w, ky, kx, c):
        ih = h * stride[0] + ky * dilation[0] - pt
        iw = w * stride[1] + kx * dilation[1] - pl
        inside = tirx.all(ih >= 0, ih < H, iw >= 0, iw < W)
        value = plane[n, c, ih, iw] if plane is not None else x[n, ih, iw, c]
        return tirx.if_then_else(inside, value, tirx.const(pad_value, x.dtype))
    return read


def channel_plane(x, name):
    """x's channels as planes; an in-place depthwise kernel copies one channel's plane
    before it overwrites that channel (see schedule_local)."""
    N, H, W, C = x.shape
    return te.compute((N, C, H, W), lambda n, c, h, w: x[n, h, w, c], name=name)


def conv(op: Op, graph: Graph, xs):
    """conv2d and depthwise_conv2d; padding reads the input zero point, so the halo of a
    patch and the border of the image are handled by the same expression."""
    consts = _Consts(f"L{op.index}_")
    x = xs[0]
    wt, bt = graph.t(op.inputs[1]), graph.t(op.inputs[2]) if op.inputs[2] else None
    out_t = graph.t(op.outputs[0])
    a = op.attrs
    depthwise = op.kind == "depthwise_conv2d"
    plane = channel_plane(x, f"L{op.index}_keep_plane") if a.get("inplace") else None
    n_out = out_t.shape[3]
    _, kh, kw, cin = wt.shape
    w = consts("w", wt.data)
    N, OH, OW = out_t.shape[:3]
    ry, rx = te.reduce_axis((0, kh), "ry"), te.reduce_axis((0, kw), "rx")
    if _quantized(graph, op):
        in_q, w_q, out_q = graph.t(op.inputs[0]).quant, wt.quant, out_t.quant
        zp_in = in_q.zp
        read = _window_input(x, zp_in, a["padding"], a["stride"], a["dilation"], plane)
        w_scale = np.broadcast_to(w_q.scale.astype(np.float64), (n_out,))
        mult, shift = Q.quantize_multipliers(
            np.float64(in_q.s) * w_scale / np.float64(out_q.s))
        bias = bt.data.astype(np.int32) if bt is not None else np.zeros(n_out, np.int32)
        b, m, s = consts("bias", bias), consts("mult", mult), consts("shift", shift)
        saturate = bool((mult == Q.INT32_MIN).any())
        lo, hi = _clamp_range(graph, op, a["activation"])

        def term(n, h, ww, o, c_in, w_c):
            return (read(n, h, ww, ry, rx, c_in).astype(I32) - zp_in) * \
                w[w_c[0], ry, rx, w_c[1]].astype(I32)
    else:
        read = _window_input(x, 0.0, a["padding"], a["stride"], a["dilation"], plane)
        bias = bt.data.astype(np.float32) if bt is not None else np.zeros(n_out, np.float32)
        b = consts("bias", bias)
        lo, hi = Q.float_activation_range(a["activation"])

        def term(n, h, ww, o, c_in, w_c):
            return read(n, h, ww, ry, rx, c_in) * w[w_c[0], ry, rx, w_c[1]]

    if depthwise:
        dm = a["depth_multiplier"]
        acc = te.compute((N, OH, OW, n_out), lambda n, h, ww, o: te.sum(
            term(n, h, ww, o, o // dm, (0, o)), axis=[ry, rx]), name=f"L{op.index}_acc")
    else:
        rc = te.reduce_axis((0, cin), "rc")
        acc = te.compute((N, OH, OW, n_out), lambda n, h, ww, o: te.sum(
            term(n, h, ww, o, rc, (o, rc)), axis=[ry, rx, rc]), name=f"L{op.index}_acc")

    if _quantized(graph, op):
        zp_out = out_t.quant.zp
        out = te.compute(acc.shape, lambda n, h, ww, o: clamp(
            mbqm(acc[n, h, ww, o] + b[o], m[o], s[o], saturate) + zp_out, lo, hi).astype(
                out_t.dtype),
            name=f"L{op.index}_out")
    else:
        out = te.compute(acc.shape, lambda n, h, ww, o: _fclamp(acc[n, h, ww, o] + b[o], lo, hi),
                         name=f"L{op.index}_out")
    return out, consts.pairs


def _fclamp(v, lo, hi):
    if np.isfinite(lo):
        v = tirx.max(v, tirx.const(lo, "float32"))
    if np.isfinite(hi):
        v = tirx.min(v, tirx.const(hi, "float32"))
    return v


def fully_connected(op: Op, graph: Graph, xs):
    consts = _Consts(f"L{op.index}_")
    x = xs[0]
    wt, bt, out_t = graph.t(op.inputs[1]), graph.t(op.inputs[2]) if op.inputs[2] else None, \
        graph.t(op.outputs[0])
    n_out, n_in = wt.shape
    size = int(np.prod(x.shape))
    if size % n_in:
        raise ModelError(f"FULLY_CONNECTED at index {op.index}: input of {size} elements "
                         f"does not divide into rows of {n_in}")
    batches = size // n_in
    flat = te.compute((batches, n_in), lambda i, j: _flat_read(x, i * n_in + j),
                      name=f"L{op.index}_flat") if len(x.shape) != 2 else x
    w = consts("w", wt.data)
    k = te.reduce_axis((0, n_in), "k")
    if _quantized(graph, op):
        in_q, out_q = graph.t(op.inputs[0]).quant, out_t.quant
        zp_in, zp_w = in_q.zp, int(wt.quant.zero_point[0])
        mult, shift = Q.quantize_multipliers(_fc_effective_scales(op, graph))
        bias = bt.data.astype(np.int32) if bt is not None else np.zeros(n_out, np.int32)
        b, m, s = consts("bias", bias), consts("mult", mult), consts("shift", shift)
        saturate = bool((mult == Q.INT32_MIN).any())
        lo, hi = _clamp_range(graph, op, op.attrs["activation"])
        acc = te.compute((batches, n_out), lambda i, o: te.sum(
            (flat[i, k].astype(I32) - zp_in) * (w[o, k].astype(I32) - zp_w), axis=k),
            name=f"L{op.index}_acc")
        out2 = te.compute((batches, n_out), lambda i, o: clamp(
            mbqm(acc[i, o] + b[o], m[o], s[o], saturate) + out_q.zp, lo, hi).astype(
                out_t.dtype),
            name=f"L{op.index}_out2")
    else:
        bias = bt.data.astype(np.float32) if bt is not None else np.zeros(n_out, np.float32)
        b = consts("bias", bias)
        lo, hi = Q.float_activation_range(op.attrs["activation"])
        acc = te.compute((batches, n_out), lambda i, o: te.sum(flat[i, k] * w[o, k], axis=k),
                         name=f"L{op.index}_acc")
        out2 = te.compute((batches, n_out), lambda i, o: _fclamp(acc[i, o] + b[o], lo, hi),
                          name=f"L{op.index}_out2")
    if tuple(out_t.shape) == (batches, n_out):
        return out2, consts.pairs
    out = te.compute(out_t.shape, lambda *idx: _flat_read(out2, _flat_index(idx, out_t.shape)),
                     name=f"L{op.index}_out")
    return out, consts.pairs


def _fc_effective_scales(op: Op, graph: Graph) -> np.ndarray:
    """TFLite Micro's FULLY_CONNECTED multipliers: per channel as for convolutions; per
    tensor from the float32 product of the input and weight scales, which must not be
    negative, with the bias scale within 2% of the output scale of that product."""
    x, w, out = (graph.t(n).quant for n in (op.inputs[0], op.inputs[1], op.outputs[0]))
    n_out = graph.t(op.inputs[1]).shape[0]
    if w.per_channel:
        return np.float64(x.s) * w.scale.astype(np.float64) / np.float64(out.s)
    product = np.float32(x.s * w.s)
    where = f"FULLY_CONNECTED at index {op.index}"
    if product < 0:
        raise ModelError(f"{where}: input scale x weight scale is negative ({product:g}); "
                         "TFLite Micro refuses a negative per-tensor product scale")
    if op.inputs[2] and graph.t(op.inputs[2]).quant is not None:
        exact = np.float64(x.s) * np.float64(w.s)
        bias_scale = np.float64(graph.t(op.inputs[2]).quant.scale[0])
        if not abs(exact - bias_scale) / np.float64(out.s) <= 0.02:
            raise ModelError(f"{where}: bias scale {bias_scale:g} differs from input scale x "
                             f"weight scale {exact:g} by more than 2% of the output scale "
                             f"{out.s:g}; TFLite Micro refuses it")
    return np.full(n_out, np.float64(product) / np.float64(out.s))


def _flat_index(idx, shape):
    flat = idx[0]
    for i, d in zip(idx[1:], shape[1:]):
        flat = flat * d + i
    return flat


def _flat_read(t, flat):
    idx = []
    for d in reversed(t.shape):
        idx.append(tirx.floormod(flat, d))
        flat = tirx.floordiv(flat, d)
    return t[tuple(reversed(idx))]


def _broadcast_read(t, out_shape, idx):
    off = len(out_shape) - len(t.shape)
    return t[tuple(0 if int(d) == 1 else idx[off + k] for k, d in enumerate(t.shape))]


def add_rescale(qa, qb, qo, dtype: str) -> tuple:
    """TFLite's quantized ADD: (left shift, (multiplier, shift) of input a, of input b, of the
    sum); each input is shifted left, rescaled to twice the larger input scale, summed,
    then rescaled to the output."""
    left_shift = 20 if dtype == "int8" else 15
    twice_max = 2 * max(np.float64(qa.s), np.float64(qb.s))
    return (left_shift, Q.quantize_multiplier(np.float64(qa.s) / twice_max),
            Q.quantize_multiplier(np.float64(qb.s) / twice_max),
            Q.quantize_multiplier(twice_max / ((1 << left_shift) * np.float64(qo.s))))


def add_mul(op: Op, graph: Graph, xs):
    consts = _Consts(f"L{op.index}_")
    a, b = _inputs_with_consts(op, graph, xs, consts)
    out_t = graph.t(op.outputs[0])
    shape = out_t.shape
    ra = lambda idx: _broadcast_read(a, shape, idx)  # noqa: E731
    rb = lambda idx: _broadcast_read(b, shape, idx)  # noqa: E731
    if not _quantized(graph, op):
        lo, hi = Q.float_activation_range(op.attrs["activation"])
        f = (lambda u, v: u + v) if op.kind == "add" else (lambda u, v: u * v)
        return te.compute(shape, lambda *i: _fclamp(f(ra(i), rb(i)), lo, hi),
                          name=f"L{op.index}_out"), consts.pairs
    qa, qb, qo = graph.t(op.inputs[0]).quant, graph.t(op.inputs[1]).quant, out_t.quant
    lo, hi = _clamp_range(graph, op, op.attrs["activation"])
    za, zb, zo = qa.zp, qb.zp, qo.zp
    if op.kind == "add":
        left_shift, (ma, sa), (mb, sb), (mo, so) = add_rescale(qa, qb, qo, out_t.dtype)
        c = lambda v: tirx.const(v, I32)  # noqa: E731
        # each input's rescale is its own stage: nesting them in one expression makes
        # TVM's simplifier time grow with the product of the expression sizes
        va = te.compute(shape, lambda *i: mbqm((ra(i).astype(I32) - za) << left_shift,
                                               c(ma), sa), name=f"L{op.index}_keep_a")
        vb = te.compute(shape, lambda *i: mbqm((rb(i).astype(I32) - zb) << left_shift,
                                               c(mb), sb), name=f"L{op.index}_keep_b")

        def f(*i):
            return clamp(mbqm(va[i] + vb[i], c(mo), so) + zo, lo, hi).astype(out_t.dtype)
    else:
        mo, so = Q.quantize_multiplier(np.float64(qa.s) * np.float64(qb.s) / np.float64(qo.s))

        def f(*i):
            prod = (ra(i).astype(I32) - za) * (rb(i).astype(I32) - zb)
            return clamp(mbqm(prod, tirx.const(mo, I32), so) + zo,
                         lo, hi).astype(out_t.dtype)
    return te.compute(shape, f, name=f"L{op.index}_out"), consts.pairs


def pool(op: Op, graph: Graph, xs):
    """Average and max pooling over the taps inside the image. In a fused block (fuse.py)
    x is a tile region: attrs "image_hw" is the whole image's size and "origin"(n) where
    tile n's region starts in it, so taps are tested against the image, not the tile."""
    x = xs[0]
    out_t = graph.t(op.outputs[0])
    a = op.attrs
    (kh, kw), (sh, sw), (pt, pl) = a["kernel"], a["stride"], a["padding"][:2]
    H, W = a.get("image_hw", x.shape[1:3])
    origin = a.get("origin", lambda n: (0, 0))
    ry, rx = te.reduce_axis((0, kh), "ry"), te.reduce_axis((0, kw), "rx")
    quantized = _quantized(graph, op)
    lo, hi = _clamp_range(graph, op, a["activation"]) if quantized else \
        Q.float_activation_range(a["activation"])

    def inside(n, h, w):
        ih, iw = h * sh + ry - pt, w * sw + rx - pl
        r0, c0 = origin(n)
        return tirx.all(r0 + ih >= 0, r0 + ih < H, c0 + iw >= 0, c0 + iw < W), ih, iw

    if op.kind == "max_pool2d":
        low = tirx.min_value(x.dtype)

        def mx(n, h, w, c):
            ok, ih, iw = inside(n, h, w)
            return te.max(tirx.if_then_else(ok, x[n, ih, iw, c], low), axis=[ry, rx])
        acc = te.compute(out_t.shape, mx, name=f"L{op.index}_acc")
        if quantized:
            out = te.compute(out_t.shape, lambda *i: clamp(acc[i].astype(I32), lo, hi).astype(
                out_t.dtype), name=f"L{op.index}_out")
        else:
            out = te.compute(out_t.shape, lambda *i: _fclamp(acc[i], lo, hi),
                             name=f"L{op.index}_out")
        return out, []

    acc_dtype = I32 if quantized else "float32"

    def sm(n, h, w, c):
        ok, ih, iw = inside(n, h, w)
        return te.sum(tirx.if_then_else(ok, x[n, ih, iw, c].astype(acc_dtype),
                                        tirx.const(0, acc_dtype)), axis=[ry, rx])
    acc = te.compute(out_t.shape, sm, name=f"L{op.index}_acc")

    def count(n, h, w):  # TFLite averages over the taps inside the image only
        r0, c0 = origin(n)
        y0, x0 = r0 + h * sh - pt, c0 + w * sw - pl
        ny = tirx.min(kh, H - y0) - tirx.max(0, -y0)
        nx = tirx.min(kw, W - x0) - tirx.max(0, -x0)
        # a tile's region rows outside the image are computed and then masked: never 0
        return tirx.max(ny * nx, 1) if "origin" in a else ny * nx

    if quantized:
        def avg(n, h, w, c):
            s, cnt = acc[n, h, w, c], count(n, h, w)
            q = tirx.Select(s > 0, tirx.truncdiv(s + cnt // 2, cnt),
                            tirx.truncdiv(s - cnt // 2, cnt))
            return clamp(q, lo, hi).astype(out_t.dtype)
    else:
        def avg(n, h, w, c):
            return _fclamp(acc[n, h, w, c] / count(n, h, w).astype("float32"), lo, hi)
    return te.compute(out_t.shape, avg, name=f"L{op.index}_out"), []


def pad(op: Op, graph: Graph, xs):
    x = xs[0]
    out_t = graph.t(op.outputs[0])
    value = graph.t(op.outputs[0]).quant.zp if _quantized(graph, op) else 0
    pads = op.attrs["pads"]

    def f(*i):
        src = [i[d] - pads[d][0] for d in range(len(i))]
        ok = tirx.all(*[tirx.all(s >= 0, s < x.shape[d]) for d, s in enumerate(src)])
        return tirx.if_then_else(ok, x[tuple(src)], tirx.const(value, x.dtype))
    return te.compute(out_t.shape, f, name=f"L{op.index}_out"), []


def transpose(op: Op, graph: Graph, xs):
    x, perm = xs[0], op.attrs["perm"]
    out_t = graph.t(op.outputs[0])

    def f(*i):
        src = [None] * len(perm)
        for k, p in enumerate(perm):
            src[p] = i[k]
        return x[tuple(src)]
    return te.compute(out_t.shape, f, name=f"L{op.index}_out"), []


def reshape(op: Op, graph: Graph, xs):
    x, out_t = xs[0], graph.t(op.outputs[0])
    return te.compute(out_t.shape, lambda *i: _flat_read(x, _flat_index(i, out_t.shape)),
                      name=f"L{op.index}_out"), []


def concat(op: Op, graph: Graph, xs):
    consts = _Consts(f"L{op.index}_")
    ins = _inputs_with_consts(op, graph, xs, consts)
    out_t, axis = graph.t(op.outputs[0]), op.attrs["axis"]
    if _quantized(graph, op):
        qo = out_t.quant
        for name in op.inputs:
            qi = graph.t(name).quant
            if qi.s != qo.s or qi.zp != qo.zp:
                raise ModelError(f"CONCATENATION at index {op.index}: inputs quantized "
                                 "differently from the output are not supported")
    if op.attrs.get("activation", "none") != "none":
        raise ModelError(f"CONCATENATION at index {op.index}: fused activation not supported")

    offsets = np.cumsum([0] + [int(t.shape[axis]) for t in ins])

    def f(*i):
        val = None
        for t, start in zip(ins, offsets[:-1]):
            # both sides of a Select are evaluated: keep every read inside its input
            pos = tirx.min(tirx.max(i[axis] - int(start), 0), int(t.shape[axis]) - 1)
            read = t[tuple(pos if d == axis else v for d, v in enumerate(i))]
            val = read if val is None else tirx.Select(i[axis] >= int(start), read, val)
        return val
    return te.compute(out_t.shape, f, name=f"L{op.index}_out"), consts.pairs


def resize_nearest(op: Op, graph: Graph, xs):
    x, out_t = xs[0], graph.t(op.outputs[0])
    align, half = op.attrs["align_corners"], op.attrs["half_pixel_centers"]

    def index_map(out_size, in_size):  # TFLite's nearest-neighbour source index, on the host
        scale = (in_size - 1) / (out_size - 1) if align and out_size > 1 else in_size / out_size
        scale = np.float32(scale)
        off = np.float32(0.5) if half else np.float32(0.0)
        res = []
        for o in range(out_size):
            v = (np.float32(o) + off) * scale
            v = int(Q.round_away(v)) if align else int(np.floor(v))
            res.append(max(0, min(v, in_size - 1)))
        return res

    hmap = index_map(int(out_t.shape[1]), int(x.shape[1]))
    wmap = index_map(int(out_t.shape[2]), int(x.shape[2]))

    def lookup(table, i):
        val = tirx.const(table[-1], I32)
        for k in range(len(table) - 2, -1, -1):
            val = tirx.Select(i == k, tirx.const(table[k], I32), val)
        return val
    return te.compute(out_t.shape, lambda n, h, w, c: x[n, lookup(hmap, h), lookup(wmap, w), c],
                      name=f"L{op.index}_out"), []


def quantize(op: Op, graph: Graph, xs):
    x, in_t, out_t = xs[0], graph.t(op.inputs[0]), graph.t(op.outputs[0])
    qo = out_t.quant
    lo, hi = Q.QRANGE[out_t.dtype]
    if in_t.dtype == "float32":
        # TFLite Micro divides in float32, then rounds half away from zero. Its conversion
        # to int32 of values outside int32 and of NaN is undefined in C (x86 and Arm give
        # different bytes); ours saturates them and maps NaN to the zero point, everywhere.
        scale = tirx.const(float(qo.s), "float32")
        low, high = (tirx.const(float(v - qo.zp), "float32") for v in (lo, hi))

        def f(*i):
            v = x[i] / scale
            r = tirx.min(tirx.max(round_half_away(v), low), high)
            q = tirx.Select(tirx.isnan(v), tirx.const(0, I32), r.astype(I32)) + qo.zp
            return clamp(q, lo, hi).astype(out_t.dtype)
    else:
        qi = in_t.quant
        m, s = Q.quantize_multiplier(np.float64(qi.s) / np.float64(qo.s))

        def f(*i):
            q = mbqm(x[i].astype(I32) - qi.zp, tirx.const(m, I32), s) + qo.zp
            return clamp(q, lo, hi).astype(out_t.dtype)
    return te.compute(out_t.shape, f, name=f"L{op.index}_out"), []


def dequantize(op: Op, graph: Graph, xs):
    x, qi = xs[0], graph.t(op.inputs[0]).quant
    scale = tirx.const(float(qi.s), "float32")
    return te.compute(x.shape, lambda *i: (x[i].astype(I32) - qi.zp).astype("float32") * scale,
                      name=f"L{op.index}_out"), []


def relu(op: Op, graph: Graph, xs):
    x, out_t = xs[0], graph.t(op.outputs[0])
    activation = "relu6" if op.kind == "relu6" else "relu"
    if not _quantized(graph, op):
        lo, hi = Q.float_activation_range(activation)
        return te.compute(x.shape, lambda *i: _fclamp(x[i], lo, hi),
                          name=f"L{op.index}_out"), []
    qi, qo = graph.t(op.inputs[0]).quant, out_t.quant
    m, s = Q.quantize_multiplier(np.float64(qi.s) / np.float64(qo.s))
    lo, hi = _clamp_range(graph, op, activation)
    return te.compute(x.shape, lambda *i: clamp(
        mbqm(x[i].astype(I32) - qi.zp, tirx.const(m, I32), s) + qo.zp,
        lo, hi).astype(out_t.dtype), name=f"L{op.index}_out"), []


def _nonlinear(fn_name, *attr_names):
    def compute(op: Op, graph: Graph, xs):
        from . import nonlinear
        fn = getattr(nonlinear, fn_name)
        in_t, out_t = graph.t(op.inputs[0]), graph.t(op.outputs[0])
        if op.attrs.get("real_valued") and out_t.dtype == "int8":
            return nonlinear.real_valued(op.kind, xs[0], in_t.quant, out_t.quant)
        args = [op.attrs[a] for a in attr_names]
        in_q = in_t.quant if in_t.dtype != "float32" else None
        out_q = out_t.quant if out_t.dtype != "float32" else None
        out, consts = fn(xs[0], in_q, out_q, *args)
        return out, consts
    return compute


def _dequantized(x, q, name):
    scale = tirx.const(float(q.s), "float32")
    return te.compute(x.shape, lambda *i: (x[i].astype(I32) - q.zp).astype("float32") * scale,
                      name=name)


def qdq_float(compute):
    """An int8 operator with ONNX QDQ semantics: DequantizeLinear, the float operator,
    QuantizeLinear (float32, round half to even). Used where TFLite's integer rules
    (fixed-point softmax, ties rounded away from zero) would move away from onnxruntime."""
    def qdq(op: Op, graph: Graph, xs):
        if not op.attrs.get("real_valued") or not _quantized(graph, op):
            return compute(op, graph, xs)
        floats, shadow = [], dict(graph.tensors)
        for x, name in zip(xs, [n for n in op.inputs if n and not graph.t(n).is_const]):
            floats.append(_dequantized(x, graph.t(name).quant, f"L{op.index}_deq"))
            shadow[name] = Tensor(name, graph.t(name).shape, "float32")
        out_t = graph.t(op.outputs[0])
        shadow[out_t.name] = Tensor(out_t.name, out_t.shape, "float32")
        y, consts = compute(op, Graph(shadow, graph.ops, graph.inputs, graph.outputs), floats)
        qo, (lo, hi) = out_t.quant, Q.QRANGE[out_t.dtype]
        scale = tirx.const(float(qo.s), "float32")
        out = te.compute(y.shape, lambda *i: clamp(
            tirx.nearbyint(y[i] / scale).astype(I32) + qo.zp, lo, hi).astype(out_t.dtype),
            name=f"L{op.index}_q")
        return out, consts
    return qdq


COMPUTES = {
    "conv2d": conv, "depthwise_conv2d": conv, "fully_connected": fully_connected,
    "add": add_mul, "mul": add_mul, "avg_pool2d": qdq_float(pool), "max_pool2d": pool,
    "pad": pad,
    "transpose": transpose, "reshape": reshape, "concat": concat,
    "resize_nearest": resize_nearest, "quantize": quantize, "dequantize": dequantize,
    "relu": relu, "relu6": relu,
    "softmax": qdq_float(_nonlinear("softmax", "beta")),
    "logistic": _nonlinear("logistic"),
    "hard_swish": _nonlinear("hard_swish"),
    "mean": qdq_float(_nonlinear("mean", "axes", "keep_dims")),
}


def macs(op: Op, graph: Graph) -> int:
    """Multiply-accumulates of one layer-by-layer operator."""
    out = graph.t(op.outputs[0])
    if op.kind == "conv2d":
        _, kh, kw, cin = graph.t(op.inputs[1]).shape
        return _count(out.shape) * int(kh) * int(kw) * int(cin)
    if op.kind == "depthwise_conv2d":
        _, kh, kw, _ = graph.t(op.inputs[1]).shape
        return _count(out.shape) * int(kh) * int(kw)
    if op.kind == "fully_connected":
        n_out, n_in = graph.t(op.inputs[1]).shape
        return _count(graph.t(op.inputs[0]).shape) // int(n_in) * int(n_out) * int(n_in)
    return 0


def _count(shape) -> int:
    """Elements of a shape, as a Python int (no fixed-width overflow)."""
    return math.prod(int(d) for d in shape)
