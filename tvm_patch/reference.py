"""TFLite Micro (PyPI `tflite-micro`) as the independent reference: its interpreter runs
the reference kernels MCU users ship, and its recording allocator reports its arena."""

from __future__ import annotations

import os
import re
import tempfile

import numpy as np
import tflite


def _runtime():
    try:
        from tflite_micro.python.tflite_micro import runtime
    except ImportError as e:  # pragma: no cover - the test and benchmark extras install it
        raise RuntimeError("the TFLite Micro reference needs `pip install tflite-micro`") from e
    return runtime


def interpreter(data: bytes):
    # the default arena (10x the model size) is too small for small models
    return _runtime().Interpreter.from_bytes(data, arena_size=max(8 << 20, 10 * len(data)))


def run(data: bytes, inputs) -> list:
    ip = interpreter(data)
    for k, x in enumerate(inputs):
        ip.set_input(np.ascontiguousarray(x), k)
    ip.invoke()
    n_outputs = tflite.Model.GetRootAsModel(data, 0).Subgraphs(0).OutputsLength()
    return [ip.get_output(k) for k in range(n_outputs)]


def arena(data: bytes, inputs=None) -> dict:
    """TFLite Micro's arena for the model: `head` holds the activations (its memory plan),
    `total` adds the interpreter's persistent structures (tail)."""
    ip = interpreter(data)
    if inputs is not None:
        for k, x in enumerate(inputs):
            ip.set_input(np.ascontiguousarray(x), k)
    ip.invoke()
    text = _capture_stderr(ip.print_allocations)
    found = dict(re.findall(r"Arena allocation (total|head|tail) (\d+) bytes", text))
    return {k: int(v) for k, v in found.items()}


def _capture_stderr(fn) -> str:
    """The allocator prints from C++ to file descriptor 2."""
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        saved = os.dup(2)
        try:
            os.dup2(tmp.fileno(), 2)
            fn()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        tmp.seek(0)
        return tmp.read().decode(errors="replace")
