"""tvm_patch.kernels.nonlinear against TFLite Micro: one-op .tflite models with random int8
inputs and quantization, every output byte compared with the TE kernel compiled for the host."""

import numpy as np
import pytest
import tvm
from tvm import te

from tvm_patch.graph import Quant
from tvm_patch.kernels import nonlinear as NL
from tvm_patch.zoo.writer import ModelWriter

tflm_runtime = pytest.importorskip("tflite_micro.python.tflite_micro.runtime")

CASES = 120   # random cases per int8 test


def run_tflm(opname, x, in_q, out_shape, out_dtype, out_q, options=None, axis=None):
    w = ModelWriter()
    dtype = str(x.dtype)
    qi = {} if in_q is None else dict(scale=in_q[0], zero_point=in_q[1])
    qo = {} if out_q is None else dict(scale=out_q[0], zero_point=out_q[1])
    i = w.tensor("x", x.shape, dtype, **qi)
    o = w.tensor("y", out_shape, out_dtype, **qo)
    inputs = [i]
    if axis is not None:
        inputs.append(w.tensor("axis", (len(axis),), "int32", data=np.array(axis, np.int32)))
    w.op(opname, inputs, [o], options or {})
    interp = tflm_runtime.Interpreter.from_bytes(w.finish([i], [o]), arena_size=1 << 20)
    interp.set_input(x, 0)
    interp.invoke()
    return interp.get_output(0)


_compiled = {}


def run_tvm(fn, x, *args):
    xp = te.placeholder(x.shape, str(x.dtype), name="x")
    out, consts = fn(xp, *args)
    f = te.create_prim_func([xp, *[ph for ph, _ in consts], out])
    key = f.script()   # tables are arguments, so many cases share one build
    if key not in _compiled:
        _compiled[key] = tvm.compile(tvm.IRModule({"main": f}), target="llvm")
    res = tvm.runtime.tensor(np.zeros([int(d) for d in out.shape], str(out.dtype)))
    _compiled[key]["main"](tvm.runtime.tensor(x), *[tvm.runtime.tensor(a) for _, a in consts],
                           res)
    return res.numpy()


def _q(scale, zp):
    return Quant(np.float32(scale), zp)


def _scale(rng, lo, hi):
    return float(np.float32(np.exp(rng.uniform(np.log(lo), np.log(hi)))))


def _shape(rng):
    return tuple(int(d) for d in rng.integers(1, 9, size=int(rng.integers(1, 5))))


def _int8(rng, shape):
    return rng.integers(-128, 128, size=shape, dtype=np.int8)


def _check(expected, got, what):
    assert got.shape == expected.shape and got.dtype == expected.dtype, what
    bad = np.flatnonzero(got.ravel() != expected.ravel())
    assert bad.size == 0, (f"{what}: {bad.size} values differ, e.g. tflm "
                           f"{expected.ravel()[bad[:5]]} tvm {got.ravel()[bad[:5]]}")


# --- logistic, hard swish (every 4th case feeds all 256 input values) -------------------

@pytest.mark.parametrize("seed", range(CASES))
def test_logistic(seed):
    rng = np.random.default_rng(seed)
    in_q = (_scale(rng, 1e-3, 1.0), int(rng.integers(-128, 128)))
    out_q = (1 / 256, -128)
    x = np.arange(-128, 128, dtype=np.int8).reshape(2, 128) if seed % 4 == 0 else \
        _int8(rng, _shape(rng))
    expected = run_tflm("LOGISTIC", x, in_q, x.shape, "int8", out_q)
    _check(expected, run_tvm(NL.logistic, x, _q(*in_q), _q(*out_q)), f"logistic {in_q}")


@pytest.mark.parametrize("seed", range(CASES))
def test_hard_swish(seed):
    rng = np.random.default_rng(seed)
    in_s = _scale(rng, 1e-3, 0.5)
    in_q = (in_s, int(rng.integers(-128, 128)))
    out_q = (_scale(rng, in_s / 8, in_s * 4), int(rng.integers(-128, 128)))
    x = np.arange(-128, 128, dtype=np.int8).reshape(2, 128) if seed % 4 == 0 else \
        _int8(rng, _shape(rng))
    expected = run_tflm("HARD_SWISH", x, in_q, x.shape, "int8", out_q)
    _check(expected, run_tvm(NL.hard_swish, x, _q(*in_q), _q(*out_q)),
           f"hard_swish {in_q} {out_q}")


# --- softmax -----------------------------------------------------------------------------------

