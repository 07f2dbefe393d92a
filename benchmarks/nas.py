"""NAS with the compiler as its cost oracle (tvm_patch.nas), in one run:

  1. the oracle: median milliseconds per (architecture, schedule) query, and 3,000
     candidate evaluations (oracle only, the macs evaluator) with two local workers;
  2. the built-in accuracy proxies: Spearman rank correlation with the published ImageNet
     top-1 of the MCUNet zoo's nine configs (../shared/models/configs/ACCURACY.md);
  3. TinyNAS's first step: (width, resolution) spaces ranked by the MACs of sampled
     networks that fit 320 KB and 32 KB;
  5. the oracle's instruction predictor fitted to the tuner's measurements;
  4. searches under 320 KB SRAM / 1 MB Flash (the STM32F746) and 32 KB (resolution >= 80):
     the network found, its MACs, its layer-by-layer arena beside its arena with the
     schedule; then built, run on the emulated Cortex-M7 and compared bit for bit with
     TFLite Micro, the firmware's arena (linker map) beside the oracle's.

    python benchmarks/nas.py [--generations G] [--population N] [--sections 1234]

Accounting: arena / arena_excl_io are the memory plan's (the planner the build uses),
Flash the oracle's estimate beside the linked firmware's, instructions the emulator's
guest instructions of one inference (not cycles)."""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import patch  # noqa: E402  (puts the checkout on sys.path; table helpers)
from patch import b, table  # noqa: E402

from tvm_patch import nas  # noqa: E402

FLASH = 1024 * 1024
FLASH_MARGIN = 16 * 1024  # the searches' Flash budget leaves this for the estimate's error


def oracle_speed(samples: int = 300) -> None:
    rng, space = random.Random(0), nas.Space()
    times, fits = [], 0
    for _ in range(samples):
        config = space.sample(rng).config()
        t = time.perf_counter()
        oracle = nas.Oracle(config)
        oracle.query()
        times.append(time.perf_counter() - t)
        fits += oracle.fit(320 * 1024) is not None
    t = time.perf_counter()
    r = nas.search(320 * 1024, FLASH, generations=37, population=100, jobs=2, seed=0)
    wall = time.perf_counter() - t
    print("1. The oracle (no .tflite, no kernel lowered)\n")
    print(table(["measure", "value"], [
        ["one query (config -> graph -> planned layer by layer), median", f"{1e3 * statistics.median(times):.1f} ms"],
        ["one query, 90th percentile", f"{1e3 * sorted(times)[int(0.9 * samples)]:.1f} ms"],
        [f"random networks of the space fitting 320 KB (with the quick menu)", f"{fits}/{samples}"],
        [f"search: {r.evaluations} candidate evaluations, 2 workers", f"{wall:.0f} s"],
        ["its best (macs evaluator)", f"{r.best.result['layer_macs'] / 1e6:.1f}M MACs, "
                                     f"{b(r.best.result['arena_bytes'])} B"]]))
    print()


def proxies() -> None:
    configs = os.path.join(patch.DEFAULT_MODELS, "configs")
    rows = [line.split("|") for line in open(os.path.join(configs, "ACCURACY.md"))
            if line.startswith("| ") and "%" in line]
    top1 = {r[1].strip(): float(r[3].strip().rstrip("%")) for r in rows}
    scores, seconds = {}, {}
    for name in nas.BUILT_IN:
        fn = nas.evaluator_of(name)
        t = time.perf_counter()
        scores[name] = [fn(os.path.join(configs, c + ".json")) for c in top1]
        seconds[name] = time.perf_counter() - t
    acc = list(top1.values())
    print(f"2. Accuracy proxies against the published ImageNet top-1 of {len(acc)} MCUNet "
          f"zoo configs (Spearman rank correlation)\n")
    print(table(["proxy", "Spearman", "s per config"],
                [[n, f"{spearman(acc, s):.3f}", f"{seconds[n] / len(acc):.1f}"]
                 for n, s in scores.items()]))
    print("\n" + table(["config", "top-1 %"] + list(scores), [
        [c, f"{a:.1f}"] + [f"{scores[n][k]:.4g}" for n in scores]
        for k, (c, a) in enumerate(top1.items())]))
    print()


