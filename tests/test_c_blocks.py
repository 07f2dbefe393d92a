"""Fused blocks by the hand-written kernels (passes/c_block.py, mcu/firmware/tvmp_block.c):
the firmware's C sources (TVM's C kernels, the block tables, model.c over the arena)
compiled for this host, run against TFLite Micro on random networks and random multi-block
schedules. The emulator runs the same sources with the DSP instructions (test_mcu.py,
test_io_type.py)."""

from __future__ import annotations

import ctypes
import json
import os
import subprocess

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings, strategies as st

import tvm_patch
from conftest import loaded_model, shared_model
from random_cnn import Layer, Spec, build as build_cnn
from test_schedule import draw_schedule, networks, random_input
from tvm_patch import reference
from tvm_patch.frontend import read
from tvm_patch.graph import ModelError
from tvm_patch.mcu import write_project
from tvm_patch.passes import PatchBasedInference
from tvm_patch.schedule.regions import plan_block
from tvm_patch.schedule.schedule import Block, Schedule, fingerprint, parse

STUB = "#include <stdint.h>\nvoid tvmp_mark(uint32_t layer) { (void)layer; }\n"


def host_firmware(mod, directory):
    """The firmware project's model sources as a host library: (library, project)."""
    project = write_project(mod, "qemu-m7", directory, budget="mps2-an500")
    with open(os.path.join(directory, "stub.c"), "w") as f:
        f.write(STUB)
    library = os.path.join(directory, "libmodel.so")
    subprocess.run(["gcc", "-O1", "-std=c11", "-shared", "-fPIC", "-DTVM_DLL=", "-I", ".",
                    "-o", library, "kernels.c", "model.c", "tvmp_nn.c", "tvmp_block.c",
                    "weights.S", "stub.c", "-lm"], cwd=directory, check=True,
                   capture_output=True)
    return ctypes.CDLL(library), project


def run_host_firmware(library, project, xs) -> list:
    """One inference through model.c over the arena, at the offsets tvmp_inputs and
    tvmp_outputs give (as the firmware's server reads them)."""
    arena = (ctypes.c_uint8 * project["arena_bytes"]).in_dll(library, "tvmp_arena")
    view = np.frombuffer(arena, np.uint8)

    def places(symbol, n):
        return np.frombuffer((ctypes.c_uint32 * (2 * n)).in_dll(library, symbol),
                             np.uint32).reshape(n, 2)
    for (offset, _), x in zip(places("tvmp_inputs", len(xs)), xs):
        data = np.ascontiguousarray(x).view(np.uint8).ravel()
        view[offset:offset + data.size] = data
    library.tvmp_run()
    outs = project["outputs"]
    return [view[o:o + n].copy().view(spec["dtype"]).reshape(spec["shape"])
            for (o, n), spec in zip(places("tvmp_outputs", len(outs)), outs)]


def c_blocks(directory) -> int:
    with open(os.path.join(directory, "kernels.c")) as f:
        return f.read().count("tvmp_block_run(&block")


@settings(max_examples=14, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                 HealthCheck.function_scoped_fixture])
@given(spec=networks(), data=st.data())
def test_random_blocks_in_c_bit_exact(tmp_path_factory, spec, data):
    model = build_cnn(spec)
    graph = read(model)
    schedule = draw_schedule(data, graph)
    patched = PatchBasedInference(schedule)(tvm_patch.load(model))
    directory = str(tmp_path_factory.mktemp("block"))
    library, project = host_firmware(patched, directory)
    in_c = c_blocks(directory)
    event(f"{in_c} of {len(schedule.blocks)} block(s) in C")
    for st_ in (plan_block(graph, b) for b in schedule.blocks):
        event(f"halo {'/'.join(st_.block.halo)}")
    x = random_input(graph, spec.seed)
    for got, want in zip(run_host_firmware(library, project, [x]), reference.run(model, [x])):
        assert np.array_equal(got, want), f"{int((got != want).sum())}/{want.size} differ"


