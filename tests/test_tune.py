"""The tuner: its space (every point fits, units are the firmware's steps), its records
(corrupt and foreign files, apply history best), the search's bookkeeping (failures and
Ctrl-C), the cost model's TIR features, and one real tuning on the emulated Cortex-M7 through
the command line, local and on a local Ray instance."""

import json
import os
import random

import numpy as np
import pytest

import tvm_patch
from tvm_patch import cli, mcu, tune
from tvm_patch.graph import ModelError
from tvm_patch.build import apply_passes
from tvm_patch.passes import cost_of
from tvm_patch.passes.emit import graph_of
from tvm_patch.schedule import Schedule, fingerprint, parse
from tvm_patch.tune import measure, tuner
from tvm_patch.tune.model import UnitFeatures, tir_features
from tvm_patch.schedule.records import best, read_records, record_line
from tvm_patch.tune.space import Space

from conftest import loaded_model, shared_model

MODEL = "mlperf-kws-dscnn"


def kws():
    path = shared_model(MODEL)
    with open(path, "rb") as f:
        data = f.read()
    mod = loaded_model(MODEL, data)
    return path, data, mod, graph_of(mod)


@pytest.fixture(scope="module")
def space():
    _, _, mod, graph = kws()
    return Space(graph, mod, sram=None)


