"""Reads an ONNX model into the graph IR.

ONNX is NCHW, the IR is NHWC: every 4-D ONNX value is held in the IR transposed by
(0, 2, 3, 1); values of other ranks keep their ONNX layout. The model's interface stays in
ONNX layout: a 4-D input is followed by a `transpose` to NHWC and a 4-D output is preceded
by one back to NCHW.

Float models: BatchNormalization folds into the preceding Conv, Relu/Clip into the preceding
conv/fully-connected/add/mul, x * HardSigmoid(x) becomes `hard_swish`.

QDQ int8 models (onnxruntime.quantization.quantize_static, QuantFormat.QDQ): an operator
whose data inputs all come through DequantizeLinear (int8 activations, int8 weights, int32
bias) and whose output goes to a single QuantizeLinear becomes an int8 IR op carrying the
Q/DQ parameters. Any other QuantizeLinear/DequantizeLinear (e.g. at the model boundary)
becomes a `quantize`/`dequantize` op.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper, shape_inference

from ..graph import (Graph, ModelError, Op, Quant, Tensor, UnsupportedOperator, conv_out_size,
                     same_padding)

TO_NHWC = (0, 2, 3, 1)
TO_NCHW = (0, 3, 1, 2)
_DEFAULT_DOMAINS = ("", "ai.onnx")
_NEVER_FOLD = {"QuantizeLinear", "DequantizeLinear", "RandomNormal", "RandomUniform",
               "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli"}
_OPERATOR_QUANTIZATION = {"QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger",
                          "DynamicQuantizeLinear"}
_DTYPES = {TensorProto.FLOAT: "float32", TensorProto.INT8: "int8"}
# int8 ops whose quantization TFLite constrains (see _Converter._emit)
_INT8_RULES = {"concat", "reshape", "transpose", "max_pool2d", "pad", "resize_nearest"}
# int8 ops computed with ONNX's own semantics (dequantize, float op, quantize), which need no
# requantization around them and stay within a step of onnxruntime
_REAL_VALUED = {"softmax", "avg_pool2d", "mean", "logistic", "hard_swish"}


def read_onnx(model: str | bytes | onnx.ModelProto) -> Graph:
    """Convert an ONNX model (a path, serialized bytes or a ModelProto) into the graph IR.
    Raises ModelError for unreadable models, UnsupportedOperator for operators or patterns
    the IR cannot express."""
    proto = _load(model)
    try:
        return _Converter(_prepare(proto)).convert()
    except ModelError:
        raise
    except Exception as e:  # a malformed but parseable model; keep the cause for debugging
        raise ModelError(f"cannot convert ONNX model '{proto.graph.name}': "
                         f"{type(e).__name__}: {e}") from e


# --- loading and preparation --------------------------------------------------------------

def _load(model) -> onnx.ModelProto:
    if isinstance(model, onnx.ModelProto):
        proto = onnx.ModelProto()
        proto.CopyFrom(model)
    elif isinstance(model, (bytes, bytearray, memoryview)):
        try:
            proto = onnx.load_model_from_string(bytes(model))
        except Exception as e:  # protobuf's DecodeError and friends
            raise ModelError(f"corrupt or truncated ONNX model ({len(model)} bytes; "
                             f"{type(e).__name__}: {e})") from None
    elif isinstance(model, (str, os.PathLike)):
        path = os.fspath(model)
        if not os.path.isfile(path):
            raise ModelError(f"no such ONNX model file: {path}")
        try:
            proto = onnx.load(path)
        except Exception as e:
            raise ModelError(f"{path}: corrupt or truncated ONNX file "
                             f"({type(e).__name__}: {e})") from None
    else:
        raise TypeError(f"read_onnx expects a path, bytes or onnx.ModelProto, "
                        f"not {type(model).__name__}")
    if not proto.HasField("graph") or not proto.graph.node:
        raise ModelError("not an ONNX model, or a truncated one: it has no graph nodes")
    _check_structure(proto)
    return proto


def _check_structure(proto: onnx.ModelProto):
    """What a file cut at a message boundary lacks: the opset, or values nodes refer to."""
    if not any(o.domain in _DEFAULT_DOMAINS for o in proto.opset_import):
        raise ModelError("the model imports no ai.onnx opset (truncated or malformed file)")
    defined = {i.name for i in proto.graph.input} | {i.name for i in proto.graph.initializer}
    for index, node in enumerate(proto.graph.node):
        missing = [i for i in node.input if i and i not in defined]
        if missing:
            raise ModelError(f"node {index} ({node.op_type} '{node.name}') uses undefined "
                             f"values {missing} (truncated, malformed or not topologically "
                             f"sorted model)")
        defined.update(node.output)
    undefined = [o.name for o in proto.graph.output if o.name not in defined]
    if undefined:
        raise ModelError(f"model outputs {undefined} are never computed (truncated or "
                         f"malformed model)")


@dataclass
class _Prepared:
    name: str
    opset: int
    nodes: list        # (index in the source model, NodeProto), topologically sorted
    consts: dict       # value name -> np.ndarray (initializers and folded values)
    shapes: dict       # value name -> static ONNX shape
    elem_types: dict   # value name -> TensorProto element type
    inputs: list
    outputs: list


def _prepare(model: onnx.ModelProto) -> _Prepared:
    """Fixes unknown input dims to 1, infers shapes, and folds constant subgraphs (Constant,
    Shape of a static tensor, and anything computed from constants only) so that shapes
    written as Shape->Gather->Concat->Reshape become constant."""
    graph = model.graph
    opset = next((o.version for o in model.opset_import if o.domain in _DEFAULT_DOMAINS), 1)
    consts = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in consts]
    for value in inputs:
        for dim in value.type.tensor_type.shape.dim:
            if not dim.HasField("dim_value") or dim.dim_value <= 0:
                dim.Clear()
                dim.dim_value = 1
    outputs = [helper.make_tensor_value_info(o.name, o.type.tensor_type.elem_type, None)
               for o in graph.output]
    nodes = list(enumerate(graph.node))
    while True:
        shapes, elem_types = _infer_shapes(model, graph.name, nodes, consts, inputs, outputs)
        kept = _fold_constants(nodes, consts, shapes, opset, {o.name for o in outputs})
        if len(kept) == len(nodes):
            break
        nodes = kept
    return _Prepared(graph.name or "model", opset, nodes, consts, shapes, elem_types,
                     [i.name for i in inputs], [o.name for o in outputs])


def _infer_shapes(model, name, nodes, consts, inputs, outputs):
    used = {i for _, n in nodes for i in n.input} | {o.name for o in outputs}
    # inference needs the values of small shape-like constants only; weights get a type
    small = {k: v for k, v in consts.items() if k in used and v.size <= 64}
    typed = [helper.make_tensor_value_info(k, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
             for k, v in consts.items() if k in used and k not in small]
    inits = [numpy_helper.from_array(v, k) for k, v in small.items()]
    graph = helper.make_graph([n for _, n in nodes], name, inputs + typed, outputs, inits)
    # from IR version 4 on, initializers need not be listed as inputs
    proto = helper.make_model(graph, opset_imports=model.opset_import,
                              ir_version=max(model.ir_version, 4))
    inferred = shape_inference.infer_shapes(proto, strict_mode=False, data_prop=True).graph
    shapes, elem_types = {}, {}
    for value in list(inferred.input) + list(inferred.value_info) + list(inferred.output):
        tensor_type = value.type.tensor_type
        elem_types[value.name] = tensor_type.elem_type
        dims = tensor_type.shape.dim
        if tensor_type.HasField("shape") and all(d.HasField("dim_value") for d in dims):
            shapes[value.name] = tuple(int(d.dim_value) for d in dims)
    for k, v in consts.items():
        shapes[k] = tuple(v.shape)
        elem_types[k] = helper.np_dtype_to_tensor_dtype(v.dtype)
    return shapes, elem_types


def _fold_constants(nodes, consts, shapes, opset, graph_outputs) -> list:
    kept = []
    for index, node in nodes:
        if (node.domain in _DEFAULT_DOMAINS and node.op_type not in _NEVER_FOLD
                and not set(node.output) & graph_outputs
                and not any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
                            for a in node.attribute)):
            values = _evaluate(node, consts, shapes, opset)
            if values is not None:
                consts.update(zip(node.output, values))
                continue
        kept.append((index, node))
    return kept


def _evaluate(node, consts, shapes, opset):
    if node.op_type in ("Shape", "Size") and node.input[0] in shapes:
        shape = np.array(shapes[node.input[0]], dtype=np.int64)
        if node.op_type == "Size":
            return [np.array(shape.prod(), dtype=np.int64)]
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        return [shape[attrs.get("start", 0):attrs.get("end", len(shape))]]
    if not all(i in consts for i in node.input if i):
        return None
    from onnx.reference import ReferenceEvaluator
    try:
        feeds = {i: consts[i] for i in node.input if i}
        results = ReferenceEvaluator(node, opsets={"": opset}).run(None, feeds)
    except Exception:
        return None  # leave it to the converter, which names the operator in its error
    return [np.asarray(r) for r in results]


# --- helpers ---------------------------------------------------------------------------------

@dataclass
class _QConst:
    """A constant behind a DequantizeLinear: int8 weights or int32 bias, ONNX layout."""
    name: str           # the quantized initializer's name
    data: np.ndarray
    scale: np.ndarray   # float32, 1-D
    zero_point: np.ndarray
    axis: int

    def real(self) -> np.ndarray:
        shape = [1] * self.data.ndim
        if self.scale.size > 1:
            shape[self.axis] = -1
        zp = self.zero_point.reshape(shape) if self.zero_point.size > 1 else self.zero_point[0]
        diff = (self.data.astype(np.int64) - zp).astype(np.float32)
        return diff * self.scale.reshape(shape if self.scale.size > 1 else ())


def _same_quant(a: Quant, b: Quant) -> bool:
    return np.array_equal(a.scale, b.scale) and np.array_equal(a.zero_point, b.zero_point)


def _ir_shape(shape) -> tuple:
    return tuple(shape[i] for i in TO_NHWC) if len(shape) == 4 else tuple(shape)


def _ir_axis(axis: int, rank: int) -> int:
    axis %= rank
    return TO_NHWC.index(axis) if rank == 4 else axis


def _ir_layout(array: np.ndarray) -> np.ndarray:
    return array.transpose(TO_NHWC) if array.ndim == 4 else array


def _is_trivial_transpose(shape, perm) -> bool:
    """True when the transpose only moves size-1 dims, i.e. is a reshape in memory."""
    moved = [p for p in perm if shape[p] != 1]
    return moved == sorted(moved)


def _nearest_onnx(in_size, out_size, scale, mode, rounding):
    x = np.arange(out_size, dtype=np.float64)
    if mode == "half_pixel" or (mode == "pytorch_half_pixel" and out_size > 1):
        orig = (x + 0.5) / scale - 0.5
    elif mode == "pytorch_half_pixel":
        orig = np.zeros_like(x)
    elif mode == "align_corners":
        orig = x * (in_size - 1) / (out_size - 1) if out_size > 1 else np.zeros_like(x)
    elif mode == "asymmetric":
        orig = x / scale
    elif mode == "tf_half_pixel_for_nn":
        orig = (x + 0.5) / scale
    else:
        return None
    index = {"round_prefer_floor": lambda v: np.ceil(v - 0.5),
             "round_prefer_ceil": lambda v: np.floor(v + 0.5),
             "floor": np.floor, "ceil": np.ceil}[rounding](orig)
    return np.clip(index, 0, in_size - 1).astype(np.int64)


def _nearest_tflite(in_size, out_size, align_corners, half_pixel_centers):
    """TFLite's RESIZE_NEAREST_NEIGHBOR index mapping (float32 arithmetic, like the kernel)."""
    x = np.arange(out_size, dtype=np.float32)
    if align_corners and out_size > 1:
        scale = np.float32(in_size - 1) / np.float32(out_size - 1)
    else:
        scale = np.float32(in_size) / np.float32(out_size)
    value = (x + np.float32(0.5 if half_pixel_centers else 0.0)) * scale
    index = np.sign(value) * np.floor(np.abs(value) + 0.5) if align_corners else np.floor(value)
    index = np.minimum(index, in_size - 1)
    return np.maximum(index, 0).astype(np.int64) if half_pixel_centers else index.astype(np.int64)


