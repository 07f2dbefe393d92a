"""Logistic, hard swish, softmax and mean as TE computes, int8 bit-exact with TFLite Micro.

Each function returns `(out, consts)`, `consts` being (te.placeholder, numpy array) pairs for
the tables the compute reads. With `in_q is None` the functions build plain float32 computes.

What is matched (TFLite Micro reference kernels):
  logistic    micro/kernels/logistic_common.cc + reference/integer_ops/logistic.h (gemmlowp
              logistic on a Q4.27 input), done on the host into a 256-entry int8 table.
  hard_swish  micro/kernels/hard_swish_common.cc + reference/hard_swish.h (int16 fixed point),
              done on the host into a 256-entry int8 table.
  softmax     micro/kernels/softmax_common.cc + reference/softmax.h: exp of the row
              difference from a 256-entry int32 table (gemmlowp exp_on_negative_values on
              Q5.26, with diff_min folded in), the Q12.19 sum, GetReciprocal
              (one_over_one_plus_x_for_x_in_0_1) and the final RoundingDivideByPOT in TIR.
  mean        micro/kernels/reduce_common.cc (EvalIntegerMean) + reference/reduce.h:
              QuantizedMeanOrSum, 1/n folded into the multiplier, for any axes and keep_dims
              and also when input and output quantization are equal. (Older TFLM had a
              truncating integer Mean for equal quantization and an integer_ops::Mean for 4-D
              keep_dims over axes 1, 2; the installed tflite-micro uses neither.)
"""

from __future__ import annotations

import math

import numpy as np
from tvm import te, tirx

from .. import quant as Q
from .fixedpoint import clamp, let, mbqm, rdbpot, srdhm

I32, I64 = "int32", "int64"
INT32_MIN, INT32_MAX = Q.INT32_MIN, Q.INT32_MAX


def _c(v, dtype=I32):
    return tirx.const(v, dtype)


def _table(name, array):
    array = np.ascontiguousarray(array)
    return te.placeholder(array.shape, str(array.dtype), name=name), array


def _lookup256(x, table, name):
    """out[i] = table[x[i] + 128] for an int8 input."""
    ph, arr = _table(f"{name}_lut", table)
    out = te.compute(x.shape, lambda *i: ph[x(*i).astype(I32) + 128], name=name)
    return out, [(ph, arr)]


# --- scalar gemmlowp primitives on Python ints (int32 semantics) ---------------------------

def _i16(v: int) -> int:
    return ((v + (1 << 15)) & 0xFFFF) - (1 << 15)


def _truncdiv(a: int, b: int) -> int:
    """C integer division (rounds toward zero), b > 0."""
    return abs(a) // b if a >= 0 else -(abs(a) // b)


def _sat_mul_pot(x: int, exponent: int) -> int:
    """gemmlowp SaturatingRoundingMultiplyByPOT<exponent> on int32."""
    if exponent > 0:
        threshold = (1 << (31 - exponent)) - 1
        if x > threshold:
            return INT32_MAX
        if x < -threshold:
            return INT32_MIN
        return x << exponent
    return Q.rdbpot(x, -exponent) if exponent < 0 else x


def _exp_on_interval_between_negative_one_quarter_and_0_excl(a: int) -> int:
    const_term, one_third = 1895147668, 715827883     # exp(-1/8), 1/3 in Q0.31
    x = a + (1 << 28)
    x2 = Q.srdhm(x, x)
    x3 = Q.srdhm(x2, x)
    x4 = Q.srdhm(x2, x2)
    x4_over_4 = Q.rdbpot(x4, 2)
    poly = Q.rdbpot(Q.srdhm(x4_over_4 + x3, one_third) + x2, 1)
    return Q.wrap32(const_term + Q.srdhm(const_term, x + poly))


_EXP_BARREL = ((-2, 1672461947), (-1, 1302514674), (0, 790015084), (1, 290630308),
               (2, 39332535), (3, 720401), (4, 242))


def exp_on_negative_values(a: int, integer_bits: int) -> int:
    """gemmlowp exp_on_negative_values: a is Q(integer_bits), result Q0.31."""
    frac_bits = 31 - integer_bits
    one_quarter = 1 << (frac_bits - 2)
    a_mod_quarter_minus_one_quarter = (a & (one_quarter - 1)) - one_quarter
    result = _exp_on_interval_between_negative_one_quarter_and_0_excl(
        _sat_mul_pot(a_mod_quarter_minus_one_quarter, integer_bits))
    remainder = Q.wrap32(a_mod_quarter_minus_one_quarter - a)
    for exponent, multiplier in _EXP_BARREL:
        if integer_bits > exponent and remainder & (1 << (frac_bits + exponent)):
            result = Q.srdhm(result, multiplier)
    if integer_bits > 5 and a < -(1 << (36 - integer_bits)):
        result = 0
    return INT32_MAX if a == 0 else result


