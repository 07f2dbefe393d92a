"""The `tvm-patch` command line."""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import stat
import threading
import sys
import time

import numpy as np

from .frontend.io_type import IO_TYPES, io_specs
from .graph import ModelError


def main(argv=None) -> int:
    parser = _Parser(prog="tvm-patch", description=(
        "Compile int8 TinyML CNNs with Apache TVM (Relax/TIR) into one static arena."))
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("profile", help="per-layer memory and MACs, peaks under each rule")
    p.add_argument("model")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--plot", metavar="FILE", help="write a PNG of per-layer memory")
    _patch_options(p)

    p = sub.add_parser("build", help="compile for the host, or write and build a firmware "
                                      "project for a microcontroller")
    p.add_argument("model")
    _target_options(p, build=True)
    p.add_argument("--json", action="store_true")
    _patch_options(p)

    p = sub.add_parser("run", help="compile and run one input on the host, the emulator "
                                    "or a board")
    p.add_argument("model")
    p.add_argument("--input", required=True, metavar="X.npy")
    p.add_argument("--output", required=True, metavar="Y.npy")
    _target_options(p, build=False)
    p.add_argument("--json", action="store_true")
    _patch_options(p)

    p = sub.add_parser("pareto", help="the memory / MACs front of fused-block schedules")
    p.add_argument("model")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--plot", metavar="FILE", help="write a PNG of the front")
    p.add_argument("--objective", choices=("arena", "arena_excl_io"), default="arena",
                   help="the accounting rule the front minimises (default arena)")
    p.add_argument("--max-mac-overhead", type=_number(float, 1.0), metavar="F",
                   help="only schedules with at most this whole-network MAC factor")
    p.add_argument("--io-type", choices=IO_TYPES, help="int8: integer input and output")

    p = sub.add_parser("tune", help="measure schedules and kernel knobs on the emulated "
                                     "Cortex-M7: the fastest that fits the budgets")
    p.add_argument("model")
    p.add_argument("--sram", type=_number(int, 1), metavar="BYTES",
                   help="arena budget (the --objective bytes); default: none")
    p.add_argument("--flash", type=_number(int, 1), metavar="BYTES",
                   help="Flash budget of the linked firmware; default: none")
    p.add_argument("--trials", type=_number(int, 1), default=64, metavar="N",
                   help="measurements (default 64)")
    p.add_argument("--records", metavar="FILE.jsonl",
                   help="append every measurement here, and continue from what it holds "
                        "(default schedules/MODEL.jsonl)")
    p.add_argument("--jobs", type=_number(int, 1), default=2, metavar="J",
                   help="measurements in parallel on this machine (default 2)")
    p.add_argument("--ray", metavar="ADDRESS",
                   help="measure on a Ray cluster instead (ray.init's address; 'local' "
                        "starts one here); needs pip install 'tvm_patch[ray]'")
    p.add_argument("--objective", choices=("arena", "arena_excl_io"), default="arena",
                   help="the accounting rule --sram bounds (default arena)")
    p.add_argument("--strategy", choices=("model", "random"), default="model",
                   help="model: XGBoost-guided evolution (default); random: random points")
    p.add_argument("--seed", type=_number(int, 0), default=0)
    p.add_argument("--timeout", type=_number(float, 1.0), default=300.0, metavar="S",
                   help="seconds for one build and run (default 300)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--plot", metavar="FILE", help="write a PNG of the measured points "
                   "(arena x instructions) with their Pareto front")
    p.add_argument("--io-type", choices=IO_TYPES, help="int8: integer input and output")

    p = sub.add_parser("nas", help="search an architecture and its schedule that fit the "
                                    "budgets, the compiler as the cost oracle")
    p.add_argument("--sram", type=_number(int, 1), required=True, metavar="BYTES",
                   help="arena budget (the --objective bytes)")
    p.add_argument("--flash", type=_number(int, 1), metavar="BYTES",
                   help="Flash budget (the oracle's estimate); default: none")
    p.add_argument("--instructions", type=_number(int, 1), metavar="N",
                   help="predicted instructions per inference at most; default: none")
    p.add_argument("--resolution", default="auto", metavar="R|auto",
                   help="the input resolution, or auto: searched (48-224 in steps of 16)")
    p.add_argument("--generations", type=_number(int, 1), default=20, metavar="G")
    p.add_argument("--population", type=_number(int, 2), default=100, metavar="N")
    p.add_argument("--evaluator", default="macs", metavar="NAME|M:F",
                   help="the score: macs (default), naswot, zen, or module:function "
                        "called with the config dict")
    p.add_argument("--classes", type=_number(int, 1), default=1000, metavar="N",
                   help="the classifier's outputs (default 1000)")
    p.add_argument("--objective", choices=("arena", "arena_excl_io"), default="arena",
                   help="the accounting rule --sram bounds (default arena)")
    p.add_argument("--se", action="store_true", help="offer squeeze-and-excite per block")
    p.add_argument("--redistribute", action="store_true",
                   help="MCUNetV2's receptive-field redistribution: kernel 3, expansion 3-4 "
                        "in the high-resolution stages")
    p.add_argument("--seed", type=_number(int, 0), default=0)
    p.add_argument("--jobs", type=_number(int, 1), default=2, metavar="J",
                   help="candidate evaluations in parallel on this machine (default 2)")
    p.add_argument("--ray", metavar="ADDRESS",
                   help="evaluate on a Ray cluster instead (as tune's --ray)")
    p.add_argument("-o", "--out", required=True, metavar="DIR",
                   help="write config.json, model.tflite, schedule.json, population.png")
    p.add_argument("--json", action="store_true", help="print one JSON object")

    p = sub.add_parser("zoo", help="write an int8 .tflite from the zoo or an MCUNet config")
    p.add_argument("name", metavar="NAME_OR_CONFIG")
    p.add_argument("-o", "--output", required=True, metavar="OUT.tflite")
    p.add_argument("--resolution", type=_number(int, 8, 1024))
    p.add_argument("--width", type=_number(float, 0.05, 4.0))
    p.add_argument("--seed", type=_number(int, 0), default=0)
    p.add_argument("--quant", choices=("standard", "adversarial"), default="standard",
                   help="adversarial: negative, zero, tiny and huge per-channel weight scales, "
                        "multipliers rounding up to 2^31, extreme zero points")

    p = sub.add_parser("demo", help="the embedded default model end to end")
    p.add_argument("--out", default="tvm_patch_demo", metavar="DIR")

    args = parser.parse_args(argv)
    in_main_thread = threading.current_thread() is threading.main_thread()
    if in_main_thread:  # SIGINT too: a shell starts background jobs with it ignored
        previous = (signal.signal(signal.SIGTERM, _on_sigterm),
                    signal.signal(signal.SIGINT, signal.default_int_handler))
    try:  # Ctrl-C and SIGTERM unwind like errors, so every `with` stops its emulator
        return {"profile": _profile, "build": _build, "run": _run, "pareto": _pareto,
                "tune": _tune, "nas": _nas, "zoo": _zoo, "demo": _demo}[args.command](args)
    except ModelError as e:
        print(f"tvm-patch: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tvm-patch: interrupted", file=sys.stderr)
        return 130
    except _Terminated:
        print("tvm-patch: terminated", file=sys.stderr)
        return 143
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous[0])
            signal.signal(signal.SIGINT, previous[1])


