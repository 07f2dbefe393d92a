"""Build entry points: `build(mod, target)` for a host run over the arena plan, and
`pipeline()` for using the same passes through `relax.build(mod, target, relax_pipeline=...)`."""

from __future__ import annotations

import tvm
from tvm import relax

from .graph import ModelError
from .runtime.host import HostModel

HOST_TARGETS = ("host", "llvm")


def passes(split=None, patches=None, **options) -> list:
    """tvm_patch's own Relax passes, in order: the patch stage when split or patches is
    given (an int or "auto"; options: sram, max_mac_overhead, objective)."""
    if split is None and patches is None:
        return []
    from .passes import PatchBasedInference
    return [PatchBasedInference(split="auto" if split is None else split,
                                patches="auto" if patches is None else patches, **options)]


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
    for p in passes(**patch):
        mod = p(mod)
    return HostModel(mod)