# --- conversion ----------------------------------------------------------------------------

class _Converter:
    def __init__(self, prepared: _Prepared):
        self.p = prepared
        self.consts, self.shapes = prepared.consts, prepared.shapes
        self.consumers, self.producers = {}, {}
        for _, node in prepared.nodes:
            for name in node.input:
                if name:
                    self.consumers.setdefault(name, []).append(node)
            for name in node.output:
                self.producers[name] = node
        self.graph_outputs = set(prepared.outputs)
        self.reserved = set(self.shapes) | set(self.producers) | set(prepared.inputs)
        self.tensors, self.ops = {}, []
        self.values = {}     # ONNX value -> IR tensor holding it
        self.dq_values = {}  # output of an activation DequantizeLinear -> (int8 IR tensor, index)
        self.qconsts = {}    # output of a constant DequantizeLinear -> _QConst
        self.skip = set()    # ids of nodes already converted as part of a pattern
        self.index, self.node = -1, None

    def convert(self) -> Graph:
        for name in self.p.inputs:
            self._graph_input(name)
        for self.index, self.node in self.p.nodes:
            node = self.node
            if id(node) in self.skip:
                continue
            if node.domain not in _DEFAULT_DOMAINS:
                raise self._unsupported(f"operator domain '{node.domain}' is not supported")
            handler = getattr(self, f"op_{node.op_type}", None)
            if handler is None and node.op_type in _OPERATOR_QUANTIZATION:
                raise self._unsupported("operator-oriented (QOperator) quantization is not "
                                        "supported; quantize with QuantFormat.QDQ")
            if handler is None:
                raise self._unsupported()
            if node.output[0] not in self.shapes:
                raise ModelError(f"the shape of '{node.output[0]}' (output of node {self.index}, "
                                 f"{node.op_type} '{node.name}') could not be inferred")
            handler(node)
        self.index, self.node = -1, None
        outputs = [self._graph_output(name) for name in self.p.outputs]
        used = {n for op in self.ops for n in op.inputs + op.outputs}
        used |= set(self.p.inputs) | set(outputs)
        tensors = {k: v for k, v in self.tensors.items() if k in used}
        return Graph(tensors, self.ops, list(self.p.inputs), outputs, self.p.name)

    # --- errors, tensors, ops

    def _unsupported(self, detail: str = "") -> UnsupportedOperator:
        node = self.node
        label = f"node '{node.name}'" if node.name else "unnamed node"
        return UnsupportedOperator(self.index, node.op_type, node.input, node.output,
                                   f"{label}: {detail}" if detail else label)

    def _new_tensor(self, base: str, shape, dtype: str, quant=None, data=None,
                    exact: bool = False) -> str:
        """Adds an IR tensor. `exact` keeps an ONNX value's own name; generated names avoid
        every ONNX name so later values keep theirs."""
        name, k = base, 0
        while name in self.tensors or (not exact and name in self.reserved):
            k += 1
            name, exact = f"{base}_{k}", False
        self.tensors[name] = Tensor(name, tuple(int(d) for d in shape), dtype, quant, data)
        return name

    def _const(self, base: str, data: np.ndarray, quant=None, exact: bool = False) -> str:
        return self._new_tensor(base, data.shape, str(data.dtype), quant,
                                np.ascontiguousarray(data), exact)

    def _value_tensor(self, onnx_name: str, dtype: str, quant=None) -> str:
        """The IR tensor for ONNX value `onnx_name` (IR layout). A 4-D graph output keeps its
        name for the NCHW tensor made at the end."""
        shape = self.shapes[onnx_name]
        exact = not (onnx_name in self.graph_outputs and len(shape) == 4)
        base = onnx_name if exact else f"{onnx_name}_nhwc"
        name = self._new_tensor(base, _ir_shape(shape), dtype, quant, exact=exact)
        self.values[onnx_name] = name
        return name

    def _like(self, base: str, shape, like: str) -> str:
        src = self.tensors[like]
        return self._new_tensor(base, shape, src.dtype, src.quant)

    def _emit(self, kind: str, inputs, outputs, index=None, source=None, **attrs):
        """Adds an op. Int8 ops are held to TFLite's int8 rules, which QDQ models need not
        follow, by requantizing (an int8 -> int8 `quantize`) around them: concat inputs take
        the output's parameters, and layout, max pooling and padding ops keep their input's
        parameters. The _REAL_VALUED ops are left alone: they compute in float between
        dequantize and quantize, for any output parameters, without a second rounding."""
        index = self.index if index is None else index
        if source is None:
            source = self.node.op_type if self.node is not None else ""

        def add(kind, inputs, outputs, **attrs):
            self.ops.append(Op(kind, list(inputs), list(outputs), attrs, index, source))

        out = self.tensors[outputs[0]]
        if out.dtype == "int8" and kind in _REAL_VALUED:
            attrs["real_valued"] = True
        if out.dtype != "int8" or out.quant is None or kind not in _INT8_RULES:
            add(kind, inputs, outputs, **attrs)
            return
        required = self.tensors[inputs[0]].quant
        if kind == "concat":
            inputs, required = [self._requantized(i, out.quant, add) for i in inputs], out.quant
        if required is None or _same_quant(required, out.quant):
            add(kind, inputs, outputs, **attrs)
            return
        fixed = self._new_tensor(f"{out.name}_{kind}", out.shape, "int8", required)
        add(kind, inputs, [fixed], **attrs)
        add("quantize", [fixed], outputs)

    def _requantized(self, name: str, quant: Quant, add) -> str:
        tensor = self.tensors[name]
        if tensor.quant is None or _same_quant(tensor.quant, quant):
            return name
        if tensor.is_const:
            real = (tensor.data.astype(np.float64) - tensor.quant.zp) * tensor.quant.s
            data = np.clip(np.round(real / quant.s) + quant.zp, -128, 127).astype(np.int8)
            return self._const(f"{name}_requantized", data, quant)
        out = self._new_tensor(f"{name}_requantized", tensor.shape, "int8", quant)
        add("quantize", [name], [out])
        return out

    def _attr(self, node, name, default=None):
        for a in node.attribute:
            if a.name == name:
                value = helper.get_attribute_value(a)
                return value.decode() if isinstance(value, bytes) else value
        return default

    # --- graph structure

    def _sole_consumer(self, name: str, op_types):
        """The only consumer of `name` if it is one of `op_types` (and `name` is not a graph
        output, which would need the unfused value)."""
        users = self.consumers.get(name, [])
        if len(users) == 1 and name not in self.graph_outputs and users[0].op_type in op_types \
                and id(users[0]) not in self.skip:
            return users[0]
        return None

    def _source(self, name: str) -> str:
        """The quantized value behind a DequantizeLinear output, else the value itself."""
        producer = self.producers.get(name)
        return producer.input[0] if producer is not None and \
            producer.op_type == "DequantizeLinear" else name

    def _is_const(self, name: str) -> bool:
        return name in self.consts or name in self.qconsts

    def _const_shape(self, name: str) -> tuple:
        return tuple((self.qconsts[name].data if name in self.qconsts else self.consts[name]).shape)

    def _float_const(self, name: str) -> np.ndarray:
        if name in self.qconsts:
            return self.qconsts[name].real()
        return np.asarray(self.consts[name], dtype=np.float32)

    def _is_qdq(self, data_inputs, output: str) -> bool:
        """The int8 pattern: every data input comes through a DequantizeLinear, the output
        goes to exactly one QuantizeLinear."""
        return (all(i in self.dq_values or i in self.qconsts for i in data_inputs if i)
                and self._sole_consumer(output, ("QuantizeLinear",)) is not None)

    # --- values

    def _input(self, name: str, quantized: bool) -> str:
        """The IR tensor of ONNX value `name`: the int8 tensor behind its DequantizeLinear
        when `quantized`, else the float value (dequantized on first use if needed)."""
        if quantized:
            if name in self.dq_values:
                return self.dq_values[name][0]
            qc = self.qconsts[name]
            return self._const(qc.name, _ir_layout(qc.data), self._const_quant(qc), exact=True)
        if name in self.values:
            return self.values[name]
        if name in self.dq_values:
            src, index = self.dq_values[name]
            out = self._value_tensor(name, "float32")
            self._emit("dequantize", [src], [out], index, "DequantizeLinear")
            return out
        if self._is_const(name):
            name_ir = self._const(name, _ir_layout(self._float_const(name)), exact=True)
            self.values[name] = name_ir
            return name_ir
        raise ModelError(f"value '{name}' is used before it is computed")

    def _const_quant(self, qc: _QConst) -> Quant:
        if qc.scale.size > 1:
            raise self._unsupported("a per-channel quantized constant is used as an activation")
        return Quant(qc.scale, qc.zero_point)

    def _output(self, onnx_name: str, quantized: bool, like: str | None = None) -> str:
        """The IR tensor for an operator's output: in the int8 pattern, the output of the
        QuantizeLinear that follows (which is then done); else float, or like `like` for
        layout-only operators that pass int8 through."""
        if quantized:
            q = self._sole_consumer(onnx_name, ("QuantizeLinear",))
            self.skip.add(id(q))
            return self._value_tensor(q.output[0], "int8", self._activation_quant(q))
        if like is not None:
            src = self.tensors[like]
            return self._value_tensor(onnx_name, src.dtype, src.quant)
        return self._value_tensor(onnx_name, "float32")

    def _activation_quant(self, node) -> Quant:
        """Quantization parameters of a QuantizeLinear/DequantizeLinear on an activation."""
        scale = np.asarray(self.consts[node.input[1]])
        zp_name = node.input[2] if len(node.input) > 2 else ""
        zero_point = self.consts.get(zp_name)
        if zero_point is None:  # the type then comes from the input (DQ) or output_dtype (Q)
            int8 = node.op_type == "DequantizeLinear" or \
                self._attr(node, "output_dtype", 0) == TensorProto.INT8
            zero_point = np.zeros(1, np.int8 if int8 else np.uint8)
        zp_type = str(zero_point.dtype)
        if zp_type != "int8":
            raise self._unsupported(f"{zp_type} quantization is not supported; quantize with "
                                    f"activation_type=QInt8 and weight_type=QInt8")
        if scale.size != 1 or self._attr(node, "block_size", 0):
            raise self._unsupported("only per-tensor quantization of activations is supported")
        return Quant(scale.reshape(-1), zero_point.reshape(-1))

    # --- model interface

    def _graph_input(self, name: str):
        elem = self.p.elem_types.get(name)
        if elem not in _DTYPES or name not in self.shapes:
            raise ModelError(f"model input '{name}' has type "
                             f"{TensorProto.DataType.Name(elem or 0)} or unknown rank; "
                             f"only float32 and int8 inputs with static rank are supported")
        shape, dtype = self.shapes[name], _DTYPES[elem]
        self.tensors[name] = Tensor(name, shape, dtype)
        if len(shape) == 4:
            nhwc = self._new_tensor(f"{name}_nhwc", _ir_shape(shape), dtype)
            self._emit("transpose", [name], [nhwc], -1, "", perm=TO_NHWC)
            self.values[name] = nhwc
        else:
            self.values[name] = name

    def _graph_output(self, name: str) -> str:
        src = self.values.get(name) or self._input(name, quantized=False)
        shape = self.shapes[name]
        tensor = self.tensors[src]
        if len(shape) == 4:
            out = self._new_tensor(name, shape, tensor.dtype, tensor.quant, exact=True)
            self._emit("transpose", [src], [out], -1, "", perm=TO_NCHW)
            return out
        if src != name and name not in self.tensors:
            out = self._new_tensor(name, shape, tensor.dtype, tensor.quant, exact=True)
            self._emit("reshape", [src], [out], -1, "")
            return out
        return src

    # --- QuantizeLinear / DequantizeLinear

    def op_QuantizeLinear(self, node):
        x, out = node.input[0], node.output[0]
        quant = self._activation_quant(node)
        if x in self.consts:
            q = np.round(self.consts[x] / quant.scale[0]) + quant.zero_point[0]
            self.consts[out] = np.clip(q, -128, 127).astype(np.int8)
            return
        src = self._input(x, quantized=False)
        self._emit("quantize", [src], [self._value_tensor(out, "int8", quant)])

    def op_DequantizeLinear(self, node):
        x, out = node.input[0], node.output[0]
        if x in self.consts:
            data = np.asarray(self.consts[x])
            if data.dtype not in (np.int8, np.int32):
                raise self._unsupported(f"{data.dtype} quantized constants are not supported; "
                                        f"quantize with weight_type=QInt8")
            scale = np.asarray(self.consts[node.input[1]], dtype=np.float32).reshape(-1)
            zp_name = node.input[2] if len(node.input) > 2 else ""
            zp = np.asarray(self.consts[zp_name]).reshape(-1) if zp_name else np.zeros(1, int)
            if self._attr(node, "block_size", 0):
                raise self._unsupported("blocked quantization is not supported")
            axis = self._attr(node, "axis", 1) % max(data.ndim, 1)
            self.qconsts[out] = _QConst(x, data, scale, zp.astype(np.int64), axis)
            return
        quant = self._activation_quant(node)
        src = self.values[x]
        tensor = self.tensors[src]
        if tensor.dtype != "int8":
            raise self._unsupported(f"dequantizes a {tensor.dtype} value, expected int8")
        if tensor.quant is None:  # an int8 model input: its parameters come from here
            tensor.quant = quant
        elif not _same_quant(tensor.quant, quant):
            raise self._unsupported("its scale/zero point differ from those its input was "
                                    "quantized with")
        self.dq_values[out] = (src, self.index)

    # --- pass-through

    def _alias(self, src: str, dst: str):
        for table in (self.values, self.dq_values, self.qconsts, self.consts):
            if src in table:
                table[dst] = table[src]

    def op_Identity(self, node):
        self._alias(node.input[0], node.output[0])

    def op_Dropout(self, node):
        if len(node.output) > 1 and node.output[1] in self.consumers:
            raise self._unsupported("the dropout mask output is used")
        self._alias(node.input[0], node.output[0])

    # --- convolution and fully connected

    def _padding(self, node, in_hw, kernel, stride, dilation) -> tuple:
        auto_pad = self._attr(node, "auto_pad", "NOTSET")
        if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            (top, bottom), (left, right) = (same_padding(i, k, s, d) for i, k, s, d in
                                            zip(in_hw, kernel, stride, dilation))
            if auto_pad == "SAME_LOWER":  # the odd extra row/column goes before
                top, bottom, left, right = bottom, top, right, left
            return top, left, bottom, right
        if auto_pad == "VALID":
            return 0, 0, 0, 0
        pads = self._attr(node, "pads", [0, 0, 0, 0])
        if any(p < 0 for p in pads):
            raise self._unsupported("negative padding")
        return tuple(pads)

    def _check_out_hw(self, node, in_hw, kernel, stride, dilation, padding):
        expected = tuple(conv_out_size(i, k, s, d, padding[a], padding[a + 2])
                         for a, (i, k, s, d) in enumerate(zip(in_hw, kernel, stride, dilation)))
        if tuple(self.shapes[node.output[0]][2:]) != expected:
            raise self._unsupported(f"output size {self.shapes[node.output[0]][2:]} differs "
                                    f"from floor-mode size {expected} (ceil_mode?)")

    def _fuse_activation(self, out: str) -> tuple:
        """Folds a following Relu/Clip that is the sole consumer of `out`."""
        follower = self._sole_consumer(out, ("Relu", "Clip"))
        activation = self._activation_of(follower) if follower is not None else None
        if activation is None:
            return "none", out
        self.skip.add(id(follower))
        return activation, follower.output[0]

    def _activation_of(self, node):
        if node.op_type == "Relu":
            return "relu"
        if self.p.opset < 11:
            lo = self._attr(node, "min", -np.inf)
            hi = self._attr(node, "max", np.inf)
        else:
            bounds = [node.input[i] if len(node.input) > i else "" for i in (1, 2)]
            if any(b and not self._is_const(b) for b in bounds):
                return None
            lo, hi = (float(self._float_const(b)) if b else d
                      for b, d in zip(bounds, (-np.inf, np.inf)))
        hi = np.inf if hi >= np.finfo(np.float32).max else hi
        return {(0.0, 6.0): "relu6", (0.0, np.inf): "relu",
                (-1.0, 1.0): "relu_n1_to_1"}.get((float(lo), float(hi)))

    def _int8_weights(self, name: str, out_axis: int) -> _QConst:
        qc = self.qconsts[name]
        if qc.data.dtype != np.int8:
            raise self._unsupported(f"weights are {qc.data.dtype}, expected int8")
        if np.any(qc.zero_point != 0):
            raise self._unsupported("int8 weights must be symmetric (zero point 0)")
        if qc.scale.size > 1 and qc.axis != out_axis:
            raise self._unsupported(f"weights are quantized per channel along axis {qc.axis}, "
                                    f"not the output channel axis {out_axis}")
        return qc

    def _int32_bias(self, name: str, input_ir: str, weight_scale: np.ndarray) -> str:
        bias_scale = (self.tensors[input_ir].quant.scale[0] * weight_scale).astype(np.float32)
        qc = self.qconsts.get(name)
        if qc is not None and qc.data.dtype == np.int32 and np.all(qc.zero_point == 0) \
                and np.array_equal(np.broadcast_to(qc.scale, bias_scale.shape), bias_scale):
            data = qc.data.reshape(-1).astype(np.int32)
        else:
            real = self._float_const(name).reshape(-1).astype(np.float64)
            data = np.clip(np.round(real / bias_scale), -2 ** 31, 2 ** 31 - 1).astype(np.int32)
        return self._const(qc.name if qc is not None else f"{name}_int32", data,
                           Quant(bias_scale, np.zeros(bias_scale.size), 0), exact=qc is not None)

    def op_Conv(self, node):
        x, w = node.input[0], node.input[1]
        b = node.input[2] if len(node.input) > 2 else ""
        x_shape = self.shapes[x]
        if len(x_shape) != 4:
            raise self._unsupported("only 2-D convolutions (4-D NCHW input) are supported")
        if not self._is_const(w) or (b and not self._is_const(b)):
            raise self._unsupported("weights and bias must be constant")
        cout, cin_per_group, kh, kw = self._const_shape(w)
        cin, group = x_shape[1], self._attr(node, "group", 1)
        if group == 1:
            kind = "conv2d"
        elif group == cin and cin_per_group == 1 and cout % cin == 0:
            kind = "depthwise_conv2d"
        else:
            raise self._unsupported(f"grouped convolution with group={group}, {cin} input and "
                                    f"{cout} output channels is neither a full nor a "
                                    f"depthwise convolution")
        stride = tuple(self._attr(node, "strides", [1, 1]))
        dilation = tuple(self._attr(node, "dilations", [1, 1]))
        padding = self._padding(node, x_shape[2:], (kh, kw), stride, dilation)
        self._check_out_hw(node, x_shape[2:], (kh, kw), stride, dilation, padding)

        out = node.output[0]
        batch_norm = self._foldable_batch_norm(out)
        if batch_norm is not None:
            out = batch_norm.output[0]
        activation, out = self._fuse_activation(out)
        quantized = self._is_qdq([x, w, b], out)
        if quantized and batch_norm is not None:
            raise self._unsupported("BatchNormalization between an int8 Conv and its "
                                    "QuantizeLinear; fold it before quantizing")
        x_ir = self._input(x, quantized)
        # ONNX (O, I, KH, KW) -> conv2d (O, KH, KW, I) / depthwise (1, KH, KW, O)
        to_ir = (0, 2, 3, 1) if kind == "conv2d" else (1, 2, 3, 0)
        if quantized:
            qc = self._int8_weights(w, 0)
            w_ir = self._const(qc.name, qc.data.transpose(to_ir),
                               Quant(qc.scale, qc.zero_point, 0 if kind == "conv2d" else 3),
                               exact=True)
            b_ir = self._int32_bias(b, x_ir, qc.scale) if b else ""
        else:
            weights = self._float_const(w)
            bias = self._float_const(b) if b else None
            if batch_norm is not None:
                weights, bias = self._fold_batch_norm(batch_norm, weights, bias)
            w_ir = self._const(w, weights.transpose(to_ir), exact=True)
            b_ir = self._const(b or f"{out}_bias", bias, exact=bool(b)) \
                if bias is not None else ""
        attrs = dict(stride=stride, dilation=dilation, padding=padding, activation=activation)
        if kind == "depthwise_conv2d":
            attrs["depth_multiplier"] = cout // cin
        self._emit(kind, [x_ir, w_ir, b_ir], [self._output(out, quantized)], **attrs)

    def _foldable_batch_norm(self, conv_out: str):
        bn = self._sole_consumer(conv_out, ("BatchNormalization",))
        if bn is None or not all(self._is_const(i) for i in bn.input[1:5]) or \
                any(o in self.consumers for o in bn.output[1:]):
            return None
        self.skip.add(id(bn))
        return bn

    def _batch_norm_affine(self, bn) -> tuple:
        gamma, beta, mean, var = (self._float_const(i).astype(np.float64) for i in bn.input[1:5])
        scale = gamma / np.sqrt(var + self._attr(bn, "epsilon", 1e-5))
        return scale, beta - mean * scale

    def _fold_batch_norm(self, bn, weights, bias) -> tuple:
        scale, shift = self._batch_norm_affine(bn)
        bias = np.zeros(len(scale)) if bias is None else bias.astype(np.float64)
        weights = weights.astype(np.float64) * scale.reshape(-1, 1, 1, 1)
        return weights.astype(np.float32), (bias * scale + shift).astype(np.float32)

    def op_Gemm(self, node):
        a, b = node.input[0], node.input[1]
        c = node.input[2] if len(node.input) > 2 else ""
        if self._attr(node, "transA", 0):
            raise self._unsupported("transA=1 is not supported")
        activation, out = self._fuse_activation(node.output[0])
        self._fully_connected(a, b, c, not self._attr(node, "transB", 0),
                              self._attr(node, "alpha", 1.0), self._attr(node, "beta", 1.0),
                              activation, out)

    def op_MatMul(self, node):
        a, b = node.input
        out, bias = node.output[0], ""
        add = self._sole_consumer(out, ("Add",))
        if add is not None:
            other = add.input[1] if add.input[0] == out else add.input[0]
            if self._is_const(other) and len(self._const_shape(other)) <= 2:
                bias, out = other, add.output[0]
                self.skip.add(id(add))
        activation, out = self._fuse_activation(out)
        self._fully_connected(a, b, bias, True, 1.0, 1.0, activation, out)

    def _fully_connected(self, x, w, bias, w_is_in_out, alpha, beta, activation, out):
        if len(self.shapes[x]) != 2 or not self._is_const(w) or \
                len(self._const_shape(w)) != 2:
            raise self._unsupported("only a 2-D input times constant 2-D weights is supported")
        if bias and not self._is_const(bias):
            raise self._unsupported("the bias must be constant")
        units = self._const_shape(w)[1 if w_is_in_out else 0]
        if bias and int(np.prod(self._const_shape(bias))) not in (1, units):
            raise self._unsupported("the bias must have one value per output unit")
        quantized = self._is_qdq([x, w, bias], out)
        if quantized and (alpha != 1.0 or beta != 1.0):
            raise self._unsupported("int8 Gemm needs alpha = beta = 1")
        x_ir = self._input(x, quantized)
        if quantized:
            qc = self._int8_weights(w, 1 if w_is_in_out else 0)
            data = qc.data.T if w_is_in_out else qc.data
            w_ir = self._const(qc.name, data, Quant(qc.scale, qc.zero_point, 0), exact=True)
            b_ir = ""
            if bias:
                if np.prod(self._const_shape(bias)) == 1 and units > 1:
                    raise self._unsupported("int8 fully connected needs one bias per unit")
                b_ir = self._int32_bias(bias, x_ir, qc.scale)
        else:
            weights = self._float_const(w)
            weights = (weights.T if w_is_in_out else weights) * np.float32(alpha)
            w_ir = self._const(w, weights.astype(np.float32), exact=True)
            b_ir = ""
            if bias:
                values = np.broadcast_to(self._float_const(bias).reshape(-1), (units,))
                b_ir = self._const(bias, (values * np.float32(beta)).astype(np.float32),
                                   exact=True)
        self._emit("fully_connected", [x_ir, w_ir, b_ir], [self._output(out, quantized)],
                   activation=activation)

    # --- elementwise

    def _operand(self, name: str, rank: int, quantized: bool) -> str:
        """An input of a broadcasting op: constants are padded to the output rank (ONNX
        aligns dims on the right) and laid out like the activations."""
        if not self._is_const(name):
            if len(self.shapes[name]) != rank:
                raise self._unsupported("broadcasting between activations of different rank")
            return self._input(name, quantized)
        if quantized:
            qc = self.qconsts[name]
            return self._broadcast_const(qc.name, qc.data, rank, self._const_quant(qc), True)
        return self._broadcast_const(name, self._float_const(name), rank, exact=True)

    def _broadcast_const(self, base: str, data, rank: int, quant=None, exact=False) -> str:
        data = np.asarray(data)
        data = data.reshape((1,) * (rank - data.ndim) + data.shape)
        return self._const(base, _ir_layout(data), quant, exact)

    def _binary(self, node, kind: str, rhs_transform=None):
        a, b = node.input
        activation, out = self._fuse_activation(node.output[0])
        rank = len(self.shapes[out])
        if rhs_transform is not None:  # Sub/Div by a float constant
            if b not in self.consts or self._is_qdq([a, b], out):
                raise self._unsupported("only float subtraction/division by a constant is "
                                        "supported")
            rhs = self._broadcast_const(f"{b}_{kind}", rhs_transform(self._float_const(b)), rank)
            inputs = [self._operand(a, rank, False), rhs]
            quantized = False
        else:
            quantized = self._is_qdq([a, b], out)
            inputs = [self._operand(n, rank, quantized) for n in (a, b)]
        self._emit(kind, inputs, [self._output(out, quantized)], activation=activation)

    def op_Add(self, node):
        self._binary(node, "add")

    def op_Mul(self, node):
        self._binary(node, "mul")

    def op_Sum(self, node):
        if len(node.input) != 2:
            raise self._unsupported("Sum is supported for two inputs")
        self._binary(node, "add")

    def op_Sub(self, node):
        self._binary(node, "add", lambda c: -c)

    def op_Div(self, node):
        self._binary(node, "mul", lambda c: (np.float32(1) / c).astype(np.float32))

    def _unary(self, node, kind: str, **attrs):
        x, out = node.input[0], node.output[0]
        quantized = self._is_qdq([x], out)
        self._emit(kind, [self._input(x, quantized)], [self._output(out, quantized)], **attrs)

    def op_Relu(self, node):
        self._unary(node, "relu")

    def op_Clip(self, node):
        activation = self._activation_of(node)
        if activation not in ("relu", "relu6"):
            raise self._unsupported("only Clip(0, 6) and Clip(0, inf) are supported here")
        self._unary(node, activation)

    def op_Sigmoid(self, node):
        self._unary(node, "logistic")

    def op_HardSwish(self, node):
        self._unary(node, "hard_swish")

    def op_HardSigmoid(self, node):
        x = node.input[0]
        alpha, beta = self._attr(node, "alpha", 0.2), self._attr(node, "beta", 0.5)
        mul = self._hard_swish_mul(node, alpha, beta)
        if mul is not None:  # x * HardSigmoid(x), the form HardSwish is inlined to
            quantized = self._is_qdq([x], mul.output[0])
            self._emit("hard_swish", [self._input(x, quantized)],
                       [self._output(mul.output[0], quantized)])
            return
        if self._is_qdq([x], node.output[0]):
            raise self._unsupported("int8 HardSigmoid is only supported as part of "
                                    "x * HardSigmoid(x) (hard swish)")
        # clip(alpha*x + beta, 0, 1) = relu6(6*alpha*x + 6*beta) / 6
        self._affine_chain(node, [("mul", np.float32(6 * alpha), "none"),
                                  ("add", np.float32(6 * beta), "relu6"),
                                  ("mul", np.float32(1 / 6), "none")])

    def _affine_chain(self, node, steps):
        """Float mul/add ops with constants, from node.input[0] to node.output[0]."""
        x, out = node.input[0], node.output[0]
        rank = len(self.shapes[x])
        value = self._input(x, False)
        for i, (kind, constant, activation) in enumerate(steps):
            operand = self._broadcast_const(f"{out}_{kind}", constant, rank)
            last = i == len(steps) - 1
            result = self._output(out, False) if last else \
                self._like(f"{out}_{i}", self.tensors[value].shape, value)
            self._emit(kind, [value, operand], [result], activation=activation)
            value = result

    def _hard_swish_mul(self, node, alpha, beta):
        """The Mul of x * HardSigmoid(x) (alpha 1/6, beta 1/2), possibly through a Q/DQ pair;
        the Mul and the pair are marked done."""
        if not (np.isclose(alpha, 1 / 6, rtol=1e-6) and beta == 0.5):
            return None
        value, bridge = node.output[0], []
        q = self._sole_consumer(value, ("QuantizeLinear",))
        if q is not None:
            dq = self._sole_consumer(q.output[0], ("DequantizeLinear",))
            if dq is None:
                return None
            value, bridge = dq.output[0], [q, dq]
        mul = self._sole_consumer(value, ("Mul",))
        if mul is None:
            return None
        other = mul.input[1] if mul.input[0] == value else mul.input[0]
        if self._source(other) != self._source(node.input[0]):
            return None
        self.skip.update(id(n) for n in bridge + [mul])
        return mul

    def op_BatchNormalization(self, node):
        x, out = node.input[0], node.output[0]
        if not all(self._is_const(i) for i in node.input[1:5]) or \
                any(o in self.consumers for o in node.output[1:]):
            raise self._unsupported("only inference-mode BatchNormalization with constant "
                                    "parameters is supported")
        if self._is_qdq([x], out):
            raise self._unsupported("int8 BatchNormalization is not supported; fold it into "
                                    "the convolution before quantizing (quant_pre_process)")
        channel_shape = (1, -1) + (1,) * (len(self.shapes[x]) - 2)
        scale, shift = (v.astype(np.float32).reshape(channel_shape)
                        for v in self._batch_norm_affine(node))
        self._affine_chain(node, [("mul", scale, "none"), ("add", shift, "none")])

    def op_Softmax(self, node):
        x = node.input[0]
        shape = self.shapes[x]
        rank = len(shape)
        axis = self._attr(node, "axis", -1 if self.p.opset >= 13 else 1) % rank
        reduced = [axis] if self.p.opset >= 13 else list(range(axis, rank))
        ir_axes = [_ir_axis(d, rank) for d in reduced if shape[d] > 1]
        if ir_axes not in ([], [rank - 1]):
            raise self._unsupported("softmax is supported over the channel/last axis only")
        self._unary(node, "softmax", beta=1.0)

    # --- pooling and reductions

    def _pool(self, node, kind: str):
        x = node.input[0]
        x_shape = self.shapes[x]
        if len(x_shape) != 4:
            raise self._unsupported("only 2-D pooling (4-D NCHW input) is supported")
        if any(o in self.consumers for o in node.output[1:]):
            raise self._unsupported("the pooling indices output is not supported")
        kernel = tuple(self._attr(node, "kernel_shape"))
        stride = tuple(self._attr(node, "strides", [1, 1]))
        dilation = tuple(self._attr(node, "dilations", [1, 1]))
        if dilation != (1, 1):
            raise self._unsupported("dilated pooling is not supported")
        padding = self._padding(node, x_shape[2:], kernel, stride, dilation)
        self._check_out_hw(node, x_shape[2:], kernel, stride, dilation, padding)
        if kind == "avg_pool2d" and self._attr(node, "count_include_pad", 0) and any(padding):
            raise self._unsupported("average pooling with count_include_pad=1 over padding")
        self._unary(node, kind, kernel=kernel, stride=stride, padding=padding,
                    activation="none")

    def op_MaxPool(self, node):
        self._pool(node, "max_pool2d")

    def op_AveragePool(self, node):
        self._pool(node, "avg_pool2d")

    def op_GlobalAveragePool(self, node):
        if len(self.shapes[node.input[0]]) != 4:
            raise self._unsupported("only 4-D NCHW input is supported")
        self._unary(node, "mean", axes=(1, 2), keep_dims=True)

    def op_GlobalMaxPool(self, node):
        shape = self.shapes[node.input[0]]
        if len(shape) != 4:
            raise self._unsupported("only 4-D NCHW input is supported")
        self._unary(node, "max_pool2d", kernel=tuple(shape[2:]), stride=(1, 1),
                    padding=(0, 0, 0, 0), activation="none")

    def op_ReduceMean(self, node):
        x, out = node.input[0], node.output[0]
        shape = self.shapes[x]
        rank = len(shape)
        if self.p.opset >= 18 and len(node.input) > 1 and node.input[1]:
            if node.input[1] not in self.consts:
                raise self._unsupported("the axes must be constant")
            axes = [int(a) for a in self.consts[node.input[1]].reshape(-1)]
        else:
            axes = self._attr(node, "axes", None)
        if not axes:
            if self._attr(node, "noop_with_empty_axes", 0):
                raise self._unsupported("ReduceMean without axes as a no-op")
            axes = list(range(rank))
        ir_axes = tuple(sorted(_ir_axis(a, rank) for a in axes))
        keep_dims = bool(self._attr(node, "keepdims", 1))
        kept = tuple(d for i, d in enumerate(_ir_shape(shape)) if i not in ir_axes)
        if keep_dims or kept == tuple(self.shapes[out]):
            self._unary(node, "mean", axes=ir_axes, keep_dims=keep_dims)
            return
        # the dims left are ordered differently in NHWC: reduce keeping dims, then reshape
        # from the NCHW order
        quantized = self._is_qdq([x], out)
        src = self._input(x, quantized)
        reduced = tuple(1 if i in ir_axes else d for i, d in enumerate(self.tensors[src].shape))
        mean = self._like(f"{out}_keepdims", reduced, src)
        if quantized:
            self.tensors[mean].quant = self._activation_quant(
                self._sole_consumer(out, ("QuantizeLinear",)))
        self._emit("mean", [src], [mean], axes=ir_axes, keep_dims=True)
        kept_onnx = tuple(1 if a in [d % rank for d in axes] else d for a, d in enumerate(shape))
        self._relayout(mean, kept_onnx, self._output(out, quantized, like=mean))

    # --- layout and shape

    def _transpose(self, src: str, perm, out: str):
        if _is_trivial_transpose(self.tensors[src].shape, perm):
            self._emit("reshape", [src], [out])
        else:
            self._emit("transpose", [src], [out], perm=tuple(int(p) for p in perm))

    def _reshape(self, node):
        x, out = node.input[0], node.output[0]
        quantized = self._is_qdq([x], out)
        src = self._input(x, quantized)
        self._relayout(src, self.shapes[x], self._output(out, quantized, like=src))

    op_Reshape = op_Flatten = op_Squeeze = op_Unsqueeze = _reshape

    def _relayout(self, src: str, onnx_shape, result: str):
        """Reshapes IR tensor `src`, holding a value of ONNX shape `onnx_shape`, into `result`
        in ONNX (row-major NCHW) element order, transposing 4-D ends from and to NHWC."""
        out_shape = self.tensors[result].shape
        if len(onnx_shape) == 4 and not _is_trivial_transpose(self.tensors[src].shape, TO_NCHW):
            nchw = self._like(f"{src}_nchw", onnx_shape, src)
            self._emit("transpose", [src], [nchw], perm=TO_NCHW)
            src = nchw
        if len(out_shape) == 4 and not _is_trivial_transpose(
                [out_shape[i] for i in TO_NCHW], TO_NHWC):
            nchw = self._like(f"{result}_nchw", [out_shape[i] for i in TO_NCHW], src)
            self._emit("reshape", [src], [nchw])
            self._emit("transpose", [nchw], [result], perm=TO_NHWC)
        else:
            self._emit("reshape", [src], [result])

    def op_Transpose(self, node):
        x, out = node.input[0], node.output[0]
        rank = len(self.shapes[x])
        perm = self._attr(node, "perm", list(reversed(range(rank))))
        if rank == 4:
            in_nchw = [TO_NCHW[p] for p in perm]
            perm = [in_nchw[i] for i in TO_NHWC]
        quantized = self._is_qdq([x], out)
        src = self._input(x, quantized)
        self._transpose(src, perm, self._output(out, quantized, like=src))

    def op_Concat(self, node):
        out = node.output[0]
        rank = len(self.shapes[out])
        quantized = self._is_qdq(list(node.input), out)
        inputs = [self._input(i, quantized) for i in node.input]
        self._emit("concat", inputs, [self._output(out, quantized)],
                   axis=_ir_axis(self._attr(node, "axis"), rank), activation="none")

    def op_Pad(self, node):
        x, out = node.input[0], node.output[0]
        if self._attr(node, "mode", "constant") != "constant":
            raise self._unsupported("only constant padding is supported")
        if self.p.opset < 11:
            pads, value = self._attr(node, "pads"), self._attr(node, "value", 0.0)
        else:
            extra = list(node.input[1:]) + ["", "", ""]
            if extra[0] not in self.consts or (extra[1] and not self._is_const(extra[1])):
                raise self._unsupported("pads and constant value must be constant")
            if extra[2]:
                raise self._unsupported("the axes input is not supported")
            pads = [int(p) for p in self.consts[extra[0]].reshape(-1)]
            value = float(self._float_const(extra[1]).reshape(-1)[0]) if extra[1] else 0.0
        if value != 0.0 or any(p < 0 for p in pads):
            raise self._unsupported("only zero padding by non-negative amounts is supported")
        rank = len(self.shapes[x])
        pairs = [(pads[d], pads[d + rank]) for d in range(rank)]
        if rank == 4:
            pairs = [pairs[d] for d in TO_NHWC]
        self._unary(node, "pad", pads=tuple(pairs))

    def op_Resize(self, node):
        if self._attr(node, "mode", "nearest") != "nearest":
            raise self._unsupported("only nearest-neighbour resize is supported")
        if self._attr(node, "axes", None) is not None:
            raise self._unsupported("the axes attribute is not supported")
        scales_name = node.input[2] if len(node.input) > 2 else ""
        if self.p.opset < 11:
            scales_name = node.input[1]
        scales = self.consts.get(scales_name) if scales_name else None
        mode = self._attr(node, "coordinate_transformation_mode",
                          "half_pixel" if self.p.opset >= 11 else "asymmetric")
        rounding = self._attr(node, "nearest_mode",
                              "round_prefer_floor" if self.p.opset >= 11 else "floor")
        self._resize_nearest(node, scales, mode, rounding)

    def op_Upsample(self, node):
        if self._attr(node, "mode", "nearest") != "nearest":
            raise self._unsupported("only nearest-neighbour upsampling is supported")
        scales = self._attr(node, "scales", None)
        if scales is None and len(node.input) > 1:
            scales = self.consts.get(node.input[1])
        self._resize_nearest(node, scales, "asymmetric", "floor")

    def _resize_nearest(self, node, scales, mode: str, rounding: str):
        x, out = node.input[0], node.output[0]
        in_shape, out_shape = self.shapes[x], self.shapes[out]
        if len(in_shape) != 4 or tuple(in_shape[:2]) != tuple(out_shape[:2]):
            raise self._unsupported("only spatial resizing of a 4-D NCHW tensor is supported")
        given = None if scales is None or np.size(scales) == 0 else \
            np.asarray(scales, np.float64).reshape(-1)
        wanted = [_nearest_onnx(in_shape[a], out_shape[a],
                                out_shape[a] / in_shape[a] if given is None else given[a],
                                mode, rounding) for a in (2, 3)]
        if any(w is None for w in wanted):
            raise self._unsupported(f"coordinate_transformation_mode '{mode}'")
        for align_corners, half_pixel_centers in ((False, False), (False, True), (True, False)):
            if all(np.array_equal(w, _nearest_tflite(in_shape[a], out_shape[a], align_corners,
                                                     half_pixel_centers))
                   for w, a in zip(wanted, (2, 3))):
                self._unary(node, "resize_nearest", align_corners=align_corners,
                            half_pixel_centers=half_pixel_centers)
                return
        raise self._unsupported(f"nearest resize with coordinate_transformation_mode '{mode}' "
                                f"and nearest_mode '{rounding}' has no TFLite equivalent")