def one_over_one_plus_x_for_x_in_0_1(a: int) -> int:
    """gemmlowp one_over_one_plus_x_for_x_in_0_1 (Q0.31 in and out)."""
    s = a + INT32_MAX
    half_denominator = _truncdiv(s + (1 if s >= 0 else -1), 2)   # RoundingHalfSum(a, One)
    x = 1515870810 + Q.srdhm(half_denominator, -1010580540)   # 48/17 - 32/17 * d, Q2.29
    for _ in range(3):
        one_minus = (1 << 29) - Q.srdhm(half_denominator, x)
        x = x + _sat_mul_pot(Q.srdhm(x, one_minus), 2)
    return _sat_mul_pot(x, 1)


def _logistic_fixed(a: int) -> int:
    """gemmlowp logistic of a Q4.27 value, Q0.31 result."""
    if a == 0:
        return 1 << 30
    pos = one_over_one_plus_x_for_x_in_0_1(exp_on_negative_values(-abs(a), 4))
    return pos if a > 0 else INT32_MAX - pos


def calculate_input_radius(integer_bits: int, left_shift: int, total_bits: int = 31) -> int:
    return math.floor(((1 << integer_bits) - 1) * float(1 << (total_bits - integer_bits))
                      / float(1 << left_shift))


def _quantize_multiplier_greater_than_one(real: float) -> tuple:
    """QuantizeMultiplier (double-rounding build: no clamping of large shifts)."""
    frac, shift = math.frexp(real)
    q = int(Q.round_away(frac * (1 << 31)))
    if q == 1 << 31:
        q, shift = q // 2, shift + 1
    return q, shift


def preprocess_softmax_scaling(beta: float, input_scale: float, integer_bits: int) -> tuple:
    real = min(float(beta) * float(input_scale) * (1 << (31 - integer_bits)),
               float((1 << 31) - 1))
    return _quantize_multiplier_greater_than_one(real)


# --- host-side tables ------------------------------------------------------------------------

def logistic_table(in_q) -> np.ndarray:
    """TFLM int8 Logistic for every input value -128..127 (output zp -128, scale 1/256)."""
    frac, left_shift = math.frexp(float(in_q.s) * float(1 << 27))
    multiplier = int(Q.round_away(frac * (1 << 31)))
    radius = calculate_input_radius(4, left_shift)
    out = np.empty(256, np.int8)
    for k, v in enumerate(range(-128, 128)):
        d = v - in_q.zp
        if d <= -radius:
            out[k] = -128
        elif d >= radius:
            out[k] = 127
        else:
            q = Q.rdbpot(_logistic_fixed(Q.mbqm(d, multiplier, left_shift)), 23)
            out[k] = min(max(q - 128, -128), 127)
    return out


def _srdhm16(a: int, b: int) -> int:
    """SaturatingRoundingDoublingHighMul on int16."""
    if a == b == -(1 << 15):
        return (1 << 15) - 1
    ab = a * b
    return _i16(_truncdiv(ab + ((1 << 14) if ab >= 0 else 1 - (1 << 14)), 1 << 15))


def _sdhm16(a: int, b: int) -> int:
    """SaturatingDoublingHighMul on int16 (rounds toward zero)."""
    if a == b == -(1 << 15):
        return (1 << 15) - 1
    return _i16(_truncdiv(a * b, 1 << 15))


def _sat_shl16(v: int, amount: int) -> int:
    return min(max(v * (1 << amount), -(1 << 15)), (1 << 15) - 1)


def _downscale_to_int16(m: int) -> int:
    return (1 << 15) - 1 if m >= INT32_MAX - (1 << 15) else (m + (1 << 15)) >> 16


def hard_swish_table(in_q, out_q) -> np.ndarray:
    """TFLM int8 HardSwish for every input value -128..127."""
    f32 = np.float32
    hires = f32(f32(1.0 / 128.0) * f32(in_q.s))
    out_m, out_exp = Q.quantize_multiplier(float(f32(hires / f32(out_q.s))))
    relu_m, relu_exp = Q.quantize_multiplier(float(f32(hires / (f32(3.0) / f32(32768.0)))))
    if out_exp > 0:
        raise ValueError("hard_swish: input scale / output scale > 128 is unsupported by TFLM")
    out_m16, relu_m16 = _downscale_to_int16(out_m), _downscale_to_int16(relu_m)
    out = np.empty(256, np.int8)
    for k, v in enumerate(range(-128, 128)):
        hires_v = (v - in_q.zp) * 128
        preshift_out = _srdhm16(hires_v, out_m16)
        r = hires_v
        if relu_exp > 0:
            r = _sat_shl16(r, relu_exp - 1)
        r = _srdhm16(r, relu_m16)
        if relu_exp > 0:
            r = _sat_shl16(r, 1)
        elif relu_exp < 0:
            r = Q.rdbpot(r, -relu_exp)
        r = (r + (1 << 15)) >> 1
        o = Q.rdbpot(_sdhm16(r, preshift_out), -out_exp) + out_q.zp
        out[k] = min(max(o, -128), 127)
    return out


