"""int8 model I/O (io_type="int8"), quantize-first patch schedules for float-input models,
and the one rule that turns patch-based inference on for the CLI, build(), pipeline() and
mcu.compile()."""

import importlib
import json
import re
import subprocess
import sys

import numpy as np
import pytest

import tvm_patch
from tvm_patch import cli, mcu, profile, reference
from tvm_patch.build import PATCH_OPTIONS, apply_passes, passes
from tvm_patch.frontend import read
from tvm_patch.frontend.io_type import with_io_type
from tvm_patch.graph import ModelError
from tvm_patch.passes import PatchBasedInference, choose, cost_of
from tvm_patch.passes.emit import graph_of
from tvm_patch.schedule import Block, Schedule, fingerprint
from tvm_patch.schedule.records import record_line
from tvm_patch.schedule.cost import CostModel
from tvm_patch.schedule.search import _max_split as max_split
from conftest import assert_bit_exact, loaded_model, shared_model

build_module = importlib.import_module("tvm_patch.build")  # tvm_patch.build is the function

# one value per patch option, each valid for mlperf-kws-dscnn
ONE_OPTION = {"split": "auto", "patches": "auto", "sram": 1 << 20, "max_mac_overhead": 1.1,
              "objective": "arena_excl_io", "schedule": Schedule(), "records": "FILE"}

_LOADED = {}


def loaded(name, **options):
    with open(shared_model(name), "rb") as f:
        return loaded_model(name, f.read(), **options)


def stage_attr(mod):
    return cost_of(mod)


# -- 1. one rule for the patch switch ----------------------------------------------------------

def test_patch_options_are_the_ones_the_pass_takes():
    assert set(PATCH_OPTIONS) == set(ONE_OPTION)


@pytest.mark.parametrize("option", sorted(ONE_OPTION))
def test_any_patch_option_turns_patching_on_everywhere(option, monkeypatch, tmp_path):
    value = ONE_OPTION[option]
    mod = loaded("mlperf-kws-dscnn")
    if option == "records":  # a tuning record of the model: layer by layer, one kernel knob
        graph = graph_of(mod)
        point = Schedule((), fingerprint(graph), kernels=((0, "tvm"),))
        value = str(tmp_path / "records.jsonl")
        with open(value, "w") as f:
            f.write(record_line(point, {"instructions": 1}, [], None, {}) + "\n")
    assert [p.info.name for p in passes(**{option: value})] == ["PatchBasedInference"]
    assert [p.info.name for p in tvm_patch.pipeline(**{option: value}).passes][0] == \
        "PatchBasedInference"

    # build() and mcu.compile() without compiling: what they would compile is recorded
    monkeypatch.setattr(build_module, "HostModel", lambda m: m)
    assert stage_attr(tvm_patch.build(mod, **{option: value})) is not None
    seen = {}
    monkeypatch.setattr(mcu, "write_project", lambda m, *a, **k: seen.update(mod=m))
    monkeypatch.setattr(mcu, "build_firmware", lambda d: None)
    mcu.compile(mod, "qemu-m7", tmp_path, **{option: value})
    assert stage_attr(seen["mod"]) is not None

    flag = "--" + option.replace("_", "-")
    if option == "schedule":  # the CLI reads it from a file
        (tmp_path / "schedule.json").write_text(value.dumps())
        value = tmp_path / "schedule.json"
    args = ["profile", shared_model("mlperf-kws-dscnn"), flag, str(value)]
    _, _, schedule = cli._modules(_parse(args))
    assert schedule is not None and "schedule" in schedule


