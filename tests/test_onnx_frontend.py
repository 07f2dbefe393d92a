"""Graph-level tests of the ONNX front end: the IR it builds (ops, NHWC shapes, folding of
BatchNormalization/Clip/QDQ), its errors, and, through a small numpy interpreter of the IR
kept in this file, that float conversion preserves onnxruntime's results."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnx_models
from tvm_patch.frontend.onnx import read_onnx
from tvm_patch.graph import ModelError, UnsupportedOperator

# --- a numpy interpreter of the graph IR (float semantics; int8 ops run as DQ -> op -> Q) ---


def _apply_activation(x, activation):
    low, high = {"none": (None, None), "relu": (0, None), "relu6": (0, 6),
                 "relu_n1_to_1": (-1, 1)}[activation]
    return x if low is None else np.clip(x, low, high)


def _windows(x, kernel, stride, dilation, padding, fill):
    """(N, OH, OW, KH*KW, C) windows of an NHWC tensor."""
    top, left, bottom, right = padding
    x = np.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)), constant_values=fill)
    (kh, kw), (sh, sw), (dh, dw) = kernel, stride, dilation
    oh = (x.shape[1] - (kh - 1) * dh - 1) // sh + 1
    ow = (x.shape[2] - (kw - 1) * dw - 1) // sw + 1
    rows = [slice(i * dh, i * dh + (oh - 1) * sh + 1, sh) for i in range(kh)]
    cols = [slice(j * dw, j * dw + (ow - 1) * sw + 1, sw) for j in range(kw)]
    return np.stack([x[:, r, c] for r in rows for c in cols], axis=3)


def _nearest(in_size, out_size, align_corners, half_pixel_centers):
    scale = (in_size - 1) / (out_size - 1) if align_corners and out_size > 1 \
        else in_size / out_size
    value = (np.arange(out_size) + (0.5 if half_pixel_centers else 0.0)) * scale
    index = np.floor(value + 0.5) if align_corners else np.floor(value)
    return np.clip(index, 0, in_size - 1).astype(int)


def _run_op(op, x, graph):
    a = op.attrs
    if op.kind in ("conv2d", "depthwise_conv2d"):
        w, b = x[1], x[2]
        kernel = w.shape[1:3]
        win = _windows(x[0], kernel, a["stride"], a["dilation"], a["padding"], 0.0)
        if op.kind == "conv2d":
            y = np.einsum("nhwkc,okc->nhwo", win, w.reshape(w.shape[0], -1, w.shape[3]))
        else:
            win = np.repeat(win, a["depth_multiplier"], axis=4)
            y = np.einsum("nhwkc,kc->nhwc", win, w.reshape(-1, w.shape[3]))
        return _apply_activation(y + (0 if b is None else b), a["activation"])
    if op.kind == "fully_connected":
        y = x[0] @ x[1].T + (0 if x[2] is None else x[2])
        return _apply_activation(y, a["activation"])
    if op.kind in ("add", "mul"):
        y = x[0] + x[1] if op.kind == "add" else x[0] * x[1]
        return _apply_activation(y, a["activation"])
    if op.kind == "max_pool2d":
        win = _windows(x[0], a["kernel"], a["stride"], (1, 1), a["padding"], -np.inf)
        return _apply_activation(win.max(axis=3), a["activation"])
    if op.kind == "avg_pool2d":
        win = _windows(x[0], a["kernel"], a["stride"], (1, 1), a["padding"], 0.0)
        count = _windows(np.ones_like(x[0]), a["kernel"], a["stride"], (1, 1), a["padding"], 0)
        return _apply_activation(win.sum(axis=3) / count.sum(axis=3), a["activation"])
    if op.kind == "pad":
        return np.pad(x[0], a["pads"])
    if op.kind == "mean":
        return x[0].mean(axis=tuple(a["axes"]), keepdims=a["keep_dims"])
    if op.kind == "reshape":
        return x[0].reshape(graph.t(op.outputs[0]).shape)
    if op.kind == "transpose":
        return x[0].transpose(a["perm"])
    if op.kind == "concat":
        return _apply_activation(np.concatenate(x, axis=a["axis"]), a["activation"])
    if op.kind == "resize_nearest":
        _, oh, ow, _ = graph.t(op.outputs[0]).shape
        rows = _nearest(x[0].shape[1], oh, a["align_corners"], a["half_pixel_centers"])
        cols = _nearest(x[0].shape[2], ow, a["align_corners"], a["half_pixel_centers"])
        return x[0][:, rows][:, :, cols]
    if op.kind == "softmax":
        e = np.exp(a["beta"] * (x[0] - x[0].max(axis=-1, keepdims=True)))
        return e / e.sum(axis=-1, keepdims=True)
    if op.kind == "logistic":
        return 1 / (1 + np.exp(-x[0]))
    if op.kind == "hard_swish":
        return x[0] * np.clip(x[0] + 3, 0, 6) / 6
    if op.kind in ("relu", "relu6"):
        return _apply_activation(x[0], op.kind)
    if op.kind in ("quantize", "dequantize"):
        return x[0]  # values are kept real; int8 outputs are rounded in run_ir
    raise NotImplementedError(op.kind)


def _real(tensor, value):
    q = tensor.quant
    if tensor.dtype == "float32" or q is None:
        return value.astype(np.float64)
    shape = [1] * value.ndim
    if q.per_channel:
        shape[q.axis] = -1
    return (value.astype(np.float64) - q.zero_point.reshape(shape)) * q.scale.reshape(shape)


def _fake_quant(tensor, real):
    """Rounds a real value to the int8 grid of `tensor` and returns it as a real again."""
    q = tensor.quant
    levels = np.clip(np.round(real / q.s) + q.zp, -128, 127)
    return (levels - q.zp) * q.s


def run_ir(graph, feeds: dict) -> list:
    """Runs the graph in float64. Int8 tensors hold their real values; each int8 output is
    rounded to its quantization grid, which is what DQ -> op -> Q computes."""
    env = {}
    for name, value in feeds.items():
        env[name] = np.asarray(value, dtype=np.float64)
    for op in graph.ops:
        args = []
        for name in op.inputs:
            if not name:
                args.append(None)
            elif name in env:
                args.append(env[name])
            else:
                tensor = graph.t(name)
                assert tensor.is_const, f"{name} used before it is computed"
                args.append(_real(tensor, tensor.data))
        result = _run_op(op, args, graph)
        out = graph.t(op.outputs[0])
        assert result.shape == tuple(out.shape), (op.kind, result.shape, out.shape)
        env[out.name] = _fake_quant(out, result) if out.dtype == "int8" else result
    return [env[name] for name in graph.outputs]


def run_onnxruntime(model: onnx.ModelProto, feeds: dict, optimize: bool = False) -> list:
    """Without graph optimizations by default: they change results (onnxruntime 1.31 folds a
    zero Pad into a following MaxPool, whose padding acts as -inf) and turn QDQ into fused
    int8 kernels; unoptimized, QDQ runs as the reference DQ -> float op -> Q."""
    options = ort.SessionOptions()
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


# --- building small test models ----------------------------------------------------------

def make_model(nodes, inputs: dict, outputs, inits=None, opset=14) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, "test",
        [helper.make_tensor_value_info(k, TensorProto.FLOAT, v) for k, v in inputs.items()],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in (inits or {}).items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def weights(*shape, seed=0):
    return np.random.default_rng(seed).normal(0, 0.5, shape).astype(np.float32)


def kinds(graph):
    return [op.kind for op in graph.ops]


def assert_matches_onnxruntime(model, count=3, atol=1e-4):
    graph = read_onnx(model)
    rng = np.random.default_rng(42)
    shapes = {i.name: [d.dim_value or 1 for d in i.type.tensor_type.shape.dim]
              for i in model.graph.input}
    for _ in range(count):
        feeds = {k: rng.uniform(-2, 2, s).astype(np.float32) for k, s in shapes.items()}
        expected = run_onnxruntime(model, feeds)
        actual = run_ir(graph, feeds)
        for e, a in zip(expected, actual):
            assert e.shape == a.shape
            np.testing.assert_allclose(a, e, atol=atol, rtol=0)
    return graph


# --- float models ---------------------------------------------------------------------------

@pytest.mark.parametrize("build", [onnx_models.mobilenet_v2_like, onnx_models.pooling_net])
def test_float_models_match_onnxruntime(build):
    assert_matches_onnxruntime(build())


def test_mobilenet_structure():
    graph = read_onnx(onnx_models.mobilenet_v2_like())
    # the dynamic batch became 1; the interface keeps the ONNX layout
    assert graph.t(graph.inputs[0]).shape == (1, 3, 32, 32)
    assert graph.t(graph.outputs[0]).shape == (1, 10)
    first = graph.ops[0]
    assert first.kind == "transpose" and first.attrs["perm"] == (0, 2, 3, 1)
    assert graph.t(first.outputs[0]).shape == (1, 32, 32, 3)
    # BatchNormalization folded into the convs, Clip(0, 6) into their activation
    assert kinds(graph) == ["transpose", "conv2d", "conv2d", "depthwise_conv2d", "conv2d",
                            "add", "conv2d", "depthwise_conv2d", "conv2d", "conv2d", "mean",
                            "reshape", "fully_connected", "softmax"]
    convs = [op for op in graph.ops if "conv" in op.kind]
    assert [op.attrs["activation"] for op in convs] == ["relu6", "relu6", "relu6", "none",
                                                        "relu6", "relu6", "none", "relu6"]
    assert all(op.inputs[2] for op in convs)  # BN gave every conv a bias
    stem, dw_same = convs[0], convs[5]
    assert graph.t(stem.inputs[1]).shape == (16, 3, 3, 3)
    assert graph.t(stem.outputs[0]).shape == (1, 16, 16, 16)
    assert dw_same.kind == "depthwise_conv2d" and dw_same.attrs["depth_multiplier"] == 1
    assert graph.t(dw_same.inputs[1]).shape == (1, 3, 3, 32)
    assert dw_same.attrs["padding"] == (0, 0, 1, 1)  # SAME_UPPER, stride 2, 16 -> 8
    mean = graph.ops[kinds(graph).index("mean")]
    assert mean.attrs == {"axes": (1, 2), "keep_dims": True}
    fc = graph.ops[kinds(graph).index("fully_connected")]
    assert graph.t(fc.inputs[1]).shape == (10, 64)
    for tensor in graph.tensors.values():
        assert tensor.dtype == "float32"


def test_pooling_net_structure():
    graph = read_onnx(onnx_models.pooling_net())
    assert kinds(graph) == ["transpose", "conv2d", "max_pool2d", "conv2d", "hard_swish",
                            "avg_pool2d", "conv2d", "logistic", "concat", "resize_nearest",
                            "conv2d", "avg_pool2d", "transpose", "reshape", "fully_connected"]
    concat = graph.ops[8]
    assert concat.attrs["axis"] == 3 and graph.t(concat.outputs[0]).shape == (1, 8, 8, 16)
    assert graph.ops[5].attrs["padding"] == (1, 1, 1, 1)
    resize = graph.ops[9]
    assert graph.t(resize.outputs[0]).shape == (1, 16, 16, 16)
    # flatten of a 4x4 map: back to NCHW order first
    transpose, reshape = graph.ops[12:14]
    assert transpose.attrs["perm"] == (0, 3, 1, 2)
    assert graph.t(transpose.outputs[0]).shape == (1, 8, 4, 4)
    assert graph.t(reshape.outputs[0]).shape == (1, 128)
    assert graph.ops[1].attrs["activation"] == "relu"


# --- single operators, float, against onnxruntime -------------------------------------------

def _conv_case(**attrs):
    return make_model([helper.make_node("Conv", ["x", "w", "b"], ["y"], **attrs)],
                      {"x": [1, 4, 9, 11]}, ["y"],
                      {"w": weights(6, 4, 3, 3), "b": weights(6, seed=1)})


SINGLE_OP_CASES = {
    "conv_same_lower": _conv_case(auto_pad="SAME_LOWER", strides=[2, 2]),
    "conv_same_upper": _conv_case(auto_pad="SAME_UPPER", strides=[2, 2]),
    "conv_valid_dilated": _conv_case(auto_pad="VALID", dilations=[2, 2]),
    "conv_asymmetric_pads": _conv_case(pads=[0, 1, 2, 1], strides=[1, 2]),
    "depthwise_multiplier": make_model(
        [helper.make_node("Conv", ["x", "w"], ["y"], group=4, pads=[1, 1, 1, 1])],
        {"x": [1, 4, 6, 6]}, ["y"], {"w": weights(8, 1, 3, 3)}),
    "conv_bn_relu": make_model(
        [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
         helper.make_node("BatchNormalization", ["c", "g", "be", "m", "v"], ["n"]),
         helper.make_node("Relu", ["n"], ["y"])],
        {"x": [1, 3, 5, 5]}, ["y"],
        {"w": weights(4, 3, 3, 3), "g": weights(4, seed=1) + 1, "be": weights(4, seed=2),
         "m": weights(4, seed=3), "v": np.abs(weights(4, seed=4)) + 0.5}),
    "batchnorm_alone": make_model(
        [helper.make_node("BatchNormalization", ["x", "g", "be", "m", "v"], ["y"])],
        {"x": [1, 3, 4, 5]}, ["y"],
        {"g": weights(3, seed=1), "be": weights(3, seed=2), "m": weights(3, seed=3),
         "v": np.abs(weights(3, seed=4)) + 0.5}),
    "matmul_add_relu": make_model(
        [helper.make_node("MatMul", ["x", "w"], ["m"]),
         helper.make_node("Add", ["m", "b"], ["a"]),
         helper.make_node("Relu", ["a"], ["y"])],
        {"x": [1, 12]}, ["y"], {"w": weights(12, 5), "b": weights(5, seed=1)}),
    "gemm_plain_weights_alpha_beta": make_model(
        [helper.make_node("Gemm", ["x", "w", "b"], ["y"], alpha=0.5, beta=2.0)],
        {"x": [1, 12]}, ["y"], {"w": weights(12, 5), "b": weights(1, 5, seed=1)}),
    "broadcast_const_add_mul_clip": make_model(
        [helper.make_node("Add", ["x", "c"], ["a"]),
         helper.make_node("Mul", ["a", "s"], ["m"]),
         helper.make_node("Clip", ["m", "lo", "hi"], ["y"])],
        {"x": [1, 3, 4, 5]}, ["y"],
        {"c": weights(3, 1, 1), "s": np.float32(3.0), "lo": np.float32(0),
         "hi": np.float32(6)}),
    "sub_div_by_constant": make_model(
        [helper.make_node("Sub", ["x", "c"], ["s"]), helper.make_node("Div", ["s", "d"], ["y"])],
        {"x": [1, 3, 4, 4]}, ["y"], {"c": weights(1, 3, 1, 1), "d": np.float32(0.25)}),
    "pad_maxpool_ceil_free": make_model(
        [helper.make_node("Pad", ["x", "p"], ["q"]),
         helper.make_node("MaxPool", ["q"], ["y"], kernel_shape=[3, 3], strides=[2, 2],
                          pads=[1, 1, 1, 1])],
        {"x": [1, 3, 7, 6]}, ["y"], {"p": np.array([0, 0, 1, 0, 0, 0, 0, 1], np.int64)}),
    "reduce_mean": make_model(
        [helper.make_node("ReduceMean", ["x"], ["y"], axes=[2, 3], keepdims=0)],
        {"x": [1, 5, 3, 4]}, ["y"]),
    "reduce_mean_height": make_model(
        [helper.make_node("ReduceMean", ["x"], ["y"], axes=[2], keepdims=0)],
        {"x": [1, 5, 3, 4]}, ["y"]),
    "global_max_pool": make_model([helper.make_node("GlobalMaxPool", ["x"], ["y"])],
                                  {"x": [1, 5, 3, 4]}, ["y"]),
    "transpose_reshape_softmax": make_model(
        [helper.make_node("Transpose", ["x"], ["t"], perm=[0, 2, 3, 1]),
         helper.make_node("Reshape", ["t", "shape"], ["r"]),
         helper.make_node("Softmax", ["r"], ["y"], axis=1)],
        {"x": [1, 3, 2, 4]}, ["y"], {"shape": np.array([1, 6, 1, 4], np.int64)}),
    "shape_computed_flatten": make_model(
        [helper.make_node("Shape", ["x"], ["s"]),
         helper.make_node("Gather", ["s", "zero"], ["n"], axis=0),
         helper.make_node("Unsqueeze", ["n", "axes"], ["n1"]),
         helper.make_node("Concat", ["n1", "minus_one"], ["shape"], axis=0),
         helper.make_node("Reshape", ["x", "shape"], ["y"])],
        {"x": ["batch", 3, 2, 2]}, ["y"],
        {"zero": np.array(0, np.int64), "axes": np.array([0], np.int64),
         "minus_one": np.array([-1], np.int64)}),
    "channel_softmax_and_hardsigmoid": make_model(
        [helper.make_node("Softmax", ["x"], ["s"], axis=1),
         helper.make_node("HardSigmoid", ["s"], ["y"], alpha=0.3, beta=0.4)],
        {"x": [1, 4, 3, 3]}, ["y"]),
    "resize_sizes_align_corners": make_model(
        [helper.make_node("Resize", ["x", "", "", "sizes"], ["y"], mode="nearest",
                          coordinate_transformation_mode="align_corners",
                          nearest_mode="round_prefer_ceil")],
        {"x": [1, 2, 4, 4]}, ["y"], {"sizes": np.array([1, 2, 6, 5], np.int64)}),
    "resize_half_pixel_downscale": make_model(
        [helper.make_node("Resize", ["x", "", "", "sizes"], ["y"], mode="nearest",
                          coordinate_transformation_mode="tf_half_pixel_for_nn",
                          nearest_mode="floor")],
        {"x": [1, 2, 6, 9]}, ["y"], {"sizes": np.array([1, 2, 4, 4], np.int64)}),
    "identity_dropout_concat_const": make_model(
        [helper.make_node("Identity", ["x"], ["i"]), helper.make_node("Dropout", ["i"], ["d"]),
         helper.make_node("Concat", ["d", "c"], ["y"], axis=1)],
        {"x": [1, 2, 3, 3]}, ["y"], {"c": weights(1, 1, 3, 3)}),
    "two_d_output_of_4d_input": make_model(
        [helper.make_node("Flatten", ["x"], ["y"], axis=2)], {"x": [1, 2, 3, 4]}, ["y"]),
    "opset9_upsample_pad_clip_softmax": make_model(
        [helper.make_node("Upsample", ["x", "scales"], ["u"], mode="nearest"),
         helper.make_node("Pad", ["u"], ["p"], pads=[0, 0, 1, 1, 0, 0, 0, 1]),
         helper.make_node("Clip", ["p"], ["c"], min=0.0, max=6.0),
         helper.make_node("GlobalAveragePool", ["c"], ["g"]),
         helper.make_node("Softmax", ["g"], ["y"], axis=1)],
        {"x": [1, 3, 2, 3]}, ["y"], {"scales": np.array([1, 1, 2, 3], np.float32)}, opset=9),
}


@pytest.mark.parametrize("case", sorted(SINGLE_OP_CASES))
def test_single_op_matches_onnxruntime(case):
    assert_matches_onnxruntime(SINGLE_OP_CASES[case])


def test_single_op_folding():
    graph = read_onnx(SINGLE_OP_CASES["conv_bn_relu"])
    assert kinds(graph) == ["transpose", "conv2d", "transpose"]
    assert graph.ops[1].attrs["activation"] == "relu"
    graph = read_onnx(SINGLE_OP_CASES["matmul_add_relu"])
    assert kinds(graph) == ["fully_connected"]
    fc = graph.ops[0]
    assert graph.t(fc.inputs[1]).shape == (5, 12) and fc.attrs["activation"] == "relu"
    graph = read_onnx(SINGLE_OP_CASES["broadcast_const_add_mul_clip"])
    assert kinds(graph) == ["transpose", "add", "mul", "transpose"]
    assert graph.ops[2].attrs["activation"] == "relu6"
    assert graph.t(graph.ops[1].inputs[1]).shape == (1, 1, 1, 3)
    graph = read_onnx(SINGLE_OP_CASES["shape_computed_flatten"])
    assert kinds(graph) == ["transpose", "transpose", "reshape"]
    graph = read_onnx(SINGLE_OP_CASES["resize_sizes_align_corners"])
    assert graph.ops[1].attrs == {"align_corners": True, "half_pixel_centers": False}
    graph = read_onnx(SINGLE_OP_CASES["resize_half_pixel_downscale"])
    assert graph.ops[1].attrs == {"align_corners": False, "half_pixel_centers": True}


# --- QDQ int8 -------------------------------------------------------------------------------

@pytest.fixture(scope="module", params=[False, True], ids=["per_tensor", "per_channel"])
def qdq_models(request):
    per_channel = request.param
    return per_channel, {"mobilenet": onnx_models.mobilenet_v2_like_qdq(per_channel),
                         "pooling": onnx_models.pooling_net_qdq(per_channel)}


def _same_quant(a, b):
    return a.s == b.s and a.zp == b.zp


def _check_int8_graph(graph, per_channel):
    """Float only at the boundary; weights, biases and TFLite's int8 rules as expected."""
    ops = graph.ops
    assert kinds(graph)[:2] == ["transpose", "quantize"]
    assert kinds(graph)[-1] == "dequantize" and kinds(graph).count("dequantize") == 1
    for op in ops[2:-1]:
        out = graph.t(op.outputs[0])
        assert out.dtype == "int8" and out.quant, op
        assert graph.t(op.inputs[0]).dtype == "int8", op
        if op.kind == "concat":
            assert all(_same_quant(graph.t(i).quant, out.quant) for i in op.inputs)
        if op.kind in ("softmax", "avg_pool2d", "mean"):  # any output parameters
            assert op.attrs.get("real_valued"), op
        if op.kind in ("reshape", "transpose", "max_pool2d", "resize_nearest"):
            assert _same_quant(graph.t(op.inputs[0]).quant, out.quant), op
        if op.kind in ("conv2d", "depthwise_conv2d", "fully_connected"):
            x, w, b = (graph.t(n) for n in op.inputs)
            channels = w.shape[3] if op.kind == "depthwise_conv2d" else w.shape[0]
            assert w.dtype == "int8" and not np.any(w.quant.zero_point)
            assert w.quant.scale.size == (channels if per_channel else 1)
            if per_channel:
                assert w.quant.axis == (3 if op.kind == "depthwise_conv2d" else 0)
            assert b.dtype == "int32" and b.shape == (channels,)
            np.testing.assert_array_equal(b.quant.scale, np.float32(x.quant.s * w.quant.scale))


