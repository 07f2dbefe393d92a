"""tvm_patch.nas: the oracle against the compiler (its graph, its kernels' scratch, its plan),
the space's configs, the evolution, the evaluators and the command line."""

import json
import os
import random

import numpy as np
import pytest

import tvm_patch
from tvm_patch import nas, zoo
from tvm_patch.analysis.memory import plan_memory
from tvm_patch.frontend import read
from tvm_patch.graph import ModelError
from tvm_patch.kernels.lower import lower_op
from tvm_patch.nas.oracle import graph_of, scratch_bytes
from tvm_patch.nas.space import Arch, Space
from tvm_patch.passes import PatchBasedInference
from tvm_patch.schedule import Schedule, fingerprint
from conftest import SHARED_MODELS
from test_schedule import random_blocks

CONFIGS = os.path.join(SHARED_MODELS, "configs")
# small networks of the space: the whole space's operators, cheap to build and lower
TINY = Space(widths=(0.3, 0.35), resolutions=(48, 64), se=True)


def tiny_archs(n, seed=0):
    rng = random.Random(seed)
    return [TINY.sample(rng) for _ in range(n)]


def same_graph(a, b):
    assert a.inputs == b.inputs and a.outputs == b.outputs
    assert [(t.name, tuple(t.shape), t.dtype, t.is_const) for t in a.tensors.values()] == \
        [(t.name, tuple(t.shape), t.dtype, t.is_const) for t in b.tensors.values()]
    assert [(op.kind, op.inputs, op.outputs, op.attrs) for op in a.ops] == \
        [(op.kind, op.inputs, op.outputs, op.attrs) for op in b.ops]


@pytest.mark.parametrize("config", sorted(f for f in os.listdir(CONFIGS)
                                          if f.endswith("_imagenet.json"))
                         if os.path.isdir(CONFIGS) else [])
def test_oracle_graph_is_the_front_ends_graph_of_the_zoo_tflite(config):
    path = os.path.join(CONFIGS, config)
    same_graph(graph_of(path), read(zoo.build(path)))


def test_oracle_graph_of_space_samples_with_squeeze_excite():
    archs = tiny_archs(6, seed=3)
    assert any(any(a.se[k] for _, _, k in a.blocks()) for a in archs)
    for arch in archs:
        config = arch.config(num_classes=10)
        same_graph(graph_of(config), read(zoo.build(config)))


def test_scratch_rule_is_what_the_lowered_kernels_allocate():
    arch = next(a for a in tiny_archs(20, seed=5) if any(a.se[k] for _, _, k in a.blocks()))
    graph = graph_of(arch.config(num_classes=10))
    real = read(zoo.build(arch.config(num_classes=10)))  # with weights and quantization
    kinds = set()
    for pos, op in enumerate(real.ops):
        kinds.add(op.kind)
        assert scratch_bytes(graph.ops[pos], graph) == lower_op(op, real).scratch_bytes, \
            f"operator {pos} ({op.kind})"
    assert {"conv2d", "depthwise_conv2d", "mul", "mean", "fully_connected"} <= kinds


def random_schedule(graph, rng) -> Schedule:
    """test_schedule's random blocks, drawn from `rng`; possibly none."""
    return Schedule(random_blocks(graph, lambda options, _: rng.choice(options),
                                  lambda lo, hi, _: rng.randint(lo, hi)), fingerprint(graph))


def test_oracle_arena_equals_the_built_modules_plan_on_50_samples():
    """10 architectures x 5 schedules (random blocks, grids, halos; layer by layer
    included): the oracle's arena and arena_excl_io, from the config alone, are the plan
    of the module tvm_patch builds from the zoo's .tflite, byte for byte."""
    rng = random.Random(11)
    samples = 0
    for arch in tiny_archs(10, seed=7):
        config = arch.config(num_classes=10)
        oracle = nas.Oracle(config)
        layered = tvm_patch.load(zoo.build(config))
        for k in range(5):
            schedule = oracle.layer_by_layer if k == 0 else random_schedule(oracle.graph, rng)
            q = oracle.query(schedule)
            built = PatchBasedInference(schedule)(layered) if schedule.blocks else layered
            assert q.arena_bytes == plan_memory(built).arena_bytes, (arch.name, schedule)
            assert q.arena_excl_io_bytes == plan_memory(built, exclude_io=True).arena_bytes
            samples += 1
    assert samples == 50


def test_space_configs_are_mcunet_format_and_mcunet_320kb_is_in_the_space():
    arch = Arch(176, 0.5, (4, 3, 3, 3, 3, 1), (3,) * 21, (3,) * 21, (False,) * 21)
    config = arch.config()
    ref = json.load(open(os.path.join(CONFIGS, "mcunet-320kb-1mb_imagenet.json")))
    assert [b["mobile_inverted_conv"]["out_channels"] for b in config["blocks"]] == \
        [b["mobile_inverted_conv"]["out_channels"] for b in ref["blocks"]]
    assert [b["mobile_inverted_conv"]["stride"] for b in config["blocks"]] == \
        [b["mobile_inverted_conv"]["stride"] for b in ref["blocks"]]
    assert [bool(b["shortcut"]) for b in config["blocks"]] == \
        [bool(b["shortcut"]) for b in ref["blocks"]]
    # redistribution: small kernels and expansion in the patch stage only
    space, rng = Space(redistribute=True), random.Random(0)
    for _ in range(20):
        a = space.mutate(space.sample(rng), rng)
        for s, _, k in a.blocks():
            if s < 2:
                assert a.kernels[k] == 3 and a.expands[k] in (3, 4)


