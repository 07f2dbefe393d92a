"""The microcontroller target on the Cortex-M7 emulator: firmware built from the generated
plain C, driven through host sessions, outputs bit-exact with TFLite Micro and the host
build; the firmware's arena equals the plan; budgets, protocol and failure handling."""

import json
import os
import shutil
import struct
import threading
import time

import numpy as np
import pytest

import tvm_patch
from tvm_patch import mcu, zoo
from tvm_patch.analysis.memory import plan_memory
from tvm_patch.graph import ModelError
from tvm_patch.mcu.session import frame
from tvm_patch.passes import PatchBasedInference
from hypothesis import HealthCheck, event, given, settings, strategies as st

from conftest import (SHARED, assert_bit_exact, compiled_model, loaded_model, patched_model,
                      random_inputs, shared_model)
from random_cnn import QUANTS, Layer, Spec, build as build_cnn, quant_specs
from test_quant_edge import FLOATS, SATURATED, quantize_model


@st.composite
def simd_cnns(draw):
    """Chains of convolutions whose channel counts hit the SIMD dot product's 8-byte
    threshold and every remainder of its 4-byte steps, with depthwise and residual layers."""
    spec = Spec(draw(st.integers(6, 17)), draw(st.integers(6, 17)), draw(st.integers(1, 16)),
                seed=draw(st.integers(0, 2**31 - 1)), quant=draw(st.sampled_from(QUANTS)))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["conv", "conv", "dw", "add"]))
        layer = Layer(kind, activation=draw(st.sampled_from(["NONE", "RELU", "RELU6"])))
        if kind in ("conv", "dw"):
            layer.kernel = draw(st.sampled_from([1, 3]))
            layer.stride = draw(st.sampled_from([1, 1, 2]))
        if kind == "conv":
            layer.channels = draw(st.integers(4, 20))
        spec.layers.append(layer)
    spec.layers.append(Layer("avgpool", kernel=3, stride=2))  # a stage is never the whole net
    return spec
from test_models_exact import ZOO, zoo_model

TOOLS = ("arm-none-eabi-gcc", "qemu-system-arm", "make", "gcc")
if any(shutil.which(t) is None for t in TOOLS):
    if os.environ.get("CI"):
        raise RuntimeError(f"CI needs {', '.join(TOOLS)}: scripts/setup.sh installs them")
    pytest.skip("the Cortex-M7 toolchain or emulator is not installed", allow_module_level=True)

# Models beyond the STM32F746 budget: arena (1.4 MB) or weights (1.7 MB: the 1280x1000
# classifier) cannot fit 320 KB / 1 MB; test_models_too_large_* checks their messages
TOO_LARGE = {"mbv2-w1.0-r224", "mbv2-w0.35-r144"}


class OnDevice:
    """A session as the bit-exact helpers see a compiled model."""

    def __init__(self, session):
        self.session = session
        self.input_specs = [(tuple(s["shape"]), s["dtype"]) for s in session.project["inputs"]]

    def run(self, *inputs):
        return self.session.run_model(*inputs)


def _firmware(mod, directory, budget="stm32f746"):
    fw = mcu.compile(mod, "qemu-m7", directory, budget=budget)
    assert fw.arena_bytes == plan_memory(mod).arena_bytes  # the map's arena is the plan's
    ram, flash = mcu.project.BUDGETS[budget]
    assert fw.static_ram_bytes + fw.stack_reserved <= ram and fw.flash_bytes <= flash
    return fw


def _check_on_emulator(data, mod, directory, host=None, n=2, budget="stm32f746"):
    _firmware(mod, directory, budget)
    with mcu.Session(directory) as session:
        device = OnDevice(session)
        assert_bit_exact(data, device, n=n)
        c = session.counters
        assert c.instructions == sum(c.layer_instructions) > 0
        assert len(c.layer_instructions) == len(session.project["layers"])
        assert 0 < c.stack_bytes < session.info["stack_reserved"]
        assert c.cycles is None  # QEMU does not emulate the cycle counter
        if host is not None:
            for x in random_inputs(host, 1, seed=7):
                for a, b in zip(device.run(x), host.run(x)):
                    assert np.array_equal(a, b)


@pytest.mark.parametrize("patched", [False, True], ids=["layer", "patched"])
@pytest.mark.parametrize("name", SHARED)
def test_shared_model_on_emulator(name, patched, tmp_path):
    with open(shared_model(name), "rb") as f:
        data = f.read()
    mod, host = compiled_model(name, data)
    if patched:
        mod = patched_model(name, data)
        host = tvm_patch.build(mod)
    _check_on_emulator(data, mod, tmp_path, host)


@pytest.mark.parametrize("key,patched", [
    pytest.param(k, patched, id=f"{k}-{'patched' if patched else 'layer'}")
    for k in ZOO for patched in (False, True) if not (patched and k in TOO_LARGE)])
