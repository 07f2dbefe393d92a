"""Schedules as data: the JSON format and its errors, random multi-block schedules (halo
caching on and off, pads, pools, residual adds, partial tiles, an iterative global MEAN) built
bit-exact with TFLite Micro, the cost model equal to the built module's plan, and the
search's front."""

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

import tvm_patch
from tvm_patch import reference
from tvm_patch.analysis.memory import plan_memory
from tvm_patch.frontend import read
from tvm_patch.graph import ModelError
from tvm_patch.passes import PatchBasedInference, cost_of
from tvm_patch.schedule import Block, Schedule, fingerprint, parse, schedule_of
from tvm_patch.schedule.cost import CostModel
from tvm_patch.schedule.regions import is_global_mean, plan_block
from tvm_patch.schedule.search import Search, single_cuts
from conftest import shared_model
from random_cnn import Layer, Spec, build as build_cnn, specs

HALOS = [("recompute", "recompute"), ("cache", "recompute"), ("recompute", "cache")]


def assert_clear(error) -> str:
    msg = str(error)
    assert type(error) is ModelError and "\n" not in msg and "Traceback" not in msg, msg
    return msg


# -- 1. the format -------------------------------------------------------------------------------

def test_schedule_json_round_trip():
    s = Schedule((Block(7, 9, (3, 1), ("cache", "recompute")), Block(0, 4, (2, 2))),
                 "0123456789abcdef", "int8", kernels=((12, "tvm"), (5, "c")))
    assert [b.first for b in s.blocks] == [0, 7]  # kept in graph order
    assert s.kernels == ((5, "c"), (12, "tvm"))
    assert parse(s.dumps()) == s
    assert "kernels 5 c, 12 tvm" in s.describe()
    assert parse(json.dumps(s.to_dict())).to_dict() == s.to_dict()


@pytest.mark.parametrize("text,pattern", [
    ("{", "not JSON"),
    ('{"blocks": []}', "not a tvm_patch schedule"),
    ('{"format": "tvm_patch.schedule", "version": 99, "blocks": []}', "version 99"),
    ('{"format": "tvm_patch.schedule", "version": 1, "blocks": {}}', "must be a list"),
    ('{"format": "tvm_patch.schedule", "version": 1, "blocks": [{"first": 0, "last": 2}]}',
     "block 0 has no \"grid\""),
    ('{"format": "tvm_patch.schedule", "version": 1, "blocks": [{"first": 3, "last": 2, '
     '"grid": [2, 2]}]}', "first <= last"),
    ('{"format": "tvm_patch.schedule", "version": 1, "blocks": [{"first": 0, "last": 2, '
     '"grid": [0, 2]}]}', "two positive integers"),
    ('{"format": "tvm_patch.schedule", "version": 1, "blocks": [{"first": 0, "last": 2, '
     '"grid": [2, 2], "halo": ["cache", "keep"]}]}', "must be two of recompute, cache"),
    ('{"format": "tvm_patch.schedule", "version": 1, "io_type": "int4", "blocks": []}',
     "io_type"),
    ('{"format": "tvm_patch.schedule", "version": 1, "blocks": [], "kernels": {"2": "fast"}}',
     "\"kernels\" must map operator positions to one of c, tvm"),
    ('{"format": "tvm_patch.schedule", "version": 1, "blocks": [], "kernels": [2]}',
     "\"kernels\" must map"),
])
def test_bad_schedule_text_is_one_line_error(text, pattern):
    with pytest.raises(ModelError) as e:
        parse(text, "s.json")
    msg = assert_clear(e.value)
    assert msg.startswith("s.json: ") and pattern in msg


@pytest.fixture(scope="module")
def kws():
    path = shared_model("mlperf-kws-dscnn")
    return read(path), tvm_patch.load(path)


def test_schedule_for_another_model_or_operators_refused(kws):
    graph, mod = kws
    with pytest.raises(ModelError) as e:
        PatchBasedInference(Schedule((Block(0, 1, (2, 2)),), "ffffffffffffffff"))(mod)
    assert "made for another model" in assert_clear(e.value)
    fp = fingerprint(graph)
    for blocks, pattern in [((Block(0, 99, (2, 2)),), "model has"),
                            ((Block(0, 3, (2, 2)), Block(2, 5, (2, 2))), "overlap"),
                            ((Block(0, 1, (99, 2)),), "leaves the last one empty"),
                            ((Block(0, 1, (2, 2), ("cache", "cache")),), "both axes")]:
        with pytest.raises(ModelError) as e:
            PatchBasedInference(Schedule(blocks, fp))(mod)
        assert pattern in assert_clear(e.value), blocks