@pytest.mark.parametrize("wide", [False, True], ids=["columns", "wide"])
def test_pointwise_with_folded_bottom_right_pad_bit_exact(tmp_path, wide):
    """A PAD of the bottom and right before a 1x1 convolution folds into it: its last rows
    and columns read only padding. Found by the property test above: the C kernels' 1x1
    shortcut read them from beyond the image. Layer by layer and as a block of two tiles;
    `wide`: more taps than the column path takes (tvmp_conv1x1_s8)."""
    channels = 700 if wide else 8
    layer = dict(kernel=1, stride=1, dilation=1, padding="SAME", activation="NONE")
    spec = Spec(height=5, width=11, channels=channels, layers=[
        Layer(kind="conv", channels=3 if not wide else channels, **layer),
        Layer(kind="pad", channels=0, **layer), Layer(kind="conv", channels=1, **layer)],
        seed=208024551, quant="realistic")
    model = build_cnn(spec)
    graph = read(model)
    last = len(graph.ops) - 1
    op = graph.ops[last]  # the pad folded in: outputs beyond the image
    assert any(op.attrs["padding"][2:]) and graph.t(op.outputs[0]).shape[1] > 5
    x = random_input(graph, spec.seed)
    want = reference.run(model, [x])[0]
    for blocks in ((), (Block(last, last, (1, 2), kernel="c"),)):
        patched = PatchBasedInference(Schedule(blocks, fingerprint(graph)))(
            tvm_patch.load(model))
        directory = str(tmp_path / f"blocks{len(blocks)}")
        library, project = host_firmware(patched, directory)
        assert c_blocks(directory) == len(blocks)
        got = run_host_firmware(library, project, [x])[0]
        assert np.array_equal(got, want), f"{int((got != want).sum())}/{want.size} differ"


def test_block_kernel_is_a_schedule_choice(tmp_path):
    """By default a block of convolutions, depthwise layers and adds runs in C; kernel "tvm"
    keeps TVM's C of its loop nest, the same bytes; "c" where an operator has no C kernel
    for a tile (a pool) is refused in one line."""
    spec = Spec(12, 10, 3, [Layer("conv", 3, channels=8), Layer("dw", 3),
                            Layer("conv", 1, channels=8), Layer("maxpool", 2, 2)], seed=3)
    model = build_cnn(spec)
    graph = read(model)
    fp = fingerprint(graph)
    last_conv = max(k for k, op in enumerate(graph.ops) if op.kind == "conv2d")
    x = random_input(graph, 0)
    want = reference.run(model, [x])
    counts = {}
    for kernel in (None, "tvm", "c"):
        block = Block(0, last_conv, (3, 2), ("cache", "recompute"), kernel)
        patched = PatchBasedInference(Schedule((block,), fp))(tvm_patch.load(model))
        directory = str(tmp_path / str(kernel))
        library, project = host_firmware(patched, directory)
        counts[kernel] = c_blocks(directory)
        assert all(np.array_equal(a, b) for a, b in
                   zip(run_host_firmware(library, project, [x]), want))
    assert counts == {None: 1, "tvm": 0, "c": 1}
    pool = next(k for k, op in enumerate(graph.ops) if op.kind == "max_pool2d")
    with pytest.raises(ModelError) as e:
        PatchBasedInference(Schedule((Block(0, pool, (2, 2), kernel="c"),), fp))(
            tvm_patch.load(model))
    message = str(e.value)
    assert "\n" not in message and "not every operator has a C kernel" in message
    schedule = Schedule((Block(0, last_conv, (3, 2), kernel="tvm"),), fp)
    assert parse(schedule.dumps()) == schedule
    record = json.loads(schedule.dumps())
    assert record["blocks"][0]["kernel"] == "tvm"
    record["blocks"][0]["kernel"] = "asm"
    with pytest.raises(ModelError) as e:
        parse(json.dumps(record))
    assert "kernel 'asm' must be one of c, tvm" in str(e.value)


def test_float_input_block_in_c_bit_exact(tmp_path):
    """mcunet-vww1 at P=2 K=5 fuses the QUANTIZE of its float image: the block's first
    convolution quantizes its windows as it gathers them (tvmp_conv_f32_s8). Against
    TFLite Micro on random images, and on NaN, infinities and values far outside the int8
    range (TFLite leaves those undefined; ours saturate and map NaN to the zero point)
    against layer by layer, whose QUANTIZE is TVM's C of the TIR the host runs."""
    with open(shared_model("mcunet-vww1"), "rb") as f:
        data = f.read()
    layered = loaded_model("mcunet-vww1", data)
    patched = PatchBasedInference(split=5, patches=2, objective="arena_excl_io")(layered)
    library, project = host_firmware(patched, str(tmp_path / "patched"))
    assert c_blocks(str(tmp_path / "patched")) == 1
    rng = np.random.default_rng(0)
    shape = tuple(project["inputs"][0]["shape"])
    for _ in range(2):
        x = rng.uniform(-1, 1, shape).astype(np.float32)
        assert np.array_equal(run_host_firmware(library, project, [x])[0],
                              reference.run(data, [x])[0])
    x = rng.uniform(-1, 1, shape).astype(np.float32)
    x.ravel()[:6] = [np.nan, np.inf, -np.inf, 1e30, -1e30, -0.0]
    layer_by_layer = host_firmware(layered, str(tmp_path / "layered"))
    assert np.array_equal(run_host_firmware(library, project, [x])[0],
                          run_host_firmware(*layer_by_layer, [x])[0])
