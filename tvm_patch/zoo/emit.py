"""Quantizes a calibrated FloatNet to int8 the way the TFLite converter does, and writes it.

Activations: asymmetric int8 from the calibrated [min, max] (widened to contain 0).
Conv weights: symmetric int8 per output channel; fully connected: per tensor.
Biases: int32 with scale input_scale * weight_scale and zero point 0.

quant="adversarial" emits what real converters produce and synthetic models rarely have,
keeping the real weights where it can: in every convolution, every third channel (1, 4, ...)
with its int8 weights and scale negated, and channel 0 in turn, layer by layer, with a zero
scale; with an effective multiplier input_scale * weight_scale / output_scale whose Q31
mantissa rounds up to 2^31 (the output scale raised by at most 3% to reach one; a layer
where none is within reach passes its turn); with one needing a shift below -31 (TFLite
flushes it to 0); with one needing a shift above +30. The bias of a zero, flushed or huge
channel is 0. Activations whose range ends within 3% of zero
get the extreme zero point (-128 or 127) by clamping that sliver to 0.
"""
from __future__ import annotations

import numpy as np

from .float_net import FloatNet, Node
from .writer import ModelWriter

SOFTMAX_QUANT = (1.0 / 256.0, -128)
GATE_QUANT = (1.0 / 255.0, -128)     # [0, 1]: int8 saturation performs the gate's upper clamp
_FUSED = {None: "NONE", "relu": "RELU", "relu6": "RELU6", "hard_sigmoid_gate": "RELU"}
# Operators whose int8 kernels require the output to share the input's quantization.
_SAME_QUANT_AS_INPUT = ("pad", "avgpool", "maxpool", "resize", "reshape")
QUANT_MODES = ("standard", "adversarial")
SPECIAL_CHANNELS = ("zero", "round_up", "tiny", "huge")   # channel 0 of conv layer k: k % 4
EXTREME_ZERO_POINT_MARGIN = 0.03


def range_quant(low: float, high: float, extreme: bool = False) -> tuple[float, int]:
    low, high = min(low, 0.0), max(high, 0.0)
    if extreme and high > low:
        if -low < EXTREME_ZERO_POINT_MARGIN * (high - low):
            low = 0.0
        elif high < EXTREME_ZERO_POINT_MARGIN * (high - low):
            high = 0.0
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


def to_tflite(net: FloatNet, quant: str = "standard") -> bytes:
    if quant not in QUANT_MODES:
        raise ValueError(f"quant={quant!r}: expected one of {', '.join(QUANT_MODES)}")
    adversarial = quant == "adversarial"
    writer = ModelWriter(f"tvm_patch zoo: {net.name} (synthetic weights, {quant} quantization)"
                         if adversarial else f"tvm_patch zoo: {net.name} (synthetic weights)")
    tensor_of: dict[int, int] = {}
    quant_of: dict[int, tuple[float, int]] = {}
    turn = 0  # the special channel kind whose turn it is
    for index, node in enumerate(net.nodes):
        out_quant = _output_quant(net, node, quant_of, adversarial)
        weights = None
        if node.kind in ("conv", "dwconv"):
            special = SPECIAL_CHANNELS[turn % len(SPECIAL_CHANNELS)] if adversarial else None
            weights, out_quant, applied = _conv_weights(node, quant_of[node.inputs[0]][0],
                                                        out_quant, special)
            turn += applied
        quant_of[index] = out_quant
        name = f"{index:03d}_{node.kind}"
        tensor_of[index] = writer.tensor(name, node.shape, "int8", *out_quant)
        _emit(writer, net, index, node, name, tensor_of, quant_of, weights)

    return writer.finish([tensor_of[0]], [tensor_of[o.index] for o in net.outputs])


