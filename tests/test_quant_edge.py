"""Every quantization TFLite Micro accepts, bit-exact: negative and zero per-channel weight
scales, Q31 multipliers that round up to +-2^31, shifts at and past TFLite's limits (-31 and
+30), zero points at the ends of the int8 range, per tensor and per channel, on every
operator with its own requantization (random_cnn.quant_specs)."""

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings

import tvm_patch
from tvm_patch import ModelError, reference
from conftest import assert_bit_exact
from random_cnn import quant_specs, build
from tvm_patch.quant import INT32_MIN, quantize_multiplier, round_away
from tvm_patch.zoo import ModelWriter


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(quant_specs())
def test_adversarial_quantization_bit_exact(spec):
    data = build(spec)
    graph = tvm_patch.read(data)
    for op in graph.ops:  # what the examples covered (--hypothesis-show-statistics)
        event(op.kind)
        if op.kind in ("conv2d", "depthwise_conv2d", "fully_connected"):
            for label in _multiplier_cases(graph, op):
                event(label)
    try:
        reference.run(data, [np.zeros(graph.t(graph.inputs[0]).shape, np.int8)])
    except RuntimeError as e:  # TFLite Micro refuses the model: so must we, in one line
        event("refused by TFLite Micro")
        with pytest.raises(ModelError) as ours:
            tvm_patch.build(tvm_patch.load(data))
        assert "\n" not in str(ours.value), f"TFLite Micro: {e}"
        return
    assert_bit_exact(data, tvm_patch.build(tvm_patch.load(data)), n=2, seed=spec.seed)


def _multiplier_cases(graph, op):
    x, w, y = (graph.t(op.inputs[0]).quant, graph.t(op.inputs[1]).quant,
               graph.t(op.outputs[0]).quant)
    for s in w.scale:
        real = np.float64(x.s) * np.float64(s) / np.float64(y.s)
        m, shift = quantize_multiplier(real)
        yield ("zero scale" if s == 0 else "flushed to 0 (shift < -31)" if m == 0 else
               "multiplier -2^31" if m == INT32_MIN else
               "rounded up to 2^31" if round_away(abs(np.frexp(real)[0]) * 2 ** 31) == 2 ** 31
               else "shift above 30" if shift > 30 else f"shift {shift}" if shift in (-31, 30)
               else "negative" if s < 0 else "plain")


def conv_with_channel_scales(scales, x_scale=0.05, y_scale=0.12, x_zp=3, y_zp=-5):
    """One 3x3 conv whose output channels have the given per-channel weight scales."""
    rng = np.random.default_rng(0)
    w = ModelWriter("channel scales")
    co, ci = len(scales), 4
    scales = np.asarray(scales, np.float32)
    x = w.tensor("x", (1, 6, 6, ci), "int8", scale=x_scale, zero_point=x_zp)
    wt = w.tensor("w", (co, 3, 3, ci), "int8", scale=scales, zero_point=np.zeros(co, int),
                  data=rng.integers(-127, 128, (co, 3, 3, ci)).astype(np.int8))
    bt = w.tensor("b", (co,), "int32", scale=np.float32(x_scale) * scales,
                  zero_point=np.zeros(co, int), data=rng.integers(-2000, 2000, co))
    y = w.tensor("y", (1, 6, 6, co), "int8", scale=y_scale, zero_point=y_zp)
    w.op("CONV_2D", [x, wt, bt], [y], {
        "padding": "SAME", "stride_w": 1, "stride_h": 1, "dilation_w_factor": 1,
        "dilation_h_factor": 1, "fused_activation_function": "NONE"})
    return w.finish([x], [y])


def test_negative_channel_scale_as_in_mcunet_bit_exact():
    """The public MCUNet ImageNet model's first conv has a channel of scale -0.0204: the
    rounding nudge must follow the sign of the product (it was off by one step here)."""
    data = conv_with_channel_scales([0.01, -0.0204, 0.0, 0.013, -0.002, 0.02, -0.03, 0.007])
    assert_bit_exact(data, tvm_patch.build(tvm_patch.load(data)), n=5)


def quantize_model(in_dtype, out_dtype, in_quant=None, out_quant=(0.05, 10)):
    w = ModelWriter("quantize")
    x = w.tensor("x", (1, 16), in_dtype, *(in_quant or ()))
    y = w.tensor("y", (1, 16), out_dtype, *out_quant)
    w.op("QUANTIZE", [x], [y])
    return w.finish([x], [y])


@pytest.mark.parametrize("in_dtype,out_dtype,in_quant,out_quant", [
    ("int8", "uint8", (0.02, -128), (0.03, 255)), ("uint8", "int8", (0.5, 0), (0.25, 127)),
    ("int8", "int8", (1e-3, 127), (3.0, -128)), ("uint8", "int8", (0.02, 200), (0.02, 72))])
def test_requantize_int8_uint8_bit_exact(in_dtype, out_dtype, in_quant, out_quant):
    data = quantize_model(in_dtype, out_dtype, in_quant, out_quant)
    compiled = tvm_patch.build(tvm_patch.load(data))
    lo, hi = (0, 256) if in_dtype == "uint8" else (-128, 128)
    x = np.arange(lo, hi, 16, dtype=in_dtype).reshape(1, 16)
    assert np.array_equal(compiled.run(x)[0], reference.run(data, [x])[0])


FLOATS = np.array([[np.nan, np.inf, -np.inf, 1e30, -1e30, 3e9, -3e9, 1.0, -0.025, 0.025,
                    6.375, -6.375, 100.0, -100.0, 0.0, -0.0]], np.float32)
# values outside int32 after scaling and NaN are undefined in C (TFLite Micro's x86 build
# gives -128 for all of them); ours saturate, and NaN quantizes to the zero point
SATURATED = [10, 127, -128, 127, -128, 127, -128]


def test_float_quantize_saturates_and_maps_nan_to_the_zero_point():
    data = quantize_model("float32", "int8")
    ours = tvm_patch.build(tvm_patch.load(data)).run(FLOATS)[0].ravel()
    ref = reference.run(data, [FLOATS])[0].ravel()
    n = len(SATURATED)
    assert ours[:n].tolist() == SATURATED
    assert np.array_equal(ours[n:], ref[n:])  # in range: TFLite Micro's bytes
