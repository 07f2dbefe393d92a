import os

import numpy as np
import pytest
from hypothesis import settings

import tvm_patch
from tvm_patch import reference

# CI replays a fixed set of examples; local runs keep exploring new ones
settings.register_profile("ci", derandomize=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_MODELS = os.environ.get("TVM_PATCH_MODELS",
                               os.path.join(os.path.dirname(ROOT), "shared", "models"))
SHARED = ["mcunet-vww1", "mlperf-vww-mobilenetv1-0.25-96", "mlperf-ic-resnet8-32",
          "mlperf-kws-dscnn"]


def shared_model(name: str) -> str:
    path = os.path.join(SHARED_MODELS, name + ".tflite")
    if not os.path.exists(path):
        if os.environ.get("CI"):
            pytest.fail(f"shared model {path} missing in CI")
        pytest.skip(f"shared model {path} not present")
    return path


def random_inputs(compiled, n, seed=0):
    rng = np.random.default_rng(seed)
    shape, dtype = compiled.input_specs[0]
    for _ in range(n):
        if dtype == "float32":
            yield rng.uniform(-1, 1, shape).astype(np.float32)
        else:
            yield rng.integers(-128, 128, shape).astype(dtype)


def assert_bit_exact(data: bytes, compiled, n=3, seed=0):
    """Every output byte equal to TFLite Micro's, on n random inputs."""
    for k, x in enumerate(random_inputs(compiled, n, seed)):
        ours = compiled.run(x)
        ref = reference.run(data, [x])
        assert len(ours) == len(ref)
        for a, b in zip(ours, ref):
            assert a.dtype == b.dtype and a.shape == b.shape
            diff = np.flatnonzero(a.ravel() != b.ravel())
            assert diff.size == 0, (f"input {k}: {diff.size}/{a.size} outputs differ "
                                    f"(first at {diff[:5]}: ours {a.ravel()[diff[:5]]}, "
                                    f"TFLite Micro {b.ravel()[diff[:5]]})")


_LOADED, _PATCHED, _COMPILED = {}, {}, {}


def loaded_model(key, data: bytes, **options):
    """tvm_patch.load once per session: loading lowers every kernel, seconds for the larger
    models, and test modules look at the same ones."""
    k = key, tuple(sorted(options.items()))
    if k not in _LOADED:
        _LOADED[k] = tvm_patch.load(data, **options)
    return _LOADED[k]


def patched_model(key, data: bytes):
    """The auto patch schedule of a loaded model, once per session (the search takes
    seconds)."""
    if key not in _PATCHED:
        from tvm_patch.passes import PatchBasedInference
        _PATCHED[key] = PatchBasedInference()(loaded_model(key, data))
    return _PATCHED[key]


def compiled_model(key, data: bytes):
    """Compile once per session: several tests look at the same model."""
    if key not in _COMPILED:
        mod = loaded_model(key, data)
        _COMPILED[key] = (mod, tvm_patch.build(mod))
    return _COMPILED[key]
