"""The `tvm-patch` command line."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

from .graph import ModelError


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="tvm-patch", description=(
        "Compile int8 TinyML CNNs with Apache TVM (Relax/TIR) into one static arena."))
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("profile", help="per-layer memory and MACs, peaks under each rule")
    p.add_argument("model")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--plot", metavar="FILE", help="write a PNG of per-layer memory")

    p = sub.add_parser("run", help="compile for the host and run one input")
    p.add_argument("model")
    p.add_argument("--input", required=True, metavar="X.npy")
    p.add_argument("--output", required=True, metavar="Y.npy")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("zoo", help="write an int8 .tflite from the zoo or an MCUNet config")
    p.add_argument("name", metavar="NAME_OR_CONFIG")
    p.add_argument("-o", "--output", required=True, metavar="OUT.tflite")
    p.add_argument("--resolution", type=int)
    p.add_argument("--width", type=float)
    p.add_argument("--seed", type=int, default=0)

    p = sub.add_parser("demo", help="the embedded default model end to end")
    p.add_argument("--out", default="tvm_patch_demo", metavar="DIR")

    args = parser.parse_args(argv)
    try:
        return {"profile": _profile, "run": _run, "zoo": _zoo, "demo": _demo}[args.command](args)
    except ModelError as e:
        print(f"tvm-patch: error: {e}", file=sys.stderr)
        return 2


def _profile(args) -> int:
    from . import load, profile
    prof = profile(load(args.model))
    if args.plot:
        prof.plot(args.plot)
    if args.json:
        print(prof.to_json())
    else:
        print(prof.table())
        if args.plot:
            print(f"plot: {args.plot}")
    return 0


def _run(args) -> int:
    from . import build, load, profile
    try:
        x = np.load(args.input)
    except (OSError, ValueError) as e:
        raise ModelError(f"cannot read input {args.input}: {e}") from None
    mod = load(args.model)
    outputs = build(mod).run(x)
    np.save(args.output, outputs[0])
    if args.json:
        prof = profile(mod).as_dict()
        prof.pop("layers")
        prof["outputs"] = [o.tolist() for o in outputs]
        prof["output_file"] = args.output
        print(json.dumps(prof))
    else:
        print(f"output {outputs[0].shape} {outputs[0].dtype} -> {args.output}")
    return 0


def _zoo(args) -> int:
    from . import zoo
    try:
        path = zoo.save(args.name, args.output, resolution=args.resolution, width=args.width,
                        seed=args.seed)
    except ValueError as e:
        raise ModelError(str(e)) from None
    print(f"wrote {path} ({os.path.getsize(path):,} bytes)")
    return 0


def _demo(args) -> int:
    from . import build, load, profile, reference, zoo
    os.makedirs(args.out, exist_ok=True)
    model = os.path.join(args.out, "demo.tflite")
    zoo.save("demo", model)
    print(f"1. embedded default model: zoo 'demo' (int8 MCUNet-style VWW net) -> {model}")
    t = time.time()
    mod = load(model)
    prof = profile(mod)
    print(f"2. imported into Relax and planned ({time.time() - t:.1f} s)\n")
    print(prof.table())
    plot = prof.plot(os.path.join(args.out, "demo_memory.png"))
    print(f"\n   per-layer memory plot: {plot}")
    t = time.time()
    compiled = build(mod)
    print(f"3. compiled for the host ({time.time() - t:.1f} s)")
    with open(model, "rb") as f:
        data = f.read()
    rng = np.random.default_rng(0)
    shape, dtype = compiled.input_specs[0]
    same = 0
    for trial in range(3):
        x = rng.integers(-128, 128, shape).astype(dtype)
        ours = compiled.run(x)[0]
        ref = reference.run(data, [x])[0]
        same += int(np.array_equal(ours, ref))
        print(f"   input {trial}: tvm_patch {ours.ravel().tolist()}  "
              f"TFLite Micro {ref.ravel().tolist()}")
    tflm = reference.arena(data)
    print(f"4. bit-exact with TFLite Micro on {same}/3 inputs")
    print(f"   arena {prof.arena_bytes:,} B (TFLite Micro activations {tflm['head']:,} B), "
          f"arena_excl_io {prof.arena_excl_io_bytes:,} B, "
          f"paper_analytic {prof.paper_analytic_bytes:,} B, MACs {prof.macs:,}")
    return 0 if same == 3 else 1


if __name__ == "__main__":
    sys.exit(main())
