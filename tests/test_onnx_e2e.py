"""ONNX models compiled end to end against onnxruntime: float within 1e-4, QDQ int8
within one quantization step."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import tvm_patch
from onnx import TensorProto, helper, numpy_helper

from onnx_models import (mobilenet_v2_like, mobilenet_v2_like_qdq, pooling_net,
                         pooling_net_qdq, quantize_qdq, sample_inputs)


def _ort(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    opts = ort.SessionOptions()
    # ORT's optimizer folds a zero Pad into a following MaxPool wrongly; compare with
    # the graph as written
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def _compile(model):
    return tvm_patch.build(tvm_patch.load(model.SerializeToString()))


@pytest.mark.parametrize("make", [mobilenet_v2_like, pooling_net])
def test_float_matches_onnxruntime(make):
    model = make()
    compiled = _compile(model)
    for x in sample_inputs(model, 3):
        np.testing.assert_allclose(compiled.run(x)[0], _ort(model, x), atol=1e-4, rtol=1e-4)


def _single_op(op_type, **attrs):
    """x (1,3,8,8) -> op -> y: the op reads the quantized model input directly, so ours and
    onnxruntime's see the same int8 values."""
    rng = np.random.default_rng(len(op_type))
    inits, nodes, inputs = [], [], ["x"]
    if op_type in ("Add", "Mul"):
        inits.append(numpy_helper.from_array(rng.normal(0, 0.5, (1, 3, 1, 1)).astype(
            np.float32), "k"))
        inputs.append("k")
    if op_type == "Concat":
        inputs.append("x")
    if op_type == "Gemm":
        nodes.append(helper.make_node("Flatten", ["x"], ["f"]))
        inits.append(numpy_helper.from_array(rng.normal(0, 0.1, (5, 192)).astype(np.float32),
                                             "g"))
        inputs = ["f", "g"]
        attrs = dict(transB=1)
    nodes.append(helper.make_node(op_type, inputs, ["y"], **attrs))
    graph = helper.make_graph(nodes, op_type, [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, (1, 3, 8, 8))], [helper.make_tensor_value_info(
            "y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = 8
    return model


# onnxruntime's quantizer leaves a lone Relu, MaxPool or AveragePool on the model input in
# float, so those are checked inside the networks below instead
SINGLE_OPS = {
    "Conv": dict(pads=[2, 2, 2, 2], strides=[2, 2], kernel_shape=[5, 5]),
    "Sigmoid": {}, "HardSwish": {}, "Add": {}, "Mul": {}, "Concat": dict(axis=1),
    "GlobalAveragePool": {}, "Gemm": {},
}


@pytest.mark.parametrize("op_type", SINGLE_OPS)
def test_qdq_single_op_within_one_step(op_type):
    """Each int8 operator, given the same int8 input, lands within one quantization step
    of onnxruntime's DequantizeLinear -> float op -> QuantizeLinear."""
    attrs = dict(SINGLE_OPS[op_type])
    if op_type == "Conv":
        attrs["kernel_shape"] = [5, 5]
        model = _conv5(attrs)
    else:
        model = _single_op(op_type, **attrs)
    qdq = quantize_qdq(model, per_channel=True)
    compiled = _compile(qdq)
    step = _output_step(qdq)
    for x in sample_inputs(qdq, 10, seed=7):
        steps = np.abs(compiled.run(x)[0].astype(np.float64) - _ort(qdq, x)) / step
        assert steps.max() <= 1.001, f"{op_type}: {steps.max():.2f} steps off"


def _conv5(attrs):
    rng = np.random.default_rng(3)
    w = numpy_helper.from_array(rng.normal(0, 0.2, (4, 3, 5, 5)).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.normal(0, 0.2, (4,)).astype(np.float32), "b")
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w", "b"], ["y"], **attrs)],
                              "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                     (1, 3, 8, 8))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [w, b])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = 8
    return model


@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("make", [mobilenet_v2_like_qdq, pooling_net_qdq])
def test_qdq_network_close_to_onnxruntime(make, per_channel):
    """Whole QDQ networks: every int8 operator is within one step of onnxruntime (test
    above); convolutions, FC and ADD keep TFLite's integer requantization, whose one-step
    differences from onnxruntime's float rounding propagate through later layers (measured
    over 200 outputs: at most 2 steps, mean 0.11-0.54)."""
    model = make(per_channel)
    graph = tvm_patch.read(model.SerializeToString())
    assert any(op.kind == "conv2d" and graph.t(op.outputs[0]).dtype == "int8"
               for op in graph.ops), "QDQ convolutions must become integer kernels"
    compiled = _compile(model)
    out_scale = _output_step(model)
    steps = np.concatenate([
        (np.abs(compiled.run(x)[0].astype(np.float64) - _ort(model, x)) / out_scale).ravel()
        for x in sample_inputs(model, 20)])
    print(f"{make.__name__} per_channel={per_channel}: max {steps.max():.2f} steps, "
          f"mean {steps.mean():.2f}")
    assert steps.max() <= 2.001 and steps.mean() <= 0.6


def _output_step(model) -> float:
    """The scale of the nearest DequantizeLinear upstream of the model output (ORT leaves
    some ops, e.g. Relu, between it and the output)."""
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    node = producers[model.graph.output[0].name]
    while node.op_type != "DequantizeLinear":
        node = producers[node.input[0]]
    return float(inits[node.input[1]])
