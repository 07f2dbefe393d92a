"""A float network built layer by layer in numpy, with synthetic weights and calibration.

Every builder method runs the new layer on the calibration batch right away. That lets
each convolution get data-dependent "batch norm" statistics (folded into its weights and
bias, as a trained and converted network would have) and records every activation's
range for int8 calibration. `FloatNet.run` re-evaluates the whole graph on new inputs.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Node:
    kind: str                 # input, conv, dwconv, pad, add, mul, mean, avgpool, maxpool,
    #                           resize, reshape, fc, softmax, hard_swish
    inputs: list[int]
    shape: tuple[int, ...]    # output shape with batch 1
    attrs: dict = field(default_factory=dict)
    low: float = 0.0          # calibrated output range
    high: float = 0.0


@dataclass
class Act:
    """An activation during construction: its node and its value on the calibration batch."""
    index: int
    value: np.ndarray

    @property
    def channels(self) -> int:
        return self.value.shape[-1]


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow 'SAME' padding (before, after) along one axis."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def activation(x: np.ndarray, act: str | None) -> np.ndarray:
    if act is None:
        return x
    if act == "relu":
        return np.maximum(x, 0.0)
    if act == "relu6":
        return np.clip(x, 0.0, 6.0)
    if act == "hard_sigmoid_gate":
        return np.clip(x, 0.0, 1.0)
    raise ValueError(f"unknown activation {act!r}")


def hard_swish(x: np.ndarray) -> np.ndarray:
    return x * np.clip(x + 3.0, 0.0, 6.0) / 6.0


def conv2d(x, weights, stride, pads):
    """NHWC convolution; weights [out, kh, kw, in] (TFLite CONV_2D layout)."""
    out_ch, kh, kw, in_ch = weights.shape
    (pt, pb), (pl, pr) = pads
    matrix = weights.reshape(out_ch, -1).T
    if kh == kw == 1 and stride == 1 and not (pt or pb or pl or pr):
        return (x.reshape(-1, in_ch) @ matrix).reshape(x.shape[:3] + (out_ch,))
    xp = np.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
    n, h, w, _ = xp.shape
    oh, ow = (h - kh) // stride + 1, (w - kw) // stride + 1
    s = xp.strides
    patches = np.lib.stride_tricks.as_strided(
        xp, (n, oh, ow, kh, kw, in_ch), (s[0], s[1] * stride, s[2] * stride, s[1], s[2], s[3]),
        writeable=False)
    # Matrix products on 2-D operands: numpy would loop over the leading axes of N-D ones.
    return (patches.reshape(n * oh * ow, -1) @ matrix).reshape(n, oh, ow, out_ch)


def depthwise_conv2d(x, weights, stride, pads):
    """NHWC depthwise convolution; weights [1, kh, kw, channels] (TFLite layout)."""
    _, kh, kw, _ = weights.shape
    (pt, pb), (pl, pr) = pads
    xp = np.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
    oh, ow = (xp.shape[1] - kh) // stride + 1, (xp.shape[2] - kw) // stride + 1
    out = np.zeros((x.shape[0], oh, ow, x.shape[3]), dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            out += xp[:, i:i + stride * (oh - 1) + 1:stride, j:j + stride * (ow - 1) + 1:stride, :] * weights[0, i, j]
    return out


def max_pool(x: np.ndarray, size: int) -> np.ndarray:
    n, h, w, c = x.shape
    return x.reshape(n, h // size, size, w // size, size, c).max(axis=(2, 4))


def upsample(x: np.ndarray, factor: int) -> np.ndarray:
    return x.repeat(factor, axis=1).repeat(factor, axis=2)


def synthetic_images(count: int, size: int, channels: int, rng: np.random.Generator) -> np.ndarray:
    """Smooth, image-like random fields in [-1, 1]: coarse blobs, finer texture, pixel noise."""
    def upsampled(grid: int) -> np.ndarray:
        coarse = rng.normal(size=(count, grid + 1, grid + 1, channels))
        pos = np.linspace(0, grid, size)
        i0 = np.minimum(pos.astype(int), grid - 1)
        frac = (pos - i0)[:, None]
        rows = coarse[:, i0] * (1 - frac)[None, :, :, None] + coarse[:, i0 + 1] * frac[None, :, :, None]
        frac_c = (pos - i0)[None, None, :, None]
        return rows[:, :, i0] * (1 - frac_c) + rows[:, :, i0 + 1] * frac_c

    field_ = 0.6 * upsampled(3) + 0.3 * upsampled(max(4, size // 8)) + 0.08 * rng.normal(size=(count, size, size, channels))
    brightness = rng.uniform(-0.3, 0.3, size=(count, 1, 1, 1))
    return np.clip(field_ + brightness, -1.0, 1.0)


class FloatNet:
    """A float NHWC network under construction (and, once built, ready to re-run)."""

    def __init__(self, name: str, images: np.ndarray, input_quant: tuple[float, int], seed: int):
        self.name = name
        self.rng = np.random.default_rng([seed, 7])
        self.nodes: list[Node] = []
        self.input_quant = input_quant
        scale, zero_point = input_quant
        images = (np.clip(np.round(images / scale) + zero_point, -128, 127) - zero_point) * scale
        self.input = self._add(Node("input", [], (1,) + images.shape[1:]), images)
        self.outputs: list[Act] = []

    @property
    def output(self) -> Act:
        return self.outputs[0]

    # -- construction ----------------------------------------------------------------------

    def _add(self, node: Node, value: np.ndarray) -> Act:
        node.low, node.high = float(value.min()), float(value.max())
        self.nodes.append(node)
        return Act(len(self.nodes) - 1, value)

    def _bn_affine(self, channels: int, act: str | None):
        """Per-channel (gamma, beta) of the folded batch norm, shaped by what follows it."""
        if act in ("relu6", "relu"):
            return self.rng.uniform(0.5, 1.5, channels), self.rng.uniform(0.5, 2.0, channels)
        if act == "hard_sigmoid_gate":  # relu6(u + 3) / 6 of a normalised u, folded
            return self.rng.uniform(0.15, 0.4, channels), self.rng.uniform(0.35, 0.75, channels)
        return self.rng.uniform(0.3, 1.2, channels), self.rng.normal(0.0, 0.2, channels)

    def conv(self, x: Act, out_channels: int, kernel: int, stride: int = 1, act: str | None = "relu6",
             padding: str = "SAME", depthwise: bool = False) -> Act:
        """Convolution + folded batch norm + activation (depthwise keeps the channel count).

        act 'hard_sigmoid_gate' is relu6(z + 3) / 6 with the +3 and /6 folded into the bias
        and weights, leaving a clamp to [0, 1].
        """
        in_channels = x.channels
        h, w = x.value.shape[1:3]
        pads = (same_padding(h, kernel, stride), same_padding(w, kernel, stride)) if padding == "SAME" \
            else ((0, 0), (0, 0))
        if depthwise:
            out_channels = in_channels
            raw = self.rng.normal(0.0, np.sqrt(2.0 / (kernel * kernel)), (1, kernel, kernel, in_channels))
            z = depthwise_conv2d(x.value, raw, stride, pads)
        else:
            raw = self.rng.normal(0.0, np.sqrt(2.0 / (kernel * kernel * in_channels)),
                                  (out_channels, kernel, kernel, in_channels))
            z = conv2d(x.value, raw, stride, pads)
        gamma, beta = self._bn_affine(out_channels, act)
        mean, std = z.mean(axis=(0, 1, 2)), z.std(axis=(0, 1, 2)) + 1e-6
        gain = gamma / std
        weights = raw * (gain if depthwise else gain[:, None, None, None])
        bias = beta - mean * gain
        value = activation(z * gain + bias, act)
        node = Node("dwconv" if depthwise else "conv", [x.index], (1,) + value.shape[1:],
                    dict(weights=weights, bias=bias, stride=stride, pads=pads, padding=padding, act=act,
                         bn_std=std))
        return self._add(node, value)

    def pad_same(self, x: Act, kernel: int, stride: int) -> Act:
        """Explicit zero padding equal to what 'SAME' would add (the conv then uses 'VALID')."""
        h, w = x.value.shape[1:3]
        pads = ((0, 0), same_padding(h, kernel, stride), same_padding(w, kernel, stride), (0, 0))
        value = np.pad(x.value, pads)
        return self._add(Node("pad", [x.index], (1,) + value.shape[1:], dict(pads=pads)), value)

    def add(self, a: Act, b: Act, act: str | None = None) -> Act:
        value = activation(a.value + b.value, act)
        return self._add(Node("add", [a.index, b.index], (1,) + value.shape[1:], dict(act=act)), value)

    def mul(self, a: Act, b: Act) -> Act:
        value = a.value * b.value
        return self._add(Node("mul", [a.index, b.index], (1,) + value.shape[1:]), value)

    def mean(self, x: Act) -> Act:
        """Mean over height and width, dimensions kept (as TFLite MEAN with keep_dims)."""
        value = x.value.mean(axis=(1, 2), keepdims=True)
        return self._add(Node("mean", [x.index], (1, 1, 1, x.channels)), value)

    def global_avg_pool(self, x: Act) -> Act:
        value = x.value.mean(axis=(1, 2), keepdims=True)
        return self._add(Node("avgpool", [x.index], (1, 1, 1, x.channels),
                              dict(size=tuple(x.value.shape[1:3]))), value)

    def max_pool(self, x: Act, size: int) -> Act:
        """size x size max pool, stride size, VALID (the spatial sizes must divide)."""
        value = max_pool(x.value, size)
        return self._add(Node("maxpool", [x.index], (1,) + value.shape[1:], dict(size=size)),
                         value)

    def upsample(self, x: Act, factor: int) -> Act:
        """Nearest-neighbour upsampling by an integer factor (TFLite RESIZE_NEAREST_NEIGHBOR)."""
        value = upsample(x.value, factor)
        return self._add(Node("resize", [x.index], (1,) + value.shape[1:],
                              dict(factor=factor)), value)

    def flatten(self, x: Act) -> Act:
        value = x.value.reshape(x.value.shape[0], -1)
        return self._add(Node("reshape", [x.index], (1, value.shape[1])), value)

    def hard_swish(self, x: Act) -> Act:
        return self._add(Node("hard_swish", [x.index], (1,) + x.value.shape[1:]), hard_swish(x.value))

    def fully_connected(self, x: Act, out_features: int, logit_std: float = 3.0) -> Act:
        raw = self.rng.normal(0.0, np.sqrt(2.0 / x.channels), (out_features, x.channels))
        z = x.value @ raw.T
        # Scale by the variation between images, not by the (larger) per-class offsets that
        # every image shares, so that the predicted class depends on the input.
        class_mean = z.mean(axis=0)
        gain = logit_std / ((z - class_mean).std() + 1e-6)
        weights = raw * gain
        bias = self.rng.normal(0.0, 0.3, out_features) - class_mean * gain
        value = z * gain + bias
        return self._add(Node("fc", [x.index], (1, out_features), dict(weights=weights, bias=bias)), value)

    def softmax(self, x: Act) -> Act:
        exp = np.exp(x.value - x.value.max(axis=-1, keepdims=True))
        value = exp / exp.sum(axis=-1, keepdims=True)
        return self._add(Node("softmax", [x.index], (1, x.channels)), value)

    def finish(self, *outputs: Act) -> "FloatNet":
        self.outputs = list(outputs)
        return self

    def truncated(self, index: int) -> "FloatNet":
        """The same network cut after node `index`, which becomes the output (for inspection)."""
        cut = copy.copy(self)
        cut.nodes = self.nodes[:index + 1]
        cut.outputs = [Act(index, np.empty(0))]
        return cut

    # -- evaluation ------------------------------------------------------------------------

    def run(self, images: np.ndarray):
        """The float network's output for a batch of NHWC inputs (a list if it has several)."""
        last_use = {}
        for index, node in enumerate(self.nodes):
            for source in node.inputs:
                last_use[source] = index
        values: dict[int, np.ndarray] = {}
        for index, node in enumerate(self.nodes):
            args = [values[i] for i in node.inputs]
            values[index] = images if node.kind == "input" else _evaluate(node, args)
            for source in node.inputs:
                if last_use[source] == index and all(o.index != source for o in self.outputs):
                    del values[source]
        outputs = [values[o.index] for o in self.outputs]
        return outputs[0] if len(outputs) == 1 else outputs