class _Terminated(BaseException):
    """SIGTERM (what `timeout` sends), raised where the program is."""


def _on_sigterm(signum, frame):
    raise _Terminated()


TARGETS = ("host", "qemu-m7", "stm32f746")


def _target_options(p, build: bool):
    p.add_argument("--target", choices=TARGETS, default="host",
                   help="host (LLVM), qemu-m7 (Cortex-M7 emulator) or stm32f746 "
                        "(STM32F746G-DISCO)")
    p.add_argument("-o", "--out", metavar="DIR", help="firmware project directory"
                   + ("" if build else " (default: a temporary one)"))
    if not build:
        p.add_argument("--port", metavar="DEV", help="stm32f746: the board's serial port")
        p.add_argument("--timeout", type=_number(float, 0.001), default=60.0, metavar="S",
                       help="seconds to wait for the device on each request (default 60)")


def _patch_options(p):
    g = p.add_argument_group("patch-based inference (any of these enables it)")
    g.add_argument("--schedule", metavar="FILE.json",
                   help="build this schedule (from --json or tvm-patch pareto --json)")
    g.add_argument("--patches", type=_int_or_auto, metavar="P|auto",
                   help="tiles per side of the patch grid")
    g.add_argument("--split", type=_int_or_auto, metavar="K|auto",
                   help="convolution layers fused into the patch stage")
    g.add_argument("--sram", type=_number(int, 1), metavar="BYTES",
                   help="choose the fewest MACs whose arena fits in BYTES")
    g.add_argument("--max-mac-overhead", type=_number(float, 1.0), metavar="F",
                   help="auto: whole-network MAC factor allowed (default 1.2)")
    g.add_argument("--objective", choices=("arena", "arena_excl_io"),
                   help="auto: the accounting rule to minimise (default arena)")
    g.add_argument("--records", metavar="FILE.jsonl",
                   help="the best schedule of tuning records (tvm-patch tune) that fits "
                        "--sram; records for another model are ignored with a note")
    p.add_argument("--io-type", choices=IO_TYPES, help="int8: drop the model's input "
                   "QUANTIZE and output DEQUANTIZE, take and return int8 (default: as is)")


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line, like every other error."""

    def error(self, message):
        print(f"tvm-patch: error: {message}", file=sys.stderr)
        sys.exit(2)


def _number(kind, low, high=None):
    """An argparse type: a finite `kind` in [low, high]."""
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not math.isfinite(value) or value < low or \
                (high is not None and value > high):
            what = "an integer" if kind is int else "a number"
            bounds = f"between {low} and {high}" if high is not None else f">= {low}"
            raise argparse.ArgumentTypeError(f"expected {what} {bounds}, got {text!r}")
        return value
    return parse


def _int_or_auto(text):
    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1 or 'auto', got {text!r}")
    return value


def _modules(args):
    """(module to compile, layer-by-layer module, cost record or None)."""
    from . import load
    from .build import PATCH_OPTIONS, apply_passes
    from .passes import cost_of
    from .schedule import read_schedule
    options = {name: getattr(args, name) for name in PATCH_OPTIONS}
    io_type = args.io_type
    if args.schedule is not None:
        options["schedule"] = schedule = read_schedule(args.schedule)
        if schedule.io_type and io_type and schedule.io_type != io_type:
            raise ModelError(f"--schedule {args.schedule} is for --io-type {schedule.io_type}, "
                             f"not {io_type}")
        io_type = io_type or schedule.io_type
    base = load(args.model, io_type=io_type)
    mod = apply_passes(base, **options)
    if mod is base:
        return base, base, None
    cost = cost_of(mod)
    if cost["schedule"] is not None:  # so that --json's schedule rebuilds as given
        cost["schedule"]["io_type"] = io_type
    return mod, base, cost


def _io_fields(mod) -> dict:
    """`inputs` and `outputs`: shape, dtype, scale, zero_point of each."""
    from .passes.emit import graph_of
    return io_specs(graph_of(mod))


def _schedule_fields(cost) -> dict:
    if cost is None:
        return {"schedule": None, "blocks": [], "macs_overhead": 1.0, "note": "layer by layer"}
    return {k: cost[k] for k in ("schedule", "blocks", "macs_overhead", "note")}


def _schedule_line(cost, before, after) -> str:
    if cost is None:
        return "schedule: layer by layer"
    if not cost["blocks"]:
        return f"schedule: layer by layer ({cost['note']})"
    blocks = "\n".join(
        f"  {b['grid'][0]}x{b['grid'][1]} tiles, halo {'/'.join(b['halo'])}: {b['ops'][0]} .. "
        f"{b['ops'][-1]} ({len(b['ops'])} ops), input tile {b['input_tile_hw'][0]}x"
        f"{b['input_tile_hw'][1]}, workspace {b['workspace_bytes']:,} B, MACs x"
        f"{b['macs_overhead']:.4f}" for b in cost["blocks"])
    return (f"schedule: {len(cost['blocks'])} fused block(s), MACs x"
            f"{cost['macs_overhead']:.4f}\n{blocks}\n"
            f"arena {before.arena_bytes:,} -> {after.arena_bytes:,} B | arena_excl_io "
            f"{before.arena_excl_io_bytes:,} -> {after.arena_excl_io_bytes:,} B | paper_analytic "
            f"{before.paper_analytic_bytes:,} -> {after.paper_analytic_bytes:,} B")


def _profile(args) -> int:
    from . import profile
    if args.plot:
        if not args.plot.endswith(".png"):
            raise ModelError(f"--plot {args.plot}: give a .png file name")
        _check_writable(args.plot, "--plot")
    mod, base, schedule = _modules(args)
    prof = profile(mod)
    before = profile(base) if schedule else prof
    if args.plot:
        prof.plot(args.plot, others={"layer by layer": before} if schedule else None)
    if args.json:
        print(json.dumps(prof.as_dict() | _schedule_fields(schedule) | _io_fields(mod)))
    else:
        print(prof.table())
        print(_schedule_line(schedule, before, prof))
        if args.plot:
            print(f"plot: {args.plot}")
    return 0


def _build(args) -> int:
    from . import build, profile
    t = time.perf_counter()
    if args.out:
        _check_writable(args.out, "-o", directory=True)
    mod, base, schedule = _modules(args)
    firmware = None
    if args.target == "host":
        build(mod)
    else:
        from . import mcu
        if not args.out:
            raise ModelError(f"--target {args.target} writes a firmware project: give -o DIR")
        firmware = mcu.compile(mod, args.target, args.out)
    seconds = time.perf_counter() - t
    prof = profile(mod)
    summary = prof.as_dict()
    summary.pop("layers")
    summary |= _schedule_fields(schedule) | _io_fields(mod) | {
        "compile_seconds": round(seconds, 2), "target": args.target}
    if firmware is not None:
        summary |= _firmware_fields(firmware) | {"project": args.out}
    if args.json:
        print(json.dumps(summary))
    else:
        print(_schedule_line(schedule, profile(base) if schedule else prof, prof))
        where = "the host" if firmware is None else f"{args.target} in {args.out}"
        print(f"arena {prof.arena_bytes:,} B | arena_excl_io {prof.arena_excl_io_bytes:,} B | "
              f"MACs {prof.macs:,} | compiled for {where} in {seconds:.1f} s")
        if firmware is not None:
            print(_firmware_line(firmware))
    return 0


def _firmware_fields(fw) -> dict:
    return {"flash_bytes": fw.flash_bytes, "static_ram_bytes": fw.static_ram_bytes,
            "firmware_arena_bytes": fw.arena_bytes, "stack_reserved_bytes": fw.stack_reserved}


def _firmware_line(fw) -> str:
    return (f"firmware {fw.elf}: Flash {fw.flash_bytes:,} B (text+rodata+data) | static RAM "
            f"{fw.static_ram_bytes:,} B (data+bss, arena {fw.arena_bytes:,} B) | stack "
            f"region {fw.stack_reserved:,} B")


def _run(args) -> int:
    from . import build, profile
    if not args.output.endswith((".npy", ".npz")):
        raise ModelError(f"--output {args.output}: give a .npy (or .npz) file name")
    _check_writable(args.output, "--output")
    if args.out:
        _check_writable(args.out, "-o", directory=True)
    x = _read_input(args)
    mod, _, schedule = _modules(args)
    io = _io_fields(mod)
    npz = args.output.endswith(".npz")
    if len(io["outputs"]) > 1 and not npz:
        raise ModelError(f"the model has {len(io['outputs'])} outputs: give --output OUT.npz "
                         f"(written as output_0, output_1, ...), not {args.output}")
    extra = {}
    if args.target == "host":
        outputs = build(mod).run(x)
    else:
        outputs, extra = _run_on_device(args, mod, x)
    if npz:
        np.savez(args.output, **{f"output_{k}": o for k, o in enumerate(outputs)})
    else:
        np.save(args.output, outputs[0])
    if args.json:
        prof = profile(mod).as_dict()
        prof.pop("layers")
        prof |= _schedule_fields(schedule) | {"target": args.target} | extra | io
        prof["outputs"] = [spec | {"values": o.tolist()} for spec, o in zip(io["outputs"],
                                                                             outputs)]
        prof["output_file"] = args.output
        print(json.dumps(prof))
    else:
        for k, o in enumerate(outputs):
            print(f"output {k} {o.shape} {o.dtype} -> {args.output}")
        if extra:
            print(_counters_line(extra))
    return 0


def _read_input(args) -> np.ndarray:
    """The --input array, checked against the model's input from the .npy header alone,
    before its data is read (a forged header must not allocate) and before compiling."""
    from .frontend import read
    from .runtime.host import check_inputs
    path = args.input
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):  # a pipe or device could block forever
            raise ModelError(f"--input {path} is not a regular file")
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            header = {(1, 0): np.lib.format.read_array_header_1_0,
                      (2, 0): np.lib.format.read_array_header_2_0}.get(version)
            if header is None:
                raise ValueError(f".npy format version {version} is not supported")
            shape, _, dtype = header(f)
            data_bytes = os.fstat(f.fileno()).st_size - f.tell()
    except OSError as e:
        raise ModelError(f"cannot read input {path}: {e.strerror or e}") from None
    except ValueError as e:
        raise ModelError(f"cannot read input {path}: not a .npy file ({e})") from None
    graph = read(args.model, io_type=args.io_type)
    check_inputs([np.broadcast_to(np.zeros((), dtype), shape)],
                 [(graph.t(n).shape, graph.t(n).dtype) for n in graph.inputs])
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if data_bytes < expected:
        raise ModelError(f"input {path} is truncated: {data_bytes} bytes of data for shape "
                         f"{tuple(shape)} {dtype}, expected {expected}")
    x = np.load(path, allow_pickle=False)
    if x.dtype.kind == "f" and np.isnan(x).any():
        raise ModelError(f"input {path} holds {int(np.isnan(x).sum())} NaN value(s): "
                         "NaN has no quantized value")
    return x


def _check_writable(path, option, directory=False):
    """Refuses an output path that cannot be written, before anything is compiled.
    A directory is created when missing; a file's directory must exist."""
    if directory and os.path.exists(path) and not os.path.isdir(path):
        raise ModelError(f"{option} {path} is an existing file, not a directory")
    if not directory and os.path.isdir(path):
        raise ModelError(f"{option} {path} is a directory")
    parent = os.path.dirname(os.path.abspath(path)) if not directory else os.path.abspath(path)
    while directory and not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise ModelError(f"{option} {path}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK) or (
            os.path.exists(path) and not os.access(path, os.W_OK)):
        raise ModelError(f"{option} {path} is not writable")


