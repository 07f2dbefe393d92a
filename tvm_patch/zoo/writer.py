"""A small, generic writer of TFLite flatbuffers (schema version 3, one subgraph).

Only builtin operators are supported. Operator options are given as a dict keyed by the
schema's snake_case field names; enum fields take the enum member name as a string.
"""
from __future__ import annotations

import importlib

import flatbuffers
import numpy as np
from tflite.ActivationFunctionType import ActivationFunctionType
from tflite.BuiltinOperator import BuiltinOperator
from tflite.BuiltinOptions import BuiltinOptions
from tflite.FullyConnectedOptionsWeightsFormat import FullyConnectedOptionsWeightsFormat
from tflite.Padding import Padding
from tflite.TensorType import TensorType

SCHEMA_VERSION = 3
FILE_IDENTIFIER = b"TFL3"

_NUMPY_DTYPES = {
    "int8": np.int8,
    "uint8": np.uint8,
    "int16": np.int16,
    "int32": np.int32,
    "int64": np.int64,
    "float32": np.float32,
    "bool": np.bool_,
}
_TENSOR_TYPES = {
    "int8": TensorType.INT8,
    "uint8": TensorType.UINT8,
    "int16": TensorType.INT16,
    "int32": TensorType.INT32,
    "int64": TensorType.INT64,
    "float32": TensorType.FLOAT32,
    "bool": TensorType.BOOL,
}

# Operator name -> its options table (None: the operator has no options table).
_OPTIONS_TABLE = {
    "CONV_2D": "Conv2DOptions",
    "DEPTHWISE_CONV_2D": "DepthwiseConv2DOptions",
    "ADD": "AddOptions",
    "SUB": "SubOptions",
    "MUL": "MulOptions",
    "PAD": "PadOptions",
    "PADV2": "PadV2Options",
    "AVERAGE_POOL_2D": "Pool2DOptions",
    "MAX_POOL_2D": "Pool2DOptions",
    "MEAN": "ReducerOptions",
    "SUM": "ReducerOptions",
    "FULLY_CONNECTED": "FullyConnectedOptions",
    "RESHAPE": "ReshapeOptions",
    "TRANSPOSE": "TransposeOptions",
    "CONCATENATION": "ConcatenationOptions",
    "RESIZE_NEAREST_NEIGHBOR": "ResizeNearestNeighborOptions",
    "SOFTMAX": "SoftmaxOptions",
    "LOGISTIC": None,
    "HARD_SWISH": "HardSwishOptions",
    "QUANTIZE": "QuantizeOptions",
    "DEQUANTIZE": "DequantizeOptions",
    "RELU": None,
    "RELU6": None,
    "MAXIMUM": "MaximumMinimumOptions",
    "MINIMUM": "MaximumMinimumOptions",
}

# Operator versions the TFLite converter records for int8 kernels (informational only).
_INT8_OP_VERSIONS = {
    "CONV_2D": 3, "DEPTHWISE_CONV_2D": 3, "ADD": 2, "SUB": 2, "MUL": 2, "PAD": 2,
    "AVERAGE_POOL_2D": 2, "MAX_POOL_2D": 2, "MEAN": 2, "FULLY_CONNECTED": 4,
    "TRANSPOSE": 2, "CONCATENATION": 2, "RESIZE_NEAREST_NEIGHBOR": 2, "SOFTMAX": 2,
    "LOGISTIC": 2, "QUANTIZE": 2, "DEQUANTIZE": 2, "RELU": 2, "RELU6": 2,
}

_ENUM_FIELDS = {
    "padding": Padding,
    "fused_activation_function": ActivationFunctionType,
    "weights_format": FullyConnectedOptionsWeightsFormat,
}


def _camel(snake: str) -> str:
    return "".join(part[:1].upper() + part[1:] for part in snake.split("_"))


def _enum_value(enum_class, field: str, value) -> int:
    if isinstance(value, str):
        if not hasattr(enum_class, value):
            raise ValueError(f"option {field!r}: unknown value {value!r}")
        return getattr(enum_class, value)
    return int(value)


def _as_list(value) -> list:
    return [float(v) for v in np.atleast_1d(np.asarray(value, dtype=np.float64))]


