"""Front ends: model files to the graph IR (tvm_patch.load then emits it as Relax)."""

from __future__ import annotations

import os

from ..graph import Graph, ModelError
from .io_type import with_io_type
from .simplify import fold_pads, mark_inplace
from .validate import validate


def read(model, io_type: str | None = None) -> Graph:
    """A .tflite or .onnx file (path or bytes) as the graph IR, simplified exactly;
    io_type "int8" drops the float edges (QUANTIZE/DEQUANTIZE, see io_type.py)."""
    if isinstance(model, Graph):
        return with_io_type(model, io_type)
    return mark_inplace(fold_pads(with_io_type(_read_file(model), io_type)))


def _read_file(model) -> Graph:
    if isinstance(model, (str, os.PathLike)):
        path = str(model)
        if not os.path.isfile(path):  # a pipe or a device could block the read for ever
            raise ModelError(f"{path}: " + ("not a regular file" if os.path.exists(path)
                                            else "no such model file"))
        with open(path, "rb") as f:
            data = f.read()
        name = os.path.splitext(os.path.basename(path))[0]
    else:
        data, name, path = bytes(model), "model", ""
    if path.endswith(".onnx") or (not path.endswith(".tflite") and data[4:8] != b"TFL3"):
        from .onnx import read_onnx
        graph = read_onnx(data)
        graph.name = name
        return validate(graph, strict_types=False)
    from .tflite import read_tflite
    return read_tflite(data, name)
