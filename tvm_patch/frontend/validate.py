"""Checks a graph from a front end before anything is built from it: structure (a DAG in
execution order), shapes against what each operator computes, attribute ranges and the
quantization TFLite requires. A bad model is refused with one line naming the operator
index, its type, the field and its value; nothing downstream has to defend itself."""

from __future__ import annotations

import math

import numpy as np

from ..graph import Graph, ModelError, Op, conv_out_size

MAX_TENSOR_BYTES = 1 << 31     # one tensor; kernels index with int32
MAX_ARENA_BYTES = 1 << 32      # all activations together: arena offsets are 32-bit
QUANTIZED = ("int8", "uint8", "int16")


def validate(graph: Graph, strict_types: bool = True) -> Graph:
    """`strict_types`: TFLite's typing rules (one activation dtype per operator except
    QUANTIZE/DEQUANTIZE, quantization on every int8 tensor); ONNX QDQ graphs mix types by
    design and are checked for structure and shapes only."""
    for what, names in (("operators", graph.ops), ("inputs", graph.inputs),
                        ("outputs", graph.outputs)):
        if not names:
            raise ModelError(f"{graph.name}: the model has no {what}")
    _check_tensors(graph, strict_types)
    _check_order(graph)
    for op in graph.ops:
        check = _Check(graph, op)
        if strict_types:
            check.types()
        check.shapes()
    return graph


def _check_tensors(graph: Graph, strict_types: bool):
    total = 0
    for t in graph.tensors.values():
        where = f"{graph.name}: tensor {t.name}"
        if any(d < (0 if t.is_const else 1) for d in t.shape):
            raise ModelError(f"{where}: invalid shape {list(t.shape)} (dimensions must be >= 1)")
        if t.nbytes > MAX_TENSOR_BYTES:
            raise ModelError(f"{where}: shape {list(t.shape)} is {t.nbytes:,} bytes, over the "
                             f"{MAX_TENSOR_BYTES:,} bytes one tensor may have")
        total += 0 if t.is_const else t.nbytes
        q = t.quant
        if q is not None:
            rank = len(t.shape)
            if q.per_channel and not (0 <= q.axis < rank and q.scale.size == t.shape[q.axis]):
                raise ModelError(f"{where}: {q.scale.size} per-channel scales along quantized "
                                 f"dimension {q.axis} of shape {list(t.shape)}")
            if q.zero_point.size not in (1, q.scale.size):
                raise ModelError(f"{where}: {q.zero_point.size} zero points for "
                                 f"{q.scale.size} scales")
            if not np.all(np.isfinite(q.scale)):
                raise ModelError(f"{where}: quantization scale {_first_bad(q.scale)} is not "
                                 "finite")
        if strict_types and not t.is_const and t.dtype in QUANTIZED:
            if q is None:
                raise ModelError(f"{where}: {t.dtype} activation without quantization")
            if q.per_channel or not q.scale[0] > 0:
                raise ModelError(f"{where}: {t.dtype} activation scale {q.scale.tolist()} "
                                 "(one finite positive scale required)")
    if total > MAX_ARENA_BYTES:
        raise ModelError(f"{graph.name}: the activations total {total:,} bytes, more than any "
                         "arena can hold")


def _first_bad(values):
    return values[~np.isfinite(values)][0]


def _check_order(graph: Graph):
    """Every operator reads model inputs, constants or tensors written by an earlier
    operator; every tensor has at most one writer."""
    writer = {}
    for pos, op in enumerate(graph.ops):
        for n in op.outputs:
            if n in writer or n in graph.inputs or graph.t(n).is_const:
                first = "a model input" if n in graph.inputs else "a constant" if \
                    graph.t(n).is_const else f"operator {graph.ops[writer[n]].index}"
                raise ModelError(f"{_where(graph, op)}: output {n} is already written by {first}")
            writer[n] = pos
    ready = set(graph.inputs)
    for pos, op in enumerate(graph.ops):
        for n in op.inputs:
            if not n or n in ready or graph.t(n).is_const:
                continue
            if n in writer:
                by = "itself" if writer[n] == pos else \
                    f"operator {graph.ops[writer[n]].index}, which runs later"
                raise ModelError(f"{_where(graph, op)}: input {n} is written by {by}")
            raise ModelError(f"{_where(graph, op)}: input {n} is neither a model input, a "
                             "constant nor written by any operator")
        ready.update(op.outputs)
    for n in graph.outputs:
        if n not in ready:
            raise ModelError(f"{graph.name}: model output {n} is never written")


