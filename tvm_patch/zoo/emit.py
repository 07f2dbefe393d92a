"""Quantizes a calibrated FloatNet to int8 the way the TFLite converter does, and writes it.

Activations: asymmetric int8 from the calibrated [min, max] (widened to contain 0).
Conv weights: symmetric int8 per output channel; fully connected: per tensor.
Biases: int32 with scale input_scale * weight_scale and zero point 0.
"""
from __future__ import annotations

import numpy as np

from .float_net import FloatNet, Node
from .writer import ModelWriter

SOFTMAX_QUANT = (1.0 / 256.0, -128)
GATE_QUANT = (1.0 / 255.0, -128)     # [0, 1]: int8 saturation performs the gate's upper clamp
_FUSED = {None: "NONE", "relu": "RELU", "relu6": "RELU6", "hard_sigmoid_gate": "RELU"}
# Operators whose int8 kernels require the output to share the input's quantization.
_SAME_QUANT_AS_INPUT = ("pad", "avgpool", "reshape")


def range_quant(low: float, high: float) -> tuple[float, int]:
    low, high = min(low, 0.0), max(high, 0.0)
    high = max(high, low + 1e-6)
    scale = float(np.float32((high - low) / 255.0))
    zero_point = int(np.clip(np.round(-128 - low / scale), -128, 127))
    return scale, zero_point


def _symmetric(weights: np.ndarray, axis: int | None):
    """Symmetric int8 weights, per channel along `axis` (None: one scale for the tensor)."""
    if axis is None:
        scale = np.array([np.abs(weights).max()]) / 127.0
        broadcast = scale[0]
    else:
        reduce_axes = tuple(a for a in range(weights.ndim) if a != axis)
        scale = np.abs(weights).max(axis=reduce_axes) / 127.0
        shape = [1] * weights.ndim
        shape[axis] = -1
        broadcast = scale.reshape(shape)
    scale = np.maximum(scale, 1e-12).astype(np.float32)
    broadcast = np.maximum(broadcast, 1e-12).astype(np.float32)
    quantized = np.clip(np.round(weights / broadcast), -127, 127).astype(np.int8)
    return quantized, scale


def _int32(values: np.ndarray) -> np.ndarray:
    return np.clip(np.round(values), -2**31, 2**31 - 1).astype(np.int32)


def to_tflite(net: FloatNet) -> bytes:
    writer = ModelWriter(f"tvm_patch zoo: {net.name} (synthetic weights)")
    tensor_of: dict[int, int] = {}
    quant_of: dict[int, tuple[float, int]] = {}

    for index, node in enumerate(net.nodes):
        quant = _output_quant(net, node, quant_of)
        quant_of[index] = quant
        name = f"{index:03d}_{node.kind}"
        tensor_of[index] = writer.tensor(name, node.shape, "int8", *quant)
        _emit(writer, net, index, node, name, tensor_of, quant_of)

    output = tensor_of[net.output.index]
    return writer.finish([tensor_of[0]], [output])


def _output_quant(net: FloatNet, node: Node, quant_of) -> tuple[float, int]:
    if node.kind == "input":
        return net.input_quant
    if node.kind == "softmax":
        return SOFTMAX_QUANT
    if node.attrs.get("act") == "hard_sigmoid_gate":
        return GATE_QUANT
    if node.kind in _SAME_QUANT_AS_INPUT:
        return quant_of[node.inputs[0]]
    return range_quant(node.low, node.high)


def _emit(writer: ModelWriter, net: FloatNet, index: int, node: Node, name: str, tensor_of, quant_of):
    kind, attrs = node.kind, node.attrs
    inputs = [tensor_of[i] for i in node.inputs]
    output = tensor_of[index]
    if kind == "input":
        return
    if kind in ("conv", "dwconv"):
        depthwise = kind == "dwconv"
        axis = 3 if depthwise else 0
        weights_q, w_scale = _symmetric(attrs["weights"], axis)
        in_scale = quant_of[node.inputs[0]][0]
        bias_scale = np.float64(in_scale) * w_scale.astype(np.float64)
        bias_q = _int32(attrs["bias"] / bias_scale)
        channels = len(w_scale)
        w = writer.tensor(f"{name}_weights", weights_q.shape, "int8", w_scale, np.zeros(channels, int),
                          weights_q, quantized_dimension=axis)
        b = writer.tensor(f"{name}_bias", [channels], "int32", bias_scale.astype(np.float32),
                          np.zeros(channels, int), bias_q)
        stride = attrs["stride"]
        options = dict(padding=attrs["padding"], stride_w=stride, stride_h=stride, dilation_w_factor=1,
                       dilation_h_factor=1, fused_activation_function=_FUSED[attrs["act"]])
        if depthwise:
            options["depth_multiplier"] = 1
        writer.op("DEPTHWISE_CONV_2D" if depthwise else "CONV_2D", inputs + [w, b], [output], options)
    elif kind == "pad":
        paddings = writer.tensor(f"{name}_paddings", [4, 2], "int32", data=np.array(attrs["pads"]))
        writer.op("PAD", inputs + [paddings], [output])
    elif kind in ("add", "mul"):
        writer.op(kind.upper(), inputs, [output], {"fused_activation_function": _FUSED[attrs.get("act")]})
    elif kind == "mean":
        axes = writer.tensor(f"{name}_axes", [2], "int32", data=np.array([1, 2]))
        writer.op("MEAN", inputs + [axes], [output], {"keep_dims": True})
    elif kind == "avgpool":
        height, width = attrs["size"]
        writer.op("AVERAGE_POOL_2D", inputs, [output], dict(
            padding="VALID", stride_w=width, stride_h=height, filter_width=width, filter_height=height,
            fused_activation_function="NONE"))
    elif kind == "reshape":
        shape = writer.tensor(f"{name}_shape", [len(node.shape)], "int32", data=np.array(node.shape))
        writer.op("RESHAPE", inputs + [shape], [output], {"new_shape": list(node.shape)})
    elif kind == "hard_swish":
        writer.op("HARD_SWISH", inputs, [output])
    elif kind == "fc":
        weights_q, w_scale = _symmetric(attrs["weights"], None)
        in_scale = quant_of[node.inputs[0]][0]
        bias_scale = np.float64(in_scale) * np.float64(w_scale[0])
        bias_q = _int32(attrs["bias"] / bias_scale)
        w = writer.tensor(f"{name}_weights", weights_q.shape, "int8", w_scale, [0], weights_q)
        b = writer.tensor(f"{name}_bias", [len(bias_q)], "int32", np.float32(bias_scale), 0, bias_q)
        writer.op("FULLY_CONNECTED", inputs + [w, b], [output], dict(
            fused_activation_function="NONE", keep_num_dims=False))
    elif kind == "softmax":
        writer.op("SOFTMAX", inputs, [output], {"beta": 1.0})
    else:
        raise ValueError(f"cannot emit node kind {kind!r}")
