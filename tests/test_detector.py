"""Models with several inputs and outputs, end to end, and the zoo detector: load, profile,
host build and run, the patch pass, firmware on the emulated Cortex-M7 and the CLI, every
output bit-exact with TFLite Micro, in the model's order."""

import os
import shutil

import numpy as np
import pytest

import tvm_patch
from tvm_patch import cli, mcu, reference, zoo
from tvm_patch.analysis.memory import plan_memory
from tvm_patch.graph import ModelError
from tvm_patch.passes import PatchBasedInference, cost_of
from tvm_patch.zoo import ModelWriter

from conftest import assert_bit_exact, compiled_model, loaded_model, patched_model


def _quant(rng):
    return float(rng.uniform(0.02, 0.06)), int(rng.integers(-20, 20))


def multi_io_model(two_inputs=False) -> bytes:
    """x (1x12x14x3) -> conv3x3 -> a -> conv3x3/2 -> b -> conv1x1 -> head0
                                  a -> maxpool2/2 -> c;  add(b, c) -> d -> conv1x1 -> head1
    Outputs in the order (head1, head0, a): not the order they are computed in, and `a`
    is an output that later operators also read. With two_inputs a second input is added
    to b."""
    rng = np.random.default_rng(9)
    w = ModelWriter("multi io")

    def act(name, shape, quant=None):
        return w.tensor(name, shape, "int8", *(quant or _quant(rng)))

    def conv(x, x_scale, y, cin, cout, k, stride, name):
        w_scale = rng.uniform(0.005, 0.02, cout).astype(np.float32)
        wt = w.tensor(name + "_w", (cout, k, k, cin), "int8", w_scale, np.zeros(cout, int),
                      rng.integers(-127, 128, (cout, k, k, cin)))
        bt = w.tensor(name + "_b", (cout,), "int32", (x_scale * w_scale).astype(np.float32),
                      np.zeros(cout, int), rng.integers(-3000, 3000, cout))
        w.op("CONV_2D", [x, wt, bt], [y], {"padding": "SAME", "stride_w": stride,
                                           "stride_h": stride, "fused_activation_function":
                                           "RELU"})

    qx, qa = _quant(rng), (0.08, -10)
    x = act("x", (1, 12, 14, 3), qx)
    a = act("a", (1, 12, 14, 8), qa)
    conv(x, qx[0], a, 3, 8, 3, 1, "c0")
    qb = (0.1, 5)
    b = act("b", (1, 6, 7, 8), qb)
    conv(a, qa[0], b, 8, 8, 3, 2, "c1")
    inputs = [x]
    if two_inputs:
        x2, b2 = act("x2", (1, 6, 7, 8)), act("b2", (1, 6, 7, 8), qb)
        w.op("ADD", [b, x2], [b2], {"fused_activation_function": "NONE"})
        inputs, b = [x, x2], b2
    head0 = act("head0", (1, 6, 7, 4))
    conv(b, qb[0], head0, 8, 4, 1, 1, "h0")
    c = act("c", (1, 6, 7, 8), qa)
    w.op("MAX_POOL_2D", [a], [c], {"padding": "VALID", "stride_w": 2, "stride_h": 2,
                                   "filter_width": 2, "filter_height": 2,
                                   "fused_activation_function": "NONE"})
    qd = (0.12, -3)
    d = act("d", (1, 6, 7, 8), qd)
    w.op("ADD", [b, c], [d], {"fused_activation_function": "NONE"})
    head1 = act("head1", (1, 6, 7, 6))
    conv(d, qd[0], head1, 8, 6, 1, 1, "h1")
    return w.finish(inputs, [head1, head0, a])


def _inputs(compiled, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(-128, 128, shape).astype(dtype) for shape, dtype in
            compiled.input_specs]


def _assert_all_equal(ours, ref):
    assert len(ours) == len(ref)
    for k, (a, b) in enumerate(zip(ours, ref)):
        assert a.dtype == b.dtype and a.shape == b.shape, k
        assert np.array_equal(a, b), f"output {k}: {np.sum(a != b)}/{a.size} differ"


def test_multi_output_model_load_profile_run():
    data = multi_io_model()
    mod = tvm_patch.load(data)
    prof = tvm_patch.profile(mod)
    assert prof.macs > 0 and prof.arena_excl_io_bytes < prof.arena_bytes
    compiled = tvm_patch.build(mod)
    assert [o.shape for o in compiled.run(*_inputs(compiled))] == \
        [(1, 6, 7, 6), (1, 6, 7, 4), (1, 12, 14, 8)]
    assert_bit_exact(data, compiled, n=3)


def test_two_input_model_bit_exact():
    data = multi_io_model(two_inputs=True)
    compiled = tvm_patch.build(tvm_patch.load(data))
    assert len(compiled.input_specs) == 2
    for seed in range(2):
        xs = _inputs(compiled, seed)
        _assert_all_equal(compiled.run(*xs), reference.run(data, xs))


def inner_output_model() -> bytes:
    """x -> conv -> a -> conv -> b -> avgpool -> y; outputs (y, a): `a` is read by nothing
    outside a 2-convolution patch stage, but the stage would not keep it."""
    rng = np.random.default_rng(4)
    w = ModelWriter("inner output")
    x = w.tensor("x", (1, 8, 8, 2), "int8", 0.05, 0)
    a = w.tensor("a", (1, 8, 8, 4), "int8", 0.05, 0)
    b = w.tensor("b", (1, 8, 8, 4), "int8", 0.05, 0)
    for k, (src, dst, cin) in enumerate(((x, a, 2), (a, b, 4))):
        wt = w.tensor(f"w{k}", (4, 3, 3, cin), "int8", [0.01] * 4, [0] * 4,
                      rng.integers(-127, 128, (4, 3, 3, cin)))
        bt = w.tensor(f"b{k}", (4,), "int32", [0.0005] * 4, [0] * 4, np.zeros(4))
        w.op("CONV_2D", [src, wt, bt], [dst], {"padding": "SAME", "stride_w": 1,
                                                "stride_h": 1})
    y = w.tensor("y", (1, 4, 4, 4), "int8", 0.05, 0)
    w.op("AVERAGE_POOL_2D", [b], [y], {"padding": "VALID", "stride_w": 2, "stride_h": 2,
                                       "filter_width": 2, "filter_height": 2})
    return w.finish([x], [y, a])