def test_kernel_choices_are_applied_recorded_and_checked(kws):
    """Schedule.kernels picks the C kernel or TVM's C per convolution; the choice lands on
    the operator's PrimFunc (what the firmware generator reads), is read back with the
    schedule, is undone by a later schedule without it, and names bad layers in one line."""
    from tvm_patch.kernels.variants import ATTR

    graph, mod = kws

    def chosen(m):
        return {int(f.attrs["tvm_patch.position"]): ATTR in f.attrs
                for _, f in m.functions.items()
                if f.attrs is not None and "tvm_patch.position" in f.attrs}

    default = chosen(mod)
    assert default[0] and default[1] and default[2]  # 10x4 by columns, 25x5 padded, 1x1
    fp = fingerprint(graph)
    schedule = Schedule((), fp, kernels=((0, "tvm"), (1, "tvm"), (2, "c")))
    picked = PatchBasedInference(schedule)(mod)
    assert chosen(picked) == {**default, 0: False, 1: False, 2: True}
    assert schedule_of(picked) == schedule
    assert chosen(PatchBasedInference(Schedule((), fp))(picked)) == default
    # a 4x4 depthwise output stays on TVM's C by default; "c" asks for the C kernel
    small = build_cnn(Spec(4, 4, 4, [Layer("conv", channels=4), Layer("dw", kernel=3)]))
    dw = next(k for k, op in enumerate(read(small).ops) if op.kind == "depthwise_conv2d")
    small_mod = tvm_patch.load(small)
    assert not chosen(small_mod)[dw]
    assert chosen(PatchBasedInference(Schedule(kernels=((dw, "c"),)))(small_mod))[dw]
    for kernels, pattern in [(((9, "c"),), "not a convolution"),
                             (((1, "c"),), "runs inside a fused block")]:
        with pytest.raises(ModelError) as e:
            PatchBasedInference(Schedule((Block(0, 2, (5, 1)),), fp, kernels=kernels))(mod)
        assert pattern in assert_clear(e.value)
    dilated = build_cnn(Spec(9, 9, 4, [Layer("conv", kernel=3, dilation=2, channels=4)]))
    position = next(k for k, op in enumerate(read(dilated).ops) if op.kind == "conv2d")
    with pytest.raises(ModelError) as e:
        PatchBasedInference(Schedule(kernels=((position, "c"),)))(tvm_patch.load(dilated))
    assert "no C kernel runs it" in assert_clear(e.value)


def test_pass_reuses_the_loaded_kernels(kws, monkeypatch):
    """Operators outside the blocks keep the kernels tvm_patch.load lowered (found by their
    graph position attribute): the pass lowers only the blocks."""
    graph, mod = kws
    from tvm_patch.passes import emit

    def no_lowering(op, graph):
        raise AssertionError(f"operator {op.index} lowered again")
    monkeypatch.setattr(emit, "lower_op", no_lowering)
    schedule = Schedule((Block(0, 2, (5, 1), ("cache", "recompute")),), fingerprint(graph))
    patched = PatchBasedInference(schedule)(mod)
    assert schedule_of(patched) == schedule


def test_schedule_of_reads_back_what_was_built(kws):
    graph, mod = kws
    schedule = Schedule((Block(0, 2, (5, 1), ("cache", "recompute")),), fingerprint(graph))
    patched = PatchBasedInference(schedule)(mod)
    assert schedule_of(patched) == schedule and schedule_of(mod) == Schedule()
    cost = cost_of(patched)
    assert cost["schedule"] == schedule.to_dict() and cost["macs_overhead"] == 1.0


# -- 2. random networks x random multi-block schedules -------------------------------------------

@st.composite
def networks(draw):
    spec = draw(specs(max_layers=7))
    if draw(st.booleans()):  # a global MEAN a block can end with
        spec.layers.append(Layer("mean"))
    return spec


def draw_schedule(data, graph) -> Schedule:
    """Blocks from cut to cut with random grids and halo policies (those plan_block
    refuses are left layer by layer), at least one."""
    blocks = random_blocks(graph, lambda options, label: data.draw(
        st.sampled_from(options), label=label), lambda lo, hi, label: data.draw(
        st.integers(lo, hi), label=label))
    assume(blocks)
    return Schedule(blocks, fingerprint(graph))


def random_blocks(graph, pick, between) -> tuple:
    """Blocks from cut to cut, `pick(options, label)` choosing ends, halos and whether to
    fuse, `between(lo, hi, label)` the grid (those plan_block refuses stay layer by
    layer); possibly none."""
    cuts, blocks, a = sorted(single_cuts(graph)), [], 0
    while a < cuts[-1]:
        later = [c for c in cuts if c > a]
        b = pick(later[:4], "block end")
        if pick([True, True, True, False], "fuse"):
            out = graph.t(graph.ops[b - 1].outputs[0])
            if is_global_mean(graph.ops[b - 1], graph):
                out = graph.t(graph.ops[b - 1].inputs[0])
            if len(out.shape) == 4:
                h, w = int(out.shape[1]), int(out.shape[2])
                halo = pick(HALOS, "halo")
                grid = (between(1, min(h, 6), "rows"), between(1, min(w, 6), "columns"))
                block = Block(a, b - 1, grid, halo)
                try:
                    plan_block(graph, block)
                    blocks.append(block)
                except ModelError:
                    pass
        a = b
    return tuple(blocks)