def spearman(a, b) -> float:
    ra, rb = (np.argsort(np.argsort(x)) for x in (a, b))
    return float(np.corrcoef(ra, rb)[0, 1])


def spaces(samples: int) -> None:
    print(f"3. TinyNAS's first step: spaces ranked by the MACs of {samples} sampled networks "
          f"each that fit (the best five per budget)\n")
    for sram in (320 * 1024, 32 * 1024):
        rows = nas.rank_spaces(sram, FLASH, samples=samples)
        print(table(["SRAM", "width", "resolution", "fit", "median MACs of fit",
                     "expected MACs"], [
            [b(sram), r["width"], r["resolution"], f"{r['fit']:.2f}",
             b(int(statistics.median(r["macs"]))) if r["macs"] else "-",
             b(int(sum(r["macs"]) / samples))] for r in rows[:5]]))
        print()


def searches(generations: int, population: int) -> None:
    print(f"4. Searches ({generations} generations of {population}, macs evaluator, Flash "
          f"estimate <= {b(FLASH - FLASH_MARGIN)} B), the winner built for the STM32F746 and "
          f"run on the emulated Cortex-M7\n")
    rows = []
    for label, sram, objective, space, classes in (
            ("320 KB arena / 1 MB, ImageNet", 320 * 1024, "arena", nas.Space(), 1000),
            ("32 KB arena_excl_io / 1 MB, VWW, r >= 80", 32 * 1024, "arena_excl_io",
             nas.Space(resolutions=tuple(range(80, 225, 16))), 2)):
        t = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="tvmp-nas-") as out:
            try:
                found = nas.run(sram, FLASH - FLASH_MARGIN, out=out, plot=False,
                                generations=generations, population=population,
                                parents=population // 4, mutations=population // 2,
                                crossovers=population // 2, space=space, classes=classes,
                                objective=objective, jobs=2, seed=0)
            except Exception as e:  # noqa: BLE001  (a row, not the end of the benchmark)
                rows.append([label, str(e).splitlines()[0][:150]] + [""] * 13)
                continue
            search_s = time.perf_counter() - t
            device = on_emulator(found, out)
        q, lbl = found.query, found.layer_by_layer
        rows.append([label, found.config["name"][:44], found.config["resolution"],
                     b(lbl.layer_macs), b(lbl.arena_bytes), b(q.arena_bytes),
                     b(q.arena_excl_io_bytes), f"{q.macs_overhead:.3f}",
                     b(device["arena_bytes"]), "yes" if device["arena_bytes"] == q.arena_bytes
                     else "NO", b(q.flash_bytes), b(device["flash_bytes"]),
                     b(device["instructions"]), "yes" if device["exact"] else "NO",
                     f"{search_s:.0f}"])
        print(f"   {label}: {found.config['name']} {found.query.schedule.describe()}",
              flush=True)
    print(table(["budget", "network", "r", "MACs", "LBL arena", "arena", "arena_excl_io",
                 "MAC x", "firmware arena", "= oracle", "Flash (oracle)", "Flash (linked)",
                 "instructions", "bit-exact", "s"], rows))
    print()


def on_emulator(found, out) -> dict:
    """Builds the winner's .tflite with its schedule for the STM32F746 (on the emulator),
    runs two inputs against TFLite Micro."""
    import tvm_patch
    from tvm_patch import mcu, reference
    from tvm_patch.schedule import read_schedule
    with open(found.paths["tflite"], "rb") as f:
        data = f.read()
    mod = tvm_patch.load(data)
    fw = mcu.compile(mod, "qemu-m7", os.path.join(out, "firmware"),
                     schedule=read_schedule(found.paths["schedule"]))
    rng, exact = np.random.default_rng(0), True
    with mcu.Session(os.path.join(out, "firmware")) as session:
        for _ in range(2):
            x = rng.integers(-128, 128, (1, found.config["resolution"],
                                         found.config["resolution"], 3)).astype(np.int8)
            exact &= all(np.array_equal(a, r) for a, r in
                         zip(session.run_model(x), reference.run(data, [x])))
        instructions = session.counters.instructions
    return {"arena_bytes": fw.arena_bytes, "flash_bytes": fw.flash_bytes,
            "instructions": instructions, "exact": exact}


