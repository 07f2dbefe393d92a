"""Build entry points: `build(mod, target)` for a host run over the arena plan, and
`pipeline()` for using the same passes through `relax.build(mod, target, relax_pipeline=...)`."""

from __future__ import annotations

import tvm
from tvm import relax

from .graph import ModelError
from .runtime.host import HostModel

HOST_TARGETS = ("host", "llvm")


def passes() -> list:
    """tvm_patch's own Relax passes, in order (the patch-stage pass joins here)."""
    return []


def pipeline(target="llvm") -> tvm.transform.Pass:
    """tvm_patch's passes followed by Relax's default lowering for `target`."""
    target = tvm.target.Target(target) if isinstance(target, (str, dict)) else target
    return tvm.transform.Sequential([*passes(), relax.get_default_pipeline(target)],
                                    name="tvm_patch")


def build(mod, target: str = "host") -> HostModel:
    if target not in HOST_TARGETS:
        raise ModelError(f"unknown target {target!r}: expected one of {', '.join(HOST_TARGETS)}")
    for p in passes():
        mod = p(mod)
    return HostModel(mod)