def test_qdq_mobilenet_is_int8(qdq_models):
    per_channel, models = qdq_models
    graph = read_onnx(models["mobilenet"])
    assert kinds(graph) == ["transpose", "quantize", "conv2d", "conv2d", "depthwise_conv2d",
                            "conv2d", "add", "conv2d", "depthwise_conv2d", "conv2d", "conv2d",
                            "mean", "reshape", "fully_connected", "softmax", "dequantize"]
    _check_int8_graph(graph, per_channel)
    # softmax and mean keep ONNX's semantics (float between dequantize and quantize), so
    # no requantization surrounds them
    assert all(op.attrs.get("real_valued") for op in graph.ops
               if op.kind in ("softmax", "mean"))
    assert graph.t(graph.outputs[0]).dtype == "float32"
    assert graph.t(graph.inputs[0]).shape == (1, 3, 32, 32)


def test_qdq_pooling_net_is_int8(qdq_models):
    per_channel, models = qdq_models
    graph = read_onnx(models["pooling"])
    # onnxruntime's pre-processing inlines HardSwish to x * HardSigmoid(x) with a Q/DQ pair
    # in between; it becomes one int8 hard_swish again. A concat input is requantized to
    # the concat's parameters.
    assert kinds(graph) == ["transpose", "quantize", "conv2d", "max_pool2d", "conv2d",
                            "avg_pool2d", "hard_swish", "conv2d", "logistic", "quantize",
                            "concat", "resize_nearest", "conv2d", "avg_pool2d",
                            "transpose", "reshape", "fully_connected", "dequantize"]
    _check_int8_graph(graph, per_channel)