def _run_on_device(args, mod, x):
    import tempfile
    from . import mcu
    if args.target == "stm32f746" and not args.port:
        raise ModelError("--target stm32f746 runs on the board: give --port (its serial "
                         "port), after flashing the project with `make -C DIR flash`")
    with tempfile.TemporaryDirectory(prefix="tvmp-run-") as tmp:
        directory = args.out or tmp
        firmware = mcu.compile(mod, args.target, directory)
        if args.target == "stm32f746":
            mcu.flash(directory)
        with mcu.Session(directory, port=args.port, timeout=args.timeout) as session:
            outputs = session.run_model(x)
            c = session.counters
    extra = _firmware_fields(firmware) | {
        "instructions": c.instructions, "layer_instructions": c.layer_instructions,
        "cycles": c.cycles, "layer_cycles": c.layer_cycles, "stack_bytes": c.stack_bytes}
    return outputs, extra


def _counters_line(extra) -> str:
    count = (f"{extra['instructions']:,} instructions (emulator count, not cycles)"
             if extra["instructions"] is not None else f"{extra['cycles']:,} cycles")
    return (f"{count} | stack high-water {extra['stack_bytes']:,} B | Flash "
            f"{extra['flash_bytes']:,} B | static RAM {extra['static_ram_bytes']:,} B")


