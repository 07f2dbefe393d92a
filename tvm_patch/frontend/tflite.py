"""Reads a .tflite flatbuffer straight into the graph IR: int8 stays int8, padding becomes
explicit, fused activations become attributes. Models with more than one subgraph (control
flow) are refused. Every index and option read here is range-checked; the graph is then
validated (validate.py) before anything is built from it."""

from __future__ import annotations

import numpy as np
import tflite
from tflite.BuiltinOperator import BuiltinOperator
from tflite.BuiltinOptions import BuiltinOptions
from tflite.TensorType import TensorType

from ..graph import Graph, ModelError, Op, Quant, Tensor, UnsupportedOperator, same_padding
from .validate import validate

_OP_NAMES = {v: k for k, v in vars(BuiltinOperator).items() if not k.startswith("_")}
_DTYPES = {TensorType.FLOAT32: "float32", TensorType.INT32: "int32", TensorType.UINT8: "uint8",
           TensorType.INT64: "int64", TensorType.INT16: "int16", TensorType.INT8: "int8",
           TensorType.BOOL: "bool"}
_ACTIVATIONS = {0: "none", 1: "relu", 2: "relu_n1_to_1", 3: "relu6"}
_OPTION_TABLES = {"CONV_2D": "Conv2DOptions", "DEPTHWISE_CONV_2D": "DepthwiseConv2DOptions",
                  "ADD": "AddOptions", "MUL": "MulOptions", "AVERAGE_POOL_2D": "Pool2DOptions",
                  "MAX_POOL_2D": "Pool2DOptions", "MEAN": "ReducerOptions",
                  "FULLY_CONNECTED": "FullyConnectedOptions",
                  "CONCATENATION": "ConcatenationOptions", "SOFTMAX": "SoftmaxOptions",
                  "RESIZE_NEAREST_NEIGHBOR": "ResizeNearestNeighborOptions"}
_OPTIONS_REQUIRED = ("CONV_2D", "DEPTHWISE_CONV_2D", "AVERAGE_POOL_2D", "MAX_POOL_2D",
                     "CONCATENATION")
_OPTION_NAMES = {v: k for k, v in vars(BuiltinOptions).items() if not k.startswith("_")}
_SIMPLE = {"LOGISTIC": "logistic", "HARD_SWISH": "hard_swish", "RELU": "relu",
           "RELU6": "relu6", "QUANTIZE": "quantize", "DEQUANTIZE": "dequantize"}


def read_tflite(data: bytes, name: str = "model") -> Graph:
    if len(data) < 8 or data[4:8] != b"TFL3":
        raise ModelError(f"{name}: not a TFLite flatbuffer (no 'TFL3' identifier; "
                         f"{len(data)} bytes)")
    try:
        return _Reader(data, name).graph()
    except ModelError:
        raise
    except Exception as e:  # the flatbuffer reader fails with arbitrary errors on bad offsets
        raise ModelError(f"{name}: corrupt or truncated .tflite file ({type(e).__name__}: {e})") \
            from None


