"""The hand-written C kernels of the firmware (tvm_patch/mcu/firmware/tvmp_nn.c), compiled
for this host (their SIMD helpers then run as plain C), against TFLite Micro one layer at a
time: random shapes, strides, paddings, kernel sizes and quantization (adversarial included),
every layer the kernel can run, not only those the default choice gives it. The firmware
tests (test_mcu.py) run the same source with the DSP instructions on the emulated M7."""

from __future__ import annotations

import ctypes
import dataclasses
import os
import subprocess

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, example, given, settings, strategies as st

from random_cnn import QUANTS, Layer, Spec, build
from tvm_patch import reference
from tvm_patch.quant import mbqm
from tvm_patch.frontend import read
from tvm_patch.kernels.lower import lower_op
from tvm_patch.kernels.variants import COL_MAX, DW_PADDED_MAX, c_kernel

FIRMWARE = os.path.join(os.path.dirname(__file__), "..", "tvm_patch", "mcu", "firmware")


@pytest.fixture(scope="module")
def libraries(tmp_path_factory):
    """The kernels as the firmware builds them, and with columns of at most 2 taps and no
    padded depthwise planes (so the convolutions' window-row path and the depthwise
    kernel's cut windows run too)."""
    built = []
    for defines in ([], ["-DTVMP_COL_MAX=2", "-DTVMP_DW_PADDED_MAX=16"]):
        path = str(tmp_path_factory.mktemp("tvmp_nn") / "libtvmp_nn.so")
        subprocess.run(["gcc", "-O2", "-std=c11", "-Wall", "-Werror", "-shared", "-fPIC",
                        *defines, "-o", path, os.path.join(FIRMWARE, "tvmp_nn.c")], check=True)
        built.append(ctypes.CDLL(path))
    return built


@st.composite
def layers(draw):
    kind = draw(st.sampled_from(["conv", "dw"]))
    layer = Layer(kind, activation=draw(st.sampled_from(["NONE", "RELU", "RELU6"])))
    layer.kernel = draw(st.sampled_from([1, 3, 5, 7] if kind == "conv" else [3, 5, 7]))
    layer.stride = draw(st.sampled_from([1, 2]))
    layer.padding = draw(st.sampled_from(["SAME", "VALID"]))
    if kind == "conv":
        # the column kernel unrolls pointwise layers of 8, 16, 24, 32, 48 and 64 channels
        layer.channels = draw(st.one_of(st.integers(1, 13), st.sampled_from([16, 24, 32, 48, 64])))
    h, w = draw(st.integers(1, 19)), draw(st.integers(1, 19))
    if layer.padding == "VALID":
        h, w = max(h, layer.kernel), max(w, layer.kernel)
    cin = draw(st.one_of(st.integers(1, 11), st.sampled_from([8, 16, 24, 32, 48, 64])))
    return Spec(h, w, cin, [layer], seed=draw(st.integers(0, 2**31 - 1)),
                quant=draw(st.sampled_from(QUANTS)))


def run_c(library, data: bytes, x: np.ndarray, in_place: bool,
          nhwc: bool = False) -> np.ndarray | None:
    """The model's one layer by its C kernel (None: the kernel cannot run it); `nhwc`: a
    depthwise layer by tvmp_depthwise_nhwc_s8 (the same arguments but the plane)."""
    graph = read(data)
    (op,) = [op for op in graph.ops if op.kind in ("conv2d", "depthwise_conv2d")]
    kernel = lower_op(op, graph)
    n_params = 6
    if op.kind == "depthwise_conv2d":  # as if in place: the kernel then takes its plane
        op = dataclasses.replace(op, attrs={**op.attrs, "inplace": True})
        n_params = 7
    variant = c_kernel(op, graph, n_params, int(np.prod(x.shape[1:3])), default=False)
    if variant is None:
        return None
    out = graph.t(op.outputs[0])
    x = np.ascontiguousarray(x)
    y = x if in_place else np.zeros(out.shape, np.int8)
    plane = np.zeros(int(np.prod(x.shape[1:3])), np.int8)
    params = [x, *[np.ascontiguousarray(c) for c in kernel.consts], y, plane]
    args = [params[int(a[1:])].ctypes.data_as(ctypes.c_void_p) if isinstance(a, str)
            else ctypes.c_int32(a) for a in variant["args"]]
    name = variant["name"]
    if nhwc:
        name, args = "tvmp_depthwise_nhwc_s8", args[:6] + args[7:]
    getattr(library, name)(*args)
    return y.reshape(out.shape)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=layers(), in_place=st.booleans())
@example(  # a window longer than the padded image: its last start is negative
    spec=Spec(3, 2, 1, [Layer("dw", kernel=3, stride=2, padding="SAME", activation="NONE")],
              seed=0, quant="realistic"), in_place=False)
def test_c_kernel_matches_tflite_micro(libraries, spec, in_place):
    data = build(spec)
    graph = read(data)
    shape = graph.t(graph.inputs[0]).shape
    out_shape = graph.t(graph.outputs[0]).shape
    in_place = in_place and spec.layers[0].kind == "dw" and tuple(shape) == tuple(out_shape)
    x = np.random.default_rng(spec.seed).integers(-128, 128, shape).astype(np.int8)
    expected = reference.run(data, [x])[0]
    for library in libraries:
        got = run_c(library, data, x.copy(), in_place)
        assume(got is not None)  # a multiplier at INT32_MIN stays on TVM's C
        np.testing.assert_array_equal(got, expected)
    if spec.layers[0].kind == "dw":
        np.testing.assert_array_equal(run_c(libraries[0], data, x.copy(), False, nhwc=True),
                                      expected)


