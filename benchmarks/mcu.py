"""The models on the Cortex-M7 emulator (qemu-system-arm -M mps2-an500 -cpu cortex-m7), built
as STM32F746 firmware (RAM 320 KB, Flash 1 MB): layer by layer, with the schedule the patch
pass picks ("auto") and with FIXED schedules, each run once through a host-driven session
and checked bit-exact against TFLite Micro.

    python benchmarks/mcu.py [--quick] [--models DIR]
    python benchmarks/mcu.py --layers "demo (zoo)"      # per layer and kind, one model

Accounting rules (bytes):
  Flash       .isr_vector + .text (code, rodata, weights) + .ARM.exidx + .data initializers,
              from arm-none-eabi-size -A of the linked ELF
  static RAM  .data + .bss of the ELF (the arena included, the stack region not)
  arena       the .bss.tvmp_arena section in the linker map (equal to the memory plan's arena)
  stack       high-water mark of the stack during one inference, by painting (whole firmware:
              protocol server frames included)
  instr       guest instructions per inference counted by the emulator's TCG plugin
              (instructions, NOT cycles: QEMU does not model the M7 pipeline or memories)
  TFLM arena  TFLite Micro's activation arena for the same model (its recording allocator's
              `head`), the peer runtime
  CMSIS-NN    instructions of one Invoke() of TFLite Micro with ARM's CMSIS-NN kernels on the
              same emulated Cortex-M7, same input (../shared/peers/tflm-m7/run); "x" is ours
              over it
  x own LBL   instructions over our own layer-by-layer firmware's (the fused blocks' cost)

Schedules: layer by layer, `auto` (PatchBasedInference()), and FIXED ones per model.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import patch  # noqa: E402  (models, table helpers; also puts the checkout on sys.path)
from patch import Bench, b, table  # noqa: E402

from tvm_patch import mcu, reference  # noqa: E402
from tvm_patch.graph import ModelError  # noqa: E402
from tvm_patch.passes import PatchBasedInference  # noqa: E402

patch.MODELS.update({
    "mlperf-ic resnet8 r32": ("tflite", "mlperf-ic-resnet8-32.tflite"),
    "mlperf-kws ds-cnn": ("tflite", "mlperf-kws-dscnn.tflite"),
    "proxyless-w0.3-r176": ("config", "proxyless-w0.3-r176_imagenet.json"),
    "resnet8 (zoo)": ("zoo", "resnet8", None, None),
    "demo (zoo)": ("zoo", "demo", None, None),
})
MODELS = ["mcunet-vww1 r80", "mlperf-vww mbv1-0.25 r96", "mlperf-ic resnet8 r32",
          "mlperf-kws ds-cnn", "mbv2-w0.35-r144 (zoo)", "mcunet-10fps r48", "mcunet-5fps r96",
          "mcunet-in3 (320kb-1mb) r176", "proxyless-w0.3-r176", "resnet8 (zoo)", "demo (zoo)",
          "detector r128x160 (zoo)", "mbv2-w1.0-r224 (zoo)"]
QUICK = ["mlperf-ic resnet8 r32", "demo (zoo)"]
# fixed schedules beside "auto" (PatchBasedInference's arguments): the P=2 K=5 point
FIXED = {"mcunet-vww1 r80": [("P=2 K=5", dict(split=5, patches=2, objective="arena_excl_io"))]}


def schedules(label: str) -> list:
    """(name, PatchBasedInference arguments or None for layer by layer) to run."""
    return [("layer by layer", None), ("patch-based (auto)", {}), *FIXED.get(label, [])]


def conv_kind(layer: dict, first: bool = False, detailed: bool = False) -> str | None:
    """The layer's row in the per-kind tables; `detailed` (one model's): depthwise by
    kernel size, and the model's first convolution (`first`) apart."""
    if layer["kind"] == "depthwise_conv2d":
        return f"depthwise {layer['weights'][1]}x{layer['weights'][2]}" if detailed \
            else "depthwise"
    if layer["kind"] == "conv2d" and layer["weights"]:
        _, kh, kw, _ = layer["weights"]
        kind = "pointwise 1x1" if kh == kw == 1 else f"conv {kh}x{kw}"
        return f"first {kind}" if detailed and first else kind
    return None