def test_zoo_model_on_emulator(key, patched, tmp_path):
    """Models beyond the STM32F746 run with the emulated board's own 4 MB + 4 MB, layer by
    layer (their patched schedules run bit-exact on the host: test_models_exact)."""
    data = zoo_model(key)
    mod = patched_model(key, data) if patched else loaded_model(key, data)
    _check_on_emulator(data, mod, tmp_path, n=1 if key in TOO_LARGE else 2,
                       budget="mps2-an500" if key in TOO_LARGE else "stm32f746")


@settings(max_examples=16, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=simd_cnns(), data=st.data())
def test_random_cnn_on_emulator_bit_exact(spec, data, tmp_path_factory):
    """Random small CNNs (channel counts around the SIMD dot product's 8 and its 4-byte
    steps), layer by layer or under a random patch schedule, with random kernel choices
    (hand-written C or TVM's C) for the convolutions outside blocks, on the emulated M7."""
    from tvm_patch.frontend import read
    from tvm_patch.passes import stage_ops
    model = build_cnn(spec)
    mod = tvm_patch.load(model)
    convs = sum(layer.kind in ("conv", "dw") for layer in spec.layers)
    if convs and data.draw(st.integers(0, 3), label="patched unless 0"):
        split = data.draw(st.integers(1, convs), label="split")
        try:
            stage_ops(read(model), split)
            mod = PatchBasedInference(split=split, patches=data.draw(
                st.integers(2, 3), label="patches"))(mod)
        except ModelError as e:  # no such stage in this net: layer by layer
            event(f"no stage: {str(e).split(':')[0]}")
    mod = _random_kernel_choices(mod, model, data)
    directory = tmp_path_factory.mktemp("cnn")
    _firmware(mod, directory)
    dots = (directory / "kernels.c").read_text().count("tvmp_dot_s8(")
    event(f"{dots} SIMD dot-product loops" if dots < 3 else "3+ SIMD dot-product loops")
    event("patch stage" if "patch_stage" in (directory / "model.c").read_text() else
          "layer by layer")
    event("a block by the C kernels" if "tvmp_block_run(" in
          (directory / "kernels.c").read_text() else "no block in C")
    with mcu.Session(directory) as session:
        assert_bit_exact(model, OnDevice(session), n=1, seed=spec.seed)


def _random_kernel_choices(mod, model, data):
    """The module rebuilt with a random kernel choice (C, TVM's C or the default) for every
    convolution outside its blocks and for every block (its loop nest in TVM's C, or the
    default: the C kernels where it can): every knob setting must stay bit-exact."""
    import dataclasses
    from tvm_patch.frontend import read
    from tvm_patch.kernels.lower import lower_op
    from tvm_patch.kernels.variants import c_kernel
    from tvm_patch.schedule import schedule_of
    schedule, graph = schedule_of(mod), read(model)
    inside = {p for b in schedule.blocks for p in range(b.first, b.last + 1)}
    choices = {}
    for pos, op in enumerate(graph.ops):
        if op.kind not in ("conv2d", "depthwise_conv2d") or pos in inside:
            continue
        kernel = lower_op(op, graph)
        runs_in_c = c_kernel(op, graph, len(kernel.func.params), kernel.scratch_bytes,
                             default=False) is not None
        choice = data.draw(st.sampled_from(["default", "tvm"] + ["c"] * runs_in_c),
                           label=f"kernel at {pos}")
        if choice != "default":
            choices[pos] = choice
    event("C kernels chosen" if "c" in choices.values() else "no C kernel chosen")
    blocks = tuple(dataclasses.replace(b, kernel=data.draw(
        st.sampled_from([None, "tvm"]), label=f"block {b.first}-{b.last} kernel"))
        for b in schedule.blocks)
    event("a block in TVM's C" if any(b.kernel for b in blocks) else "blocks by default")
    if not choices and blocks == schedule.blocks:
        return mod
    return PatchBasedInference(dataclasses.replace(schedule, blocks=blocks,
                                                   kernels=tuple(choices.items())))(mod)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=quant_specs())
def test_adversarial_quantization_on_emulator_bit_exact(spec, tmp_path_factory):
    """Negative, zero, rounding-up and out-of-range multipliers in the C the M7 runs."""
    model = build_cnn(spec)
    try:
        mod = tvm_patch.load(model)
    except ModelError:  # one TFLite Micro refuses too (test_quant_edge checks that)
        return
    directory = tmp_path_factory.mktemp("quant")
    _firmware(mod, directory)
    with mcu.Session(directory) as session:
        assert_bit_exact(model, OnDevice(session), n=1, seed=spec.seed)


