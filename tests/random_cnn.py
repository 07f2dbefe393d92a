"""Random small int8 CNNs as .tflite bytes, written with the zoo's ModelWriter, for
property tests against TFLite Micro: kernels 1/3/5/7, strides 1/2, dilation, SAME and
VALID padding, pointwise and depthwise convolutions, residual adds, explicit pads,
pools and channel concatenation, odd spatial sizes, random zero points and scales."""

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


@st.composite
def specs(draw, max_layers=6):
    spec = Spec(draw(st.integers(5, 23)), draw(st.integers(5, 23)), draw(st.integers(1, 8)),
                seed=draw(st.integers(0, 2**31 - 1)))
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


def build(spec: Spec) -> bytes:
    rng = np.random.default_rng(spec.seed)
    w = ModelWriter("random cnn")
    info = {}  # tensor index -> (shape, scale, zero point)

    def activation(shape, scale=None, zero_point=None):
        scale = float(rng.uniform(0.005, 0.1)) if scale is None else scale
        zero_point = int(rng.integers(-40, 40)) if zero_point is None else zero_point
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
            wt = w.tensor(f"w{k}", wshape, "int8", scale=w_scale, zero_point=np.zeros(co, int),
                          data=rng.integers(-127, 128, wshape).astype(np.int8),
                          quantized_dimension=0 if layer.kind == "conv" else 3)
            bt = w.tensor(f"b{k}", (co,), "int32", scale=(x_scale * w_scale).astype(np.float32),
                          zero_point=np.zeros(co, int),
                          data=rng.integers(-2000, 2000, co).astype(np.int32))
            # an output scale that keeps the accumulator's spread inside int8
            fan_in = layer.kernel ** 2 * (c if layer.kind == "conv" else 1)
            y = activation(_out_shape(shape, layer, co),
                           scale=float(x_scale * w_scale.mean() * 40 * np.sqrt(fan_in)))
            opts = {"padding": layer.padding, "stride_w": layer.stride, "stride_h": layer.stride,
                    "dilation_w_factor": layer.dilation, "dilation_h_factor": layer.dilation,
                    "fused_activation_function": layer.activation}
            if layer.kind == "dw":
                opts["depth_multiplier"] = 1
            w.op("CONV_2D" if layer.kind == "conv" else "DEPTHWISE_CONV_2D", [x, wt, bt], [y],
                 opts)
        elif layer.kind == "add":  # a residual: the latest earlier tensor of the same shape
            other = next((t for t in sorted(info, reverse=True) if t != x and t != first
                          and info[t][0] == shape), x)
            y = activation(shape)
            w.op("ADD", [x, other], [y], {"fused_activation_function": layer.activation})
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