def kinds_table(kinds: dict) -> str:
    return table(["kind", "instructions", "MACs", "instr/MAC", "CMSIS-NN instr/MAC",
                  "x CMSIS-NN"],
                 [[k, b(n), b(m), f"{n / m:.2f}", f"{p / pm:.2f}" if pm else "",
                   f"{(n / m) / (p / pm):.2f}" if pm else ""]
                  for k, (n, m, p, pm) in sorted(kinds.items())])


def run_one(bench: Bench, label: str, schedule: dict | None, kinds: dict,
            detailed: bool = False):
    entry = bench.model(label)
    src = bench.source(label)
    data = src if isinstance(src, bytes) else open(src, "rb").read()
    patched = schedule is not None
    mod = PatchBasedInference(**schedule)(entry["mod"]) if patched else entry["mod"]
    with tempfile.TemporaryDirectory(prefix="tvmp-bench-") as tmp:
        t = time.perf_counter()
        try:
            fw = mcu.compile(mod, "qemu-m7", tmp)
        except ModelError as e:
            return None, str(e).splitlines()[0]
        build_s = time.perf_counter() - t
        with mcu.Session(tmp) as session:
            spec = session.project["inputs"][0]
            rng = np.random.default_rng(0)
            x = (rng.uniform(-1, 1, spec["shape"]).astype(np.float32)
                 if spec["dtype"] == "float32" else
                 rng.integers(-128, 128, spec["shape"]).astype(spec["dtype"]))
            out = session.run_model(x)
            peer, peer_layers = peer_instructions(bench.models_dir, data, x) \
                if not patched else (None, {})
            c = session.counters
            layers = session.project["layers"]
    ref = reference.run(data, [x])
    exact = len(out) == len(ref) and all(np.array_equal(a, r) for a, r in zip(out, ref))
    macs = sum(layer["macs"] for layer in layers)
    first = next((k for k, layer in enumerate(layers) if layer["kind"] == "conv2d"), None)
    for k, (layer, n) in enumerate(zip(layers, c.layer_instructions)):
        kind = conv_kind(layer, k == first, detailed)
        if kind and not patched:
            k = kinds.setdefault(kind, [0, 0, 0, 0])  # ours, MACs, CMSIS-NN, its MACs
            k[0] += n
            k[1] += layer["macs"]
            if layer.get("index") in peer_layers:
                k[2] += peer_layers[layer["index"]]
                k[3] += layer["macs"]
    return {"fw": fw, "instructions": c.instructions, "stack": c.stack_bytes, "macs": macs,
            "exact": exact, "build_s": build_s, "layers": layers,
            "layer_instructions": c.layer_instructions, "peer": peer}, None


def peer_instructions(models_dir: str, data: bytes, x) -> tuple:
    """TFLite Micro + CMSIS-NN's instructions for one inference on the same input and per
    operator ({TFLite operator index: instructions}), or (None, {}) when the peer tool is not
    beside the models."""
    tool = os.path.join(os.path.dirname(os.path.abspath(models_dir)), "peers", "tflm-m7", "run")
    if not os.path.exists(tool):
        return None, {}
    with tempfile.TemporaryDirectory(prefix="tvmp-peer-") as tmp:
        model, inp = os.path.join(tmp, "m.tflite"), os.path.join(tmp, "x.npy")
        with open(model, "wb") as f:
            f.write(data)
        np.save(inp, x)
        out = subprocess.run([tool, "--kernels", "cmsis-nn", "--layers", model, inp],
                             capture_output=True, text=True, timeout=900)
    lines = out.stdout.strip().splitlines()
    if not lines:
        return None, {}
    result = json.loads(lines[-1])
    return result.get("instructions"), {layer["index"]: layer["instructions"]
                                        for layer in result.get("layer_instructions", [])}