def test_float_quantize_out_of_range_and_nan_same_as_host(tmp_path):
    mod = tvm_patch.load(quantize_model("float32", "int8"))
    _firmware(mod, tmp_path)
    with mcu.Session(tmp_path) as session:
        device = session.run_model(FLOATS)[0]
    assert np.array_equal(device, tvm_patch.build(mod).run(FLOATS)[0])
    assert device.ravel()[:len(SATURATED)].tolist() == SATURATED


@pytest.mark.slow
def test_model_too_large_for_the_board_fails_at_build_time(tmp_path):
    mod = tvm_patch.load(zoo_model("mbv2-w1.0-r224"))
    with pytest.raises(ModelError) as e:
        mcu.compile(mod, "qemu-m7", tmp_path)
    msg = str(e.value)
    assert "does not fit the qemu-m7 RAM" in msg and "arena 1,404,928 B" in msg
    assert msg.count("step") >= 8 and "live" in msg  # the per-layer breakdown


def test_weights_too_large_for_flash_fail_at_build_time(tmp_path):
    mod = tvm_patch.load(zoo_model("mbv2-w0.35-r144"))
    with pytest.raises(ModelError, match=r"does not fit the stm32f746 Flash: its constants "
                                         r"alone take 1,759,552 B > 1,048,576 B"):
        mcu.compile(mod, "stm32f746", tmp_path)
    assert not os.listdir(tmp_path)  # refused before writing anything


def test_link_overflow_is_reported_with_the_breakdown(tmp_path):
    """What the linker finds (code and data beyond the pre-check) gets the same message."""
    mod = tvm_patch.load(zoo.build("resnet8"))
    mcu.write_project(mod, "qemu-m7", tmp_path)
    script = tmp_path / "firmware.ld"
    script.write_text(script.read_text().replace("LENGTH = 320K", "LENGTH = 40K"))
    with pytest.raises(ModelError, match=r"(?s)link overflows RAM by [\d,]+ B.*step"):
        mcu.build_firmware(tmp_path)


def test_stm32f746_project_builds(tmp_path):
    mod = tvm_patch.load(zoo.build("resnet8"))
    fw = mcu.compile(mod, "stm32f746", tmp_path)
    assert fw.arena_bytes == plan_memory(mod).arena_bytes
    assert "0x08000000" in (tmp_path / "firmware.ld").read_text()
    assert "flash:" in (tmp_path / "Makefile").read_text()
    assert mcu.project.symbol(fw.elf, "tvmp_vectors")[0] == 0x08000000
    with pytest.raises(ModelError, match="give the serial port"):
        mcu.Session(tmp_path)


def test_generated_c_is_plain():
    mod = tvm_patch.load(zoo.build("demo"))
    mod = PatchBasedInference(split=3, patches=2)(mod)
    sources = mcu.codegen.model_sources(mod, plan_memory(mod), "demo")
    for name in ("kernels.c", "model.c", "tvmp_kernels.h", "tvmp_model.h"):
        text = sources.files[name]
        assert "tvm/" not in text and "DLTensor" not in text and "TVMFFI" not in text
    assert "void patch_stage(" in sources.files["kernels.c"]
    model_c = sources.files["model.c"]
    assert model_c.count("tvmp_arena[TVMP_ARENA_BYTES]") == 1  # one static arena


@pytest.fixture(scope="module")
def resnet8_project(tmp_path_factory):
    directory = tmp_path_factory.mktemp("resnet8")
    mod = tvm_patch.load(zoo.build("resnet8"))
    mcu.compile(mod, "qemu-m7", directory)
    return directory, tvm_patch.build(mod)


def test_convolutions_use_the_dsp_instructions(resnet8_project):
    import subprocess
    directory, _ = resnet8_project
    kernels = (directory / "kernels.c").read_text()
    assert kernels.count("tvmp_conv_s8(") >= 7  # every 3x3 conv and strided 1x1: tvmp_nn.c
    assert kernels.count("tvmp_dot_s8(") >= 1   # the fully connected layer
    layers = json.loads((directory / "project.json").read_text())["layers"]
    assert {layer["c_kernel"] for layer in layers if layer["kind"] == "conv2d"} == \
        {"tvmp_conv_s8"}
    asm = subprocess.run(["arm-none-eabi-objdump", "-d", str(directory / "build" /
                                                             "firmware.elf")],
                         capture_output=True, text=True, check=True).stdout
    assert "smlad" in asm and "sxtab16" in asm


def test_session_round_trip_and_counters(resnet8_project):
    directory, host = resnet8_project
    x = next(random_inputs(host, 1, seed=3))
    with mcu.Session(directory) as s:
        assert s.info["arena_bytes"] == host.plan.arena_bytes
        s.set_input(0, x)
        first = s.run()
        y = s.get_output(0)
        with pytest.raises(ModelError, match="set input"):
            s.run()
        s.set_input(0, x)
        again = s.run()
        assert np.array_equal(y, host.run(x)[0])
        assert first.instructions == again.instructions  # exact, repeatable counts
        assert first.layer_instructions == again.layer_instructions
        assert first.stack_bytes == again.stack_bytes


