"""The patch-based inference pass: bit-exact against TFLite Micro, and its memory and MAC
figures against the loop nest it generates and the paper's numbers."""

import json

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import tvm_patch
from conftest import assert_bit_exact, shared_model
from random_cnn import build, specs
from tvm_patch import zoo
from tvm_patch.frontend import load, read
from tvm_patch.graph import ModelError
from tvm_patch.kernels.lower import allocated_buffers
from tvm_patch.passes import PatchBasedInference, _max_split, plan_stage
from tvm_patch.passes.fuse import lower_stage
from tvm_patch.passes.stage import CONVS


def _schedule(mod):
    return json.loads(str(mod["main"].attrs["tvm_patch.stage"]))


@settings(max_examples=12, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(specs(), st.data())
def test_random_cnn_times_random_schedule_bit_exact(spec, draw):
    data = build(spec)
    graph = read(data)
    assume(_max_split(graph) >= 1)
    split = draw.draw(st.integers(1, _max_split(graph)), label="split")
    patches = draw.draw(st.integers(2, 4), label="patches")
    try:
        stage = plan_stage(graph, split, patches)
    except ModelError:
        assume(False)
    mod = load(data)
    patched = PatchBasedInference(split=split, patches=patches)(mod)
    assert_bit_exact(data, tvm_patch.build(patched), n=2, seed=spec.seed)
    prof, chosen = tvm_patch.profile(patched), _schedule(patched)
    assert (chosen["arena_bytes"], chosen["arena_excl_io_bytes"]) == \
        (prof.arena_bytes, prof.arena_excl_io_bytes)   # the search's estimate is exact
    assert lower_stage(stage, graph).macs == stage.macs  # loop nest == plan


def test_mcunet_vww1_p2_k5():
    path = shared_model("mcunet-vww1")
    mod = load(path)
    patched = PatchBasedInference(split=5, patches=2)(mod)
    with open(path, "rb") as f:
        assert_bit_exact(f.read(), tvm_patch.build(patched), n=2)
    prof, chosen = tvm_patch.profile(patched), _schedule(patched)
    assert prof.arena_excl_io_bytes <= 62_352          # TinyEngine's figure
    assert chosen["macs_overhead"] <= 1.0285           # TinyEngine's +2.85%
    assert tuple(chosen["input_tile_hw"]) == (47, 47)
    assert prof.layers[0].kind == "patch_stage" and prof.macs == chosen["macs"]


def test_mobilenetv2_paper_schedule():
    data = zoo.build("mobilenetv2", resolution=224, width=1.0)
    graph = read(data)
    stage = plan_stage(graph, 12, 4)
    assert stage.input_tile_hw == (75, 75)
    assert stage.mac_overhead <= 1.42                  # the paper's uniform-tile +42%
    kernel = lower_stage(stage, graph)
    assert kernel.macs == stage.macs and kernel.tile_buffers == stage.buffers
    assert allocated_buffers(kernel.func) == {}        # tiles live in the workspace only
    assert max(stage.buffers.values()) < graph.t(stage.ops[3].outputs[0]).nbytes // 10
    mod = load(data)
    assert tvm_patch.profile(mod).paper_analytic_bytes == 1_404_928
    patched = PatchBasedInference(split=12, patches=4)(mod)
    assert tvm_patch.profile(patched).paper_analytic_bytes <= 172 * 1024


@pytest.mark.parametrize("split,patches,message", [
    (0, 2, "split=0"), (999, 2, "split=999"), (1, 999, "patches=999")])
def test_bad_schedules_name_the_problem(split, patches, message):
    mod = load(shared_model("mlperf-kws-dscnn"))
    with pytest.raises(ModelError, match=message):
        PatchBasedInference(split=split, patches=patches)(mod)


def test_sram_budget_and_balanced_models():
    mod = load(shared_model("mlperf-kws-dscnn"))
    base = tvm_patch.profile(mod).arena_bytes
    chosen = _schedule(PatchBasedInference()(mod))
    assert chosen["arena_bytes"] <= base
    assert chosen["patches"] or "does not lower" in chosen["note"]
    with pytest.raises(ModelError, match="cannot fit in 100 B"):
        PatchBasedInference(sram=100)(mod)
    fitted = _schedule(PatchBasedInference(sram=base)(mod))
    assert fitted["arena_bytes"] <= base


def test_convs_only_counted_in_split():
    graph = read(shared_model("mlperf-vww-mobilenetv1-0.25-96"))
    stage = plan_stage(graph, 3, 2)
    assert sum(op.kind in CONVS for op in stage.ops) == 3