def test_points_fit_and_their_units_are_the_planned_steps(space):
    rng = random.Random(0)
    tight = Space(space.graph, tvm_patch.load(shared_model(MODEL)), sram=None)
    points = [space.default()] + [space.sample(rng) for _ in range(20)]
    points += [m for p in points[1:] for m in [space.mutate(p, rng)] if m is not None]
    assert len(points) > 30
    for p in points:
        assert space.fits(p) and space.complete(p) == p
        cost = space.cost(p)
        steps = [c for c in space.model.calls(cost.stages)[1] if not c.view]
        assert len(space.units(p)) == len(steps)
        # every convolution outside the blocks names its kernel, so equal points compare equal
        inside = {q for b in p.blocks for q in range(b.first, b.last + 1)}
        assert {q for q, _ in p.kernels} == {q for q in space.knobs if q not in inside}
    # a budget keeps out what does not fit it, exactly by the planner's arena
    budget = sorted(space.cost(p).arena_bytes for p in points)[len(points) // 2]
    tight.sram = budget
    for _ in range(20):
        p = tight.sample(rng)
        assert p is None or tight.cost(p).arena_bytes <= budget


def test_the_search_starts_from_the_default_or_the_compilers_choice(space):
    _, data, mod, graph = kws()
    t = tuner.Tuner(data, graph, mod)
    assert t.propose(3, first=True)[0] == t.space.default()
    default = t.space.cost(t.space.default()).arena_bytes
    tight = tuner.Tuner(data, graph, mod, sram=default - 1)
    first = tight.propose(3, first=True)
    # layer by layer does not fit: the front's fewest MACs that fit, then random points
    assert first[0] == tight.space.searched() and first[0].blocks
    assert all(tight.space.fits(p) for p in first) and len(set(first)) == len(first)


def test_tir_features_count_integer_arithmetic(space):
    from tvm_patch.passes import _kernels_of
    kernels = _kernels_of(tvm_patch.load(shared_model(MODEL)))
    conv = next(p for p in space.knobs)
    f = tir_features(kernels[conv].func)
    assert f.shape == (164,) and f[9] > 0 and f[0] == 0  # int_mul counted, no float_mad
    features = UnitFeatures(space, {p: k.func for p, k in kernels.items()})
    units = space.units(space.sample(random.Random(1)))
    x = np.stack([features(u) for u in units])
    assert x.shape[0] == len(units) and np.isfinite(x).all()


def _record(schedule, instructions, units, cost, error=None):
    layers = [{"instructions": n} for n in units]
    return record_line(schedule, {"instructions": instructions, "layers": layers,
                                  "error": error}, [], cost, {})


def test_records_apply_the_fastest_fitting_point_then_the_fastest_kernels(space, tmp_path):
    default = space.default()
    units = space.units(default)
    conv = next(p for p in space.knobs if len(space.knobs[p]) == 2)
    knob = dict(default.kernels)[conv]
    other = Schedule((), space.fp, kernels=tuple(
        (p, ("tvm" if k == "c" else "c") if p == conv else k) for p, k in default.kernels))
    lines = []
    for point, total, flip in ((default, 1000, False), (other, 900, True)):
        us = space.units(point)
        line = json.loads(record_line(point, {"instructions": total, "layers": [
            {"instructions": 10} for _ in us]}, us, space.cost(point), {}))
        if flip:  # the flipped layer measured slower than the default's kernel
            for u in line["units"]:
                if u["unit"].startswith(f"op {conv} "):
                    u["instructions"] = 50
        lines.append(json.dumps(line))
    path = tmp_path / "r.jsonl"
    path.write_text("\n".join(lines) + "\n")
    found, notes = read_records(str(path), space.graph)
    assert len(found) == 2 and not notes
    chosen = best(found, space.cost)
    # the fastest point overall is `other`, but its one flipped layer was slower: kept as before
    assert dict(chosen.kernels)[conv] == knob and len(units) == len(space.units(chosen))
    # a budget below every arena: nothing fits
    assert best(found, space.cost, sram=16) is None


def test_corrupt_and_foreign_records(space, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"format": "tvm_patch.records", "version": 1}\n{not json\n')
    with pytest.raises(ModelError, match=r"bad.jsonl line 1: .*schedule|bad.jsonl line 2"):
        read_records(str(bad), space.graph)
    bad.write_text('{"format": "something else"}\n')
    with pytest.raises(ModelError, match="line 1: not a tvm_patch record"):
        read_records(str(bad), space.graph)
    bad.write_bytes(b"\x00\xff\xfe garbage")
    with pytest.raises(ModelError, match="line 1: not JSON"):
        read_records(str(bad), space.graph)
    with pytest.raises(ModelError, match="cannot read the records"):
        read_records(str(tmp_path / "missing.jsonl"), space.graph)
    for command in (["profile"], ["tune", "--trials", "1"]):  # one line, exit 2
        capsys.readouterr()
        assert cli.main([command[0], shared_model(MODEL), "--records", str(bad),
                         *command[1:]]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "bad.jsonl line 1: not JSON" in err, err

    # a record for another model is never applied: the pass searches instead, with a note
    foreign = Schedule((), "0123456789abcdef")
    line = json.loads(record_line(foreign, {"instructions": 5, "layers": []}, [],
                                  space.cost(space.default()), {}))
    path = tmp_path / "foreign.jsonl"
    path.write_text(json.dumps(line) + "\n")
    found, notes = read_records(str(path), space.graph)
    assert found == [] and "another model" in notes[0]
    out = apply_passes(tvm_patch.load(shared_model(MODEL)), records=str(path))
    assert "record(s) for another model (fingerprint 0123456789abcdef) ignored" in \
        cost_of(out)["note"]


class _FakeRunner:
    """Measures without building: a failure, a timeout, then results; Ctrl-C after `stop`."""

    def __init__(self, space, stop=None):
        self.space, self.stop, self.count = space, stop, 0

    def run(self, tasks):
        for k, task in enumerate(tasks):
            self.count += 1
            if self.stop is not None and self.count > self.stop:
                raise KeyboardInterrupt
            point = self.space.complete(parse(task["schedule"]))
            if self.count == 1:
                yield k, {"error": "RuntimeError: the build failed", "layers": []}
            elif self.count == 2:
                yield k, {"error": "timed out after 1 s", "layers": []}
            else:
                units = self.space.units(point)
                n = [1000 + 7 * u.first + (50 if u.kernel == "tvm" else 0) for u in units]
                yield k, {"instructions": sum(n) + 3, "layers": [
                    {"instructions": v} for v in n], "error": None}

    def close(self):
        pass


@pytest.mark.parametrize("stop", [None, 5])
def test_failures_are_records_and_ctrl_c_keeps_them(space, tmp_path, monkeypatch, stop):
    path, data, mod, graph = kws()
    t = tuner.Tuner(data, graph, mod)
    monkeypatch.setattr(tuner, "make_runner", lambda *a: _FakeRunner(t.space, stop))
    records = str(tmp_path / "r.jsonl")
    result = t.run(8, records, jobs=2, progress=False)
    lines = [json.loads(x) for x in open(records)]
    assert result.interrupted == (stop is not None)
    assert len(lines) == len(result.trials) == (8 if stop is None else stop)
    assert lines[0]["error"] == "RuntimeError: the build failed" and \
        lines[1]["error"].startswith("timed out")
    assert all(r["error"] is None and r["instructions"] for r in lines[2:])
    assert result.best.instructions == min(r["instructions"] for r in lines[2:])
    # a second run continues: nothing measured again
    again = tuner.Tuner(data, graph, mod)
    monkeypatch.setattr(tuner, "make_runner", lambda *a: _FakeRunner(again.space))
    more = again.run(4, records, progress=False)
    seen = [parse(json.dumps(r["schedule"])) for r in lines]
    assert not any(tr.schedule in seen for tr in more.trials)


def test_a_measurement_that_hangs_times_out():
    _, data, _, graph = kws()
    pool = measure.LocalRunner(jobs=1, timeout=0.5)
    try:
        task = {"model": data, "schedule": Schedule((), fingerprint(graph)).dumps()}
        (k, result), = list(pool.run([task]))
    finally:
        pool.close()
    assert k == 0 and result["error"].startswith("timed out")


def test_int8_io_points_are_checked_against_tflite_micro():
    """With io_type int8 the model takes and returns int8; TFLite Micro runs the original
    on the float input that quantizes to it (test_io_type's rule)."""
    with open(shared_model("mcunet-vww1"), "rb") as f:
        data = f.read()
    graph = tvm_patch.read(data, io_type="int8")
    result = measure.measure({"model": data, "io_type": "int8",
                              "schedule": Schedule((), fingerprint(graph)).dumps()})
    assert result["error"] is None and result["exact"] is True


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    """A real tuning of KWS, 4 trials on two local workers, through the command line."""
    path = shared_model(MODEL)
    out = tmp_path_factory.mktemp("tune")
    records, plot = str(out / "kws.jsonl"), str(out / "front.png")
    import io
    import contextlib
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = cli.main(["tune", path, "--trials", "4", "--records", records, "--json",
                       "--plot", plot, "--sram", "40000"])
    return rc, json.loads(buf.getvalue()), records, plot


def test_tuning_measures_on_the_emulator_and_records_every_point(tuned):
    rc, result, records, plot = tuned
    assert rc == 0 and os.path.getsize(plot) > 0
    lines = [json.loads(x) for x in open(records)]
    assert len(lines) == len(result["trials"]) == 4
    ok = [r for r in lines if r["error"] is None]
    assert ok, [r["error"] for r in lines]
    for r in ok:   # bit-exact with TFLite Micro, every step measured, within the budget
        assert r["exact"] is True and r["arena_bytes"] <= 40000
        assert sum(u["instructions"] for u in r["units"]) <= r["instructions"]
        assert r["tool"].startswith("tvm_patch ")
    assert result["best"]["instructions"] == min(r["instructions"] for r in ok)
    # the first point is the default one: layer by layer, default kernels
    assert lines[0]["schedule"]["blocks"] == []


def test_records_build_the_best_point(tuned, tmp_path):
    _, result, records, _ = tuned
    mod = tvm_patch.load(shared_model(MODEL))
    fw = mcu.compile(mod, "qemu-m7", tmp_path, records=records, sram=40000)
    project = json.load(open(tmp_path / "project.json"))
    with mcu.Session(tmp_path) as s:
        x = np.random.default_rng(0).integers(-128, 128, s.project["inputs"][0]["shape"])
        s.run_model(x.astype(s.project["inputs"][0]["dtype"]))
        measured = s.counters.instructions
    assert fw.arena_bytes <= 40000 and project["arena_bytes"] <= 40000
    assert measured <= result["best"]["instructions"]


def test_tuning_on_a_local_ray_instance(tmp_path):
    pytest.importorskip("ray", reason="the [ray] extra")
    _, data, _, graph = kws()
    pool = measure.RayRunner("local", timeout=300)
    task = {"model": data, "schedule": Schedule((), fingerprint(graph)).dumps()}
    results = dict(pool.run([task, {**task, "schedule": "not a schedule"}]))
    assert results[0]["error"] is None and results[0]["exact"] is True
    assert results[0]["instructions"] > 0
    assert "ModelError" in results[1]["error"]
