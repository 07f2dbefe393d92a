"""Patch-based inference per model: the layer-by-layer baseline, the schedule the "auto"
search picks under a MAC cap for each objective, the fixed schedules of the MCUNetV2 paper
and of the issue, the anchors of the literature beside ours, and the compile time of the
whole pipeline.

    python benchmarks/patch.py [--quick] [--models DIR] [--mac-cap 1.2]

Accounting rules (bytes; 1 kB = 1024 B):
  arena           the one static arena the generated code uses: model input and output,
                  intermediates, tile buffers, kernel scratch (plan over tensor lifetimes)
  arena_excl_io   the same plan without the model input and output buffers (how TVM's
                  workspace, msf-CNN, TinyEngine and MCUNetV2's 172 kB figure count)
  paper_analytic  MCUNetV2's rule: per layer input + output, depthwise in place, residual
                  shortcut not counted; in the patch stage per tile, plus the full stage output
MAC factors: "net" = whole network MACs / layer-by-layer MACs; "stage" = the patch stage's
loop nest (halos recomputed) / the same operators run layer by layer.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # benchmark the checkout this script belongs to
os.environ.setdefault("TVM_PATCH_CACHE", "off")  # compile seconds are measured afresh

import tvm_patch  # noqa: E402
from tvm_patch import zoo  # noqa: E402
from tvm_patch import load  # noqa: E402
from tvm_patch.passes.emit import graph_of  # noqa: E402
from tvm_patch.passes import PatchBasedInference, cost_of  # noqa: E402
from tvm_patch.schedule import parse  # noqa: E402
from tvm_patch.schedule.cost import CostModel  # noqa: E402

DEFAULT_MODELS = os.environ.get("TVM_PATCH_MODELS",
                                os.path.join(os.path.dirname(ROOT), "shared", "models"))

# label -> where the model comes from: ("zoo", name, resolution, width), ("tflite", file)
# or ("config", file in configs/). The zoo's MobileNetV2 rounds channels its own way; the
# mit-han-lab config of the same net is listed too.
MODELS = {
    "mcunet-vww1 r80": ("tflite", "mcunet-vww1.tflite"),
    "mbv2-w0.35-r144 (zoo)": ("zoo", "mobilenetv2", 144, 0.35),
    "mbv2-w0.35-r144 (config)": ("config", "mbv2-w0.35-r144_imagenet.json"),
    "mcunet-10fps r48": ("config", "mcunet-10fps_imagenet.json"),
    "mlperf-vww mbv1-0.25 r96": ("tflite", "mlperf-vww-mobilenetv1-0.25-96.tflite"),
    "mcunet-5fps r96": ("config", "mcunet-5fps_imagenet.json"),
    "mcunet-in3 (320kb-1mb) r176": ("config", "mcunet-320kb-1mb_imagenet.json"),
    "mbv2-w1.0-r224 (zoo)": ("zoo", "mobilenetv2", 224, 1.0),
    "detector r128x160 (zoo)": ("zoo", "detector", None, None),
}
QUICK = ["mcunet-vww1 r80", "mbv2-w0.35-r144 (zoo)", "mcunet-10fps r48",
         "detector r128x160 (zoo)"]

# GUIDE section 9: per-layer figures, then patch-based ones as
# (model, who, bytes, whole-network MAC factor or None, our rule to compare with)
PER_LAYER_ANCHORS = {
    "mcunet-vww1 r80": "TinyEngine arena 93,992 (vs arena_excl_io)",
    "mbv2-w0.35-r144 (zoo)": "msf-CNN 194,400 (vs arena_excl_io)",
    "mbv2-w0.35-r144 (config)": "msf-CNN 194,400 (vs arena_excl_io)",
    "mcunet-in3 (320kb-1mb) r176": "msf-CNN 309,760 (vs arena_excl_io)",
    "mbv2-w1.0-r224 (zoo)": "paper rule 1372 kB (vs paper_analytic)",
}
PATCH_ANCHORS = [
    ("mcunet-vww1 r80", "TinyEngine p=2, 5 ops", 62_352, 1.0285, "arena_excl_io"),
    ("mcunet-vww1 r80", "msf-CNN", 26_240, 1.11, "arena_excl_io"),
    ("mbv2-w0.35-r144 (zoo)", "msf-CNN", 21_389, 1.30, "arena_excl_io"),
    ("mbv2-w0.35-r144 (config)", "msf-CNN", 21_389, 1.30, "arena_excl_io"),
    ("mcunet-in3 (320kb-1mb) r176", "msf-CNN", 94_224, 1.45, "arena_excl_io"),
    ("mcunet-in3 (320kb-1mb) r176", "MCUNetV2 (~215 kB)", 215 * 1024, None, "arena_excl_io"),
    ("mbv2-w1.0-r224 (zoo)", "MCUNetV2 p=4, 5 blocks", 172 * 1024, None, "paper_analytic"),
]
# fixed schedules: (label, patches, split, objective, what the paper / issue reports); the
# objective picks between quantizing tiles in the stage and quantizing the input first
FIXED = [
    ("mbv2-w1.0-r224 (zoo)", 4, 12, "arena",
     "MCUNetV2: paper rule 1372 kB -> 172 kB, stage MACs +42% (+18% redistributed)"),
    ("mcunet-vww1 r80", 2, 5, "arena_excl_io",
     "TinyEngine: 62,352 B (vs arena_excl_io), +2.85% MACs"),
]
COMPILE_MODEL = ("mcunet-vww1 r80", 2, 5)


def table(header: list, rows: list, left=(0,)) -> str:
    """A plain-text table: the `left` columns left-aligned, the others right-aligned."""
    cells = [[str(c) for c in row] for row in [header] + rows]
    widths = [max(len(row[k]) for row in cells) for k in range(len(header))]

    def line(row):
        return "  ".join(c.ljust(w) if k in left else c.rjust(w)
                         for k, (c, w) in enumerate(zip(row, widths))).rstrip()
    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(cells[0]), rule] + [line(r) for r in cells[1:]])


def b(n: int) -> str:
    return f"{n:,}"


def kb(n: int) -> str:
    return f"{n / 1024:.1f} kB"


def pct(new: int, old: int) -> str:
    return f"{100 * (new - old) / old:+.1f}%"


def hw(shape) -> str:
    return "x".join(str(int(d)) for d in shape)


class Bench:
    """Loads each model once and keeps its module, graph and layer-by-layer profile."""

    def __init__(self, models_dir: str):
        self.models_dir = models_dir
        self.cache = {}

    def source(self, label: str):
        kind, *args = MODELS[label]
        if kind == "zoo":
            name, resolution, width = args
            return zoo.build(name, resolution=resolution, width=width)
        sub = "configs" if kind == "config" else ""
        path = os.path.join(self.models_dir, sub, args[0])
        return zoo.build(path) if kind == "config" else path

    def available(self, label: str) -> bool:
        kind, *args = MODELS[label]
        sub = "configs" if kind == "config" else ""
        return kind == "zoo" or os.path.exists(os.path.join(self.models_dir, sub, args[0]))

    def model(self, label: str) -> dict:
        if label not in self.cache:
            t = time.perf_counter()
            src = self.source(label)
            t_source = time.perf_counter() - t
            t = time.perf_counter()
            mod = load(src)
            t_load = time.perf_counter() - t
            self.cache[label] = {"mod": mod, "graph": graph_of(mod), "source_s": t_source,
                                 "load_s": t_load, "profile": tvm_patch.profile(mod),
                                 "patched": {}}
        return self.cache[label]

    def patched(self, label: str, split="auto", patches="auto", cap=1.2, objective="arena"):
        """(stage attribute, profile, pass seconds) of one schedule, cached."""
        entry = self.model(label)
        key = (split, patches, cap, objective)
        if key not in entry["patched"]:
            t = time.perf_counter()
            pm = PatchBasedInference(split=split, patches=patches, max_mac_overhead=cap,
                                     objective=objective)(entry["mod"])
            seconds = time.perf_counter() - t
            attr = cost_of(pm)
            entry["patched"][key] = (attr, tvm_patch.profile(pm), seconds)
        return entry["patched"][key]


def schedule(attr: dict) -> tuple:
    blocks = attr["blocks"]
    if not blocks:
        return "layer by layer", "-"
    if len(blocks) == 1 and blocks[0]["halo"] == ["recompute", "recompute"]:
        return f"{hw(blocks[0]['grid'])}, {len(blocks[0]['ops'])} ops", \
            hw(blocks[0]["input_tile_hw"])
    cached = sum("cache" in b["halo"] for b in blocks)
    return f"{len(blocks)} blocks ({cached} cached)", hw(blocks[0]["input_tile_hw"])


def stage_macs(attr: dict) -> str:
    return f"{max((b['macs_overhead'] for b in attr['blocks']), default=1.0):.3f}"


def quantize_first(attr: dict) -> bool:
    return bool(attr["schedule"]) and attr["schedule"]["blocks"][0]["first"] == 1


def consistency(label: str, what: str, attr: dict, prof) -> list:
    """The pass's planned numbers must be what the emitted module's plan gives."""
    issues = []
    for key, got in (("arena_bytes", prof.arena_bytes),
                     ("arena_excl_io_bytes", prof.arena_excl_io_bytes), ("macs", prof.macs)):
        if attr[key] != got:
            issues.append(f"{label} {what}: pass attribute {key}={attr[key]:,} but "
                          f"profile of the emitted module gives {got:,}")
    return issues


def layer_by_layer(bench: Bench, labels: list) -> None:
    rows = []
    for label in labels:
        m = bench.model(label)
        p, g = m["profile"], m["graph"]
        rows.append([label, hw(g.t(g.inputs[0]).shape) + " " + g.t(g.inputs[0]).dtype,
                     b(p.arena_bytes), b(p.arena_excl_io_bytes), b(p.paper_analytic_bytes),
                     b(p.macs), f"{m['source_s']:.1f}", f"{m['load_s']:.1f}",
                     PER_LAYER_ANCHORS.get(label, "")])
    print("Layer by layer (bytes)")
    print(table(["model", "input", "arena", "arena_excl_io", "paper_analytic", "MACs",
                 "zoo s", "load s", "per-layer anchor"], rows, left=(0, 8)))


def auto(bench: Bench, labels: list, cap: float, issues: list) -> None:
    for objective in ("arena", "arena_excl_io"):
        rows, notes = [], []
        for label in labels:
            attr, prof, seconds = bench.patched(label, cap=cap, objective=objective)
            base = bench.model(label)["profile"]
            sched, tile = schedule(attr)
            issues += consistency(label, f"auto/{objective}", attr, prof)
            rows.append([label, sched, tile, b(prof.arena_bytes),
                         pct(prof.arena_bytes, base.arena_bytes),
                         b(prof.arena_excl_io_bytes),
                         pct(prof.arena_excl_io_bytes, base.arena_excl_io_bytes),
                         b(prof.paper_analytic_bytes), f"{attr['macs_overhead']:.3f}",
                         stage_macs(attr), f"{seconds:.1f}"])
            if attr["note"]:
                rows[-1][1] += " *"
                notes.append(f"  * {label}: {attr['note']}")
        print(f"\nPatch-based, auto (the front plus one-block schedules), net MAC factor <= {cap}, objective "
              f"'{objective}' (bytes; % vs layer by layer)")
        print(table(["model", "schedule", "input tile", "arena", "change", "arena_excl_io",
                     "change", "paper_analytic", "MAC x net", "MAC x block (max)", "search s"],
                    rows, left=(0, 1)))
        if notes:
            print("\n".join(notes))


def anchors(bench: Bench, labels: list, cap: float) -> None:
    """Each literature figure beside ours under the same rule, at our cap and at the
    anchor's own MAC factor (when it gives one)."""
    rows = []
    for label, who, nbytes, factor, rule in PATCH_ANCHORS:
        if label not in labels:
            continue
        key = {"arena_excl_io": "arena_excl_io_bytes",
               "paper_analytic": "paper_analytic_bytes"}[rule]
        ours = []
        for c in (cap, factor):
            if c is None:
                ours += ["", ""]
                continue
            attr, prof, _ = bench.patched(label, cap=c, objective="arena_excl_io")
            ours += [f"{b(getattr(prof, key))} ({schedule(attr)[0]}, {attr['macs_overhead']:.3f}x)",
                     pct(getattr(prof, key), nbytes)]
        rows.append([label, who, rule, f"{b(nbytes)} ({kb(nbytes)})",
                     f"{factor:g}x" if factor else "-", *ours])
    print("\nAnchors (GUIDE section 9) beside ours, same rule; ours searched with objective "
          "'arena_excl_io'")
    print(table(["model", "anchor", "rule", "anchor bytes", "anchor MAC x",
                 f"ours, cap {cap}", "vs anchor", "ours, cap = anchor's MAC x", "vs anchor"],
                rows, left=(0, 1, 2)))
    print("  MCUNetV2's figures are compared without a MAC cap of their own; its MobileNetV2 "
          "schedule (P=4, 5 blocks) is among the fixed schedules below.")


