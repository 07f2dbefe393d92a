"""Front ends: model files to the graph IR, and the graph IR to a Relax IRModule."""

from __future__ import annotations

import os

from ..graph import Graph, ModelError
from .relax_emit import to_relax
from .simplify import fold_pads, mark_inplace


def read(model) -> Graph:
    """A .tflite or .onnx file (path or bytes) as the graph IR, simplified exactly."""
    if isinstance(model, Graph):
        return model
    return mark_inplace(fold_pads(_read_file(model)))


def _read_file(model) -> Graph:
    if isinstance(model, (str, os.PathLike)):
        path = str(model)
        if not os.path.isfile(path):
            raise ModelError(f"{path}: no such model file")
        with open(path, "rb") as f:
            data = f.read()
        name = os.path.splitext(os.path.basename(path))[0]
    else:
        data, name, path = bytes(model), "model", ""
    if path.endswith(".onnx") or (not path.endswith(".tflite") and data[4:8] != b"TFL3"):
        from .onnx import read_onnx
        graph = read_onnx(data)
        graph.name = name
        return graph
    from .tflite import read_tflite
    return read_tflite(data, name)


def load(model):
    """A .tflite or .onnx model as a Relax IRModule (NHWC, integer kernels for int8)."""
    return to_relax(read(model))