def per_layer(bench: Bench, label: str) -> int:
    """Instructions per layer, layer by layer and patch-based, for one model, and per
    kind beside TFLite Micro + CMSIS-NN."""
    kinds = {}
    for sched, schedule in schedules(label):
        result, why = run_one(bench, label, schedule, kinds, detailed=True)
        if result is None:
            print(f"{label}, {sched}: {why}\n")
            continue
        rows = [[k, layer["func"], b(layer["macs"]), b(n),
                 f"{n / layer['macs']:.2f}" if layer["macs"] else "-"]
                for k, (layer, n) in enumerate(zip(result["layers"],
                                                   result["layer_instructions"]))]
        print(f"{label}, {sched}: {b(result['instructions'])} instructions, "
              f"bit-exact {'yes' if result['exact'] else 'NO'}\n")
        print(table(["#", "kernel", "MACs", "instructions", "instr/MAC"], rows, left=(1,)))
        print()
    if kinds:
        print(f"{label}, layer by layer, per kind beside TFLite Micro + CMSIS-NN:\n")
        print(kinds_table(kinds))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"only {', '.join(QUICK)}")
    parser.add_argument("--models", default=patch.DEFAULT_MODELS)
    parser.add_argument("--layers", metavar="MODEL", choices=MODELS,
                        help="per-layer instructions of one model instead")
    args = parser.parse_args()
    bench = Bench(args.models)
    if args.layers:
        return per_layer(bench, args.layers)
    labels = [m for m in (QUICK if args.quick else MODELS) if bench.available(m)]
    rows, kinds, failures, notes = [], {}, 0, []
    for label in labels:
        data = bench.source(label)
        data = data if isinstance(data, bytes) else open(data, "rb").read()
        try:
            tflm = b(reference.arena(data)["head"])
        except Exception as e:  # noqa: BLE001  (TFLite Micro may refuse a model)
            tflm = f"n/a ({type(e).__name__})"
        peer = own = None
        for sched, schedule in schedules(label):
            result, why = run_one(bench, label, schedule, kinds)
            peer = result["peer"] if result and schedule is None else peer
            own = result["instructions"] if result and schedule is None else own
            if result is None:
                notes.append(f"[{len(notes) + 1}] {label}, {sched}: {why}")
                rows.append([label, sched, f"does not fit [{len(notes)}]", "", "", "", "", "",
                             "", "", tflm, "", "", ""])
                continue
            fw = result["fw"]
            failures += not result["exact"]
            rows.append([label, sched, b(fw.arena_bytes), b(fw.flash_bytes),
                         b(fw.static_ram_bytes), b(result["stack"]), b(result["instructions"]),
                         f"{result['instructions'] / max(result['macs'], 1):.2f}",
                         "yes" if result["exact"] else "NO", f"{result['build_s']:.1f}", tflm,
                         b(peer) if peer else "", f"{result['instructions'] / peer:.2f}"
                         if peer else "", f"{result['instructions'] / own:.2f}" if own else ""])
            print(f"  {label}, {sched}: done", file=sys.stderr, flush=True)
    print("Cortex-M7 emulator, STM32F746 budget (RAM 327,680 B, Flash 1,048,576 B); "
          "instructions, not cycles\n")
    print(table(["model", "schedule", "arena B", "Flash B", "static RAM B", "stack B",
                 "instr/inference", "instr/MAC", "bit-exact", "build s", "TFLM arena B",
                 "CMSIS-NN instr", "x CMSIS-NN", "x own LBL"],
                rows, left=(0, 1)))
    print("\n".join([""] + notes))
    print("\nInstructions per MAC by convolution kind (layer by layer, all models above; "
          "CMSIS-NN: the same operators under TFLite Micro + CMSIS-NN):\n")
    print(kinds_table(kinds))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
