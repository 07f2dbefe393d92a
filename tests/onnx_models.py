"""Small deterministic ONNX test models built with onnx.helper (seeded weights), and their
QDQ int8 versions made with onnxruntime.quantization.quantize_static."""

from __future__ import annotations

import os
import tempfile

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 14


class _Builder:
    """Accumulates nodes and seeded initializers for one graph."""

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)
        self.nodes, self.inits = [], []
        self.count = 0

    def name(self, prefix: str) -> str:
        self.count += 1
        return f"{prefix}{self.count}"

    def const(self, array, prefix="c") -> str:
        name = self.name(prefix)
        self.inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def node(self, op_type: str, inputs, prefix=None, **attrs) -> str:
        out = self.name(prefix or op_type.lower())
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], name=out + "_node",
                                           **attrs))
        return out

    def conv(self, x, cin, cout, k, stride=1, group=1, bias=True, **attrs) -> str:
        fan_in = cin // group * k * k
        w = self.rng.normal(0, (2 / fan_in) ** 0.5, (cout, cin // group, k, k))
        ins = [x, self.const(w.astype(np.float32), "w")]
        if bias:
            ins.append(self.const(self.rng.normal(0, 0.1, cout).astype(np.float32), "b"))
        if "auto_pad" not in attrs:
            attrs.setdefault("pads", [k // 2] * 4)
        return self.node("Conv", ins, kernel_shape=[k, k], strides=[stride, stride],
                         group=group, **attrs)

    def bn(self, x, c) -> str:
        params = [self.rng.uniform(0.5, 1.5, c), self.rng.normal(0, 0.1, c),
                  self.rng.normal(0, 0.1, c), self.rng.uniform(0.5, 1.5, c)]
        names = [self.const(p.astype(np.float32), "bn") for p in params]
        return self.node("BatchNormalization", [x] + names, epsilon=1e-5)

    def relu6(self, x) -> str:
        lo = self.const(np.float32(0.0), "min")
        hi = self.const(np.float32(6.0), "max")
        return self.node("Clip", [x, lo, hi])

    def gemm(self, x, cin, cout) -> str:
        w = self.rng.normal(0, (1 / cin) ** 0.5, (cout, cin)).astype(np.float32)
        b = self.rng.normal(0, 0.1, cout).astype(np.float32)
        return self.node("Gemm", [x, self.const(w, "w"), self.const(b, "b")], transB=1)

    def model(self, name, x_shape, out, out_shape) -> onnx.ModelProto:
        graph = helper.make_graph(
            self.nodes, name,
            [helper.make_tensor_value_info("input", TensorProto.FLOAT, x_shape)],
            [helper.make_tensor_value_info(out, TensorProto.FLOAT, out_shape)], self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                                  producer_name="tvm_patch-tests")
        model.ir_version = 8
        onnx.checker.check_model(model)
        return model


def mobilenet_v2_like(seed: int = 0) -> onnx.ModelProto:
    """conv-bn-relu6 stem, two inverted residual blocks (one with a residual add), a 1x1
    head, global average pool, flatten, gemm and softmax. Input (N, 3, 32, 32), batch 'N'."""
    b = _Builder(seed)
    x = b.relu6(b.bn(b.conv("input", 3, 16, 3, stride=2), 16))           # 16 x 16 x 16

    def inverted_residual(x, cin, cout, stride, expand=2):
        mid = cin * expand
        h = b.relu6(b.bn(b.conv(x, cin, mid, 1, bias=False), mid))
        pad = {"auto_pad": "SAME_UPPER"} if stride > 1 else {}
        h = b.relu6(b.bn(b.conv(h, mid, mid, 3, stride=stride, group=mid, bias=False, **pad),
                         mid))
        h = b.bn(b.conv(h, mid, cout, 1, bias=False), cout)
        return b.node("Add", [x, h]) if stride == 1 and cin == cout else h

    x = inverted_residual(x, 16, 16, 1)
    x = inverted_residual(x, 16, 24, 2)                                     # 24 x 8 x 8
    x = b.relu6(b.bn(b.conv(x, 24, 64, 1), 64))
    x = b.node("Flatten", [b.node("GlobalAveragePool", [x])], axis=1)
    out = b.node("Softmax", [b.gemm(x, 64, 10)], axis=-1, prefix="probabilities")
    return b.model("mobilenet_v2_like", ["N", 3, 32, 32], out, ["N", 10])


def pooling_net(seed: int = 1) -> onnx.ModelProto:
    """maxpool, avgpool (with padding, count_include_pad=0), a two-branch concat, nearest
    resize, sigmoid, hardswish, and a flatten of a 4x4 map before the classifier.
    Input (1, 3, 16, 16)."""
    b = _Builder(seed)
    x = b.node("Relu", [b.conv("input", 3, 8, 3)])
    x = b.node("MaxPool", [x], kernel_shape=[2, 2], strides=[2, 2])                # 8x8x8
    left = b.node("HardSwish", [b.conv(x, 8, 8, 1)])
    right = b.node("AveragePool", [x], kernel_shape=[3, 3], strides=[1, 1], pads=[1] * 4,
                   count_include_pad=0)
    right = b.node("Sigmoid", [b.conv(right, 8, 8, 1)])
    x = b.node("Concat", [left, right], axis=1)                                    # 16x8x8
    scales = b.const(np.array([1, 1, 2, 2], np.float32), "scales")
    x = b.node("Resize", [x, "", scales], mode="nearest")                          # 16x16x16
    x = b.node("Relu", [b.conv(x, 16, 8, 3, stride=2)])                            # 8x8x8
    x = b.node("AveragePool", [x], kernel_shape=[2, 2], strides=[2, 2])            # 8x4x4
    x = b.node("Flatten", [x], axis=1)
    out = b.gemm(x, 128, 10)
    return b.model("pooling_net", [1, 3, 16, 16], out, [1, 10])


def input_shape(model: onnx.ModelProto) -> tuple:
    dims = model.graph.input[0].type.tensor_type.shape.dim
    return tuple(d.dim_value if d.dim_value > 0 else 1 for d in dims)


def sample_inputs(model: onnx.ModelProto, count: int, seed: int = 0) -> list:
    rng = np.random.default_rng(seed)
    return [rng.uniform(-1, 1, input_shape(model)).astype(np.float32) for _ in range(count)]


def quantize_qdq(model: onnx.ModelProto, per_channel: bool, samples: int = 16,
                 seed: int = 0) -> onnx.ModelProto:
    """The QDQ int8 version of `model` (int8 activations and weights), pre-processed and then
    calibrated with MinMax on seeded uniform inputs."""
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    name = model.graph.input[0].name

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter(sample_inputs(model, samples, seed))

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {name: batch}

    with tempfile.TemporaryDirectory() as tmp:
        src, pre, dst = (os.path.join(tmp, f) for f in ("float.onnx", "pre.onnx", "qdq.onnx"))
        onnx.save(model, src)
        # folds BatchNormalization into Conv, as ORT recommends; shapes are static, so the
        # symbolic shape inference (which needs sympy) has nothing to add
        quant_pre_process(src, pre, skip_symbolic_shape=True)
        quantize_static(pre, dst, Reader(), quant_format=QuantFormat.QDQ,
                        per_channel=per_channel, activation_type=QuantType.QInt8,
                        weight_type=QuantType.QInt8)
        return onnx.load(dst)


def mobilenet_v2_like_qdq(per_channel: bool = False) -> onnx.ModelProto:
    return quantize_qdq(mobilenet_v2_like(), per_channel)


def pooling_net_qdq(per_channel: bool = False) -> onnx.ModelProto:
    return quantize_qdq(pooling_net(), per_channel)