class _Reader:
    def __init__(self, data: bytes, name: str):
        self.name = name
        self.model = tflite.Model.GetRootAsModel(data, 0)
        _read_everything(self.model, len(data))
        if self.model.SubgraphsLength() != 1:
            raise ModelError(f"{name}: the model has {self.model.SubgraphsLength()} subgraphs; "
                             "only single-subgraph models are supported (no control flow)")
        self.sg = self.model.Subgraphs(0)
        self.tensors = {}

    def graph(self) -> Graph:
        names = [self._tensor(i) for i in range(self.sg.TensorsLength())]
        ops = [self._op(i) for i in range(self.sg.OperatorsLength())]
        inputs = [names[self._index(i, "model input")] for i in _ints(self.sg.InputsAsNumpy())]
        outputs = [names[self._index(i, "model output")]
                   for i in _ints(self.sg.OutputsAsNumpy())]
        used = {n for op in ops for n in op.inputs + op.outputs} | set(inputs) | set(outputs)
        tensors = {k: v for k, v in self.tensors.items() if k in used}
        return validate(Graph(tensors, ops, inputs, outputs, self.name))

    def _index(self, i: int, what: str) -> int:
        if not 0 <= i < self.sg.TensorsLength():
            raise ModelError(f"{self.name}: {what} refers to tensor {i}; the model has "
                             f"{self.sg.TensorsLength()} tensors")
        return i

    def _tensor(self, i: int) -> str:
        t = self.sg.Tensors(i)
        name = f"t{i}_" + (t.Name() or b"").decode(errors="replace").replace("/", "_")[-48:]
        if t.Type() not in _DTYPES:
            raise ModelError(f"{self.name}: tensor {i} ({name}) has unsupported type {t.Type()}")
        dtype = _DTYPES[t.Type()]
        shape = tuple(int(s) for s in t.ShapeAsNumpy()) if t.ShapeLength() else ()
        quant = None
        q = t.Quantization()
        if q is not None and q.ScaleLength() > 0:
            if q.ZeroPointLength() != q.ScaleLength():  # TFLite Micro refuses these too
                raise ModelError(f"{self.name}: tensor {i} ({name}) has {q.ScaleLength()} "
                                 f"scales and {q.ZeroPointLength()} zero points")
            quant = Quant(q.ScaleAsNumpy(), q.ZeroPointAsNumpy(), int(q.QuantizedDimension()))
        data = None
        if not 0 <= t.Buffer() < self.model.BuffersLength():
            raise ModelError(f"{self.name}: tensor {i} ({name}) refers to buffer {t.Buffer()}; "
                             f"the model has {self.model.BuffersLength()} buffers")
        buf = self.model.Buffers(t.Buffer())
        if buf is not None and buf.DataLength() > 0:
            raw = buf.DataAsNumpy().tobytes()
            expected = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
            if len(raw) != expected or min(shape, default=1) < 0:
                raise ModelError(f"{self.name}: tensor {i} ({name}) of shape {list(shape)} "
                                 f"{dtype} has a buffer of {len(raw)} bytes, expected {expected}")
            data = np.frombuffer(raw, dtype=np.dtype(dtype)).reshape(shape).copy()
        self.tensors[name] = Tensor(name, shape, dtype, quant, data)
        return name

    def _op(self, i: int) -> Op:
        op = self.sg.Operators(i)
        if not 0 <= op.OpcodeIndex() < self.model.OperatorCodesLength():
            raise ModelError(f"{self.name}: operator {i} has opcode index {op.OpcodeIndex()}; "
                             f"the model has {self.model.OperatorCodesLength()} opcodes")
        code = self.model.OperatorCodes(op.OpcodeIndex())
        opname = _OP_NAMES.get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()), "CUSTOM")
        names = list(self.tensors)
        where = self.where = f"operator {i} ({opname})"
        ins = [names[self._index(j, where + " input")] if j != -1 else ""
               for j in _ints(op.InputsAsNumpy())]
        outs = [names[self._index(j, where + " output")] for j in _ints(op.OutputsAsNumpy())]
        if not ins or not outs or "" in outs:
            raise ModelError(f"{self.name}: {where} has inputs {ins} and outputs {outs}")

        def unsupported(detail=""):
            return UnsupportedOperator(i, opname, ins, outs, detail)

        handler = getattr(self, "_" + opname.lower(), None)
        if handler is None and opname not in _SIMPLE:
            raise unsupported()
        if handler is None:
            kind, attrs, ins = _SIMPLE[opname], {}, ins[:1]
        else:
            kind, attrs, ins = handler(self._options(op, opname, where), ins, outs, unsupported)
        if "activation" in attrs and attrs["activation"] not in _ACTIVATIONS.values():
            raise unsupported(f"fused activation {attrs['activation']}")
        return Op(kind, ins, outs, attrs, index=i, source=opname)

    def _options(self, op, opname, where):
        """The operator's options table, or None (defaults). A table of another type (a
        corrupted tag) is refused rather than read as this operator's options."""
        cls_name = _OPTION_TABLES.get(opname)
        if cls_name is None:
            return None
        table, tag = op.BuiltinOptions(), op.BuiltinOptionsType()
        if table is None or tag == BuiltinOptions.NONE:
            if opname in _OPTIONS_REQUIRED:
                raise ModelError(f"{self.name}: {where} has no options ({cls_name} required)")
            return None
        if tag != getattr(BuiltinOptions, cls_name):
            raise ModelError(f"{self.name}: {where} has builtin options of type "
                             f"{_OPTION_NAMES.get(tag, tag)}, expected {cls_name}")
        opts = getattr(tflite, cls_name)()
        opts.Init(table.Bytes, table.Pos)
        return opts

    def _const(self, name, unsupported, what):
        t = self.tensors.get(name)
        if t is None or t.data is None:
            raise unsupported(f"{what} must be a constant tensor")
        return t.data

    def _spatial_padding(self, opts, x, kh, kw, sh, sw, dh=1, dw=1):
        _, h, w, _ = self.tensors[x].shape
        if opts.Padding() not in (0, 1):
            raise ModelError(f"{self.name}: {self.where}: padding {opts.Padding()} is neither "
                             "SAME (0) nor VALID (1)")
        if min(sh, sw, dh, dw) < 1:
            return (0, 0, 0, 0)  # validate() names the bad stride or dilation
        if opts.Padding() == 0:  # SAME
            (pt, pb), (pl, pr) = same_padding(h, kh, sh, dh), same_padding(w, kw, sw, dw)
            return (pt, pl, pb, pr)
        return (0, 0, 0, 0)

    def _conv_2d(self, opts, ins, outs, unsupported):
        _, kh, kw, _ = self.tensors[ins[1]].shape
        s = (opts.StrideH(), opts.StrideW())
        d = (opts.DilationHFactor(), opts.DilationWFactor())
        pad = self._spatial_padding(opts, ins[0], kh, kw, *s, *d)
        if self.tensors[ins[0]].shape[3] != self.tensors[ins[1]].shape[3]:
            raise unsupported("grouped convolution")
        attrs = dict(stride=s, dilation=d, padding=pad,
                     activation=_ACTIVATIONS.get(opts.FusedActivationFunction(), "?"))
        return "conv2d", attrs, (ins + [""])[:3]

    def _depthwise_conv_2d(self, opts, ins, outs, unsupported):
        _, kh, kw, _ = self.tensors[ins[1]].shape
        s = (opts.StrideH(), opts.StrideW())
        d = (opts.DilationHFactor(), opts.DilationWFactor())
        pad = self._spatial_padding(opts, ins[0], kh, kw, *s, *d)
        # TFLite Micro loops over the field (0 leaves the output unwritten): validate() checks it
        attrs = dict(stride=s, dilation=d, padding=pad, depth_multiplier=opts.DepthMultiplier(),
                     activation=_ACTIVATIONS.get(opts.FusedActivationFunction(), "?"))
        return "depthwise_conv2d", attrs, (ins + [""])[:3]

    def _fully_connected(self, opts, ins, outs, unsupported):
        act = _ACTIVATIONS.get(opts.FusedActivationFunction(), "?") if opts else "none"
        if self.tensors[ins[1]].data is None:
            raise unsupported("non-constant weights")
        return "fully_connected", dict(activation=act), (ins + [""])[:3]

    def _add(self, opts, ins, outs, unsupported):
        act = _ACTIVATIONS.get(opts.FusedActivationFunction(), "?") if opts else "none"
        return "add", dict(activation=act), ins

    def _mul(self, opts, ins, outs, unsupported):
        act = _ACTIVATIONS.get(opts.FusedActivationFunction(), "?") if opts else "none"
        return "mul", dict(activation=act), ins

    def _pool(self, kind, opts, ins, unsupported):
        k = (opts.FilterHeight(), opts.FilterWidth())
        s = (opts.StrideH(), opts.StrideW())
        attrs = dict(kernel=k, stride=s, padding=self._spatial_padding(opts, ins[0], *k, *s),
                     activation=_ACTIVATIONS.get(opts.FusedActivationFunction(), "?"))
        return kind, attrs, ins[:1]

    def _average_pool_2d(self, opts, ins, outs, unsupported):
        return self._pool("avg_pool2d", opts, ins, unsupported)

    def _max_pool_2d(self, opts, ins, outs, unsupported):
        return self._pool("max_pool2d", opts, ins, unsupported)

    def _pad(self, opts, ins, outs, unsupported):
        pads = self._const(ins[1], unsupported, "paddings")
        if len(ins) > 2 and ins[2]:
            raise unsupported("PADV2 constant values")
        return "pad", dict(pads=tuple(tuple(int(v) for v in p) for p in pads)), ins[:1]

    def _padv2(self, opts, ins, outs, unsupported):
        raise unsupported("PADV2")

    def _mean(self, opts, ins, outs, unsupported):
        rank = len(self.tensors[ins[0]].shape)
        axes = tuple(sorted(int(a) % rank for a in np.atleast_1d(
            self._const(ins[1], unsupported, "axis"))))
        return "mean", dict(axes=axes, keep_dims=bool(opts.KeepDims()) if opts else False), \
            ins[:1]

    def _reshape(self, opts, ins, outs, unsupported):
        return "reshape", {}, ins[:1]

    def _transpose(self, opts, ins, outs, unsupported):
        perm = tuple(int(p) for p in self._const(ins[1], unsupported, "perm"))
        return "transpose", dict(perm=perm), ins[:1]

    def _concatenation(self, opts, ins, outs, unsupported):
        rank = len(self.tensors[outs[0]].shape)
        return "concat", dict(axis=opts.Axis() % rank, activation=_ACTIVATIONS.get(
            opts.FusedActivationFunction(), "?")), ins

    def _resize_nearest_neighbor(self, opts, ins, outs, unsupported):
        return "resize_nearest", dict(align_corners=bool(opts.AlignCorners()),
                                      half_pixel_centers=bool(opts.HalfPixelCenters())), ins[:1]

    def _softmax(self, opts, ins, outs, unsupported):
        return "softmax", dict(beta=float(opts.Beta()) if opts else 1.0), ins[:1]


