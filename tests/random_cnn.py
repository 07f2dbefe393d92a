"""Random small int8 CNNs as .tflite bytes, written with the zoo's ModelWriter, for
property tests against TFLite Micro: kernels 1/3/5/7, strides 1/2, dilation, SAME and
VALID padding, pointwise and depthwise convolutions, residual adds, explicit pads,
pools and channel concatenation, odd spatial sizes, random zero points and scales.

With quant="adversarial" the model carries the parameters real converters emit and
synthetic models rarely have (see ADVERSARIAL_CHANNELS): negative and zero per-channel
weight scales, effective multipliers whose Q31 mantissa rounds up to +-2^31, shifts at and
past TFLite's limits (-31 / +30), and zero points at the ends of the int8 range."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from hypothesis import strategies as st

from tvm_patch.zoo import ModelWriter


@dataclass
class Layer:
    kind: str            # conv, dw, add, pad, avgpool, maxpool, concat
    kernel: int = 1
    stride: int = 1
    dilation: int = 1
    padding: str = "SAME"
    channels: int = 0
    activation: str = "NONE"


@dataclass
class Spec:
    height: int
    width: int
    channels: int
    layers: list = field(default_factory=list)
    seed: int = 0
    quant: str = "realistic"     # or "adversarial"


QUANTS = ("realistic", "adversarial")
# how an adversarial model perturbs a conv's per-channel weight scale; the effective scale
# is input_scale * weight_scale / output_scale (TFLite's QuantizeMultiplier input)
ADVERSARIAL_CHANNELS = ("keep", "negative", "zero", "round_up", "round_up_negative",
                        "flush_to_zero", "saturate", "shift_-31", "shift_+30")
UNIT = 2.0 ** -16


@st.composite
def specs(draw, max_layers=6):
    spec = Spec(draw(st.integers(5, 23)), draw(st.integers(5, 23)), draw(st.integers(1, 8)),
                seed=draw(st.integers(0, 2**31 - 1)), quant=draw(st.sampled_from(QUANTS)))
    h, w = spec.height, spec.width
    for _ in range(draw(st.integers(1, max_layers))):
        kind = draw(st.sampled_from(["conv", "conv", "dw", "dw", "add", "pad", "avgpool",
                                     "maxpool", "concat"]))
        layer = Layer(kind)
        if kind in ("conv", "dw", "avgpool", "maxpool"):
            layer.kernel = draw(st.sampled_from([1, 3, 5, 7] if kind != "maxpool" else [2, 3]))
            layer.stride = draw(st.sampled_from([1, 2]))
            layer.padding = draw(st.sampled_from(["SAME", "VALID"]))
            if kind in ("conv", "dw") and layer.stride == 1 and layer.kernel == 3:
                layer.dilation = draw(st.sampled_from([1, 1, 2]))
            eff = (layer.kernel - 1) * layer.dilation + 1
            if layer.padding == "VALID" and (eff > h or eff > w):
                layer.padding = "SAME"
            if layer.padding == "VALID":
                h, w = (h - eff) // layer.stride + 1, (w - eff) // layer.stride + 1
            else:
                h, w = -(-h // layer.stride), -(-w // layer.stride)
        if kind in ("conv", "dw", "add"):
            layer.activation = draw(st.sampled_from(["NONE", "RELU", "RELU6"]))
        if kind == "conv":
            layer.channels = draw(st.integers(1, 12))
        spec.layers.append(layer)
    return spec


@st.composite
def quant_specs(draw):
    """Short chains over every operator with its own requantization (conv, depthwise, ADD,
    MUL, MEAN, FULLY_CONNECTED) or a quantization it must keep (pools), with adversarial
    quantization."""
    spec = Spec(draw(st.integers(3, 9)), draw(st.integers(3, 9)), draw(st.integers(1, 6)),
                seed=draw(st.integers(0, 2**31 - 1)), quant="adversarial")
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["conv", "dw", "add", "mul", "avgpool", "maxpool"]))
        layer = Layer(kind, kernel=draw(st.sampled_from([1, 3])), channels=draw(
            st.integers(1, 10)), activation=draw(st.sampled_from(["NONE", "RELU", "RELU6"])))
        if kind in ("avgpool", "maxpool"):
            layer.kernel, layer.activation = max(layer.kernel, 2), "NONE"
        spec.layers.append(layer)
    tail = draw(st.sampled_from(["", "mean", "fc", "mean fc"]))
    spec.layers += [Layer(kind, channels=draw(st.integers(1, 10)), activation=draw(
        st.sampled_from(["NONE", "RELU", "RELU6"]))) for kind in tail.split()]
    return spec


def build(spec: Spec) -> bytes:
    rng = np.random.default_rng(spec.seed)
    w = ModelWriter("random cnn")
    info = {}  # tensor index -> (shape, scale, zero point)

    adversarial = spec.quant == "adversarial"

    def activation(shape, scale=None, zero_point=None, power_of_two=False):
        """A new int8 tensor; scale and zero point given when it shares another's."""
        if scale is None:
            scale = float(rng.uniform(0.005, 0.1))
            if adversarial:
                scale = _adversarial_scale(rng, scale)
        if power_of_two and adversarial:
            scale = float(2.0 ** np.round(np.log2(scale)))
        if zero_point is None:
            zero_point = int(rng.integers(-40, 40))
            if adversarial:
                zero_point = int(rng.choice([-128, 127, zero_point], p=[0.15, 0.15, 0.7]))
        t = w.tensor(f"a{len(info)}", shape, "int8", scale=scale, zero_point=zero_point)
        info[t] = (tuple(int(d) for d in shape), scale, zero_point)
        return t

    x = first = activation((1, spec.height, spec.width, spec.channels))
    for k, layer in enumerate(spec.layers):
        shape, x_scale, x_zp = info[x]
        c = shape[3]
        if layer.kind in ("conv", "dw"):
            co = layer.channels if layer.kind == "conv" else c
            wshape = (co, layer.kernel, layer.kernel, c) if layer.kind == "conv" else \
                (1, layer.kernel, layer.kernel, c)
            w_scale = rng.uniform(0.002, 0.02, co).astype(np.float32)
            # an output scale that keeps the accumulator's spread inside int8
            fan_in = layer.kernel ** 2 * (c if layer.kind == "conv" else 1)
            y = activation(_out_shape(shape, layer, co),
                           scale=float(x_scale * w_scale.mean() * 40 * np.sqrt(fan_in)),
                           power_of_two=True)
            if adversarial:
                w_scale = _adversarial_weight_scales(rng, w_scale, x_scale, info[y][1])
            wt = w.tensor(f"w{k}", wshape, "int8", scale=w_scale, zero_point=np.zeros(co, int),
                          data=rng.integers(-127, 128, wshape).astype(np.int8),
                          quantized_dimension=0 if layer.kind == "conv" else 3)
            bt = w.tensor(f"b{k}", (co,), "int32", scale=(x_scale * w_scale).astype(np.float32),
                          zero_point=np.zeros(co, int),
                          data=rng.integers(-2000, 2000, co).astype(np.int32))
            opts = {"padding": layer.padding, "stride_w": layer.stride, "stride_h": layer.stride,
                    "dilation_w_factor": layer.dilation, "dilation_h_factor": layer.dilation,
                    "fused_activation_function": layer.activation}
            if layer.kind == "dw":
                opts["depth_multiplier"] = 1
            w.op("CONV_2D" if layer.kind == "conv" else "DEPTHWISE_CONV_2D", [x, wt, bt], [y],
                 opts)
        elif layer.kind in ("add", "mul"):  # the latest earlier tensor of the same shape
            other = next((t for t in sorted(info, reverse=True) if t != x and t != first
                          and info[t][0] == shape), x)
            y = activation(shape)
            w.op(layer.kind.upper(), [x, other], [y],
                 {"fused_activation_function": layer.activation})
        elif layer.kind == "mean":
            axes = w.tensor(f"axes{k}", (2,), "int32", data=np.array([1, 2], np.int32))
            y = activation((1, 1, 1, c))
            w.op("MEAN", [x, axes], [y], {"keep_dims": True})
        elif layer.kind == "fc":  # flattens: the last layer
            n_in = int(np.prod(shape))
            w_scale = np.float32(rng.uniform(0.002, 0.02))
            y = activation((1, layer.channels), scale=float(
                x_scale * w_scale * 40 * np.sqrt(n_in)), power_of_two=True)
            if adversarial:  # TFLite Micro refuses a negative product scale for FC
                w_scale = abs(_adversarial_weight_scales(rng, np.array([w_scale]), x_scale,
                                                         info[y][1])[0])
            wt = w.tensor(f"w{k}", (layer.channels, n_in), "int8", scale=w_scale,
                          zero_point=0, data=rng.integers(-127, 128, (layer.channels, n_in)))
            bt = w.tensor(f"b{k}", (layer.channels,), "int32",
                          scale=np.float32(x_scale) * w_scale, zero_point=0,
                          data=rng.integers(-2000, 2000, layer.channels).astype(np.int32))
            w.op("FULLY_CONNECTED", [x, wt, bt], [y], {
                "fused_activation_function": layer.activation, "keep_num_dims": False})
        elif layer.kind == "concat":  # x beside a 3x3 stride-1 max pool of x, on channels
            pooled = activation(shape, x_scale, x_zp)
            w.op("MAX_POOL_2D", [x], [pooled], {
                "padding": "SAME", "stride_w": 1, "stride_h": 1, "filter_width": 3,
                "filter_height": 3, "fused_activation_function": "NONE"})
            y = activation((1, shape[1], shape[2], 2 * c), x_scale, x_zp)
            w.op("CONCATENATION", [x, pooled], [y], {"axis": 3,
                                                     "fused_activation_function": "NONE"})
        elif layer.kind == "pad":
            pads = rng.integers(0, 3, (4, 2)).astype(np.int32)
            pads[0] = pads[3] = 0
            pt = w.tensor(f"p{k}", (4, 2), "int32", data=pads)
            y = activation((1, shape[1] + pads[1].sum(), shape[2] + pads[2].sum(), c),
                           x_scale, x_zp)
            w.op("PAD", [x, pt], [y])
        else:
            y = activation(_out_shape(shape, layer, c), x_scale, x_zp)
            w.op("AVERAGE_POOL_2D" if layer.kind == "avgpool" else "MAX_POOL_2D", [x], [y],
                 {"padding": layer.padding, "stride_w": layer.stride,
                  "stride_h": layer.stride, "filter_width": layer.kernel,
                  "filter_height": layer.kernel, "fused_activation_function": "NONE"})
        x = y
    return w.finish([first], [x])