def random_input(graph, seed):
    t, rng = graph.t(graph.inputs[0]), np.random.default_rng(seed)
    return rng.integers(-128, 128, t.shape).astype(t.dtype)


@settings(max_examples=16, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(spec=networks(), data=st.data())
def test_random_multi_block_schedule_bit_exact_and_cost_exact(spec, data):
    model = build_cnn(spec)
    graph = read(model)
    schedule = draw_schedule(data, graph)
    stages = [plan_block(graph, b) for b in schedule.blocks]
    for st_ in stages:  # what the examples covered (--hypothesis-show-statistics)
        event(f"halo {'/'.join(st_.block.halo)}")
        event("ends in a global MEAN" if st_.reduce is not None else "whole output")
        event("partial tiles" if any(s % g for s, g in zip(
            graph.t(st_.tiled_output).shape[1:3], st_.grid)) else "tiles divide")
        for op in st_.ops:
            event(op.kind)
    event(f"{len(stages)} block(s)")

    cost = CostModel(graph).cost(schedule)
    layered = tvm_patch.load(model)
    patched = PatchBasedInference(schedule)(layered)
    # the cost model (no compilation) is exactly what the built module plans and computes
    assert cost.arena_bytes == plan_memory(patched).arena_bytes
    assert cost.arena_excl_io_bytes == plan_memory(patched, exclude_io=True).arena_bytes
    assert cost.macs == tvm_patch.profile(patched).macs
    if all(st_.block.halo[1 - st_.cached_axis] == "recompute" and
           st_.grid[1 - st_.cached_axis] == 1 for st_ in stages if st_.cached_axis is not None) \
            and all(st_.cached_axis is not None for st_ in stages):
        # caching along the only tiled axis recomputes nothing (and skips rows that a
        # strided consumer never reads)
        assert cost.macs <= cost.layer_macs

    x = random_input(graph, spec.seed)
    ours = tvm_patch.build(patched).run(x)
    for a, b in zip(ours, reference.run(model, [x])):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert np.array_equal(a, b), f"{int((a != b).sum())}/{a.size} outputs differ"


@pytest.mark.parametrize("main_first", [True, False])
def test_block_with_two_branches_shares_tile_bytes_only_when_ordered(main_first):
    """A strided residual stack (3x3 s2 -> 3x3 on one branch, 1x1 s2 on the other) fused
    in one block: the loop nest may compute the branches in either order, so a tile buffer
    of one branch never shares bytes with a live one of the other (the zoo ResNet-8, whose
    ADD reads the main branch first, differed from TFLite Micro)."""
    from tvm_patch import zoo
    from tvm_patch.passes.emit import to_relax
    data = zoo.build("resnet8")
    graph = read(data)
    add = next(k for k, op in enumerate(graph.ops) if op.kind == "add" and k > 4)
    if not main_first:
        graph.ops[add].inputs = graph.ops[add].inputs[::-1]
    schedule = Schedule((Block(add - 3, add, (2, 2)),), fingerprint(graph))
    patched = PatchBasedInference(schedule)(to_relax(graph))
    compiled = tvm_patch.build(patched)
    for seed in range(2):
        x = random_input(graph, seed)
        assert np.array_equal(compiled.run(x)[0], reference.run(data, [x])[0])


@pytest.mark.parametrize("halo,grid", [(("recompute", "recompute"), (3, 2)),
                                       (("cache", "recompute"), (4, 2)),
                                       (("recompute", "cache"), (2, 3))])
def test_pools_inside_a_block_bit_exact(halo, grid):
    """Max and average pools in a block test their taps against the image, not the tile:
    SAME padding at the borders of border tiles, TFLite's in-image tap count."""
    spec = Spec(13, 11, 3, [Layer("conv", 3, channels=6), Layer("maxpool", 3, 2),
                            Layer("conv", 3, channels=5), Layer("avgpool", 3)], seed=1)
    model = build_cnn(spec)
    graph = read(model)
    pools = [k for k, op in enumerate(graph.ops) if op.kind in ("max_pool2d", "avg_pool2d")]
    schedule = Schedule((Block(0, pools[-1], grid, halo),), fingerprint(graph))
    patched = PatchBasedInference(schedule)(tvm_patch.load(model))
    assert plan_memory(patched).arena_bytes == CostModel(graph).cost(schedule).arena_bytes
    compiled = tvm_patch.build(patched)
    for seed in range(2):
        x = random_input(graph, seed)
        assert np.array_equal(compiled.run(x)[0], reference.run(model, [x])[0])


def test_pool_of_dequantized_values_stays_layer_by_layer():
    """An ONNX QDQ average pool averages floats (onnxruntime's rule): a block refuses it in
    one line, while an int8 max pool of the same model may join one."""
    import onnx_models
    graph = read(onnx_models.pooling_net_qdq().SerializeToString())
    kinds = [op.kind for op in graph.ops]
    conv, avg = kinds.index("conv2d"), len(kinds) - 1 - kinds[::-1].index("avg_pool2d")
    assert plan_block(graph, Block(conv, kinds.index("max_pool2d"), (2, 2))).ops
    with pytest.raises(ModelError) as e:
        plan_block(graph, Block(avg - 1, avg, (2, 2)))
    assert "dequantized values" in assert_clear(e.value)


def test_global_mean_accumulated_per_tile_bit_exact():
    """The map before the MEAN never exists whole: the block's workspace holds only tile
    regions and the int32 sum, and the arena is below layer by layer's."""
    spec = Spec(21, 19, 3, [Layer("conv", 3, 2, channels=8, activation="RELU"),
                            Layer("dw", 3), Layer("conv", 1, channels=24), Layer("mean")],
                seed=11)
    model = build_cnn(spec)
    graph = read(model)
    last = len(graph.ops) - 1
    assert is_global_mean(graph.ops[last], graph)
    for halo in HALOS[:2]:
        schedule = Schedule((Block(0, last, (4, 3), halo),), fingerprint(graph))
        stage = plan_block(graph, schedule.blocks[0])
        whole = graph.t(graph.ops[last].inputs[0]).nbytes
        assert stage.reduce is not None and stage.workspace < whole
        patched = PatchBasedInference(schedule)(tvm_patch.load(model))
        assert plan_memory(patched).arena_bytes < plan_memory(tvm_patch.load(model)).arena_bytes
        x = random_input(graph, 3)
        assert np.array_equal(tvm_patch.build(patched).run(x)[0], reference.run(model, [x])[0])


# -- 3. the search ---------------------------------------------------------------------------------

def test_front_is_pareto_and_exact(kws):
    graph, _ = kws
    search = Search(graph)
    front = search.front("arena")
    assert front and all(c.macs <= d.macs and c.arena_bytes > d.arena_bytes
                         for c, d in zip(front, front[1:]))
    # a fused block that ties layer by layer in bytes and MACs does not replace it
    assert not search.front("arena_excl_io")[0].schedule.blocks
    model = CostModel(graph)
    for c in front:  # every point is the cost model's whole-network plan
        again = model.cost(c.schedule)
        assert (again.arena_bytes, again.macs) == (c.arena_bytes, c.macs)


def test_auto_keeps_layer_by_layer_when_it_is_smallest():
    """A network whose peak is its last layer's input and output, both whole by definition:
    nothing can lower it, so auto keeps layer by layer and says why."""
    spec = Spec(8, 8, 4, [Layer("conv", 1, channels=4), Layer("conv", 1, channels=64)], seed=2)
    mod = tvm_patch.load(build_cnn(spec))
    patched = PatchBasedInference(objective="arena")(mod)
    cost = cost_of(patched)
    assert not cost["blocks"] and "kept layer by layer" in cost["note"]
    assert plan_memory(patched).arena_bytes == plan_memory(mod).arena_bytes


def test_pareto_cli_json_plot_and_schedule_files(tmp_path, capsys):
    """`tvm-patch pareto --json` gives each point's schedule; built with --schedule, its
    arena is what the front says; --plot writes the PNG."""
    from tvm_patch import cli
    model = shared_model("mlperf-kws-dscnn")
    plot = tmp_path / "front.png"
    assert cli.main(["pareto", model, "--json", "--plot", str(plot),
                     "--objective", "arena_excl_io"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["front"] and plot.stat().st_size > 0
    point = res["front"][-1]  # the smallest
    (tmp_path / "s.json").write_text(json.dumps(point["schedule"]))
    assert cli.main(["profile", model, "--schedule", str(tmp_path / "s.json"), "--json"]) == 0
    prof = json.loads(capsys.readouterr().out)
    assert prof["arena_excl_io_bytes"] == point["arena_excl_io_bytes"]
    assert prof["schedule"]["blocks"] == point["schedule"]["blocks"]
    (tmp_path / "bad.json").write_text("{")
    assert cli.main(["profile", model, "--schedule", str(tmp_path / "bad.json")]) == 2
    assert "bad.json: not JSON" in capsys.readouterr().err