def softmax_exp_table(in_q, beta: float) -> np.ndarray:
    """exp(beta * s * (x - max)) in Q0.31 for d = max - x = 0..255 (0 where TFLM skips)."""
    multiplier, left_shift = preprocess_softmax_scaling(beta, in_q.s, 5)
    diff_min = -calculate_input_radius(5, left_shift)
    table = np.zeros(256, np.int32)
    for d in range(256):
        if -d >= diff_min:
            scaled = Q.srdhm(Q.wrap32(-d * (1 << left_shift)), multiplier)
            table[d] = exp_on_negative_values(scaled, 5)
    return table


# --- TIR pieces ------------------------------------------------------------------------------

def _sat_shl(x, exponent: int):
    threshold = (1 << (31 - exponent)) - 1
    return let(x, lambda x: tirx.Select(
        x > _c(threshold), _c(INT32_MAX),
        tirx.Select(x < _c(-threshold), _c(INT32_MIN), x << _c(exponent))))


def _bounded(e, lo: int, hi: int):
    """e clamped to [lo, hi], where it lies anyway: TVM's integer-bound analysis knows no
    range for clz() and then mis-bounds shifts by it (and drops a later clamp)."""
    return tirx.min(tirx.max(e, _c(lo)), _c(hi))


def _reciprocal(total, rows):
    """GetReciprocal's fixed-point scale for positive Q12.19 row sums (Q0.31 result): one
    small stage per Newton-Raphson step, since nested lets get expanded downstream."""
    def half_den(*r):   # RoundingHalfSum(shifted sum - 1.0, One), both non-negative
        shifted = total(*r).astype(I64) << _bounded(tirx.clz(total(*r)), 0, 31).astype(I64)
        return (shifted >> _c(1, I64)).astype(I32)

    d = te.compute(rows, half_den, name="softmax_keep_half_den")
    x = te.compute(rows, lambda *r: _c(1515870810) + srdhm(d(*r), _c(-1010580540)),
                   name="softmax_keep_recip0")

    def newton_step(x):   # x ~ 1 / d in Q2.29
        return lambda *r: x(*r) + _sat_shl(srdhm(x(*r), _c(1 << 29) - srdhm(d(*r), x(*r))), 2)

    for step in range(1, 4):
        x = te.compute(rows, newton_step(x), name=f"softmax_keep_recip{step}")
    return te.compute(rows, lambda *r: _sat_shl(x(*r), 1), name="softmax_keep_recip")


# --- the operators ---------------------------------------------------------------------------

def logistic(x: te.Tensor, in_q, out_q):
    """Like TFLM, int8 requires output zero point -128 and takes the scale to be 1/256."""
    if in_q is None:
        return te.compute(x.shape, lambda *i: tirx.sigmoid(x(*i)), name="logistic"), []
    if x.dtype != "int8" or out_q.zp != -128:
        raise NotImplementedError("logistic: int8 with output zero point -128 only")
    return _lookup256(x, logistic_table(in_q), "logistic")


REAL_FUNCTIONS = {
    "logistic": lambda r: np.float32(1) / (np.float32(1) + np.exp(-r)),
    "hard_swish": lambda r: r * np.clip(r + np.float32(3), 0, 6).astype(np.float32) /
    np.float32(6),
}


def real_valued(kind: str, x: te.Tensor, in_q, out_q):
    """An int8 unary op with ONNX QDQ semantics (DequantizeLinear -> float op ->
    QuantizeLinear, float32, round half to even) as a table over the 256 input values."""
    real = np.float32(in_q.s) * (np.arange(-128, 128) - in_q.zp).astype(np.float32)
    y = REAL_FUNCTIONS[kind](real).astype(np.float32) / np.float32(out_q.s)
    q = np.rint(y).astype(np.int64) + out_q.zp
    return _lookup256(x, np.clip(q, -128, 127).astype(np.int8), kind)


def hard_swish(x: te.Tensor, in_q, out_q):
    if in_q is None:
        def f(*i):
            c = lambda v: tirx.const(v, str(x.dtype))   # noqa: E731
            return x(*i) * tirx.min(tirx.max(x(*i) + c(3.0), c(0.0)), c(6.0)) / c(6.0)
        return te.compute(x.shape, f, name="hard_swish"), []
    if x.dtype != "int8":
        raise NotImplementedError("hard_swish: int8 only")
    return _lookup256(x, hard_swish_table(in_q, out_q), "hard_swish")


