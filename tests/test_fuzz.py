"""Seeded fuzzing of the model reader (CI replays the same mutants): byte flips and
truncations of two shared models, crafted structural mutations and byte flips of an ONNX
model. Every mutant ends in one of two ways, quickly and with nothing on stderr: a one-line
ModelError, or a model that TFLite Micro also accepts and that runs bit-exact with it (the
first few accepted mutants are built and compared; building takes seconds each)."""

import itertools
import json
import subprocess
import sys
import time

import numpy as np
import pytest

import tvm_patch
import tflite
from tvm_patch.frontend import read

import onnx_models
from conftest import shared_model
from test_errors import INVALID_MODELS, _conv, _depthwise, _pool

SEED = 9
FLIPS, TRUNCATIONS = 110, 15        # per shared model
ONNX_FLIPS = 60
BUILDS = 4                          # accepted mutants built and compared with TFLite Micro
SECONDS_PER_MUTANT = 5.0
MODELS = ("mlperf-kws-dscnn", "mlperf-ic-resnet8-32")


def _buffer_ranges(data: bytes) -> list:
    """Byte ranges of the large constant buffers: flips there only change weights."""
    model = tflite.Model.GetRootAsModel(data, 0)
    ranges = []
    for i in range(model.BuffersLength()):
        raw = model.Buffers(i).DataAsNumpy()
        if not isinstance(raw, int) and raw.size > 64:
            start = data.find(raw.tobytes())
            ranges.append((start, start + raw.size))
    return ranges


def _flip(rng, data: bytes, weights: list) -> bytes:
    mutant = bytearray(data)
    for _ in range(rng.integers(1, 5)):
        pos = int(rng.integers(0, len(data)))
        if rng.random() < 0.7:  # aim most flips at the structure: tables, shapes, options
            while any(a <= pos < b for a, b in weights):
                pos = int(rng.integers(0, len(data)))
        mutant[pos] ^= 1 << int(rng.integers(0, 8)) if rng.random() < 0.7 else \
            int(rng.integers(1, 256))
    return bytes(mutant)


def _meaning(graph) -> str:
    """What a graph computes, tensor names aside: a mutant with the same meaning as its
    model is not worth building."""
    tensors = [(t.shape, t.dtype, None if t.quant is None else (
        t.quant.scale.tobytes(), t.quant.zero_point.tobytes(), t.quant.axis),
        None if t.data is None else hash(t.data.tobytes())) for t in graph.tensors.values()]
    ops = [(op.kind, sorted(op.attrs.items())) for op in graph.ops]
    return repr((tensors, ops))


def _crafted(rng):
    """Structural mutations written with the zoo writer: attributes drawn from ranges
    that include invalid values."""
    for k in range(40):
        stride = tuple(int(v) for v in rng.integers(-1, 3, 2))
        dilation = tuple(int(v) for v in rng.integers(0, 3, 2))
        out = (1, *(int(v) for v in rng.integers(1, 5, 2)), int(rng.choice([4, 3])))
        scale = float(rng.choice([0.1, 0.0, np.inf, -0.1, 1e-30]))
        yield f"crafted conv {k}", _conv(stride, dilation, out, out_scale=scale)
    for k in range(10):
        yield f"crafted depthwise {k}", _depthwise(int(rng.integers(0, 4)),
                                                   int(rng.choice([2, 4, 6])),
                                                   int(rng.choice([1, 2, -1])))
        yield f"crafted pool {k}", _pool(tuple(int(v) for v in rng.integers(0, 3, 2)))
    for name, (make, _) in INVALID_MODELS.items():
        yield name, make()


def _mutants():
    rng = np.random.default_rng(SEED)
    for name in MODELS:
        with open(shared_model(name), "rb") as f:
            data = f.read()
        weights, original = _buffer_ranges(data), _meaning(read(data))
        for k in range(FLIPS):
            yield f"{name} flip {k}", _flip(rng, data, weights), original
        for k in range(TRUNCATIONS):
            yield f"{name} cut {k}", data[:int(rng.integers(0, len(data)))], original
    for name, mutant in _crafted(rng):
        yield name, mutant, None
    onnx_data = onnx_models.pooling_net().SerializeToString()
    for k in range(ONNX_FLIPS):
        yield f"onnx flip {k}", _flip(rng, onnx_data, []), None