def _out_shape(shape, layer, co):
    _, h, w, _ = shape
    eff = (layer.kernel - 1) * layer.dilation + 1
    if layer.padding == "VALID":
        return (1, (h - eff) // layer.stride + 1, (w - eff) // layer.stride + 1, co)
    return (1, -(-h // layer.stride), -(-w // layer.stride), co)


def _adversarial_scale(rng, scale: float) -> float:
    """An activation scale near `scale` whose mantissa is 1, 1 + 2^-16 or 1 - 2^-16 (or
    `scale` itself): with power-of-two output scales, weight scales of the same forms give
    effective multipliers at exactly the points where TFLite's rounding turns."""
    base = 2.0 ** np.round(np.log2(scale))
    return float(np.float32(rng.choice([base, base * (1 + UNIT), base * (1 - UNIT), scale])))


def _adversarial_weight_scales(rng, w_scale, x_scale, y_scale) -> np.ndarray:
    """Per-channel weight scales, each kept or turned into one of ADVERSARIAL_CHANNELS."""
    out = np.asarray(w_scale, np.float64).copy()
    unit_effect = np.float64(y_scale) / np.float64(x_scale)  # weight scale for multiplier 1
    for c, kind in enumerate(rng.choice(ADVERSARIAL_CHANNELS, size=out.size)):
        magnitude = 2.0 ** np.round(np.log2(abs(out[c])))
        out[c] = {"keep": out[c], "negative": -out[c], "zero": 0.0,
                  # with a (1 + 2^-16) input scale the mantissa is 1 - 2^-32: rounds to 2^31
                  "round_up": magnitude * (1 - UNIT), "round_up_negative": -magnitude * (1 - UNIT),
                  "flush_to_zero": unit_effect * 2.0 ** -34, "saturate": unit_effect * 2.0 ** 33,
                  "shift_-31": unit_effect * 1.5 * 2.0 ** -32,
                  "shift_+30": unit_effect * 1.5 * 2.0 ** 29}[kind]
    return out.astype(np.float32)