def _pareto(args) -> int:
    from .frontend import read
    from .schedule import Schedule, Search, fingerprint
    if args.plot:
        if not args.plot.endswith(".png"):
            raise ModelError(f"--plot {args.plot}: give a .png file name")
        _check_writable(args.plot, "--plot")
    graph = read(args.model, io_type=args.io_type)
    t = time.perf_counter()
    search = Search(graph)
    base = search.model.cost(Schedule((), fingerprint(graph)))
    front = search.front(args.objective, args.max_mac_overhead)
    seconds = time.perf_counter() - t
    for cost in front:  # a schedule file built with --io-type must say so
        cost.schedule = Schedule(cost.schedule.blocks, cost.schedule.model, args.io_type)
    if args.plot:
        _plot_front(args.plot, graph.name, args.objective, base, front)
    if args.json:
        print(json.dumps({"objective": args.objective, "search_seconds": round(seconds, 2),
                          "layer_by_layer": base.as_dict(),
                          "front": [c.as_dict() for c in front]}))
        return 0
    print(f"{'arena':>10} {'excl_io':>10} {'MACs':>12} {'factor':>7}  schedule")
    for c in [base] + [c for c in front if c.schedule.blocks]:  # layer by layer once
        print(f"{c.arena_bytes:>10,} {c.arena_excl_io_bytes:>10,} {c.macs:>12,} "
              f"{c.macs_overhead:>7.3f}  {c.schedule.describe(graph)}")
    print(f"{len(front)} schedules on the {args.objective} front, searched in {seconds:.1f} s "
          f"(first row: layer by layer); save one with --json and pass it as --schedule")
    if args.plot:
        print(f"plot: {args.plot}")
    return 0


