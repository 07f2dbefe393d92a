"""Entry points: `load(model)` for a layer-by-layer Relax module, `build(mod, target)` for a
host run over the arena plan, and `pipeline()` for using the same passes through
`relax.build(mod, target, relax_pipeline=...)`."""

from __future__ import annotations

import tvm
from tvm import relax

from .graph import ModelError
from .runtime.host import HostModel

HOST_TARGETS = ("host", "llvm")
PATCH_OPTIONS = ("schedule", "split", "patches", "sram", "max_mac_overhead", "objective",
                 "records")


def load(model, io_type: str | None = None):
    """A .tflite or .onnx model (path, bytes or graph) as a layer-by-layer Relax IRModule
    (NHWC, integer kernels for int8); io_type "int8" drops its float edges."""
    from .frontend import read
    from .passes.emit import to_relax
    return to_relax(read(model, io_type))


def passes(schedule=None, split=None, patches=None, sram=None, max_mac_overhead=None,
           objective=None, records=None) -> list:
    """tvm_patch's own Relax passes, in order. The one rule for turning patch-based inference
    on, shared by build(), pipeline(), mcu.compile() and the CLI: a Schedule, or any patch
    option given (not None), turns it on; the options not given keep PatchBasedInference's
    defaults (auto). Without any, the build stays layer by layer, each layer on the kernel
    tvm_patch's shipped tuning records (schedules/*.jsonl) measured fastest for a model they
    were made for (the module is left as it is for any other model). A schedule excludes
    the search options; tuning records (a file of tvm_patch.tune's) take the budget options
    sram and objective only."""
    from .passes import SHIPPED, PatchBasedInference
    given = {name: value for name, value in zip(PATCH_OPTIONS, (
        schedule, split, patches, sram, max_mac_overhead, objective, records))
        if value is not None}
    if not given:  # layer by layer, with the kernels of tvm_patch's records for the model
        return [PatchBasedInference(records=SHIPPED)]
    if schedule is not None and len(given) > 1:
        raise ModelError(f"a schedule is given: the search options "
                         f"{', '.join(k for k in given if k != 'schedule')} do not apply")
    extra = set(given) - {"records", "sram", "objective"}
    if records is not None and extra:
        raise ModelError(f"tuning records are given: {', '.join(sorted(extra))} do not apply "
                         f"(records take --sram and --objective as the budget)")
    return [PatchBasedInference(**given)]


def apply_passes(mod, **patch):
    """`mod` through passes(**patch); the same module (object) when they leave it as is."""
    out = mod
    for p in passes(**patch):
        out = p(out)
    return mod if out.same_as(mod) else out


def pipeline(target="llvm", **patch) -> tvm.transform.Pass:
    """tvm_patch's passes followed by Relax's default lowering for `target`."""
    target = tvm.target.Target(target) if isinstance(target, (str, dict)) else target
    return tvm.transform.Sequential([*passes(**patch), relax.get_default_pipeline(target)],
                                    name="tvm_patch")


def build(mod, target: str = "host", **patch) -> HostModel:
    """Compiles for the host over the arena plan; `patch` as for passes()."""
    if target not in HOST_TARGETS:
        from .mcu import BOARDS
        hint = (f"; for a microcontroller use tvm_patch.mcu.compile(mod, {target!r}, DIR) and "
                "tvm_patch.mcu.Session(DIR)" if target in BOARDS else "")
        raise ModelError(f"unknown target {target!r}: expected one of "
                         f"{', '.join(HOST_TARGETS)}{hint}")
    return HostModel(apply_passes(mod, **patch))
