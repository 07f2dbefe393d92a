"""Measuring a point of the space: build its firmware for the Cortex-M7 emulator, check its
Flash against the budget, run one inference through a host-driven session and count its
instructions per step. Measurements run in parallel, in a local process pool or on a Ray
cluster; one that fails or runs out of time comes back as a result with an error, never as
an exception, so a search goes on past it.

A task is plain data (the model's bytes, the schedule's JSON, the Flash budget), so the same
function runs in a local worker or a Ray task on another machine."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import tempfile
import time

import numpy as np

TIMEOUT_S = 300.0   # one build and run; the emulator's own reads time out sooner
_loaded = {}        # per worker process: model hash -> (layer-by-layer module, bytes)


def measure(task: dict) -> dict:
    """Builds and runs `task["schedule"]` for `task["model"]`; the result's "error" is None
    when it ran, else why not (over the Flash budget, a build error, a device error, a
    result that differs from TFLite Micro's)."""
    start = time.perf_counter()
    result = {"error": None, "instructions": None, "layers": [], "flash_bytes": None,
              "arena_bytes": None, "stack_bytes": None, "exact": None}
    try:
        _measure(task, result)
    except Exception as e:  # noqa: BLE001  (a failed point is a result, not a crash)
        result["error"] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    result["seconds"] = round(time.perf_counter() - start, 3)
    return result


def _measure(task: dict, result: dict) -> None:
    from .. import mcu, reference
    from ..passes import PatchBasedInference
    from ..schedule import parse
    mod = _module(task["model"], task.get("io_type"))
    schedule = parse(task["schedule"], "the tuner's schedule")
    patched = PatchBasedInference(schedule)(mod)
    with tempfile.TemporaryDirectory(prefix="tvmp-tune-") as tmp:
        fw = mcu.compile(patched, "qemu-m7", tmp)
        result.update(flash_bytes=fw.flash_bytes, arena_bytes=fw.arena_bytes)
        if task.get("flash") is not None and fw.flash_bytes > task["flash"]:
            result["error"] = f"over the Flash budget: {fw.flash_bytes:,} B > {task['flash']:,} B"
            return
        with mcu.Session(tmp, timeout=task.get("timeout", TIMEOUT_S)) as session:
            inputs = _inputs(session.project["inputs"])
            outputs = session.run_model(*inputs)
            c = session.counters
            result.update(instructions=c.instructions, stack_bytes=c.stack_bytes,
                          layers=[{"func": layer["func"], "c_kernel": layer["c_kernel"],
                                   "instructions": n} for layer, n in
                                  zip(session.project["layers"], c.layer_instructions)])
    data = task["model"]
    if data[4:8] == b"TFL3":  # a .tflite model: TFLite Micro on the same input
        if task.get("io_type") == "int8":  # the original model on the float input that
            # quantizes to ours; our int8 outputs dequantized as its last DEQUANTIZE does
            from ..frontend import read
            graph = read(data, "int8")
            scales = [graph.t(n).quant for n in graph.inputs + graph.outputs]
            inputs = [_dequantized(x, q) for x, q in zip(inputs, scales)]
            outputs = [_dequantized(y, q) for y, q in zip(outputs, scales[len(inputs):])]
        expected = reference.run(data, inputs)
        result["exact"] = len(expected) == len(outputs) and all(
            np.array_equal(a, b) for a, b in zip(outputs, expected))
        if not result["exact"]:
            result["error"] = "the outputs differ from TFLite Micro's"


def _dequantized(q, quant) -> np.ndarray:
    """float32(scale * (q - zero_point)): TFLite's DEQUANTIZE, and a float its QUANTIZE maps
    back to q exactly."""
    return (np.float32(quant.s) * (q.astype(np.float32) - np.float32(quant.zp))).astype(
        np.float32)


def _module(data: bytes, io_type):
    from ..build import load
    key = (hashlib.sha256(data).hexdigest(), io_type)
    if key not in _loaded:
        _loaded.clear()
        _loaded[key] = load(data, io_type)
    return _loaded[key]


def _inputs(specs: list) -> list:
    """One fixed pseudo-random input per model input: instructions do not depend on the
    values, and a fixed one makes runs comparable."""
    rng = np.random.default_rng(0)
    return [rng.uniform(-1, 1, s["shape"]).astype(np.float32) if s["dtype"] == "float32"
            else rng.integers(-128, 128, s["shape"]).astype(s["dtype"]) for s in specs]


class LocalRunner:
    """A pool of `jobs` worker processes (spawned: TVM does not survive a fork)."""

    def __init__(self, jobs: int = 2, timeout: float = TIMEOUT_S, fn=measure):
        self.jobs, self.timeout, self.fn = max(1, jobs), timeout, fn
        self._pool = None

    def _start(self):
        if self._pool is None:
            self._pool = multiprocessing.get_context("spawn").Pool(self.jobs)

    def run(self, tasks: list):
        """Yields (index, result) as each task ends, in completion order."""
        self._start()
        pending = {k: self._pool.apply_async(self.fn, (t,)) for k, t in enumerate(tasks)}
        deadline = {k: time.monotonic() + self.timeout * (1 + k // self.jobs)
                    for k in pending}
        while pending:
            done = [k for k, r in pending.items() if r.ready()]
            for k in done:
                yield k, pending.pop(k).get()
            late = [k for k in pending if time.monotonic() > deadline[k]]
            if late:  # a hung build or emulator: restart the pool, resubmit the others
                for k in late:
                    pending.pop(k)
                    yield k, {"error": f"timed out after {self.timeout:.0f} s",
                              "instructions": None, "layers": []}
                self.close()
                self._start()
                pending = {k: self._pool.apply_async(self.fn, (tasks[k],)) for k in pending}
                deadline = {k: time.monotonic() + self.timeout * (1 + i // self.jobs)
                            for i, k in enumerate(pending)}
            if not done:
                time.sleep(0.05)

    def close(self):
        if self._pool is not None:
            self._pool.terminate()
            self._pool.join()
            self._pool = None


class RayRunner:
    """Tasks on a Ray cluster (`address` as ray.init takes it: "auto", "ray://host:10001",
    or "local" for a Ray instance on this machine). Each task asks for one CPU."""

    def __init__(self, address: str, timeout: float = TIMEOUT_S, fn=measure):
        try:
            import ray
        except ImportError:
            from ..graph import ModelError
            raise ModelError("--ray needs Ray: pip install 'tvm_patch[ray]'") from None
        self.ray, self.timeout = ray, timeout
        if not ray.is_initialized():
            ray.init(address=None if address == "local" else address,
                     include_dashboard=False, log_to_driver=False,
                     runtime_env={"env_vars": {k: v for k, v in os.environ.items()
                                               if k.startswith("TVM_PATCH")}})
        self._measure = ray.remote(num_cpus=1, max_retries=0)(fn)

    def run(self, tasks: list):
        ray = self.ray
        refs = {self._measure.remote(t): k for k, t in enumerate(tasks)}
        deadline = time.monotonic() + self.timeout * max(1, len(tasks))
        while refs:
            ready, _ = ray.wait(list(refs), num_returns=1,
                                timeout=max(0.0, deadline - time.monotonic()))
            if not ready:
                for ref, k in refs.items():
                    ray.cancel(ref, force=True)
                    yield k, {"error": f"timed out after {self.timeout:.0f} s",
                              "instructions": None, "layers": []}
                return
            for ref in ready:
                k = refs.pop(ref)
                try:
                    yield k, ray.get(ref)
                except Exception as e:  # noqa: BLE001  (a lost worker is a failed point)
                    yield k, {"error": f"{type(e).__name__}: {str(e).splitlines()[0]}",
                              "instructions": None, "layers": []}

    def close(self):
        pass


def runner(jobs: int = 2, ray: str | None = None, timeout: float = TIMEOUT_S, fn=measure):
    """Runs `fn` (a module-level function of one task dict) over tasks: on a Ray cluster
    when `ray` is given, else in a pool of `jobs` local processes."""
    return RayRunner(ray, timeout, fn) if ray else LocalRunner(jobs, timeout, fn)