def softmax(x: te.Tensor, in_q, out_q, beta: float):
    """Softmax over the last axis."""
    rows, depth = tuple(x.shape[:-1]), x.shape[-1]
    k = te.reduce_axis((0, depth), name="k")
    if in_q is None:
        mx = te.compute(rows, lambda *r: te.max(x(*r, k), axis=k), name="softmax_max")
        b = tirx.const(float(beta), str(x.dtype))
        ex = te.compute(x.shape, lambda *i: tirx.exp((x(*i) - mx(*i[:-1])) * b),
                        name="softmax_exp")
        k2 = te.reduce_axis((0, depth), name="k2")
        s = te.compute(rows, lambda *r: te.sum(ex(*r, k2), axis=k2), name="softmax_sum")
        return te.compute(x.shape, lambda *i: ex(*i) / s(*i[:-1]), name="softmax"), []

    if x.dtype != "int8":
        raise NotImplementedError("softmax: int8 input only")
    if out_q.zp == -128 and np.float32(out_q.s) == np.float32(1.0 / 256):
        out_dtype, out_bits = "int8", 8
    elif out_q.zp == -32768 and abs(float(out_q.s) - 1.0 / 65536) <= 0.001 / 65536:
        out_dtype, out_bits = "int16", 16
    else:
        raise NotImplementedError("softmax: the output must be int8 with scale 1/256, zero point "
                                  "-128, or int16 with 1/65536, -32768")
    lo, hi = Q.QRANGE[out_dtype]

    ph, table = _table("softmax_exp_lut", softmax_exp_table(in_q, beta))
    mx = te.compute(rows, lambda *r: te.max(x(*r, k).astype(I32), axis=k), name="softmax_max")

    def exp_of(*i):
        return ph[mx(*i[:-1]) - x(*i).astype(I32)]

    k2 = te.reduce_axis((0, depth), name="k2")
    total = te.compute(rows, lambda *r: te.sum(rdbpot(exp_of(*r, k2), _c(12)), axis=k2),
                       name="softmax_sum")
    scale = _reciprocal(total, rows)

    def out(*i):
        r = i[:-1]
        # num_bits_over_unit + 31 - out_bits, in [0, 31] (TFLM checks this)
        exponent = _bounded(_c(12 + 31 - out_bits) - tirx.clz(total(*r)), 0, 31)
        v = rdbpot(srdhm(scale(*r), exp_of(*i)), exponent) + _c(lo)
        return clamp(v, lo, hi).astype(out_dtype)

    return te.compute(x.shape, out, name="softmax"), [(ph, table)]


def mean(x: te.Tensor, in_q, out_q, axes: tuple, keep_dims: bool):
    ndim = len(x.shape)
    axes = sorted({int(a) % ndim for a in axes})
    red = [te.reduce_axis((0, x.shape[a]), name=f"r{a}") for a in axes]
    n = int(np.prod([int(x.shape[a]) for a in axes], dtype=np.int64))
    out_shape = [1 if a in axes else x.shape[a] for a in range(ndim)
                 if keep_dims or a not in axes]

    def in_index(o):
        """Input index for output index o: reduce axes on the reduced dimensions."""
        kept = iter(o[a] for a in range(ndim) if a not in axes) if keep_dims else iter(o)
        it = iter(red)
        return [next(it) if a in axes else next(kept) for a in range(ndim)]

    if in_q is None:
        s = te.compute(out_shape, lambda *o: te.sum(x(*in_index(o)), axis=red), name="mean_sum")
        return te.compute(out_shape, lambda *o: s(*o) / tirx.const(float(n), str(x.dtype)),
                          name="mean"), []
    if x.dtype != "int8":
        raise NotImplementedError("mean: int8 only")

    # reference_ops::QuantizedMeanOrSum (compute_sum=false), used for every int8 MEAN, also
    # when input and output quantization are equal.
    s = te.compute(out_shape, lambda *o: te.sum(x(*in_index(o)).astype(I32), axis=red),
                   name="mean_sum")
    multiplier, shift = Q.quantize_multiplier(float(in_q.s) / float(out_q.s))
    log2n = min(n.bit_length() - 1, 32, 31 + shift)
    multiplier = (multiplier << log2n) // n
    shift -= log2n
    in_zp_n, out_zp = in_q.zp * n, out_q.zp

    def f(*o):
        v = mbqm(s(*o) - _c(in_zp_n), _c(multiplier), _c(shift)) + _c(out_zp)
        return clamp(v, -128, 127).astype("int8")
    return te.compute(out_shape, f, name="mean"), []