def fixed(bench: Bench, labels: list, issues: list) -> None:
    print("\nFixed schedules (bytes)")
    for label, patches, split, objective, paper in FIXED:
        if label not in labels:
            continue
        m = bench.model(label)
        attr, prof, _ = bench.patched(label, split=split, patches=patches, objective=objective)
        issues += consistency(label, f"P={patches} K={split}", attr, prof)
        stage = CostModel(m["graph"]).stages(parse(json.dumps(attr["schedule"])))[0]
        base = m["profile"]
        out = m["graph"].t(stage.output)
        kinds = [op.kind for op in stage.ops]
        fused = ", ".join(f"{k} x{kinds.count(k)}" for k in dict.fromkeys(kinds))
        print(f"\n{label}, P={patches} K={split} (objective {objective}): fused {fused}; "
              f"stage output "
              f"{hw(out.shape)}, input tile {hw(stage.input_tile_hw)}, tile buffers "
              f"{b(stage.workspace)} B")
        print(f"  paper / issue: {paper}")
        if stage.input in m["graph"].inputs:
            t = m["graph"].t(stage.input)
            print(f"  the stage reads the model input itself ({b(t.nbytes)} B {t.dtype}): it "
                  f"stays live until the last tile (in arena, not in arena_excl_io)")
        rows = [[rule, b(before), b(after), kb(before) if rule != "MACs" else "",
                 kb(after) if rule != "MACs" else "", pct(after, before)]
                for rule, before, after in (
                    ("arena", base.arena_bytes, prof.arena_bytes),
                    ("arena_excl_io", base.arena_excl_io_bytes, prof.arena_excl_io_bytes),
                    ("paper_analytic", base.paper_analytic_bytes, prof.paper_analytic_bytes),
                    ("MACs", base.macs, prof.macs))]
        print(table(["rule", "layer by layer", "patched", "layer by layer", "patched",
                     "change"], rows))
        net = attr["macs_overhead"]
        print(f"  MAC factor: net {net:.4f} ({100 * (net - 1):+.2f}%), "
              f"stage {stage.mac_overhead:.4f} ({100 * (stage.mac_overhead - 1):+.2f}%)")
        peak = max(prof.layers, key=lambda layer: layer.paper_bytes)
        print(f"  paper_analytic: the stage's own (per tile + full stage output) "
              f"{b(stage.paper_bytes)} B; the network's peak {b(peak.paper_bytes)} B is at "
              f"{peak.kind} -> {hw(peak.output)}")