SMALL = dict(generations=3, population=12, parents=3, mutations=6, crossovers=6, jobs=1)


def test_search_is_reproducible_and_respects_the_budgets():
    a = nas.search(64 * 1024, 600_000, **SMALL, seed=4)
    b = nas.search(64 * 1024, 600_000, **SMALL, seed=4)
    assert [c.arch for c in a.history] == [c.arch for c in b.history]
    assert a.best is not None and a.best.arch == b.best.arch
    for c in a.history:
        r = c.result
        assert r["feasible"] == (r["arena_bytes"] <= 64 * 1024 and r["flash_bytes"] <= 600_000)
        assert (r["score"] is not None) == r["feasible"]
    best = a.best.result
    assert best["score"] == max(c.score for c in a.history if c.result["feasible"])
    assert best["score"] == best["layer_macs"]  # the macs evaluator


def test_nothing_fits_ends_with_the_smallest_candidate_and_its_layers():
    with pytest.raises(ModelError) as e:
        nas.run(2048, **SMALL)
    message = str(e.value)
    assert "no candidate fits arena <= 2,048 B" in message and "the smallest" in message
    assert "largest layers" in message


def broken(config):
    raise RuntimeError("out of GPUs")


def test_a_broken_evaluator_names_the_candidate():
    with pytest.raises(ModelError, match=r"nas-w[0-9.]+-r\d+-.*RuntimeError: out of GPUs"):
        nas.search(320 * 1024, evaluator="test_nas:broken", **SMALL)
    for bad in ("nosuch", "os:nosuch", "nosuch_module:f"):
        with pytest.raises(ModelError, match="evaluator"):
            nas.search(320 * 1024, evaluator=bad, **SMALL)


def test_cli_nas_writes_a_model_its_schedule_builds(tmp_path, capsys):
    from tvm_patch.cli import main
    out = tmp_path / "found"
    assert main(["nas", "--sram", "64000", "--flash", "400000", "--resolution", "80",
                 "--generations", "3", "--population", "12", "--jobs", "1", "--classes", "2",
                 "-o", str(out), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    for k in ("config", "tflite", "schedule", "macs", "arena_bytes", "arena_excl_io_bytes",
              "layer_by_layer_arena_bytes", "flash_bytes", "score"):
        assert k in d
    assert d["arena_bytes"] <= 64000 and d["flash_bytes"] <= 400000
    assert json.load(open(d["config"]))["resolution"] == 80
    mod = tvm_patch.load(d["tflite"])
    schedule = tvm_patch.schedule.read_schedule(d["schedule"])
    built = PatchBasedInference(schedule)(mod)
    assert plan_memory(built).arena_bytes == d["arena_bytes"]
    assert main(["nas", "--sram", "64000", "--resolution", "abc", "-o", str(out)]) == 2
    assert "--resolution 'abc'" in capsys.readouterr().err


def test_rank_spaces_prefers_what_fits():
    rows = nas.rank_spaces(96 * 1024, widths=(0.3, 1.0), resolutions=(64, 224), samples=6)
    assert len(rows) == 4
    top = rows[0]
    assert top["fit"] > 0 and (top["width"], top["resolution"]) != (1.0, 224)


def test_search_on_a_local_ray_instance():
    """The tuner's Ray runner evaluates the candidates; the same seed finds the same."""
    pytest.importorskip("ray", reason="the [ray] extra")
    small = dict(SMALL, generations=1, population=4, parents=2, mutations=2, crossovers=2)
    on_ray = nas.search(320 * 1024, **dict(small, jobs=2), ray="local", seed=2)
    here = nas.search(320 * 1024, **small, seed=2)
    assert {c.arch for c in on_ray.history} == {c.arch for c in here.history}
    assert on_ray.best.arch == here.best.arch
    assert on_ray.best.result == here.best.result


def test_per_layer_breakdown_counts_in_place_outputs_once():
    """The breakdown's largest step is the plan's peak live bytes, never above the arena
    (an in-place depthwise output shares its input's bytes)."""
    import re
    from tvm_patch.schedule.arena import largest_steps, peak_live
    for arch in tiny_archs(3, seed=9):
        oracle = nas.Oracle(arch.config(num_classes=10))
        plan = oracle.model.plan(oracle.layer_by_layer)
        assert any(b.anchor for b in plan.buffers.values())
        top = max(int(v.replace(",", "")) for v in re.findall(r"live +([\d,]+) B",
                                                                largest_steps(plan)))
        assert top == peak_live(plan) <= plan.arena_bytes