def test_no_patch_option_keeps_layer_by_layer(monkeypatch, tmp_path):
    from tvm_patch.schedule import records
    shipped = tmp_path / "schedules"
    shipped.mkdir()
    monkeypatch.setattr(records, "DEFAULT_DIR", str(shipped))
    assert [p.info.name for p in passes()] == ["PatchBasedInference"]
    assert len(tvm_patch.pipeline().passes) == 2
    mod = loaded("mlperf-kws-dscnn")
    monkeypatch.setattr(build_module, "HostModel", lambda m: m)
    assert tvm_patch.build(mod) is mod  # no shipped records for the model: left as it is
    seen = {}
    monkeypatch.setattr(mcu, "write_project", lambda m, *a, **k: seen.update(mod=m, opts=k))
    monkeypatch.setattr(mcu, "build_firmware", lambda d: None)
    mcu.compile(mod, "qemu-m7", tmp_path, budget="mps2-an500")
    assert seen["mod"] is mod and seen["opts"] == {"budget": "mps2-an500"}
    _, _, schedule = cli._modules(_parse(["profile", shared_model("mlperf-kws-dscnn")]))
    assert schedule is None

    # shipped records for the model: its fastest layer-by-layer point's kernels, same arena
    point = Schedule((), fingerprint(graph_of(mod)), kernels=((0, "tvm"),))
    with_blocks = Schedule((Block(0, 1, (2, 2)),), point.model)
    (shipped / "kws.jsonl").write_text("\n".join(
        record_line(s, {"instructions": n}, [], None, {}) for s, n in
        ((with_blocks, 1), (point, 5), (Schedule((), point.model), 9))) + "\n")
    built = tvm_patch.build(mod)
    cost = cost_of(built)
    assert cost["schedule"]["blocks"] == [] and cost["schedule"]["kernels"] == {"0": "tvm"}
    assert "from tuning records" in cost["note"]
    assert profile(built).arena_bytes == profile(mod).arena_bytes
    # a module already patched keeps its schedule (a tuning measuring its points while it
    # writes the shipped records, a user's mcu.compile of a patched module)
    graph = graph_of(mod)
    later = max(k for k, op in enumerate(graph.ops) if op.kind == "conv2d")
    (shipped / "kws.jsonl").write_text(record_line(
        Schedule((), point.model, kernels=((later, "tvm"),)), {"instructions": 3}, [], None,
        {}))
    assert cost_of(tvm_patch.build(mod))["schedule"]["kernels"] == {str(later): "tvm"}
    patched = PatchBasedInference(Schedule((Block(0, 1, (2, 2)),), point.model))(mod)
    assert apply_passes(patched) is patched
    # records confirming the kernels the build takes anyway leave the module as it is
    (shipped / "kws.jsonl").write_text(record_line(
        Schedule((), point.model, kernels=((0, "c"),)), {"instructions": 4}, [], None, {}))
    assert tvm_patch.build(mod) is mod


def _parse(argv):
    """The CLI's parsed arguments for argv (without running the command)."""
    captured = {}

    def fake(args):
        captured["args"] = args
        return 0
    original = cli._profile
    cli._profile = fake
    try:
        cli.main(argv)
    finally:
        cli._profile = original
    return captured["args"]


# -- 2. int8 I/O -------------------------------------------------------------------------------

VWW1 = "mcunet-vww1"  # float input -> QUANTIZE -> int8 net -> DEQUANTIZE -> float output


def test_int8_io_removes_the_edge_quantize_and_dequantize():
    before, after = read(shared_model(VWW1)), read(shared_model(VWW1), io_type="int8")
    assert [op.kind for op in before.ops[1:-1]] == [op.kind for op in after.ops]
    assert (before.ops[0].kind, before.ops[-1].kind) == ("quantize", "dequantize")
    x, y = after.t(after.inputs[0]), after.t(after.outputs[0])
    assert (x.shape, x.dtype, y.shape, y.dtype) == ((1, 80, 80, 3), "int8", (1, 2), "int8")
    assert x.name == before.ops[0].outputs[0] and y.name == before.ops[-1].inputs[0]
    assert read(shared_model(VWW1), io_type=None).inputs == before.inputs


def dequantized(q, quant):
    """float32(scale * (q - zero_point)): TFLite's DEQUANTIZE, and a float that TFLite's
    QUANTIZE maps back to q exactly (q - zero_point is within 1e-5 of an integer)."""
    return (np.float32(quant.s) * (q.astype(np.float32) - np.float32(quant.zp))).astype(
        np.float32)


def test_int8_io_bit_exact_with_tflite_micro():
    """The int8-I/O model fed q gives exactly the int8 tensor TFLite Micro dequantizes last,
    when TFLite Micro runs the original model on the float input that quantizes to q."""
    with open(shared_model(VWW1), "rb") as f:
        data = f.read()
    graph = read(data, io_type="int8")
    in_q, out_q = graph.t(graph.inputs[0]).quant, graph.t(graph.outputs[0]).quant
    compiled = tvm_patch.build(loaded(VWW1, io_type="int8"), split=5, patches=2)
    assert compiled.input_specs[0] == ((1, 80, 80, 3), "int8")
    rng = np.random.default_rng(0)
    for _ in range(3):
        q = rng.integers(-128, 128, (1, 80, 80, 3)).astype(np.int8)
        y = reference.run(data, [dequantized(q, in_q)])[0]
        ours = compiled.run(q)[0]
        assert ours.dtype == np.int8 and np.array_equal(dequantized(ours, out_q), y)


@pytest.mark.parametrize("case, message", [
    ("int8 input", "input 0 is already int8"),
    ("conv input", "input 0 feeds CONV_2D, not QUANTIZE"),
    ("float output", "output 0 comes from FULLY_CONNECTED, not DEQUANTIZE"),
    ("bad type", "io_type='uint4': expected 'int8'"),
])
def test_int8_io_errors_say_what_the_model_has(case, message):
    if case == "int8 input":
        with pytest.raises(ModelError, match=re.escape(message)):
            read(shared_model("mlperf-kws-dscnn"), io_type="int8")
        return
    graph = read(shared_model(VWW1))
    io_type = "uint4" if case == "bad type" else "int8"
    if case == "conv input":  # the first convolution reads the float input itself
        graph.ops[1].inputs[0] = graph.inputs[0]
        del graph.ops[0]
    if case == "float output":  # the last operator writes the float output itself
        graph.ops[-2].outputs[0] = graph.outputs[0]
        del graph.ops[-1]
    with pytest.raises(ModelError, match=re.escape(message)) as e:
        with_io_type(graph, io_type)
    assert "\n" not in str(e.value)