@pytest.mark.parametrize("optimize", [False, True], ids=["reference", "int8_kernels"])
@pytest.mark.parametrize("name", ["mobilenet", "pooling"])
def test_qdq_semantics_match_onnxruntime(qdq_models, name, optimize):
    """The IR, run as DQ -> float op -> Q, stays within two output steps of onnxruntime, both
    of its reference QDQ semantics and of its fused int8 kernels. This guards the scales,
    zero points and int32 biases the front end writes (a wrong one costs far more), not the
    kernels. Mostly the difference is at most one step; float32 vs float64 ties in an
    average pool can differ by one step inside the network and grow to two at the output
    (2 of 50 random inputs for the pooling net)."""
    _, models = qdq_models
    model = models[name]
    graph = read_onnx(model)
    step = graph.t(graph.ops[-1].inputs[0]).quant.s
    for x in onnx_models.sample_inputs(model, 8, seed=7):
        expected = run_onnxruntime(model, {"input": x}, optimize)[0]
        actual = run_ir(graph, {"input": x})[0]
        assert np.abs(actual - expected).max() <= 2 * step * 1.001


def _se_like_model():
    """Mul by a per-channel constant, conv + relu, maxpool, an NHWC-order Transpose, Flatten
    of a 3x3 map and MatMul + Add, for quantize_static."""
    return make_model(
        [helper.make_node("Mul", ["input", "s"], ["a"]),
         helper.make_node("Conv", ["a", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["c"], ["r"]),
         helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
         helper.make_node("Transpose", ["p"], ["t"], perm=[0, 2, 3, 1]),
         helper.make_node("Flatten", ["t"], ["f"]),
         helper.make_node("MatMul", ["f", "fw"], ["mm"]),
         helper.make_node("Add", ["mm", "fb"], ["y"])],
        {"input": [1, 4, 6, 6]}, ["y"],
        {"s": weights(4, 1, 1, seed=3), "w": weights(8, 4, 3, 3), "b": weights(8, seed=1),
         "fw": weights(72, 5, seed=2), "fb": weights(5, seed=4)})


@pytest.mark.parametrize("per_channel", [False, True])
def test_qdq_mul_transpose_matmul(per_channel):
    model = onnx_models.quantize_qdq(_se_like_model(), per_channel)
    graph = read_onnx(model)
    assert kinds(graph) == ["transpose", "quantize", "mul", "conv2d", "max_pool2d",
                            "transpose", "transpose", "reshape", "fully_connected",
                            "dequantize"]
    _check_int8_graph(graph, per_channel)
    scale = graph.t(graph.ops[2].inputs[1])
    assert scale.dtype == "int8" and scale.shape == (1, 1, 1, 4) and scale.quant
    step = graph.t(graph.ops[-1].inputs[0]).quant.s
    for x in onnx_models.sample_inputs(model, 8, seed=5):
        for optimize in (False, True):
            expected = run_onnxruntime(model, {"input": x}, optimize)[0]
            assert np.abs(run_ir(graph, {"input": x})[0] - expected).max() <= step * 1.001


# --- errors ---------------------------------------------------------------------------------

def test_unsupported_operator_is_named():
    model = make_model([helper.make_node("Relu", ["x"], ["r"], name="first"),
                        helper.make_node("Cos", ["r"], ["y"], name="the_cosine")],
                       {"x": [1, 4]}, ["y"])
    with pytest.raises(UnsupportedOperator) as info:
        read_onnx(model)
    message = str(info.value)
    assert info.value.index == 1 and info.value.op_name == "Cos"
    for part in ("Cos", "the_cosine", "index 1", "'r'", "'y'"):
        assert part in message


def test_grouped_conv_is_rejected():
    model = make_model([helper.make_node("Conv", ["x", "w"], ["y"], group=2, name="grouped")],
                       {"x": [1, 4, 5, 5]}, ["y"], {"w": weights(6, 2, 3, 3)})
    with pytest.raises(UnsupportedOperator, match="group=2.*neither a full nor a depthwise"):
        read_onnx(model)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_corrupt_file_is_a_model_error(tmp_path, damage):
    data = onnx_models.pooling_net().SerializeToString()
    data = {"truncated": data[:len(data) // 2], "garbage": b"\x08\x07\xff\xfe" * 50,
            "empty": b""}[damage]
    with pytest.raises(ModelError) as info:
        read_onnx(data)
    assert "Traceback" not in str(info.value)
    path = tmp_path / "bad.onnx"
    path.write_bytes(data)
    with pytest.raises(ModelError):
        read_onnx(str(path))


def test_missing_file_is_a_model_error(tmp_path):
    with pytest.raises(ModelError, match="no such ONNX model file"):
        read_onnx(str(tmp_path / "missing.onnx"))


def test_uint8_qdq_is_rejected():
    model = make_model(
        [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
         helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"])],
        {"x": [1, 4]}, ["y"], {"s": np.float32(0.1), "z": np.uint8(128)})
    with pytest.raises(UnsupportedOperator, match="uint8 quantization is not supported"):
        read_onnx(model)


def test_path_and_bytes_inputs(tmp_path):
    model = onnx_models.pooling_net()
    path = tmp_path / "model.onnx"
    onnx.save(model, str(path))
    expected = kinds(read_onnx(model))
    assert kinds(read_onnx(str(path))) == expected
    assert kinds(read_onnx(model.SerializeToString())) == expected
