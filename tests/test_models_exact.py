"""Whole models, bit-exact with TFLite Micro: the shared real models and zoo models."""

import os

import numpy as np
import pytest
import tvm
from tvm import relax

import tvm_patch
from tvm_patch import reference, zoo
from conftest import (SHARED, SHARED_MODELS, assert_bit_exact, compiled_model, patched_model,
                      shared_model)

ZOO = {
    "mbv2-w0.35-r144": dict(name_or_config="mobilenetv2", width=0.35, resolution=144),
    "mbv2-w1.0-r224": dict(name_or_config="mobilenetv2", width=1.0, resolution=224),
    "mcunet-320kb": dict(name_or_config=os.path.join(SHARED_MODELS, "configs",
                                                     "mcunet-320kb-1mb_imagenet.json")),
    "mcunet-5fps": dict(name_or_config=os.path.join(SHARED_MODELS, "configs",
                                                    "mcunet-5fps_imagenet.json")),
    "mcunet-10fps": dict(name_or_config=os.path.join(SHARED_MODELS, "configs",
                                                     "mcunet-10fps_imagenet.json")),
    "proxyless-w0.3-r176": dict(name_or_config=os.path.join(
        SHARED_MODELS, "configs", "proxyless-w0.3-r176_imagenet.json")),
    "resnet8": dict(name_or_config="resnet8"),
    "demo": dict(name_or_config="demo"),
}
SLOW = {"mbv2-w1.0-r224"}
# on the host here: the models too large for the STM32F746 (test_mcu runs them on the
# emulator layer by layer only) and two small ones; the MCUNet and ProxylessNAS configs run
# bit-exact with TFLite Micro on the emulator, layer by layer and patched (test_mcu.py)
HOST = [k for k in ZOO if k.startswith("mbv2") or k in ("resnet8", "demo")]


def zoo_model(key):
    cfg = ZOO[key]["name_or_config"]
    if cfg.endswith(".json") and not os.path.exists(cfg):
        shared_model("mcunet-vww1")  # skips or fails as the shared models do
    return zoo.build(**ZOO[key])


@pytest.mark.parametrize("name", SHARED)
def test_shared_model_bit_exact(name):
    with open(shared_model(name), "rb") as f:
        data = f.read()
    _, compiled = compiled_model(name, data)
    assert_bit_exact(data, compiled, n=3)


@pytest.mark.parametrize("key", [pytest.param(k, marks=pytest.mark.slow) if k in SLOW else k
                                 for k in HOST])
def test_zoo_model_bit_exact(key):
    data = zoo_model(key)
    _, compiled = compiled_model(key, data)
    assert_bit_exact(data, compiled, n=2 if key in SLOW else 3)


@pytest.mark.parametrize("key", [pytest.param(k, marks=pytest.mark.slow) if k in SLOW else k
                                 for k in HOST])
def test_zoo_model_patched_bit_exact(key):
    """The schedule auto picks (patched, or layer by layer when that is smaller)."""
    data = zoo_model(key)
    assert_bit_exact(data, tvm_patch.build(patched_model(key, data)), n=2)


@pytest.mark.parametrize("name", SHARED)
def test_arena_not_above_tflite_micro(name):
    """Our arena (input, output, intermediates, scratch) against TFLite Micro's activation
    arena (`head` of its recording allocator) for the same model."""
    with open(shared_model(name), "rb") as f:
        data = f.read()
    mod, compiled = compiled_model(name, data)
    assert compiled.plan.arena_bytes <= reference.arena(data)["head"]


def test_relax_build_pipeline_matches_arena_run():
    """The same module through relax.build with tvm_patch's pipeline and the Relax VM."""
    data = zoo_model("resnet8")
    mod, compiled = compiled_model("resnet8", data)
    ex = relax.build(mod, tvm.target.Target("llvm"), relax_pipeline=tvm_patch.pipeline())
    vm = relax.VirtualMachine(ex, tvm.cpu())
    x = np.random.default_rng(5).integers(-128, 128, (1, 32, 32, 3)).astype(np.int8)
    via_vm = vm["main"](tvm.runtime.tensor(x)).numpy()
    np.testing.assert_array_equal(via_vm, compiled.run(x)[0])
    np.testing.assert_array_equal(via_vm, reference.run(data, [x])[0])