def float_input(bench: Bench, labels: list) -> None:
    """A float input image and the arena: quantized tile by tile inside the stage (the
    float image lives until the last tile), quantized first (float and int8 images live
    together once), or int8 I/O (the QUANTIZE and DEQUANTIZE removed, io_type="int8")."""
    label, patches, split = COMPILE_MODEL
    if label not in labels:
        return
    rows = []
    for how, objective in (("QUANTIZE inside the stage", "arena_excl_io"),
                           ("QUANTIZE first, then the stage", "arena")):
        attr, prof, _ = bench.patched(label, split=split, patches=patches, objective=objective)
        rows.append([how, b(prof.arena_bytes), b(prof.arena_excl_io_bytes),
                     str(quantize_first(attr))])
    int8 = load(bench.source(label), io_type="int8")
    base = tvm_patch.profile(int8)
    prof = tvm_patch.profile(PatchBasedInference(split=split, patches=patches)(int8))
    rows.append(["io_type=int8, layer by layer", b(base.arena_bytes),
                 b(base.arena_excl_io_bytes), "-"])
    rows.append(["io_type=int8", b(prof.arena_bytes), b(prof.arena_excl_io_bytes), "-"])
    x = graph_of(int8).t(graph_of(int8).inputs[0])
    print(f"\nFloat input, {label} P={patches} K={split} (bytes; the int8 input is "
          f"{b(x.nbytes)} B)")
    print(table(["input", "arena", "arena_excl_io", "quantize_first"], rows))


