"""TFLite's fixed-point rules, on the host side: computing multipliers and activation
ranges exactly as TFLite Micro does (doubles from float32 scales, round half away from
zero), and scalar numpy forms of the gemmlowp primitives for building lookup tables.
The kernels' TIR forms of the same primitives live in kernels/fixedpoint.py."""

from __future__ import annotations

import math

import numpy as np

INT32_MIN, INT32_MAX = -(1 << 31), (1 << 31) - 1
QRANGE = {"int8": (-128, 127), "uint8": (0, 255), "int16": (-32768, 32767),
          "int32": (INT32_MIN, INT32_MAX)}


def round_away(x):
    """C's round(): half away from zero (numpy's round is half to even)."""
    x = np.asarray(x, dtype=np.float64)
    return np.sign(x) * np.floor(np.abs(x) + 0.5)


def quantize_multiplier(real: float) -> tuple:
    """TFLite QuantizeMultiplier: real = q * 2^(shift - 31), |q| in [2^30, 2^31]; a
    negative real (a negative per-channel weight scale) gives a negative q, down to -2^31.
    Multipliers below 2^-32 are flushed to 0. Shifts above 30 are kept, as the TFLite Micro
    reference build does (see mbqm for what it then computes)."""
    if real == 0.0:
        return 0, 0
    frac, shift = math.frexp(float(real))
    q = int(round_away(frac * (1 << 31)))
    if q == (1 << 31):
        q //= 2
        shift += 1
    if shift < -31:
        return 0, 0
    return q, shift


def quantize_multipliers(reals) -> tuple:
    pairs = [quantize_multiplier(r) for r in np.asarray(reals, dtype=np.float64).ravel()]
    return (np.array([p[0] for p in pairs], dtype=np.int32),
            np.array([p[1] for p in pairs], dtype=np.int32))


def activation_range(activation: str, scale, zero_point: int, dtype: str = "int8") -> tuple:
    """TFLite CalculateActivationRangeQuantized: clamp bounds in the quantized domain."""
    qmin, qmax = QRANGE[dtype]

    def q(f):  # TFLite's Quantize(): float32 division, round half away from zero
        return zero_point + int(round_away(np.float32(f) / np.float32(scale)))

    if activation == "none":
        return qmin, qmax
    if activation == "relu":
        return max(qmin, q(0.0)), qmax
    if activation == "relu6":
        return max(qmin, q(0.0)), min(qmax, q(6.0))
    if activation == "relu_n1_to_1":
        return max(qmin, q(-1.0)), min(qmax, q(1.0))
    raise ValueError(f"unknown activation {activation}")


def float_activation_range(activation: str) -> tuple:
    return {"none": (-np.inf, np.inf), "relu": (0.0, np.inf), "relu6": (0.0, 6.0),
            "relu_n1_to_1": (-1.0, 1.0)}[activation]


# --- scalar gemmlowp primitives (python ints, exact) for building lookup tables ---

def srdhm(a: int, b: int) -> int:
    """SaturatingRoundingDoublingHighMul on int32."""
    if a == b == INT32_MIN:
        return INT32_MAX
    ab = a * b
    nudge = (1 << 30) if ab >= 0 else 1 - (1 << 30)
    v = ab + nudge
    q = abs(v) >> 31  # C division truncates toward zero
    return q if v >= 0 else -q


def rdbpot(x: int, exponent: int) -> int:
    """RoundingDivideByPOT on int32."""
    mask = (1 << exponent) - 1
    remainder = x & mask
    threshold = (mask >> 1) + (1 if x < 0 else 0)
    return (x >> exponent) + (1 if remainder > threshold else 0)


def mbqm(x: int, multiplier: int, shift: int) -> int:
    """MultiplyByQuantizedMultiplier (TFLite, double rounding). TFLite computes
    x * (1 << left_shift) in int32: it wraps, and a left shift of 32 or more (an effective
    scale of 2^31 or more) is undefined in C; the reference build computes it as the x86
    shift does, modulo 32, and so do we, on every target."""
    left = (shift if shift > 0 else 0) & 31
    right = 0 if shift > 0 else -shift
    return rdbpot(srdhm(wrap32(x << left), multiplier), right)


def wrap32(x: int) -> int:
    return ((x + (1 << 31)) % (1 << 32)) - (1 << 31)