_WORKER = """
import json, sys, numpy as np
from tvm_patch import reference
for line in sys.stdin:
    job = json.loads(line)
    try:
        outs = reference.run(open(job["model"], "rb").read(), [np.load(job["input"])])
        np.savez(job["model"] + ".ref.npz", *outs)
        print("ok", flush=True)
    except Exception as e:
        print("refused " + type(e).__name__, flush=True)
"""


def _tflite_micro(jobs: list) -> list:
    """TFLite Micro's verdict on each job, in a worker process: a corrupt model may crash
    the interpreter, which then counts as refused and the worker restarts."""
    verdicts = []
    while len(verdicts) < len(jobs):
        rest = jobs[len(verdicts):]
        res = subprocess.run([sys.executable, "-c", _WORKER], capture_output=True, text=True,
                             input="".join(json.dumps(j) + "\n" for j in rest), timeout=120)
        done = res.stdout.split("\n")[:-1]
        verdicts += done
        if len(done) < len(rest):
            verdicts.append("crashed")
    return verdicts


def test_mutants_are_refused_in_one_line_or_exact(tmp_path, capfd):
    accepted, refused, seen = [], 0, 0
    for name, mutant, original in _mutants():
        seen += 1
        start = time.monotonic()
        try:
            graph = read(mutant)
        except tvm_patch.ModelError as e:
            assert "\n" not in str(e), f"{name}: {e}"
            refused += 1
        else:
            if mutant[4:8] == b"TFL3":  # TFLite Micro has no ONNX reader to compare with
                accepted.append((name, mutant, _meaning(graph) != original, graph))
        assert time.monotonic() - start < SECONDS_PER_MUTANT, f"{name} took too long"
    assert capfd.readouterr().err == ""
    assert seen >= 390 and refused > seen // 3

    rng = np.random.default_rng(SEED)
    jobs = []
    for k, (name, mutant, _, graph) in enumerate(accepted):
        t = graph.t(graph.inputs[0])
        x = rng.integers(-128, 128, t.shape).astype(t.dtype) if t.dtype != "float32" else \
            rng.uniform(-1, 1, t.shape).astype(np.float32)
        (tmp_path / f"{k}.tflite").write_bytes(mutant)
        np.save(tmp_path / f"{k}.npy", x)
        jobs.append({"model": str(tmp_path / f"{k}.tflite"), "input": str(tmp_path / f"{k}.npy")})
    verdicts = _tflite_micro(jobs)
    wrongly_accepted = [name for (name, *_), v in zip(accepted, verdicts) if v != "ok"]
    assert not wrongly_accepted, f"accepted, but TFLite Micro refuses: {wrongly_accepted}"

    # build mutants that compute something new (not only renamed tensors), from each source
    # (the two models, the crafted ones) in turn
    sources = {}
    for k, (name, _, changed, _) in enumerate(accepted):
        if changed:
            sources.setdefault(name.split()[0], []).append(k)
    order = [k for turn in itertools.zip_longest(*sources.values()) for k in turn if k is not None]
    for k in order[:BUILDS]:
        name = accepted[k][0]
        try:
            compiled = tvm_patch.build(tvm_patch.load((tmp_path / f"{k}.tflite").read_bytes()))
        except tvm_patch.ModelError as e:
            assert "\n" not in str(e), f"{name}: {e}"
            continue
        ours = compiled.run(np.load(tmp_path / f"{k}.npy"))
        ref = np.load(tmp_path / f"{k}.tflite.ref.npz")
        for j, out in enumerate(ours):
            np.testing.assert_array_equal(out, ref[f"arr_{j}"], err_msg=name)
    assert capfd.readouterr().err == ""
