"""Host build and run over the static memory plan: every kernel is compiled with LLVM and
called in order on views into ONE numpy arena at the planned offsets, the same arena the
microcontroller code uses. A plan that let two live tensors overlap would corrupt the
result, so every bit-exact test of a host run also checks the plan."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import tvm
import tvm_ffi

from .. import cache
from ..analysis.memory import Plan, plan_memory
from ..graph import ModelError


class HostModel:
    def __init__(self, mod, target="llvm"):
        self.mod = mod
        self.plan: Plan = plan_memory(mod)
        kernels = {gv.name_hint: f for gv, f in mod.functions.items()
                   if isinstance(f, tvm.tirx.PrimFunc)}
        try:
            compiled = compile_kernels(kernels, target)
        except (RuntimeError, ValueError, TypeError) as e:  # TVM's FFI raises builtin classes
            lines = str(e).strip().splitlines() or [type(e).__name__]
            raise ModelError(f"kernel compilation failed: {lines[-1]}") from None
        self._funcs = {s.func: compiled[s.func] for s in self.plan.steps}
        self._consts = [tvm.runtime.tensor(np.ascontiguousarray(c)) for c in self.plan.constants]
        # 64-byte aligned base so that every 16-byte aligned offset stays 16-byte aligned
        raw = np.zeros(self.plan.arena_bytes + 64, np.uint8)
        start = (-raw.ctypes.data) % 64
        self.arena = raw[start:start + self.plan.arena_bytes]

    @property
    def input_specs(self) -> list:
        return [self.plan.views[n][1:] for n in self.plan.inputs]

    def _view(self, name):
        buf_name, shape, dtype = self.plan.views[name]
        buf = self.plan.buffers[buf_name]
        nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        return self.arena[buf.offset:buf.offset + nbytes].view(dtype).reshape(shape)

    def run(self, *inputs) -> list:
        if len(inputs) == 1 and isinstance(inputs[0], (list, tuple)):
            inputs = tuple(inputs[0])
        check_inputs(inputs, self.input_specs)
        for name, x in zip(self.plan.inputs, inputs):
            self._view(name)[...] = x
        for step in self.plan.steps:
            args = [_tensor(self._view(n)) for n in step.inputs]
            args += [self._consts[i] for i in step.consts]
            args.append(_tensor(self._view(step.output)))
            if step.workspace:
                ws = self.plan.buffers[step.scratch]
                args.append(_tensor(self.arena[ws.offset:ws.offset + ws.nbytes].view(np.int8)))
            self._funcs[step.func](*args)
        return [self._view(n).copy() for n in self.plan.outputs]


def compile_kernels(kernels: dict, target) -> dict:
    """name -> PrimFunc compiled for the host, each kernel alone and cached by its full
    TVMScript text, the target and TVM's version (tvm_patch.cache): a patched model keeps
    the kernels after its stage, and tests and benchmarks build the same models again, so
    most kernels compile once. Kernels not in the cache compile on every core at once
    (LLVM's code generation runs outside Python's lock)."""
    target = tvm.target.Target(target)
    mods = {name: tvm.IRModule({"kernel": func.with_attr("global_symbol", "kernel")})
            for name, func in kernels.items()}

    def build(name):
        if not cache.enabled():
            return tvm.compile(mods[name], target=target)
        entry = cache.key("host kernel", tvm.__version__, target, mods[name].script()) + ".so"
        return cache.fetch(entry, lambda p: tvm.compile(mods[name], target=target)
                           .export_library(p))
    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        built = dict(zip(mods, pool.map(build, mods)))
    return {name: (tvm.runtime.load_module(b) if isinstance(b, str) else b)["kernel"]
            for name, b in built.items()}


def check_inputs(inputs, specs):
    if len(inputs) != len(specs):
        raise ModelError(f"the model takes {len(specs)} input(s), got {len(inputs)}")
    for k, (x, (shape, dtype)) in enumerate(zip(inputs, specs)):
        x = np.asarray(x)
        if tuple(x.shape) != tuple(shape):
            raise ModelError(f"input {k}: expected shape {tuple(shape)}, got {tuple(x.shape)}")
        if x.dtype != np.dtype(dtype):
            raise ModelError(f"input {k}: expected dtype {dtype}, got {x.dtype}")


def _tensor(view: np.ndarray):
    """A zero-copy TVM tensor over an arena view (offsets are ALIGN-aligned, not 64)."""
    return tvm_ffi.from_dlpack(view, require_alignment=16, require_contiguous=True)