def test_default_choice_keeps_small_depthwise_layers_on_tvm_c():
    spec = Spec(4, 4, 4, [Layer("conv", channels=4), Layer("dw", kernel=3)], seed=1)
    graph = read(build(spec))
    dw = next(op for op in graph.ops if op.kind == "depthwise_conv2d")
    assert dw.attrs.get("inplace")
    assert c_kernel(dw, graph, 7, 16) is None
    assert c_kernel(dw, graph, 7, 16, default=False)["name"] == "tvmp_depthwise_s8"
    # 25x5 (KWS): its padded plane fits the stack buffer
    kws = read(build(Spec(25, 5, 4, [Layer("conv", channels=4), Layer("dw", kernel=3)], seed=1)))
    dw = next(op for op in kws.ops if op.kind == "depthwise_conv2d")
    assert c_kernel(dw, kws, 7, 125)["name"] == "tvmp_depthwise_s8"
    big = read(build(Spec(12, 12, 4, [Layer("conv", channels=4), Layer("dw", kernel=3)], seed=1)))
    dw = next(op for op in big.ops if op.kind == "depthwise_conv2d")
    assert c_kernel(dw, big, 7, 144)["name"] == "tvmp_depthwise_s8"
    assert c_kernel(dw, big, 7, 143) is None  # its plane would not fit the workspace


def test_stack_buffer_limits_are_the_firmware_ones():
    with open(os.path.join(FIRMWARE, "tvmp_nn.c")) as f:
        assert f"#define TVMP_COL_MAX {COL_MAX}\n" in f.read()
    with open(os.path.join(FIRMWARE, "tvmp_nn.h")) as f:
        assert f"#define TVMP_DW_PADDED_MAX {DW_PADDED_MAX}\n" in f.read()


def test_default_choice_runs_narrow_convolutions_by_columns():
    """A 5x5 window over one channel has 5-byte window rows, too short for the row path (as
    KWS's 10x4 first layer), but 25 taps: the column path runs it."""
    spec = Spec(20, 10, 1, [Layer("conv", kernel=5, stride=2, channels=8)], seed=1)
    graph = read(build(spec))
    (conv,) = [op for op in graph.ops if op.kind == "conv2d"]
    assert c_kernel(conv, graph, 6)["name"] == "tvmp_conv_s8"


SHIM = r"""
#include "tvmp_nn.h"
void requantize(const int32_t* acc, int32_t* out, int32_t n, int32_t mult, int32_t shift,
                int32_t fast) {
  const tvmp_rq_t q = tvmp_rq(mult, shift, fast);
  for (int32_t i = 0; i < n; ++i)
    out[i] = fast ? tvmp_rq_apply_fast(acc[i], q) : tvmp_rq_apply(acc[i], q);
}
"""


@pytest.fixture(scope="module")
def requantize(tmp_path_factory):
    directory = tmp_path_factory.mktemp("requantize")
    (directory / "shim.c").write_text(SHIM)
    path = str(directory / "librq.so")
    subprocess.run(["gcc", "-O2", "-std=c11", "-Wall", "-Werror", "-shared", "-fPIC",
                    "-I", FIRMWARE, "-o", path, str(directory / "shim.c")], check=True)
    return ctypes.CDLL(path).requantize


@settings(max_examples=300, deadline=None)
@given(mult=st.one_of(st.just(1 << 30), st.just(-(1 << 30)), st.just(0),
                      st.integers(-(1 << 31) + 1, (1 << 31) - 1)),
       shift=st.integers(-30, 30), seed=st.integers(0, 2**31 - 1))
def test_fast_requantization_is_tflites(requantize, mult, shift, seed):
    """tvmp_rq_apply_fast within its bound (|acc| << (left + 1) inside int32) and
    tvmp_rq_apply everywhere, against quant.mbqm (TFLite's MultiplyByQuantizedMultiplier):
    small accumulators make rounding ties, the most exposed case."""
    rng = np.random.default_rng(seed)
    limit = 1 << (30 - max(shift, 0))
    inside = np.concatenate([np.arange(-300, 301), rng.integers(-limit + 1, limit, 300),
                             [limit - 1, -limit + 1]])
    inside = inside[np.abs(inside) < limit]
    anywhere = rng.integers(-(1 << 31), 1 << 31, 300)
    for fast, acc in ((1, inside), (0, np.concatenate([inside, anywhere]))):
        acc = acc.astype(np.int32)
        expected = np.array([mbqm(int(a), mult, shift) for a in acc], np.int32)
        out = np.zeros_like(acc)
        requantize(acc.ctypes.data_as(ctypes.c_void_p), out.ctypes.data_as(ctypes.c_void_p),
                   ctypes.c_int32(acc.size), ctypes.c_int32(mult), ctypes.c_int32(shift),
                   ctypes.c_int32(fast))
        np.testing.assert_array_equal(out, expected)


def test_fast_requantization_only_where_the_accumulators_are_bounded():
    graph = read(build(Spec(8, 8, 4, [Layer("conv", kernel=3, channels=4)], seed=1)))
    (conv,) = [op for op in graph.ops if op.kind == "conv2d"]
    assert c_kernel(conv, graph, 6)["args"][-1] == 1  # realistic weights and biases
    bias = graph.t(conv.inputs[2])
    graph.tensors[bias.name] = dataclasses.replace(bias, data=np.full_like(bias.data, 1 << 30))
    assert c_kernel(conv, graph, 6)["args"][-1] == 0