def compile_time(bench: Bench) -> None:
    label, patches, split = COMPILE_MODEL
    src = bench.source(label)
    t0 = time.perf_counter()
    mod = load(src)
    t1 = time.perf_counter()
    pm = PatchBasedInference(split=split, patches=patches)(mod)
    t2 = time.perf_counter()
    tvm_patch.build(pm)
    t3 = time.perf_counter()
    print(f"\nCompile time, {label} P={patches} K={split} (fresh load, host LLVM; seconds, "
          f"{os.cpu_count()} cores)")
    print(table(["step", "s"], [["load (.tflite -> Relax)", f"{t1 - t0:.1f}"],
                                ["PatchBasedInference", f"{t2 - t1:.1f}"],
                                ["tvm_patch.build (host compile)", f"{t3 - t2:.1f}"],
                                ["total", f"{t3 - t0:.1f}"]]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=DEFAULT_MODELS, help="the shared models directory")
    parser.add_argument("--quick", action="store_true",
                        help=f"only {', '.join(QUICK)}; no compile timing")
    parser.add_argument("--mac-cap", type=float, default=1.2,
                        help="largest whole-network MAC factor the auto search may pick")
    args = parser.parse_args()
    start = time.perf_counter()
    bench = Bench(args.models)
    labels = QUICK if args.quick else list(MODELS)
    missing = [lb for lb in labels if not bench.available(lb)]
    labels = [lb for lb in labels if lb not in missing]
    print(__doc__.split("\n\n", 2)[2].strip())
    print(f"models: {args.models}" + (f" (missing, skipped: {', '.join(missing)})"
                                      if missing else ""))
    print()
    issues: list = []
    layer_by_layer(bench, labels)
    auto(bench, labels, args.mac_cap, issues)
    anchors(bench, labels, args.mac_cap)
    fixed(bench, labels, issues)
    float_input(bench, labels)
    if not args.quick and bench.available(COMPILE_MODEL[0]):
        compile_time(bench)
    print("\nConsistency (pass attribute vs profile of the emitted module): "
          + ("all equal" if not issues else "\n  " + "\n  ".join(issues)))
    print(f"\nTotal runtime {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