def _plot_front(path, name, objective, base, front):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    key = "arena_bytes" if objective == "arena" else "arena_excl_io_bytes"
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.step([c.macs_overhead for c in front], [getattr(c, key) / 1024 for c in front],
            where="post", marker="o", label="fused-block schedules (front)")
    ax.plot([1.0], [getattr(base, key) / 1024], "s", color="black", label="layer by layer")
    ax.set_xlabel("MACs / layer-by-layer MACs")
    ax.set_ylabel(f"{objective} (KiB)")
    ax.set_title(f"{name}: memory / compute front")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _tune(args) -> int:
    from . import tune
    if args.plot:
        if not args.plot.endswith(".png"):
            raise ModelError(f"--plot {args.plot}: give a .png file name")
        _check_writable(args.plot, "--plot")
    records = args.records or tune.default_records_path(args.model)
    if not args.records:
        os.makedirs(os.path.dirname(records), exist_ok=True)
    _check_writable(records, "--records")
    result = tune.tune(args.model, args.sram, args.flash, args.trials, records, args.jobs,
                       args.ray, args.objective, args.strategy, args.seed,
                       progress=not args.json, io_type=args.io_type, timeout=args.timeout)
    for note in result.notes:
        print(f"tvm-patch: note: {note}", file=sys.stderr)
    if args.plot:
        result.plot(args.plot, args.objective)
    failed = sum(t.error is not None for t in result.trials)
    if args.json:
        print(json.dumps(result.as_dict()))
    else:
        best = result.best
        print(f"{len(result.trials)} trials in {result.seconds:.0f} s ({failed} failed)"
              f"{', interrupted' if result.interrupted else ''}; records: {records}")
        if best is None:
            print("no measured point fits the budget")
        else:
            print(f"best: {best.instructions:,} instructions, arena {best.arena_bytes:,} B, "
                  f"arena_excl_io {best.arena_excl_io_bytes:,} B, Flash {best.flash_bytes:,} B"
                  f" (trial {best.number}): {best.schedule.describe()}")
            print(f"apply it: tvm-patch build {args.model} --records {records}"
                  + (f" --sram {args.sram}" if args.sram else ""))
        if args.plot:
            print(f"plot: {args.plot}")
    return 130 if result.interrupted else 0