def _conv_weights(node: Node, in_scale: float, out_quant: tuple, special: str | None):
    """((int8 weights, weight scales, int32 bias, bias scales), output quantization, whether
    `special` was applied) of a convolution; `special` names channel 0's adversarial kind."""
    axis = 3 if node.kind == "dwconv" else 0
    real = np.moveaxis(node.attrs["weights"], axis, 0)  # channels first
    w_q, w_scale = _symmetric(real, 0)
    bias = np.array(node.attrs["bias"], dtype=np.float64)
    out_scale, zero_point = out_quant
    if special:
        negative = np.arange(len(w_scale)) % 3 == 1  # the same real weights
        w_q[negative], w_scale[negative] = -w_q[negative], -w_scale[negative]
        one = out_scale / in_scale  # the weight scale of an effective multiplier of 1
        if special == "zero":
            w_scale[0] = 0.0
        elif special == "tiny":
            w_scale[0] = one * 2.0 ** -40
        elif special == "huge":
            w_scale[0] = one * 0.75 * 2.0 ** 31
        else:
            found = _multiplier_rounding_up(in_scale, w_scale[0], out_scale)
            if found is None:
                special = None
            else:
                w_scale[0], out_scale = found
                w_q[0] = np.clip(np.round(real[0] / w_scale[0]), -127, 127)
        if special in ("zero", "tiny", "huge"):
            bias[0] = 0.0
    bias_scale = np.float64(in_scale) * w_scale.astype(np.float64)
    bias_q = _int32(np.divide(bias, bias_scale, out=np.zeros_like(bias), where=bias_scale != 0))
    return ((np.moveaxis(w_q, 0, axis), w_scale, bias_q, bias_scale), (out_scale, zero_point),
            special is not None)


def _multiplier_rounding_up(in_scale: float, w_scale: float, out_scale: float):
    """(weight scale near w_scale, output scale at most 3% above out_scale), float32, for
    which TFLite's effective multiplier in * w / out (in double) has a frexp mantissa in
    [1 - 2^-32, 1): its Q31 rounding reaches 2^31, so QuantizeMultiplier halves it. None if
    there is no such pair (with in == out, the nearest is 5% away)."""
    outs = (np.array([out_scale], np.float32).view(np.uint32)
            + np.arange(1 << 18, dtype=np.uint32)).view(np.float32).astype(np.float64)
    ins = float(np.float32(in_scale))
    exponent = np.ceil(np.log2(w_scale * ins / outs)).astype(int)
    exact = np.ldexp(outs / ins, exponent).astype(np.float32)  # multiplier about 2^exponent
    for w in (np.nextafter(exact, np.float32(0)), exact):
        mantissa, _ = np.frexp(ins * w.astype(np.float64) / outs)
        hits = np.flatnonzero((mantissa >= 1 - 2.0 ** -32) & (mantissa < 1))
        if hits.size:
            return float(w[hits[0]]), float(outs[hits[0]])
    return None


def _output_quant(net: FloatNet, node: Node, quant_of, extreme=False) -> tuple[float, int]:
    if node.kind == "input":
        return net.input_quant
    if node.kind == "softmax":
        return SOFTMAX_QUANT
    if node.attrs.get("act") == "hard_sigmoid_gate":
        return GATE_QUANT
    if node.kind in _SAME_QUANT_AS_INPUT:
        return quant_of[node.inputs[0]]
    return range_quant(node.low, node.high, extreme)


def _emit(writer: ModelWriter, net: FloatNet, index: int, node: Node, name: str, tensor_of, quant_of,
          weights=None):
    kind, attrs = node.kind, node.attrs
    inputs = [tensor_of[i] for i in node.inputs]
    output = tensor_of[index]
    if kind == "input":
        return
    if kind in ("conv", "dwconv"):
        depthwise = kind == "dwconv"
        axis = 3 if depthwise else 0
        weights_q, w_scale, bias_q, bias_scale = weights
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
    elif kind == "maxpool":
        size = attrs["size"]
        writer.op("MAX_POOL_2D", inputs, [output], dict(
            padding="VALID", stride_w=size, stride_h=size, filter_width=size, filter_height=size,
            fused_activation_function="NONE"))
    elif kind == "resize":
        size = writer.tensor(f"{name}_size", [2], "int32", data=np.array(node.shape[1:3]))
        writer.op("RESIZE_NEAREST_NEIGHBOR", inputs + [size], [output],
                  dict(align_corners=False, half_pixel_centers=False))
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