def _evaluate(node: Node, args: list[np.ndarray]) -> np.ndarray:
    a = node.attrs
    if node.kind == "conv":
        return activation(conv2d(args[0], a["weights"], a["stride"], a["pads"]) + a["bias"], a["act"])
    if node.kind == "dwconv":
        return activation(depthwise_conv2d(args[0], a["weights"], a["stride"], a["pads"]) + a["bias"], a["act"])
    if node.kind == "pad":
        return np.pad(args[0], a["pads"])
    if node.kind == "add":
        return activation(args[0] + args[1], a["act"])
    if node.kind == "mul":
        return args[0] * args[1]
    if node.kind in ("mean", "avgpool"):
        return args[0].mean(axis=(1, 2), keepdims=True)
    if node.kind == "maxpool":
        return max_pool(args[0], a["size"])
    if node.kind == "resize":
        return upsample(args[0], a["factor"])
    if node.kind == "reshape":
        return args[0].reshape(args[0].shape[0], -1)
    if node.kind == "hard_swish":
        return hard_swish(args[0])
    if node.kind == "fc":
        return args[0] @ a["weights"].T + a["bias"]
    if node.kind == "softmax":
        exp = np.exp(args[0] - args[0].max(axis=-1, keepdims=True))
        return exp / exp.sum(axis=-1, keepdims=True)
    raise ValueError(f"cannot evaluate node kind {node.kind!r}")
