"""The model graph every front end produces: NHWC tensors, explicit padding, TFLite-style
quantization. Front ends write it, the Relax emitter and the analysis read it.

Operator kinds and their attributes (all NHWC; weights are constant tensors):

  conv2d            inputs x, w (O,KH,KW,I), bias|""     stride, dilation, padding, activation
  depthwise_conv2d  inputs x, w (1,KH,KW,C*M), bias|""   stride, dilation, padding, activation,
                                                         depth_multiplier
  fully_connected   inputs x, w (O,I), bias|""           activation
  add, mul          inputs a, b (broadcasting)           activation
  pad               inputs x                             pads ((before, after) per dim)
  avg_pool2d, max_pool2d  inputs x                       kernel, stride, padding, activation
  mean              inputs x                             axes, keep_dims
  reshape           inputs x                             (shape = output tensor's shape)
  transpose         inputs x                             perm
  concat            inputs x0, x1, ...                   axis, activation
  resize_nearest    inputs x                             align_corners, half_pixel_centers
  softmax           inputs x                             beta
  logistic, hard_swish, relu, relu6, quantize, dequantize   inputs x

`padding` is explicit (top, left, bottom, right); `activation` is one of ACTIVATIONS.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import numpy as np

ACTIVATIONS = ("none", "relu", "relu6", "relu_n1_to_1")
DTYPE_BYTES = {"int8": 1, "uint8": 1, "int16": 2, "int32": 4, "float32": 4, "int64": 8, "bool": 1}


class ModelError(ValueError):
    """A model we cannot read or compile, with a message that names the problem."""


class UnsupportedOperator(ModelError):
    def __init__(self, index: int, name: str, inputs, outputs, detail: str = ""):
        self.index, self.op_name = index, name
        msg = (f"unsupported operator {name} at index {index} "
               f"(inputs {list(inputs)}, outputs {list(outputs)})")
        super().__init__(msg + (f": {detail}" if detail else ""))


@dataclass
class Quant:
    """Affine quantization: real = scale * (q - zero_point); per-channel along `axis`."""
    scale: np.ndarray
    zero_point: np.ndarray
    axis: int = 0

    def __post_init__(self):
        self.scale = np.atleast_1d(np.asarray(self.scale, dtype=np.float32))
        self.zero_point = np.atleast_1d(np.asarray(self.zero_point, dtype=np.int64))

    @property
    def per_channel(self) -> bool:
        return self.scale.size > 1

    @property
    def s(self) -> float:
        """The per-tensor scale as float32 (per-tensor quantization only)."""
        assert not self.per_channel
        return np.float32(self.scale[0])

    @property
    def zp(self) -> int:
        return int(self.zero_point[0])


@dataclass
class Tensor:
    name: str
    shape: tuple
    dtype: str
    quant: Quant | None = None
    data: np.ndarray | None = None  # set for constants (weights, biases)

    @property
    def is_const(self) -> bool:
        return self.data is not None

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * DTYPE_BYTES[self.dtype]  # exact: no int64 overflow


@dataclass
class Op:
    kind: str
    inputs: list
    outputs: list
    attrs: dict = field(default_factory=dict)
    index: int = -1          # position of the operator in the source model
    source: str = ""         # the source model's operator name, e.g. CONV_2D


@dataclass
class Graph:
    tensors: dict
    ops: list
    inputs: list
    outputs: list
    name: str = "model"

    def t(self, name: str) -> Tensor:
        return self.tensors[name]

    def producers(self) -> dict:
        return {o: op for op in self.ops for o in op.outputs}

    def consumers(self) -> dict:
        users: dict = {}
        for op in self.ops:
            for i in op.inputs:
                if i:
                    users.setdefault(i, []).append(op)
        return users


def same_padding(in_size: int, kernel: int, stride: int, dilation: int = 1) -> tuple:
    """TF 'SAME' padding (before, after): the extra row or column goes after."""
    eff = (kernel - 1) * dilation + 1
    out = -(-in_size // stride)
    total = max((out - 1) * stride + eff - in_size, 0)
    return total // 2, total - total // 2


def conv_out_size(in_size: int, kernel: int, stride: int, dilation: int, before: int,
                  after: int) -> int:
    eff = (kernel - 1) * dilation + 1
    return (in_size + before + after - eff) // stride + 1


def to_record(graph: Graph) -> dict:
    """The graph as JSON text plus its constant arrays, for carrying it inside an IRModule
    (the patch pass re-plans the stage from the graph the module was emitted from)."""
    tensors = [{"name": t.name, "shape": [int(d) for d in t.shape], "dtype": t.dtype,
                "quant": None if t.quant is None else {
                    "scale": [float(v) for v in t.quant.scale],
                    "zero_point": [int(v) for v in t.quant.zero_point], "axis": t.quant.axis},
                "const": t.is_const} for t in graph.tensors.values()]
    ops = [{"kind": op.kind, "inputs": op.inputs, "outputs": op.outputs, "attrs": op.attrs,
            "index": op.index, "source": op.source} for op in graph.ops]
    text = json.dumps({"name": graph.name, "tensors": tensors, "ops": ops,
                       "inputs": graph.inputs, "outputs": graph.outputs}, default=_plain)
    return {"json": text, "data": {t.name: t.data for t in graph.tensors.values() if t.is_const}}


def from_record(text: str, data: dict) -> Graph:
    rec = json.loads(text)
    tensors = {}
    for t in rec["tensors"]:
        q = t["quant"]
        tensors[t["name"]] = Tensor(
            t["name"], tuple(t["shape"]), t["dtype"],
            None if q is None else Quant(np.array(q["scale"], np.float32),
                                         np.array(q["zero_point"], np.int64), q["axis"]),
            np.asarray(data[t["name"]]) if t["const"] else None)
    ops = [Op(o["kind"], o["inputs"], o["outputs"], _tuples(o["attrs"]), o["index"],
              o["source"]) for o in rec["ops"]]
    return Graph(tensors, ops, rec["inputs"], rec["outputs"], rec["name"])


def _plain(v):
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    raise TypeError(f"cannot record {type(v).__name__}")


def _tuples(v):
    """JSON lists back to the tuples the front ends write."""
    if isinstance(v, dict):
        return {k: _tuples(x) for k, x in v.items()}
    if isinstance(v, list):
        return tuple(_tuples(x) for x in v)
    return v
