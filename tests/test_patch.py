"""Patch-based inference (tvm_patch.passes): patched models bit-exact with layer by layer and
TFLite Micro, the planner's estimates equal to what the compiled module really holds, the
MCUNetV2 paper's figures, border tiles, and clear errors."""

import json
import re

import numpy as np
import pytest
import tvm
from hypothesis import HealthCheck, assume, event, given, settings, strategies as st
from tvm import relax

import tvm_patch
from tvm_patch import reference, zoo
from tvm_patch.frontend import read
from tvm_patch.graph import ModelError
from tvm_patch.kernels.lower import activation_inputs, allocated_buffers, lower_op
from tvm_patch.kernels.ops import macs as op_macs
from tvm_patch.passes import PatchBasedInference, choose, cost_of, plan_stage, stage_ops
from tvm_patch.passes.fuse import lower_stage
from tvm_patch.schedule import schedule_of
from tvm_patch.schedule.regions import CONVS, split_block, tile_buffer
from tvm_patch.schedule.search import _max_split as max_split
from conftest import SHARED, assert_bit_exact, loaded_model, patched_model, shared_model
from random_cnn import QUANTS, Layer, Spec, build as build_cnn, specs

# a valid fixed schedule per shared model, (split, patches); P=3 gives non-dividing grids
SCHEDULES = {"mcunet-vww1": (5, 2), "mlperf-vww-mobilenetv1-0.25-96": (4, 2),
             "mlperf-ic-resnet8-32": (3, 3), "mlperf-kws-dscnn": (3, 3)}


def stage_attr(mod) -> dict:
    return cost_of(mod)


def one_block(mod, graph, split, patches) -> bool:
    """Whether `mod` was built with MCUNetV2's one block of `split` convolution layers."""
    blocks = schedule_of(mod).blocks
    return any(blocks == (split_block(graph, split, patches, q),) for q in (False, True))


def random_input(graph, seed):
    t, rng = graph.t(graph.inputs[0]), np.random.default_rng(seed)
    if t.dtype == "float32":  # mcunet-vww1 quantizes a float input
        return rng.uniform(-1, 1, t.shape).astype(np.float32)
    return rng.integers(-128, 128, t.shape).astype(t.dtype)


def assert_outputs_equal(ours, theirs, what):
    assert len(ours) == len(theirs), what
    for a, b in zip(ours, theirs):
        assert a.dtype == b.dtype and a.shape == b.shape, what
        assert np.array_equal(a, b), f"{what}: {int((a != b).sum())}/{a.size} outputs differ"


def uniform_tile_macs(stage, graph) -> int:
    """MACs of one interior tile: every operator over its whole tile region."""
    total = 0
    for op in stage.ops:
        out = graph.t(op.outputs[0])
        h, w = stage.regions[op.outputs[0]]
        total += op_macs(op, graph) // (out.shape[1] * out.shape[2]) * h.extent * w.extent
    return total


class SharedModels:
    """Shared models loaded, patched and compiled once per module (loaded, and patched
    with the auto schedule, once per session)."""

    def __init__(self):
        self._models, self._patched, self._hosts = {}, {}, {}

    def model(self, name):
        if name not in self._models:
            with open(shared_model(name), "rb") as f:
                data = f.read()
            self._models[name] = data, loaded_model(name, data)
        return self._models[name]

    def patched(self, name, split, patches):
        key = name, split, patches
        if key not in self._patched:
            data, mod = self.model(name)
            self._patched[key] = patched_model(name, data) if split == patches == "auto" \
                else PatchBasedInference(split=split, patches=patches)(mod)
        return self._patched[key]

    def host(self, name, split, patches):
        key = name, split, patches
        if key not in self._hosts:
            self._hosts[key] = tvm_patch.build(self.patched(name, split, patches))
        return self._hosts[key]


@pytest.fixture(scope="module")
def models():
    return SharedModels()


# -- 1. random CNNs x random (P, K) -------------------------------------------------------------

