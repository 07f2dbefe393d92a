"""The tuner on the emulated Cortex-M7 (tvm_patch.tune), in one run:

  1. search curves: model-guided (XGBoost) against random search, the same number of
     measurements and the same budget (0.6 x layer by layer's arena: fused blocks needed),
     best instructions so far, and the trials each needs to reach the best point random
     search finds;
  2. tuned against default: the default build (layer by layer, default kernels) against the
     tuned point under a budget of the default's own arena (no more memory) and the
     STM32F746's 1 MB of Flash, the four shared models and the zoo models that fit the
     board, every point bit-exact with TFLite Micro;
  3. mcunet-vww1 under budgets of 64, 32 and 20 KB (arena_excl_io and arena): the fastest
     measured schedule that fits, its instructions over layer by layer's.

    python benchmarks/tune.py [--trials N] [--zoo-trials N] [--budget-trials N] [--jobs J]
        [--quick] [--records DIR]  # keep every tuning's records there (default: temporary)
        [--ship]           # section 2's records become tvm_patch's shipped ones (schedules/)

The kernel cache (tvm_patch/cache.py) stays on, as in a user's tuning. Accounting rules:
instructions are guest instructions of one inference counted by the
emulator's TCG plugin (not cycles); arena and arena_excl_io are the memory plan's (the
planner the build uses); "search s" is the tuning's wall time with J local workers, builds
and emulator runs included."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
_cache = os.environ.get("TVM_PATCH_CACHE")
import patch  # noqa: E402  (puts the checkout on sys.path; table helpers)
from patch import b, table  # noqa: E402

if _cache is None:  # patch.py turns the kernel cache off; a tuning keeps it, as users do
    del os.environ["TVM_PATCH_CACHE"]

from tvm_patch import tune  # noqa: E402

SHARED = ["mlperf-kws-dscnn", "mlperf-ic-resnet8-32", "mlperf-vww-mobilenetv1-0.25-96",
          "mcunet-vww1"]
# the zoo models that fit the STM32F746 (tests/test_models_exact.py's ZOO less the two
# that do not), by the name their records file takes
ZOO = {"demo": dict(name_or_config="demo"), "resnet8": dict(name_or_config="resnet8"),
       **{name: dict(name_or_config=os.path.join("configs", config)) for name, config in (
           ("mcunet-10fps", "mcunet-10fps_imagenet.json"),
           ("mcunet-5fps", "mcunet-5fps_imagenet.json"),
           ("proxyless-w0.3-r176", "proxyless-w0.3-r176_imagenet.json"),
           ("mcunet-320kb", "mcunet-320kb-1mb_imagenet.json"))}}
FLASH = 1024 * 1024  # the STM32F746's
CURVES = ["mcunet-vww1", "mlperf-vww-mobilenetv1-0.25-96"]
CURVE_BUDGET = 0.5  # of layer by layer's arena_excl_io: fused blocks needed, grids searched
BUDGETS = [64 * 1024, 32 * 1024, 20 * 1024]


_runs = {}  # the same tuning asked twice (sections 1 and 2) runs once


def run(path, records_dir, label, trials, jobs, **kw):
    key = (path, trials, tuple(sorted(kw.items())))
    if key not in _runs:
        os.makedirs(records_dir, exist_ok=True)
        records = os.path.join(records_dir, f"{label}.jsonl")
        if os.path.exists(records):
            os.remove(records)
        t = time.perf_counter()
        _runs[key] = tune.tune(path, trials=trials, records=records, jobs=jobs, **kw)
        _runs[key].seconds = time.perf_counter() - t
    return _runs[key]


def reached(curve: list, target: int):
    """The first trial (1-based) whose best so far is at most `target`."""
    return next((k + 1 for k, v in enumerate(curve) if v is not None and v <= target), None)


def curves(models_dir, records_dir, trials, jobs) -> list:
    rows, lines = [], []
    for name in CURVES:
        path = os.path.join(models_dir, name + ".tflite")
        default = int(_default_arena(path, "arena_excl_io") * CURVE_BUDGET)
        got = {s: run(path, records_dir, f"{name}.curve.{s}", trials, jobs, strategy=s,
                      sram=default, objective="arena_excl_io") for s in ("model", "random")}
        target = got["random"].best.instructions
        need = {s: reached(r.curve, target) for s, r in got.items()}
        rows.append([name, b(default), b(target), need["random"], need["model"],
                     f"{need['model'] / need['random']:.2f}" if need["model"] else "never",
                     b(got["model"].best.instructions),
                     f"{got['model'].seconds:.0f} / {got['random'].seconds:.0f}"])
        marks = sorted({1, 2, 4, 8, 16, 32, 48, trials} & set(range(1, trials + 1)))
        for s, r in got.items():
            lines.append(f"{name:<32} {s:<7} " + "  ".join(
                f"{k}:{(r.curve[k - 1] or 0) / 1e6:.3f}M" for k in marks if k <= len(r.curve)))
    print(f"1. Search curves, {trials} measurements each, budget = {CURVE_BUDGET} x layer by "
          f"layer's arena_excl_io\n")
    print(table(["model", "budget B", "random's best", "random needs", "model needs",
                 "ratio", "model's best", "search s (model / random)"], rows))
    print("\nbest instructions so far after k trials (k:best):\n")
    print("\n".join(lines))
    print()
    return rows


def _default_arena(path, objective="arena", io_type=None) -> int:
    from tvm_patch import load
    from tvm_patch.passes.emit import graph_of
    from tvm_patch.tune.space import Space
    mod = load(path, io_type)
    space = Space(graph_of(mod), mod, objective=objective)
    return space.bytes_of(space.cost(space.default()))


def _zoo_model(name, models_dir, where) -> str:
    from tvm_patch import zoo
    spec = dict(ZOO[name])
    if spec["name_or_config"].endswith(".json"):
        spec["name_or_config"] = os.path.join(models_dir, spec["name_or_config"])
    return zoo.save(spec.pop("name_or_config"), os.path.join(where, name + ".tflite"), **spec)


def tuned_vs_default(models_dir, records_dir, trials, jobs, models_tmp, zoo_trials):
    rows, total = [], [0, 0]
    for name in SHARED + list(ZOO):
        path = os.path.join(models_dir, name + ".tflite") if name in SHARED else \
            _zoo_model(name, models_dir, models_tmp)
        default = _default_arena(path)
        r = run(path, records_dir, name, trials if name in SHARED else zoo_trials, jobs,
                strategy="model", sram=default, flash=FLASH)
        first = r.trials[0]
        assert first.schedule.layer_by_layer, "the model-guided search measures the default first"
        exact = all(t.error is None for t in r.trials if t.instructions is not None)
        rows.append([name + ("" if name in SHARED else " (zoo)"), b(first.instructions),
                     b(r.best.instructions),
                     f"{r.best.instructions / first.instructions:.3f}",
                     b(r.best.arena_bytes), "yes" if exact else "NO",
                     sum(t.error is not None for t in r.trials), f"{r.seconds:.0f}",
                     r.best.schedule.describe()[:60]])
        total[0] += first.instructions
        total[1] += r.best.instructions
    print(f"2. Tuned vs default (layer by layer, default kernels), {trials} measurements "
          f"({zoo_trials} for the zoo models), budget = the default's arena and {b(FLASH)} B "
          f"of Flash\n")
    print(table(["model", "default instr", "tuned instr", "x default", "arena B", "bit-exact",
                 "failed", "search s", "tuned point"], rows))
    print(f"\ntotal: default {b(total[0])}, tuned {b(total[1])} "
          f"({total[1] / total[0]:.3f}x)\n")


def budgets(models_dir, records_dir, trials, jobs):
    """arena_excl_io budgets on the model as it is (float input); arena budgets with int8
    I/O (its float input alone takes 75 KB of arena)."""
    path = os.path.join(models_dir, "mcunet-vww1.tflite")
    rows = []
    lbl = _lbl_instructions(path)
    for objective, io_type in (("arena_excl_io", None), ("arena", "int8")):
        for budget in BUDGETS:
            r = run(path, records_dir, f"mcunet-vww1.{objective}.{budget}", trials, jobs,
                    sram=budget, objective=objective, io_type=io_type)
            best = r.best
            rows.append([objective + (" (int8 io)" if io_type else ""), b(budget),
                         b(best.arena_excl_io_bytes) if best else "-",
                         b(best.arena_bytes) if best else "-",
                         b(best.instructions) if best else "none fits",
                         f"{best.instructions / lbl:.2f}" if best and lbl else "",
                         f"{r.seconds:.0f}", best.schedule.describe()[:70] if best else ""])
    print(f"3. mcunet-vww1 under SRAM budgets, {trials} measurements each; x LBL: over our "
          f"layer by layer with default kernels ({b(lbl)} instructions, float input)\n")
    print(table(["budget on", "budget B", "arena_excl_io", "arena", "instructions", "x LBL",
                 "search s", "schedule"], rows))
    print()


def _lbl_instructions(path) -> int:
    """Our layer by layer with default kernels, measured the way the tuner measures."""
    from tvm_patch import read
    from tvm_patch.schedule import Schedule, fingerprint
    from tvm_patch.tune.measure import measure
    with open(path, "rb") as f:
        data = f.read()
    return measure({"model": data, "schedule": Schedule((), fingerprint(read(data))).dumps()}
                   )["instructions"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=64)
    parser.add_argument("--budget-trials", type=int, default=32)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--models", default=patch.DEFAULT_MODELS)
    parser.add_argument("--records", metavar="DIR")
    parser.add_argument("--quick", action="store_true", help="section 1 only, 16 trials")
    parser.add_argument("--sections", default="123")
    parser.add_argument("--ship", action="store_true",
                        help="write section 2's records to schedules/ (shipped with tvm_patch)")
    parser.add_argument("--zoo-trials", type=int, default=12)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tvmp-tune-bench-") as tmp:
        where = args.records or tmp
        os.makedirs(where, exist_ok=True)
        if args.quick:
            curves(args.models, where, 16, args.jobs)
            return 0
        if "1" in args.sections:
            curves(args.models, where, args.trials, args.jobs)
        if "2" in args.sections:
            from tvm_patch.schedule.records import DEFAULT_DIR
            tuned_vs_default(args.models, DEFAULT_DIR if args.ship else where, args.trials,
                             args.jobs, tmp, args.zoo_trials)
        if "3" in args.sections:
            budgets(args.models, where, args.budget_trials, args.jobs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