def _ints(values) -> list:
    """A flatbuffer int vector (0 when absent) as Python ints."""
    return [int(v) for v in values] if not isinstance(values, int) else []


def _read_everything(table, size: int):
    """Reads every field of a flatbuffer table and of the tables under it, as TFLite Micro's
    Python interpreter does when it unpacks a model, so that a corrupt offset anywhere (an
    unused buffer, a tensor name) is refused here too; the flatbuffer reader raises on it.
    Unions (operator options) are checked by type where they are read."""
    cls = type(table)
    for name in _fields(cls):
        if hasattr(cls, name + "Length"):
            if hasattr(cls, name + "AsNumpy"):  # numpy checks the bounds
                getattr(table, name + "AsNumpy")()
                continue
            n = getattr(table, name + "Length")()
            if n * 4 > size:  # a corrupt length would make this loop run for ever
                raise ValueError(f"{cls.__name__}.{name} has {n} elements")
            children = (getattr(table, name)(i) for i in range(n))
        else:
            children = [getattr(table, name)()]
        for child in children:
            if hasattr(child, "_tab") and type(child).__module__.startswith("tflite."):
                _read_everything(child, size)


_FIELDS = {}


def _fields(cls) -> list:
    if cls not in _FIELDS:
        _FIELDS[cls] = [n for n, v in vars(cls).items() if callable(v) and n[:1].isupper()
                        and n != "Init" and not n.startswith("GetRootAs")
                        and not n.endswith(("IsNone", "Length", "AsNumpy", "HasIdentifier"))]
    return _FIELDS[cls]