def _softmax_input(rng, shape):
    kind = rng.integers(3)
    if kind == 0:
        return _int8(rng, shape)
    top = rng.integers(-100, 128)   # values close to the row maximum: many exp terms count
    spread = int(rng.choice([2, 8, 30]))
    return np.clip(top - rng.integers(0, spread, size=shape), -128, 127).astype(np.int8)


@pytest.mark.parametrize("seed", range(CASES))
@pytest.mark.parametrize("out_dtype", ["int8", "int16"])
def test_softmax(seed, out_dtype):
    rng = np.random.default_rng(seed)
    depth = int(rng.choice([1, 2, 3, 10, 16, 37, 100, 255, 400]))
    shape = tuple(int(d) for d in rng.integers(1, 4, size=int(rng.integers(0, 3)))) + (depth,)
    in_q = (_scale(rng, 1e-3, 0.5), int(rng.integers(-128, 128)))
    beta = float(rng.choice([1.0, 1.0, 0.5, 2.0, rng.uniform(0.1, 4)]))
    out_q = (1 / 256, -128) if out_dtype == "int8" else (1 / 65536, -32768)
    x = _softmax_input(rng, shape)
    expected = run_tflm("SOFTMAX", x, in_q, shape, out_dtype, out_q, {"beta": beta})
    _check(expected, run_tvm(NL.softmax, x, _q(*in_q), _q(*out_q), beta),
           f"softmax {shape} {in_q} beta={beta}")


# --- mean ------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(CASES))
def test_mean(seed):
    rng = np.random.default_rng(seed)
    if seed % 3:   # the CNN case: global average pooling over H, W
        shape = (int(rng.integers(1, 3)), int(rng.integers(1, 15)), int(rng.integers(1, 15)),
                 int(rng.integers(1, 20)))
        axes = [1, 2] if rng.integers(2) else [2, 1]
    else:
        shape = tuple(int(d) for d in rng.integers(1, 7, size=int(rng.integers(2, 5))))
        nd = len(shape)
        axes = sorted(rng.choice(nd, size=int(rng.integers(1, nd + 1)), replace=False).tolist())
        axes = [a - nd if rng.integers(2) else a for a in axes]
    keep_dims = bool(rng.integers(2))
    in_q = (_scale(rng, 1e-3, 0.5), int(rng.integers(-128, 128)))
    out_q = in_q if seed % 2 else (_scale(rng, in_q[0] / 4, in_q[0] * 4),
                                   int(rng.integers(-128, 128)))
    red = {a % len(shape) for a in axes}
    out_shape = tuple(1 if a in red else d for a, d in enumerate(shape)
                      if keep_dims or a not in red)
    x = _int8(rng, shape)
    expected = run_tflm("MEAN", x, in_q, out_shape, "int8", out_q, {"keep_dims": keep_dims},
                        axis=axes)
    _check(expected, run_tvm(NL.mean, x, _q(*in_q), _q(*out_q), tuple(axes), keep_dims),
           f"mean {shape} axes={axes} keep_dims={keep_dims} {in_q} {out_q}")


# --- unsupported quantization and float variants ----------------------------------------------

def test_softmax_rejects_other_output_quantization():
    x = te.placeholder((1, 10), "int8")
    with pytest.raises(NotImplementedError):
        NL.softmax(x, _q(0.1, 0), _q(1 / 128, -128), 1.0)


@pytest.mark.parametrize("seed", range(4))
def test_float_variants(seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 4, size=(2, 3, 4, 8)).astype(np.float32)
    for opname, fn, args, opts in [("LOGISTIC", NL.logistic, (None, None), {}),
                                   ("HARD_SWISH", NL.hard_swish, (None, None), {}),
                                   ("SOFTMAX", NL.softmax, (None, None, 0.7), {"beta": 0.7})]:
        expected = run_tflm(opname, x, None, x.shape, "float32", None, opts)
        np.testing.assert_allclose(run_tvm(fn, x, *args), expected, rtol=1e-5, atol=1e-6,
                                   err_msg=opname)
    for axes, keep_dims in [((1, 2), True), ((1, 2), False), ((3,), False)]:
        red = set(axes)
        out_shape = tuple(1 if a in red else d for a, d in enumerate(x.shape)
                          if keep_dims or a not in red)
        expected = run_tflm("MEAN", x, None, out_shape, "float32", None,
                            {"keep_dims": keep_dims}, axis=list(axes))
        np.testing.assert_allclose(run_tvm(NL.mean, x, None, None, axes, keep_dims), expected,
                                   rtol=1e-5, atol=1e-6, err_msg=f"MEAN {axes}")