# -- the zoo detector -----------------------------------------------------------------------

HEADS = [(1, 4, 5, 18), (1, 8, 10, 18), (1, 16, 20, 18)]
_DETECTOR = {}


def detector() -> dict:
    """The detector's bytes, its layer-by-layer module and the auto patch-based one."""
    if not _DETECTOR:
        data = zoo.build("detector")
        _DETECTOR.update(data=data, mod=loaded_model("detector", data),
                         patched=patched_model("detector", data))
    return _DETECTOR


def test_detector_architecture():
    assert "detector" in zoo.names()
    graph = tvm_patch.read(detector()["data"])
    kinds = {op.kind for op in graph.ops}
    assert {"conv2d", "depthwise_conv2d", "add", "max_pool2d", "resize_nearest"} <= kinds
    assert [tuple(graph.t(n).shape) for n in graph.outputs] == HEADS
    assert tuple(graph.t(graph.inputs[0]).shape) == (1, 128, 160, 3)


def test_detector_layer_by_layer_bit_exact():
    d = detector()
    _, compiled = compiled_model("detector", d["data"])
    assert [o.shape for o in compiled.run(*_inputs(compiled))] == HEADS
    assert_bit_exact(d["data"], compiled, n=2)


def test_detector_patched_bit_exact_and_smaller():
    d = detector()
    assert cost_of(d["patched"])["blocks"]
    before, after = tvm_patch.profile(d["mod"]), tvm_patch.profile(d["patched"])
    assert after.arena_bytes < 0.7 * before.arena_bytes  # MCUNetV2's headline, detection too
    assert after.arena_excl_io_bytes < before.arena_excl_io_bytes
    assert after.macs < 1.2 * before.macs
    assert_bit_exact(d["data"], tvm_patch.build(d["patched"]), n=2)


def test_patch_stage_never_cuts_a_tensor_read_later():
    mod = detector()["mod"]
    # 16 convolutions take in the stride-8 map, which the FPN neck reads again later
    with pytest.raises(ModelError, match="split=16 cuts a connection: tensor .* is also read "
                                         "after the patch stage"):
        PatchBasedInference(split=16, patches=2)(mod)
    with pytest.raises(ModelError, match="split=2 cuts a connection: tensor \\S*a is a model "
                                         "output inside the patch stage"):
        PatchBasedInference(split=2, patches=2)(tvm_patch.load(inner_output_model()))


def _need_emulator():
    missing = [t for t in ("arm-none-eabi-gcc", "qemu-system-arm", "make", "gcc")
               if shutil.which(t) is None]
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"CI needs {', '.join(missing)}: scripts/setup.sh installs them")
        pytest.skip("the Cortex-M7 toolchain or emulator is not installed")


@pytest.mark.parametrize("schedule", ["mod", "patched"], ids=["layer", "patched"])
def test_detector_on_emulator(schedule, tmp_path):
    _need_emulator()
    d = detector()
    mod = d[schedule]
    fw = mcu.compile(mod, "qemu-m7", tmp_path)  # the STM32F746 budget: 320 KB / 1 MB
    assert fw.arena_bytes == plan_memory(mod).arena_bytes
    x = np.random.default_rng(5).integers(-128, 128, (1, 128, 160, 3)).astype(np.int8)
    ref = reference.run(d["data"], [x])
    with mcu.Session(tmp_path) as session:
        _assert_all_equal(session.run_model(x), ref)
        session.set_input(0, np.zeros_like(x))
        session.run()
        zeros = reference.run(d["data"], [np.zeros_like(x)])
        for k in reversed(range(len(HEADS))):
            _assert_all_equal([session.get_output(k)], [zeros[k]])


# -- the CLI --------------------------------------------------------------------------------

def test_cli_run_writes_every_output_to_npz(tmp_path, capsys):
    data = multi_io_model()
    model, x = tmp_path / "m.tflite", tmp_path / "x.npy"
    model.write_bytes(data)
    xs = np.random.default_rng(2).integers(-128, 128, (1, 12, 14, 3)).astype(np.int8)
    np.save(x, xs)
    out = tmp_path / "y.npz"
    assert cli.main(["run", str(model), "--input", str(x), "--output", str(out)]) == 0
    saved = np.load(out)
    assert sorted(saved.files) == ["output_0", "output_1", "output_2"]
    _assert_all_equal([saved[f"output_{k}"] for k in range(3)], reference.run(data, [xs]))


def test_cli_run_npy_for_several_outputs_is_refused_before_compiling(tmp_path, capsys,
                                                                     monkeypatch):
    model, x = tmp_path / "m.tflite", tmp_path / "x.npy"
    model.write_bytes(multi_io_model())
    np.save(x, np.zeros((1, 12, 14, 3), np.int8))

    def no_compile(*_args, **_kwargs):
        raise AssertionError("compiled before checking --output")
    monkeypatch.setattr(tvm_patch, "build", no_compile)
    assert cli.main(["run", str(model), "--input", str(x), "--output",
                     str(tmp_path / "y.npy")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tvm-patch: error: the model has 3 outputs: give --output OUT.npz")
    assert err.count("\n") == 1 and not (tmp_path / "y.npy").exists()