def _nas(args) -> int:
    from . import nas
    resolution = args.resolution
    if resolution != "auto":
        try:
            resolution = int(resolution)
        except ValueError:
            raise ModelError(f"--resolution {resolution!r}: give a number or auto") from None
        if not 32 <= resolution <= 512:
            raise ModelError(f"--resolution {resolution}: expected 32 to 512")
    _check_writable(args.out, "--out", directory=True)
    parents = max(1, args.population // 4)
    found = nas.run(args.sram, args.flash, args.instructions, out=args.out,
                    resolution=resolution, generations=args.generations,
                    population=args.population, parents=parents,
                    mutations=args.population // 2, crossovers=args.population // 2,
                    evaluator=args.evaluator, seed=args.seed, objective=args.objective,
                    classes=args.classes, jobs=args.jobs, ray=args.ray,
                    space=nas.Space(se=args.se, redistribute=args.redistribute),
                    progress=not args.json)
    if args.json:
        print(json.dumps(found.as_dict()))
        return 0
    d = found.as_dict()
    print(f"{d['evaluations']} candidates in {d['seconds']:.0f} s; best: {d['name']}")
    print(f"  {d['macs']:,} MACs (x{found.query.macs_overhead:.3f} with its schedule), "
          f"score {d['score']:.6g}, resolution {d['resolution']}")
    print(f"  arena {d['arena_bytes']:,} B, arena_excl_io {d['arena_excl_io_bytes']:,} B "
          f"(layer by layer {d['layer_by_layer_arena_bytes']:,} B), Flash ~{d['flash_bytes']:,} B,"
          f" ~{d['predicted_instructions']:,} instructions")
    print(f"  schedule: {found.query.schedule.describe()}")
    for k in ("config", "tflite", "schedule", "plot"):
        if k in d:
            print(f"  {k}: {d[k]}")
    print(f"build it: tvm-patch build {d['tflite']} --schedule {d['schedule']}")
    return 0


def _zoo(args) -> int:
    from . import zoo
    _check_writable(args.output, "-o")
    try:
        path = zoo.save(args.name, args.output, resolution=args.resolution, width=args.width,
                        seed=args.seed, quant=args.quant)
    except ValueError as e:
        raise ModelError(str(e)) from None
    print(f"wrote {path} ({os.path.getsize(path):,} bytes)")
    return 0


def _demo(args) -> int:
    from . import build, load, profile, reference, zoo
    from .passes import PatchBasedInference, cost_of
    os.makedirs(args.out, exist_ok=True)
    model = os.path.join(args.out, "demo.tflite")
    zoo.save("demo", model)
    print(f"1. embedded default model: zoo 'demo' (int8 MCUNet-style VWW net) -> {model}")
    t = time.time()
    mod = load(model)
    prof = profile(mod)
    print(f"2. layer by layer: imported into Relax and planned ({time.time() - t:.1f} s)\n")
    print(prof.table())
    t = time.time()
    patched = PatchBasedInference(split="auto", patches="auto")(mod)
    schedule = cost_of(patched)
    after = profile(patched)
    print(f"\n3. patch-based, the schedule chosen by the search ({time.time() - t:.1f} s)\n")
    print(after.table())
    print(_schedule_line(schedule, prof, after))
    plot = after.plot(os.path.join(args.out, "demo_memory.png"),
                      title="demo: memory per layer, patch-based vs layer by layer",
                      others={"layer by layer": prof})
    print(f"   per-layer memory plot (before and after): {plot}")
    t = time.time()
    compiled = {"layer by layer": build(mod), "patch-based": build(patched)}
    print(f"4. compiled both for the host ({time.time() - t:.1f} s)")
    with open(model, "rb") as f:
        data = f.read()
    rng = np.random.default_rng(0)
    shape, dtype = compiled["layer by layer"].input_specs[0]
    same = 0
    for trial in range(3):
        x = rng.integers(-128, 128, shape).astype(dtype)
        ref = reference.run(data, [x])[0]
        outs = {name: c.run(x)[0] for name, c in compiled.items()}
        same += int(all(np.array_equal(o, ref) for o in outs.values()))
        print(f"   input {trial}: TFLite Micro {ref.ravel().tolist()}  " + "  ".join(
            f"{name} {o.ravel().tolist()}" for name, o in outs.items()))
    tflm = reference.arena(data)
    print(f"5. both bit-exact with TFLite Micro on {same}/3 inputs")
    print(f"   TFLite Micro activations {tflm['head']:,} B | layer by layer arena "
          f"{prof.arena_bytes:,} B | patch-based arena {after.arena_bytes:,} B "
          f"(arena_excl_io {after.arena_excl_io_bytes:,} B, MACs x{schedule['macs_overhead']:.3f})")
    on_device = _demo_on_emulator(args.out, {"layer by layer": mod, "patch-based": patched},
                                  compiled, x)
    return 0 if same == 3 and on_device else 1


def _demo_on_emulator(out, modules, compiled, x) -> bool:
    """Step 6: both schedules as STM32F746 firmware on the emulated Cortex-M7."""
    from . import mcu
    print("6. on the emulated Cortex-M7 (qemu-system-arm -M mps2-an500 -cpu cortex-m7), "
          "STM32F746 budget: RAM 320 KB, Flash 1 MB")
    rows, same = [], True
    for name, mod in modules.items():
        t = time.time()
        directory = os.path.join(out, "firmware-" + name.replace(" ", "-"))
        fw = mcu.compile(mod, "qemu-m7", directory)
        with mcu.Session(directory) as session:
            y = session.run_model(x)[0]
            c = session.counters
        host = compiled[name].run(x)[0]
        same &= bool(np.array_equal(y, host))
        rows.append(f"   {name:<15} Flash {fw.flash_bytes:>9,} B | static RAM "
                    f"{fw.static_ram_bytes:>7,} B (arena {fw.arena_bytes:,} B) | stack "
                    f"{c.stack_bytes:>4,} B | {c.instructions:>12,} instructions | output "
                    f"{y.ravel().tolist()} {'=' if np.array_equal(y, host) else '!='} host "
                    f"{host.ravel().tolist()} ({time.time() - t:.1f} s)")
    print("\n".join(rows))
    print(f"   project: {directory} (make -C DIR run); instructions are counted by the "
          "emulator, not cycles")
    return same


if __name__ == "__main__":
    sys.exit(main())