def _where(graph: Graph, op: Op) -> str:
    return f"{graph.name}: operator {op.index} ({op.source or op.kind})"


class _Check:
    def __init__(self, graph: Graph, op: Op):
        self.graph, self.op = graph, op
        self.acts = [graph.t(n) for n in op.inputs if n and not graph.t(n).is_const]
        self.out = graph.t(op.outputs[0])
        if not self.acts:
            self.fail("no activation input (only constants)")

    def fail(self, text):
        raise ModelError(f"{_where(self.graph, self.op)}: {text}")

    def types(self):
        op, out = self.op, self.out
        if op.kind == "quantize":
            ok = out.dtype in QUANTIZED
        elif op.kind == "dequantize":
            ok = out.dtype == "float32" and self.acts[0].dtype in QUANTIZED
        else:
            ok = all(t.dtype == out.dtype for t in self.acts)
        if not ok:
            self.fail("input dtype(s) " + ", ".join(t.dtype for t in self.acts) +
                      f" with output dtype {out.dtype}")
        if op.kind in ("conv2d", "depthwise_conv2d", "fully_connected") and \
                out.dtype in QUANTIZED:
            w = self.graph.t(op.inputs[1])
            if w.quant is None:
                self.fail(f"weights {w.name} ({w.dtype}) have no quantization")

    def shapes(self):
        op, a = self.op, self.op.attrs
        for key in ("stride", "dilation", "kernel"):
            if key in a and min(a[key]) < 1:
                name = "filter" if key == "kernel" else key
                self.fail(f"{name} {tuple(a[key])} (must be >= 1)")
        if min(a.get("padding", (0,))) < 0:
            self.fail(f"padding {tuple(a['padding'])} (must be >= 0)")
        expected = getattr(self, "_" + op.kind, lambda: None)()
        if expected is not None and tuple(expected) != tuple(self.out.shape):
            self.fail(f"output shape {list(self.out.shape)}, but the operator computes "
                      f"{list(expected)}")

    def _rank(self, t, rank):
        if len(t.shape) != rank:
            self.fail(f"tensor {t.name} has shape {list(t.shape)}, expected rank {rank}")

    def _spatial(self, channels, kernel):
        x, a = self.acts[0], self.op.attrs
        self._rank(x, 4)
        t, left, b, r = a["padding"]
        d = a.get("dilation", (1, 1))
        return (x.shape[0], conv_out_size(x.shape[1], kernel[0], a["stride"][0], d[0], t, b),
                conv_out_size(x.shape[2], kernel[1], a["stride"][1], d[1], left, r), channels)

    def _weights(self, rank, channel_axis):
        w = self.graph.t(self.op.inputs[1])
        bias = self.op.inputs[2] if len(self.op.inputs) > 2 else ""
        for t in (w, self.graph.t(bias) if bias else w):
            if not t.is_const:
                self.fail(f"{t.name} must be a constant tensor")
        self._rank(w, rank)
        n_out = w.shape[channel_axis]
        if bias and self.graph.t(bias).data.size != n_out:
            self.fail(f"bias {bias} has {self.graph.t(bias).data.size} values for {n_out} "
                      "output channels")
        if w.quant is not None and w.quant.per_channel and w.quant.axis != channel_axis:
            self.fail(f"weights {w.name} quantized along dimension {w.quant.axis}, expected "
                      f"{channel_axis}")
        return w

    def _conv2d(self):
        w = self._weights(4, 0)
        return self._spatial(w.shape[0], w.shape[1:3])

    def _depthwise_conv2d(self):
        w = self._weights(4, 3)
        ci, m = self.acts[0].shape[-1], self.op.attrs["depth_multiplier"]
        if w.shape[0] != 1 or m < 1 or ci * m != w.shape[3]:
            self.fail(f"depth_multiplier {m} with {ci} input channels and weights of shape "
                      f"{list(w.shape)}")
        return self._spatial(w.shape[3], w.shape[1:3])

    def _avg_pool2d(self):
        return self._spatial(self.acts[0].shape[-1], self.op.attrs["kernel"])

    _max_pool2d = _avg_pool2d

    def _fully_connected(self):
        w = self._weights(2, 0)
        size = math.prod(self.acts[0].shape)
        if size % w.shape[1]:
            self.fail(f"input of {size} elements is not a multiple of the weights' "
                      f"{w.shape[1]} columns")
        rows = size // w.shape[1]
        if self.out.shape[-1:] != (w.shape[0],) or math.prod(self.out.shape) != rows * w.shape[0]:
            self.fail(f"output shape {list(self.out.shape)}, but the operator computes {rows} "
                      f"row(s) of {w.shape[0]}")

    def _add(self):
        try:
            return np.broadcast_shapes(*(t.shape for t in self.acts))
        except ValueError:
            self.fail("input shapes " + ", ".join(str(list(t.shape)) for t in self.acts) +
                      " do not broadcast")

    _mul = _add

    def _pad(self):
        x, pads = self.acts[0], self.op.attrs["pads"]
        if len(pads) != len(x.shape) or min(min(p) for p in pads) < 0:
            self.fail(f"paddings {[list(p) for p in pads]} for input shape {list(x.shape)}")
        return tuple(d + p[0] + p[1] for d, p in zip(x.shape, pads))

    def _mean(self):
        x, axes = self.acts[0], self.op.attrs["axes"]
        if self.op.attrs["keep_dims"]:
            return tuple(1 if k in axes else d for k, d in enumerate(x.shape))
        return tuple(d for k, d in enumerate(x.shape) if k not in axes)

    def _reshape(self):
        x = self.acts[0]
        if math.prod(x.shape) != math.prod(self.out.shape):
            self.fail(f"reshape of {list(x.shape)} ({math.prod(x.shape)} elements) to "
                      f"{list(self.out.shape)} ({math.prod(self.out.shape)} elements)")

    def _transpose(self):
        x, perm = self.acts[0], self.op.attrs["perm"]
        if sorted(perm) != list(range(len(x.shape))):
            self.fail(f"perm {list(perm)} for input shape {list(x.shape)}")
        return tuple(x.shape[p] for p in perm)

    def _concat(self):
        axis, first = self.op.attrs["axis"], self.acts[0].shape
        for t in self.acts:
            if len(t.shape) != len(first) or any(
                    d != e for k, (d, e) in enumerate(zip(t.shape, first)) if k != axis):
                self.fail(f"input shapes {[list(t.shape) for t in self.acts]} do not "
                          f"concatenate along axis {axis}")
        return tuple(sum(t.shape[axis] for t in self.acts) if k == axis else d
                     for k, d in enumerate(first))

    def _resize_nearest(self):
        x = self.acts[0]
        self._rank(x, 4)
        self._rank(self.out, 4)
        return (x.shape[0], *self.out.shape[1:3], x.shape[3])

    def _softmax(self):
        beta = self.op.attrs.get("beta", 1.0)
        if not (np.isfinite(beta) and beta > 0):
            self.fail(f"beta {beta} (must be finite and > 0)")
        return self.acts[0].shape

    def _elementwise(self):
        return self.acts[0].shape

    _logistic = _hard_swish = _relu = _relu6 = _quantize = _dequantize = _elementwise