def cli_json(argv):
    out = subprocess.run([sys.executable, "-m", "tvm_patch.cli", *argv, "--json"],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_cli_int8_io_patched_arena_keeps_only_the_int8_input():
    res = cli_json(["profile", shared_model(VWW1), "--io-type", "int8", "--patches", "2",
                    "--split", "5"])
    (x,), (y,) = res["inputs"], res["outputs"]
    assert x["shape"] == [1, 80, 80, 3] and x["dtype"] == "int8" and y["dtype"] == "int8"
    graph = read(shared_model(VWW1), io_type="int8")
    for spec, name in ((x, graph.inputs[0]), (y, graph.outputs[0])):
        q = graph.t(name).quant
        assert (spec["scale"], spec["zero_point"]) == (float(q.scale[0]), q.zp)
    # the arena holds the stage's memory plus the int8 input (80*80*3) and the output
    assert res["arena_bytes"] <= res["arena_excl_io_bytes"] + 80 * 80 * 3 + 16
    assert res["arena_excl_io_bytes"] <= 43_904


def test_cli_reports_float_io_without_quantization():
    res = cli_json(["profile", shared_model(VWW1)])
    assert res["inputs"] == [{"shape": [1, 80, 80, 3], "dtype": "float32", "scale": None,
                              "zero_point": None}]
    assert res["outputs"][0]["dtype"] == "float32"


def test_cli_io_type_on_an_int8_model_is_one_line():
    out = subprocess.run([sys.executable, "-m", "tvm_patch.cli", "build",
                          shared_model("mlperf-kws-dscnn"), "--io-type", "int8"],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "tvm-patch: error: io_type='int8': input 0 is already int8"]


# -- 3. quantize first, then patch -------------------------------------------------------------

def vww1_graph():
    """mcunet-vww1's graph and its kernels' scratch bytes (lowering them takes seconds)."""
    if "scratch" not in _LOADED:
        graph = read(shared_model(VWW1))
        model = CostModel(graph)
        for pos in range(len(graph.ops)):
            model.scratch_of(pos)
        _LOADED["scratch"] = graph, model.scratch
    return _LOADED["scratch"]


def test_quantize_first_is_planned_and_kept_when_smaller():
    """mcunet-vww1 at P=2 K=5: quantizing tiles inside the stage keeps the float image alive
    (120,704 B); quantizing the whole image first frees it before the stage."""
    graph, scratch = vww1_graph()
    fused = choose(graph, 5, 2, scratch=scratch, objective="arena_excl_io")
    first = choose(graph, 5, 2, scratch=scratch)
    assert fused.schedule.blocks[0].first == 0 and fused.arena_bytes == 120_704
    assert first.schedule.blocks[0].first == 1 and first.arena_bytes < 100_000
    stage = first.stages[0]
    assert stage.input == graph.ops[0].outputs[0] and graph.ops[0] not in stage.ops
    assert first.macs == fused.macs


def test_auto_keeps_no_float_image_when_a_smaller_plan_exists():
    """Every fixed (P, K), each with the better of its two quantize placements, within the
    MAC factor: auto's arena is no larger."""
    graph, scratch = vww1_graph()
    best = choose(graph, scratch=scratch)
    for k in range(1, max_split(graph) + 1):
        for p in range(2, 9):
            try:
                c = choose(graph, k, p, scratch=scratch)
            except ModelError:
                continue
            assert c.macs_overhead > 1.2 or c.arena_bytes >= best.arena_bytes, (k, p)


def test_quantize_first_build_bit_exact_and_in_the_json():
    with open(shared_model(VWW1), "rb") as f:
        data = f.read()
    compiled = tvm_patch.build(loaded(VWW1), split=5, patches=2)
    schedule = stage_attr(compiled.mod)
    assert schedule["schedule"]["blocks"][0]["first"] == 1  # the input quantized first
    assert schedule["arena_bytes"] < 120_704
    assert tvm_patch.profile(compiled.mod).arena_bytes == schedule["arena_bytes"]
    assert_bit_exact(data, compiled, n=2)
    res = cli_json(["profile", shared_model(VWW1), "--patches", "2", "--split", "5"])
    assert res["schedule"]["blocks"] == schedule["schedule"]["blocks"]
    assert res["arena_bytes"] == schedule["arena_bytes"]