def predictor(records_dir: str) -> None:
    """Fits the oracle's instructions-per-MAC and per-output-element table (oracle.py's
    INSTRUCTIONS) to the default points of the tuner's records (schedules/), per operator
    kind, and prints each model's predicted against measured instructions."""
    import json

    from tvm_patch.frontend import read
    from tvm_patch.nas.oracle import INSTRUCTIONS, kind_of
    from tvm_patch.kernels.ops import macs as op_macs
    configs = os.path.join(patch.DEFAULT_MODELS, "configs")
    models = {"mcunet-10fps": "mcunet-10fps_imagenet.json",
              "mcunet-5fps": "mcunet-5fps_imagenet.json",
              "proxyless-w0.3-r176": "proxyless-w0.3-r176_imagenet.json",
              "mcunet-320kb": "mcunet-320kb-1mb_imagenet.json",
              "mcunet-vww1": None, "mlperf-vww-mobilenetv1-0.25-96": None, "demo": None}
    rows, samples = [], {}
    for name, config in models.items():
        path = os.path.join(records_dir, name + ".jsonl")
        if not os.path.exists(path) or not os.path.getsize(path):
            continue
        with open(path) as f:
            first = json.loads(f.readline())  # the default point, measured first
        if config:
            graph = nas.graph_of(os.path.join(configs, config))
        elif name == "demo":
            from tvm_patch import zoo
            graph = read(zoo.build("demo"))
        else:
            graph = read(os.path.join(patch.DEFAULT_MODELS, name + ".tflite"))
        measured = {int(u["unit"].split()[1]): u["instructions"] for u in first["units"]
                    if u["unit"].startswith("op ")}
        predicted = 0
        for pos, n in measured.items():
            op = graph.ops[pos]
            kind = kind_of(op, graph)
            x = (op_macs(op, graph), float(np.prod(graph.t(op.outputs[0]).shape)))
            samples.setdefault(kind, []).append((x, n))
            a, c = INSTRUCTIONS.get(kind, (0.0, 10.0))
            predicted += a * x[0] + c * x[1]
        rows.append([name, b(sum(measured.values())), b(int(predicted)),
                     f"{predicted / sum(measured.values()):.3f}"])
    fit = []
    for kind, pts in sorted(samples.items()):
        x = np.array([p[0] for p in pts], float)
        y = np.array([p[1] for p in pts], float)
        coef = np.linalg.lstsq(x, y, rcond=None)[0] if x[:, 0].any() else [-1]
        if min(coef) < 0:  # too few layers to tell the terms apart: one term
            only = 0 if x[:, 0].any() else 1
            k = float(x[:, only] @ y / (x[:, only] @ x[:, only]))
            coef = [k, 0.0] if only == 0 else [0.0, k]
        fit.append([kind, len(pts), f"{coef[0]:.3f}", f"{coef[1]:.2f}",
                    str(INSTRUCTIONS.get(kind))])
    print("5. The oracle's instruction predictor against the default points the tuner "
          "measured (schedules/)\n")
    print(table(["model", "measured", "predicted", "ratio"], rows))
    print("\n" + table(["kind", "layers", "fit: per MAC", "fit: per output", "oracle's"],
                        fit))
    print()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--generations", type=int, default=20)
    parser.add_argument("--population", type=int, default=100)
    parser.add_argument("--space-samples", type=int, default=30)
    parser.add_argument("--sections", default="12345")
    args = parser.parse_args()
    if "1" in args.sections:
        oracle_speed()
    if "2" in args.sections:
        proxies()
    if "3" in args.sections:
        spaces(args.space_samples)
    if "4" in args.sections:
        searches(args.generations, args.population)
    if "5" in args.sections:
        from tvm_patch.schedule.records import DEFAULT_DIR
        predictor(DEFAULT_DIR)
    return 0


if __name__ == "__main__":
    sys.exit(main())