def _conv_layer(draw, kind, h, w):
    layer = Layer(kind, kernel=draw(st.sampled_from([1, 3, 5, 7])),
                  stride=draw(st.sampled_from([1, 2])),
                  padding=draw(st.sampled_from(["SAME", "VALID"])),
                  activation=draw(st.sampled_from(["NONE", "RELU", "RELU6"])))
    if layer.stride == 1 and layer.kernel == 3:
        layer.dilation = draw(st.sampled_from([1, 2]))
    if kind == "conv":
        layer.channels = draw(st.integers(1, 8))  # kernel 1: pointwise
    eff = (layer.kernel - 1) * layer.dilation + 1
    if layer.padding == "VALID" and eff > min(h, w):
        layer.padding = "SAME"
    if layer.padding == "VALID":
        return layer, (h - eff) // layer.stride + 1, (w - eff) // layer.stride + 1
    return layer, -(-h // layer.stride), -(-w // layer.stride)


@st.composite
def stage_cnns(draw):
    """random_cnn.specs() mostly starts with layers a patch stage cannot hold (pools, pads,
    concatenations), so here the first layers are the stage's kinds: convolutions (kernels
    1/3/5/7, strides 1/2, dilation 2, SAME and VALID, pointwise and depthwise) and residual
    blocks (a shape-keeping depthwise and an add), on odd and non-square sizes; then one
    operator that ends any stage."""
    h, w = draw(st.integers(5, 23)), draw(st.integers(5, 23))
    spec = Spec(h, w, draw(st.integers(1, 6)), seed=draw(st.integers(0, 2**31 - 1)),
                quant=draw(st.sampled_from(QUANTS)))
    kinds = [draw(st.sampled_from(["conv", "dw"]))] + draw(
        st.lists(st.sampled_from(["conv", "dw", "residual"]), max_size=3))
    for kind in kinds:
        if kind == "residual":  # random_cnn adds the latest earlier tensor of its shape
            spec.layers += [Layer("dw", draw(st.sampled_from([1, 3, 5, 7]))), Layer(
                "add", activation=draw(st.sampled_from(["NONE", "RELU", "RELU6"])))]
        else:
            layer, h, w = _conv_layer(draw, kind, h, w)
            spec.layers.append(layer)
    tail = draw(st.sampled_from(["avgpool", "maxpool", "pad", "concat"]))
    spec.layers.append(Layer(tail, kernel=3, stride=draw(st.sampled_from([1, 2]))))
    return spec


@settings(max_examples=8, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(spec=stage_cnns(), data=st.data())
def test_random_cnn_patched_bit_exact_and_estimates_exact(spec, data):
    model = build_cnn(spec)
    graph = read(model)
    convs = sum(layer.kind in ("conv", "dw") for layer in spec.layers)
    split = data.draw(st.integers(1, convs), label="split")
    try:
        ops = stage_ops(graph, split)
    except ModelError:
        assume(False)
    _, out_h, out_w, _ = graph.t(ops[-1].outputs[0]).shape
    assume(min(out_h, out_w) >= 2)
    patches = data.draw(st.integers(2, min(4, out_h, out_w)), label="patches")
    try:
        stage = plan_stage(graph, split, patches)
    except ModelError:
        assume(False)

    for op in stage.ops:  # what the examples covered (--hypothesis-show-statistics)
        event(op.kind if op.kind == "add" else
              f"{op.kind} {graph.t(op.inputs[1]).shape[1]}x s{op.attrs['stride'][0]}")
    event("grid divides" if out_h % patches == out_w % patches == 0 else "grid does not divide")

    layered = tvm_patch.load(model)
    patched = PatchBasedInference(split=split, patches=patches)(layered)
    assert one_block(patched, graph, split, patches)

    # the planner's estimate (no compilation) is what the emitted module holds
    estimate = choose(graph, split, patches)
    prof = tvm_patch.profile(patched)
    assert (estimate.arena_bytes, estimate.arena_excl_io_bytes) == \
        (prof.arena_bytes, prof.arena_excl_io_bytes)
    assert estimate.macs == prof.macs
    # MACs counted from the loop nest == the analytic count over valid region rows
    assert int(patched["patch_stage"].attrs["tvm_patch.macs"]) == stage.macs

    x = random_input(graph, spec.seed)
    via_patches = tvm_patch.build(patched).run(x)
    layer_by_layer = tvm_patch.build(layered).run(x)
    assert_outputs_equal(via_patches, layer_by_layer, "patched vs layer by layer")
    assert_outputs_equal(via_patches, reference.run(model, [x]), "patched vs TFLite Micro")


# -- 2. shared models, fixed and auto schedules -------------------------------------------------

@pytest.mark.parametrize("schedule", ["fixed", "auto"])
@pytest.mark.parametrize("name", SHARED)
def test_shared_model_patched_bit_exact(models, name, schedule):
    split, patches = SCHEDULES[name] if schedule == "fixed" else ("auto", "auto")
    data, _ = models.model(name)
    if schedule == "fixed":
        graph = read(data)
        assert one_block(models.patched(name, split, patches), graph, split, patches)
    assert_bit_exact(data, models.host(name, split, patches), n=2)


# -- 3. mcunet-vww1 P=2 K=5 against the paper ---------------------------------------------------

def test_mcunet_vww1_p2_k5_memory_and_mac_overhead(models):
    _, layered = models.model("mcunet-vww1")
    # TinyEngine's accounting: the input is not counted, so the QUANTIZE stays in the stage
    patched = PatchBasedInference(split=5, patches=2, objective="arena_excl_io")(layered)
    prof, base = tvm_patch.profile(patched), tvm_patch.profile(layered)
    assert prof.arena_excl_io_bytes <= 62_352
    attr = stage_attr(patched)
    assert attr["schedule"]["blocks"][0]["first"] == 0  # the QUANTIZE inside the block
    assert attr["macs_overhead"] <= 1.0285
    assert prof.macs / base.macs == pytest.approx(attr["macs_overhead"])
    # tile 10 of the 20x20 stage output; back to the 80x80 input: dw 3x3 s2 -> 21,
    # two 1x1 -> 21, dw 3x3 -> 23, conv 3x3 s2 -> 47
    stage = plan_stage(read(shared_model("mcunet-vww1")), 5, 2)
    assert tuple(attr["blocks"][0]["input_tile_hw"]) == stage.input_tile_hw == (47, 47)


# -- 4. MobileNetV2 w1.0 r224, P=4 K=12 (the paper's example) -----------------------------------

@pytest.fixture(scope="module")
def mbv2():
    data = zoo.build("mobilenetv2", resolution=224, width=1.0)
    graph = read(data)
    return data, graph, plan_stage(graph, 12, 4)


def test_mbv2_stage_tile_and_mac_overhead(mbv2):
    _, _, stage = mbv2
    assert stage.input_tile_hw == (75, 75)
    assert stage.mac_overhead <= 1.42


def test_mbv2_paper_analytic_memory(mbv2):
    data, _, _ = mbv2
    layered = loaded_model("mbv2-w1.0-r224", data)
    assert tvm_patch.profile(layered).paper_analytic_bytes == 1_404_928
    patched = PatchBasedInference(split=12, patches=4)(layered)
    assert tvm_patch.profile(patched).paper_analytic_bytes <= 172 * 1024


def test_mbv2_stage_kernel_tiles_in_workspace_and_bit_exact(mbv2):
    _, graph, stage = mbv2
    kernel = lower_stage(stage, graph)
    assert kernel.tile_buffers == stage.buffers
    assert allocated_buffers(kernel.func) == {}, "tile buffers must live in the workspace only"
    assert kernel.macs == stage.macs
    # buffers live at once within one tile never share workspace bytes
    last_read = {tile_buffer(k): max(j for j, user in enumerate(stage.ops)
                                     if op.outputs[0] in user.inputs)
                 for k, op in enumerate(stage.ops) if tile_buffer(k) in kernel.tile_buffers}
    spans = {name: (int(name[1:-5]), last_read[name], kernel.offsets[name],
                    kernel.offsets[name] + size) for name, size in kernel.tile_buffers.items()}
    for a, (a0, a1, alo, ahi) in spans.items():
        assert ahi <= kernel.scratch_bytes
        for b, (b0, b1, blo, bhi) in spans.items():
            if a < b and a0 <= b1 and b0 <= a1:
                assert ahi <= blo or bhi <= alo, f"{a} and {b} overlap in the workspace"

    x = random_input(graph, 3)
    out_t = graph.t(stage.output)
    lib = tvm.compile(tvm.IRModule({"main": kernel.func.with_attr("global_symbol", "main")}),
                      target="llvm")
    args = [tvm.runtime.tensor(x), *[tvm.runtime.tensor(c) for c in kernel.consts],
            tvm.runtime.tensor(np.zeros(out_t.shape, out_t.dtype)),
            tvm.runtime.tensor(np.zeros(max(kernel.scratch_bytes, 1), np.int8))]
    lib["main"](*args)
    via_patches = args[-2].numpy()

    op_kernels = [lower_op(op, graph) for op in stage.ops]
    op_lib = tvm.compile(tvm.IRModule({f"op{k}": kern.func.with_attr("global_symbol", f"op{k}")
                                       for k, kern in enumerate(op_kernels)}), target="llvm")
    values = {stage.input: x}
    for k, (op, kern) in enumerate(zip(stage.ops, op_kernels)):
        t = graph.t(op.outputs[0])
        args = [tvm.runtime.tensor(values[n]) for n in activation_inputs(op, graph)]
        args += [tvm.runtime.tensor(c) for c in kern.consts]
        out = tvm.runtime.tensor(np.zeros(t.shape, t.dtype))
        args.append(out)
        if kern.workspace:
            args.append(tvm.runtime.tensor(np.zeros(kern.scratch_bytes, np.int8)))
        op_lib[f"op{k}"](*args)
        values[op.outputs[0]] = out.numpy()
    assert_outputs_equal([via_patches], [values[stage.output]], "stage vs layer by layer")


# -- 5. border tiles and grids that do not divide the output ------------------------------------

BORDER_CASES = {
    # 13x13 -> 7x7 stage output with a residual add inside the stage
    "residual-7x7": Spec(13, 13, 3, [Layer("conv", 3, channels=4, activation="RELU"),
                                     Layer("dw", 5, stride=2),
                                     Layer("conv", 1, channels=4),
                                     Layer("add", activation="RELU6"),
                                     Layer("maxpool", 3)], seed=11),
    # 23x19 -> 9x7, VALID 7x7 stride 2, dilated depthwise
    "valid-dilated-9x7": Spec(23, 19, 2, [Layer("conv", 7, stride=2, padding="VALID",
                                                channels=5),
                                          Layer("dw", 3, dilation=2, activation="RELU"),
                                          Layer("conv", 1, channels=3),
                                          Layer("avgpool", 3)], seed=12),
}


@pytest.mark.parametrize("case,patches", [("residual-7x7", 2), ("residual-7x7", 3),
                                          ("valid-dilated-9x7", 3)])
def test_non_dividing_grid_bit_exact_and_border_tiles_cheaper(case, patches):
    model = build_cnn(BORDER_CASES[case])
    graph = read(model)
    stage = plan_stage(graph, 3, patches)
    _, out_h, out_w, _ = graph.t(stage.output).shape
    assert out_h % patches or out_w % patches, "the case must not divide evenly"
    assert stage.layer_macs < stage.macs < patches * patches * uniform_tile_macs(stage, graph)
    patched = PatchBasedInference(split=3, patches=patches)(tvm_patch.load(model))
    assert int(patched["patch_stage"].attrs["tvm_patch.macs"]) == stage.macs
    assert_bit_exact(model, tvm_patch.build(patched), n=2, seed=patches)


# -- 6. errors ---------------------------------------------------------------------------------

def assert_clear(error):
    msg = str(error)
    assert type(error) is ModelError and "Traceback" not in msg and 'File "' not in msg, msg
    return msg


@pytest.mark.parametrize("options,pattern", [
    (dict(split=100, patches=2), r"split=100: .*(cannot join|only \d+ convolution)"),
    (dict(split=0, patches=2), r"split=0: .*at least one convolution"),
    (dict(split=3, patches=100), r"patches=100: .*leaves the last one empty"),
])
def test_invalid_schedule_errors(models, options, pattern):
    _, mod = models.model("mlperf-kws-dscnn")
    with pytest.raises(ModelError) as e:
        PatchBasedInference(**options)(mod)
    assert re.search(pattern, assert_clear(e.value))


def test_split_above_all_convolutions_error():
    model = build_cnn(Spec(9, 9, 2, [Layer("conv", 3, channels=3), Layer("dw", 3)]))
    with pytest.raises(ModelError) as e:
        PatchBasedInference(split=3, patches=2)(tvm_patch.load(model))
    assert "only 2 convolution" in assert_clear(e.value)


@pytest.mark.parametrize("mod", [tvm.IRModule(), tvm.IRModule(
    {"main": relax.Function([], relax.const(1, "int32"))})], ids=["empty", "plain-relax"])
def test_module_not_from_load_error(mod):
    with pytest.raises(ModelError) as e:
        PatchBasedInference(split=2, patches=2)(mod)
    assert "not made by tvm_patch.load" in assert_clear(e.value)


@pytest.mark.parametrize("mod", [tvm.IRModule(), tvm.IRModule(
    {"main": relax.Function([], relax.const(1, "int32"))})], ids=["empty", "plain-relax"])
def test_the_default_pipeline_leaves_other_modules_alone(mod):
    """Without patch options the passes only apply tvm_patch's shipped records, which no
    module from elsewhere has: tvm_patch.pipeline() stays usable on any Relax module."""
    from tvm_patch.build import apply_passes
    assert apply_passes(mod) is mod


def test_sram_too_small_error_lists_layers(models):
    _, mod = models.model("mlperf-ic-resnet8-32")
    with pytest.raises(ModelError) as e:
        PatchBasedInference(sram=1000)(mod)
    msg = assert_clear(e.value)
    assert "cannot fit" in msg and "1,000 B" in msg
    assert len(re.findall(r"step\s+\d+ +\w+ .* live +[\d,]+ B", msg)) >= 2, msg


def test_build_split_zero_error(models):
    from tvm_patch.build import passes  # what build() and pipeline() apply
    _, mod = models.model("mlperf-kws-dscnn")
    with pytest.raises(ModelError, match="split=0"):
        for patch_pass in passes(split=0, patches=2):
            patch_pass(mod)


def test_fixed_split_that_cannot_be_planned_error(models):
    _, mod = models.model("mlperf-ic-resnet8-32")  # split=2 cuts the first residual
    with pytest.raises(ModelError, match="split=2"):
        PatchBasedInference(split=2, patches="auto")(mod)


# -- 7. auto ------------------------------------------------------------------------------------

@pytest.mark.parametrize("sram", [87_000, 92_000, 96_000])
def test_auto_with_sram_fits(models, sram):
    """mcunet-vww1 takes 96,000 B layer by layer: below that a patched schedule must fit;
    at it, layer by layer fits with the fewest MACs and is kept."""
    _, layered = models.model("mcunet-vww1")
    patched = PatchBasedInference(sram=sram)(layered)
    attr = stage_attr(patched)
    assert attr["arena_bytes"] == tvm_patch.profile(patched).arena_bytes <= sram
    layer_by_layer_fits = tvm_patch.profile(layered).arena_bytes <= sram
    assert (not attr["blocks"]) == layer_by_layer_fits


@pytest.mark.parametrize("name", ["mlperf-kws-dscnn", "mlperf-ic-resnet8-32"])
def test_auto_never_raises_the_arena(models, name):
    _, layered = models.model(name)
    patched = models.patched(name, "auto", "auto")
    attr = stage_attr(patched)
    base, ours = tvm_patch.profile(layered).arena_bytes, tvm_patch.profile(patched).arena_bytes
    assert attr["arena_bytes"] == ours
    if attr["blocks"]:
        assert ours < base
    else:
        assert ours == base and attr["note"]


# -- 8. relax.build with tvm_patch's pipeline ---------------------------------------------------

def test_relax_build_runs_patched_mcunet_vww1(models):
    data, _ = models.model("mcunet-vww1")
    patched = models.patched("mcunet-vww1", *SCHEDULES["mcunet-vww1"])
    ex = relax.build(patched, tvm.target.Target("llvm"), relax_pipeline=tvm_patch.pipeline())
    vm = relax.VirtualMachine(ex, tvm.cpu())
    x = random_input(read(data), 7)
    via_vm = vm["main"](tvm.runtime.tensor(x)).numpy()
    assert_outputs_equal([via_vm], reference.run(data, [x]), "Relax VM vs TFLite Micro")


# -- 9. the foundation's random CNNs (pools, pads, concat after the stage) ---------------------

@settings(max_examples=12, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(specs(), st.data())
def test_foundation_random_cnn_times_random_schedule(spec, data):
    model = build_cnn(spec)
    graph = read(model)
    assume(max_split(graph) >= 1)
    split = data.draw(st.integers(1, max_split(graph)), label="split")
    patches = data.draw(st.integers(2, 4), label="patches")
    try:
        stage = plan_stage(graph, split, patches)
    except ModelError:
        assume(False)
    patched = PatchBasedInference(split=split, patches=patches)(tvm_patch.load(model))
    assert_bit_exact(model, tvm_patch.build(patched), n=2, seed=spec.seed)
    prof, chosen = tvm_patch.profile(patched), stage_attr(patched)
    assert (chosen["arena_bytes"], chosen["arena_excl_io_bytes"]) == \
        (prof.arena_bytes, prof.arena_excl_io_bytes)
    assert lower_stage(stage, graph).macs == stage.macs
    assert sum(op.kind in CONVS for op in stage.ops) == split
