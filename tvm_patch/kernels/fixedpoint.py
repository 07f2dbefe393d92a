"""gemmlowp / TFLite fixed-point primitives as TIR expressions (int32 values, int64 where
the product needs it). They match TFLite Micro's reference kernels bit for bit; the scalar
host forms are in quant.py. The expressions repeat their operands, so never nest one
requantization inside another: give the inner one its own compute stage (see ops.add_mul)."""

from tvm import tirx

I32, I64 = "int32", "int64"
INT32_MIN, INT32_MAX = -(1 << 31), (1 << 31) - 1


def dtype_of(e) -> str:
    if hasattr(e, "ty"):
        return str(e.ty.dtype)
    return str(e.dtype if hasattr(e, "dtype") else e.tensor.dtype)


def _c(v, dtype=I32):
    return tirx.const(v, dtype)


def srdhm(a, b, saturate: bool | None = None):
    """SaturatingRoundingDoublingHighMul(a, b): the rounding nudge follows the sign of the
    product (a multiplier is negative for a negative weight scale), and INT32_MIN * INT32_MIN
    saturates to INT32_MAX. `saturate`: whether both can be INT32_MIN (None: unless one is a
    constant that is not)."""
    if saturate is None:
        saturate = not any(isinstance(v, tirx.IntImm) and int(v) != INT32_MIN for v in (a, b))
    ab = a.astype(I64) * b.astype(I64)
    nudge = tirx.Select(ab >= _c(0, I64), _c(1 << 30, I64), _c(1 - (1 << 30), I64))
    high = tirx.truncdiv(ab + nudge, _c(1 << 31, I64))
    if saturate:  # only INT32_MIN * INT32_MIN gives a quotient above INT32_MAX (2^31)
        high = tirx.min(high, _c(INT32_MAX, I64))
    return high.astype(I32)


def rdbpot(x, exponent):
    """RoundingDivideByPOT(x, exponent), exponent >= 0."""
    mask = (_c(1) << exponent) - _c(1)
    remainder = x & mask
    threshold = (mask >> _c(1)) + tirx.Select(x < _c(0), _c(1), _c(0))
    return (x >> exponent) + tirx.Select(remainder > threshold, _c(1), _c(0))


def mbqm(x, multiplier, shift, saturate: bool | None = None):
    """MultiplyByQuantizedMultiplier(x, multiplier, shift) with TFLite's double rounding;
    shift may be a python int (per-tensor) or an int32 expression (per-channel). The left
    shift wraps in int32 and is taken modulo 32, as quant.mbqm explains. `saturate`: whether
    the multiplier may be INT32_MIN (see srdhm)."""
    if isinstance(multiplier, int):
        multiplier = _c(multiplier)
    if isinstance(shift, (int, tirx.IntImm)):
        shift = int(shift)
        return rdbpot(srdhm(x << _c(max(shift, 0) & 31), multiplier, saturate),
                      _c(max(-shift, 0)))
    return rdbpot(srdhm(x << (tirx.max(shift, _c(0)) & _c(31)), multiplier, saturate),
                  tirx.max(-shift, _c(0)))


def clamp(x, lo, hi):
    return tirx.min(tirx.max(x, _c(lo, dtype_of(x))), _c(hi, dtype_of(x)))


def round_half_away(x):
    """C round() on a float expression, exactly (no x + 0.5 double rounding)."""
    dt = dtype_of(x)
    t = tirx.trunc(x)
    half, one = tirx.const(0.5, dt), tirx.const(1, dt)
    return tirx.Select(x - t >= half, t + one, tirx.Select(t - x >= half, t - one, t))


def let(value, body):
    """body(v) with v bound once to value (a TIR Let)."""
    if isinstance(value, (tirx.Var, tirx.IntImm)):
        return body(value)
    var = tirx.Var("v", dtype_of(value))
    return tirx.Let(var, value, body(var))