class ModelWriter:
    """Collects tensors and operators, then serialises them with `finish`."""

    def __init__(self, description: str = "tvm_patch zoo"):
        self.description = description
        self._tensors: list[dict] = []
        self._ops: list[tuple[str, list[int], list[int], dict]] = []
        self._buffers: list[bytes] = [b""]  # buffer 0 is the conventional empty buffer

    def tensor(self, name: str, shape, dtype: str, scale=None, zero_point=None, data=None,
               quantized_dimension: int = 0) -> int:
        """Adds a tensor and returns its index; `data` makes it a constant."""
        if dtype not in _TENSOR_TYPES:
            raise ValueError(f"tensor {name!r}: unsupported dtype {dtype!r}")
        shape = [int(d) for d in shape]
        buffer_index = 0
        if data is not None:
            array = np.asarray(data)
            if list(array.shape) != shape and array.size != int(np.prod(shape, dtype=np.int64)):
                raise ValueError(f"tensor {name!r}: data shape {array.shape} does not fit {shape}")
            array = np.ascontiguousarray(array.astype(_NUMPY_DTYPES[dtype]).reshape(shape))
            self._buffers.append(array.astype(array.dtype.newbyteorder("<")).tobytes())
            buffer_index = len(self._buffers) - 1
        if (scale is None) != (zero_point is None):
            raise ValueError(f"tensor {name!r}: give both scale and zero_point, or neither")
        quant = None
        if scale is not None:
            scales = _as_list(scale)
            zero_points = [int(z) for z in np.atleast_1d(np.asarray(zero_point, dtype=np.int64))]
            if len(zero_points) == 1 and len(scales) > 1:
                zero_points = zero_points * len(scales)
            if len(zero_points) != len(scales):
                raise ValueError(f"tensor {name!r}: {len(scales)} scales but {len(zero_points)} zero points")
            if len(scales) > 1 and shape[quantized_dimension] != len(scales):
                raise ValueError(f"tensor {name!r}: {len(scales)} scales for dimension "
                                 f"{quantized_dimension} of size {shape[quantized_dimension]}")
            quant = (scales, zero_points, int(quantized_dimension))
        self._tensors.append(dict(name=name, shape=shape, dtype=dtype, buffer=buffer_index, quant=quant))
        return len(self._tensors) - 1

    def op(self, opname: str, inputs, outputs, options: dict | None = None) -> None:
        """Adds a builtin operator; options use the schema's field names."""
        if opname not in _OPTIONS_TABLE:
            raise ValueError(f"unsupported operator {opname!r}")
        table = _OPTIONS_TABLE[opname]
        options = dict(options or {})
        if options and table is None:
            raise ValueError(f"operator {opname} takes no options, got {sorted(options)}")
        if table is not None:
            module = importlib.import_module(f"tflite.{table}")
            for key in options:
                if not hasattr(module, f"Add{_camel(key)}"):
                    raise ValueError(f"operator {opname}: unknown option {key!r}")
                if key in _ENUM_FIELDS:
                    _enum_value(_ENUM_FIELDS[key], f"{opname}.{key}", options[key])
        for index in list(inputs) + list(outputs):
            if index != -1 and not 0 <= index < len(self._tensors):
                raise ValueError(f"operator {opname}: tensor index {index} does not exist")
        self._ops.append((opname, [int(i) for i in inputs], [int(o) for o in outputs], options))

    # -- serialisation ---------------------------------------------------------------------

    def finish(self, inputs, outputs) -> bytes:
        """Returns the .tflite flatbuffer."""
        builder = flatbuffers.Builder(1024 + sum(len(b) for b in self._buffers))
        buffers = [self._write_buffer(builder, data) for data in self._buffers]
        tensors = [self._write_tensor(builder, t) for t in self._tensors]

        opcode_names: list[str] = []
        for opname, *_ in self._ops:
            if opname not in opcode_names:
                opcode_names.append(opname)
        opcodes = [self._write_opcode(builder, name) for name in opcode_names]
        operators = [self._write_operator(builder, opcode_names.index(op[0]), *op) for op in self._ops]

        subgraph = self._write_subgraph(builder, tensors, operators, inputs, outputs)
        description = builder.CreateString(self.description)
        Model = importlib.import_module("tflite.Model")
        opcodes_vec = self._offset_vector(builder, opcodes)
        subgraphs_vec = self._offset_vector(builder, [subgraph])
        buffers_vec = self._offset_vector(builder, buffers)
        Model.Start(builder)
        Model.AddVersion(builder, SCHEMA_VERSION)
        Model.AddOperatorCodes(builder, opcodes_vec)
        Model.AddSubgraphs(builder, subgraphs_vec)
        Model.AddDescription(builder, description)
        Model.AddBuffers(builder, buffers_vec)
        builder.Finish(Model.End(builder), file_identifier=FILE_IDENTIFIER)
        return bytes(builder.Output())

    @staticmethod
    def _offset_vector(builder, offsets) -> int:
        builder.StartVector(4, len(offsets), 4)
        for off in reversed(offsets):
            builder.PrependUOffsetTRelative(off)
        return builder.EndVector()

    @staticmethod
    def _scalar_vector(builder, values, kind: str) -> int:
        array = np.asarray(values, dtype={"int32": "<i4", "int64": "<i8", "float32": "<f4"}[kind])
        return builder.CreateNumpyVector(array.reshape(-1))

    @staticmethod
    def _write_buffer(builder, data: bytes) -> int:
        Buffer = importlib.import_module("tflite.Buffer")
        data_vec = None
        if data:
            # 16-byte alignment lets kernels read constant data with wide loads.
            builder.StartVector(1, len(data), 16)
            builder.head = builder.head - len(data)
            builder.Bytes[builder.head:builder.head + len(data)] = data
            builder.vectorNumElems = len(data)
            data_vec = builder.EndVector()
        Buffer.Start(builder)
        if data_vec is not None:
            Buffer.AddData(builder, data_vec)
        return Buffer.End(builder)

    def _write_tensor(self, builder, t: dict) -> int:
        Tensor = importlib.import_module("tflite.Tensor")
        QP = importlib.import_module("tflite.QuantizationParameters")
        quant = None
        if t["quant"] is not None:
            scales, zero_points, dim = t["quant"]
            scale_vec = self._scalar_vector(builder, scales, "float32")
            zp_vec = self._scalar_vector(builder, zero_points, "int64")
            QP.Start(builder)
            QP.AddScale(builder, scale_vec)
            QP.AddZeroPoint(builder, zp_vec)
            QP.AddQuantizedDimension(builder, dim)
            quant = QP.End(builder)
        name = builder.CreateString(t["name"])
        shape = self._scalar_vector(builder, t["shape"], "int32")
        Tensor.Start(builder)
        Tensor.AddShape(builder, shape)
        Tensor.AddType(builder, _TENSOR_TYPES[t["dtype"]])
        Tensor.AddBuffer(builder, t["buffer"])
        Tensor.AddName(builder, name)
        if quant is not None:
            Tensor.AddQuantization(builder, quant)
        return Tensor.End(builder)

    @staticmethod
    def _write_opcode(builder, opname: str) -> int:
        OperatorCode = importlib.import_module("tflite.OperatorCode")
        code = getattr(BuiltinOperator, opname)
        OperatorCode.Start(builder)
        # Codes >= 127 live only in builtin_code; the int8 deprecated field saturates at 127.
        OperatorCode.AddDeprecatedBuiltinCode(builder, min(code, 127))
        OperatorCode.AddBuiltinCode(builder, code)
        OperatorCode.AddVersion(builder, _INT8_OP_VERSIONS.get(opname, 1))
        return OperatorCode.End(builder)

    def _write_options(self, builder, opname: str, options: dict):
        table = _OPTIONS_TABLE[opname]
        if table is None:
            return None
        module = importlib.import_module(f"tflite.{table}")
        vectors = {}
        for key, value in options.items():
            if isinstance(value, (list, tuple, np.ndarray)):
                vectors[key] = self._scalar_vector(builder, value, "int32")
        module.Start(builder)
        for key, value in options.items():
            add = getattr(module, f"Add{_camel(key)}")
            if key in vectors:
                add(builder, vectors[key])
            elif key in _ENUM_FIELDS:
                add(builder, _enum_value(_ENUM_FIELDS[key], key, value))
            elif isinstance(value, (bool, np.bool_)):
                add(builder, bool(value))
            elif isinstance(value, (float, np.floating)):
                add(builder, float(value))
            else:
                add(builder, int(value))
        return getattr(BuiltinOptions, table), module.End(builder)

    def _write_operator(self, builder, opcode_index, opname, inputs, outputs, options) -> int:
        Operator = importlib.import_module("tflite.Operator")
        written_options = self._write_options(builder, opname, options)
        inputs_vec = self._scalar_vector(builder, inputs, "int32")
        outputs_vec = self._scalar_vector(builder, outputs, "int32")
        Operator.Start(builder)
        Operator.AddOpcodeIndex(builder, opcode_index)
        Operator.AddInputs(builder, inputs_vec)
        Operator.AddOutputs(builder, outputs_vec)
        if written_options is not None:
            Operator.AddBuiltinOptionsType(builder, written_options[0])
            Operator.AddBuiltinOptions(builder, written_options[1])
        return Operator.End(builder)

    def _write_subgraph(self, builder, tensors, operators, inputs, outputs) -> int:
        SubGraph = importlib.import_module("tflite.SubGraph")
        tensors_vec = self._offset_vector(builder, tensors)
        inputs_vec = self._scalar_vector(builder, list(inputs), "int32")
        outputs_vec = self._scalar_vector(builder, list(outputs), "int32")
        operators_vec = self._offset_vector(builder, operators)
        name = builder.CreateString("main")
        SubGraph.Start(builder)
        SubGraph.AddTensors(builder, tensors_vec)
        SubGraph.AddInputs(builder, inputs_vec)
        SubGraph.AddOutputs(builder, outputs_vec)
        SubGraph.AddOperators(builder, operators_vec)
        SubGraph.AddName(builder, name)
        return SubGraph.End(builder)
