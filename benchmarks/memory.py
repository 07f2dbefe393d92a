"""Per model: our arena under each accounting rule, MACs and compile time, beside TFLite
Micro's arena for the same .tflite and the anchors of the literature.

    python benchmarks/memory.py [--models DIR] [--skip-slow]

Accounting rules (bytes, 1 kB = 1024 B):
  arena          the one static arena the generated code uses: input, output,
                 intermediates, kernel scratch (greedy placement over tensor lifetimes)
  arena_excl_io  the same plan without the model input and output
  paper          MCUNetV2's analytic rule: per layer in + out, depthwise in place,
                 residual shortcut not counted
  TFLM head      TFLite Micro's activation arena (RecordingMicroAllocator 'head')
  TFLM total     head + TFLite Micro's persistent interpreter structures ('tail')
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("TVM_PATCH_CACHE", "off")  # compile seconds are measured afresh
import tvm_patch  # noqa: E402
from tvm_patch import reference, zoo  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_MODELS = os.path.join(os.path.dirname(os.path.dirname(HERE)), "shared", "models")

# per-layer anchors (GUIDE section 9); msf-CNN counts TVM's workspace (compare arena_excl_io)
ANCHORS = {
    "mcunet-vww1": "TinyEngine arena 93,992",
    "mbv2-w0.35-r144": "msf-CNN workspace 194,400",
    "mcunet-in3 (320kb-1mb) r176": "msf-CNN workspace 309,760",
    "mbv2-w1.0-r224": "paper rule 1372 kB (1,404,928)",
}


def models(shared_dir: str, skip_slow: bool):
    for name in ["mcunet-vww1", "mlperf-vww-mobilenetv1-0.25-96", "mlperf-ic-resnet8-32",
                 "mlperf-kws-dscnn"]:
        path = os.path.join(shared_dir, name + ".tflite")
        if os.path.exists(path):
            with open(path, "rb") as f:
                yield name, f.read()
    yield "demo (zoo)", zoo.build("demo")
    yield "resnet8 (zoo)", zoo.build("resnet8")
    configs = {"mbv2-w0.35-r144": "mbv2-w0.35-r144", "mcunet-in3 (320kb-1mb) r176":
               "mcunet-320kb-1mb", "mcunet-5fps r96": "mcunet-5fps",
               "mcunet-10fps r48": "mcunet-10fps", "proxyless-w0.3-r176": "proxyless-w0.3-r176"}
    for label, cfg in configs.items():
        path = os.path.join(shared_dir, "configs", f"{cfg}_imagenet.json")
        if os.path.exists(path):
            yield label, zoo.build(path)
    if not skip_slow:
        yield "mbv2-w1.0-r224", zoo.build("mobilenetv2", width=1.0, resolution=224)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", default=DEFAULT_MODELS)
    parser.add_argument("--skip-slow", action="store_true")
    args = parser.parse_args()
    cols = ["model", "arena", "arena_excl_io", "paper", "MACs", "TFLM head", "TFLM total",
            "arena - TFLM head", "import+plan s", "compile s", "anchor (per-layer)"]
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for name, data in models(args.models, args.skip_slow):
        t = time.time()
        mod = tvm_patch.load(data)
        prof = tvm_patch.profile(mod)
        t_import = time.time() - t
        t = time.time()
        tvm_patch.build(mod)
        t_compile = time.time() - t
        tflm = reference.arena(data)
        row = [name, f"{prof.arena_bytes:,}", f"{prof.arena_excl_io_bytes:,}",
               f"{prof.paper_analytic_bytes:,}", f"{prof.macs:,}", f"{tflm['head']:,}",
               f"{tflm['total']:,}", f"{prof.arena_bytes - tflm['head']:+,}",
               f"{t_import:.1f}", f"{t_compile:.1f}", ANCHORS.get(name, "")]
        print("| " + " | ".join(row) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