def test_session_rejects_bad_input(resnet8_project):
    directory, _ = resnet8_project
    with mcu.Session(directory) as s:
        with pytest.raises(ModelError, match="expected shape"):
            s.set_input(0, np.zeros((1, 8, 8, 3), np.int8))
        with pytest.raises(ModelError, match="expected dtype"):
            s.set_input(0, np.zeros((1, 32, 32, 3), np.float32))
        with pytest.raises(ModelError, match="no input 1"):
            s.set_input(1, np.zeros((1, 32, 32, 3), np.int8))
        with pytest.raises(ModelError, match="no output 2"):
            s.get_output(2)
        # a corrupted frame is refused by the device, which stays usable
        bad = bytearray(frame(ord("W"), struct.pack("<BI", 0, 0) + b"\1\2\3"))
        bad[-1] ^= 0xFF
        s._link.write(bytes(bad))
        with pytest.raises(mcu.DeviceError, match="checksum"):
            s._receive(b"W")
        assert s._info()["layers"] == len(s.project["layers"])


def test_session_on_another_build_is_refused(resnet8_project, tmp_path):
    directory, _ = resnet8_project
    shutil.copytree(directory, tmp_path / "p", dirs_exist_ok=True)
    project = (tmp_path / "p" / "project.json")
    project.write_text(project.read_text().replace('"model_id": ', '"model_id": 1'))
    with pytest.raises(mcu.DeviceError, match="another build"):
        mcu.Session(tmp_path / "p")


def test_killed_emulator_mid_run_gives_a_clear_error(resnet8_project):
    directory, host = resnet8_project
    x = next(random_inputs(host, 1))
    with mcu.Session(directory, timeout=20) as s:
        s.set_input(0, x)
        killer = threading.Timer(0.05, s._link.proc.kill)
        killer.start()
        t = time.monotonic()
        with pytest.raises(mcu.DeviceError, match="stopped answering"):
            for _ in range(50):  # in case a run finishes before the kill
                s.run()
                s.set_input(0, x)
        assert time.monotonic() - t < 20
        killer.join()


def test_session_over_a_serial_port(resnet8_project):
    """The board path (pyserial) end to end: the emulator's UART as a pseudo-terminal."""
    import re
    import subprocess
    directory, host = resnet8_project
    qemu = subprocess.Popen(
        ["qemu-system-arm", "-M", "mps2-an500", "-cpu", "cortex-m7", "-display", "none",
         "-monitor", "none", "-serial", "pty", "-kernel",
         str(directory / "build" / "firmware.elf")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        port = re.search(r"(/dev/pts/\d+)", qemu.stdout.readline()).group(1)
        x = next(random_inputs(host, 1, seed=5))
        with mcu.Session(directory, port=port, timeout=20) as s:
            assert np.array_equal(s.run_model(x)[0], host.run(x)[0])
            assert s.counters.cycles is None and s.counters.instructions is None
            assert s.counters.stack_bytes > 0
        qemu.kill()
        qemu.wait()
        with pytest.raises(mcu.DeviceError):
            mcu.Session(directory, port=port, timeout=2)
    finally:
        qemu.kill()
        qemu.wait()


def test_cli_build_and_run_on_emulator(tmp_path, capsys):
    import json
    from tvm_patch.cli import main
    model = tmp_path / "r8.tflite"
    zoo.save("resnet8", model)
    x = np.random.default_rng(0).integers(-128, 128, (1, 32, 32, 3)).astype(np.int8)
    np.save(tmp_path / "x.npy", x)
    assert main(["build", str(model), "--target", "qemu-m7", "-o", str(tmp_path / "fw"),
                 "--json"]) == 0
    built = json.loads(capsys.readouterr().out)
    assert built["firmware_arena_bytes"] == built["arena_bytes"]
    assert main(["run", str(model), "--target", "qemu-m7", "--input", str(tmp_path / "x.npy"),
                 "--output", str(tmp_path / "y.npy"), "--json"]) == 0
    ran = json.loads(capsys.readouterr().out)
    assert ran["instructions"] > 0 and ran["stack_bytes"] > 0 and ran["cycles"] is None
    ref = tvm_patch.reference.run(model.read_bytes(), [x])[0]
    assert np.array_equal(np.load(tmp_path / "y.npy"), ref)
    assert main(["build", str(model), "--target", "qemu-m7"]) == 2  # no -o
    assert "give -o DIR" in capsys.readouterr().err
    assert main(["run", str(model), "--target", "stm32f746", "--input",
                 str(tmp_path / "x.npy"), "--output", str(tmp_path / "y.npy")]) == 2
    assert "give --port" in capsys.readouterr().err
