"""Int8 TFLite models with deterministic synthetic weights and calibrated quantization.

    from tvm_patch import zoo
    data = zoo.build("mobilenetv2", resolution=144, width=0.35)      # .tflite bytes
    zoo.save("/work/shared/models/configs/mcunet-5fps_imagenet.json", "mcunet-5fps.tflite")

Standard nets: see `names()`. A model may also be an MCUNet-format JSON config (path or dict).
"""
from __future__ import annotations

import os

from .emit import to_tflite
from .nets import STANDARD_NETS, construct
from .writer import ModelWriter

__all__ = ["names", "build", "save", "ModelWriter"]


def names() -> list[str]:
    """The standard nets `build` accepts by name."""
    return list(STANDARD_NETS)


def build(name_or_config, resolution: int | None = None, width: float | None = None, seed: int = 0) -> bytes:
    """The int8 .tflite flatbuffer of a standard net or an MCUNet-format config (path or dict).

    width scales every channel count (rounded to multiples of 8); resolution replaces the input
    size. The same arguments always give the same bytes.
    """
    return to_tflite(construct(name_or_config, resolution, width, seed))


def save(name_or_config, path, resolution: int | None = None, width: float | None = None, seed: int = 0) -> str:
    """Builds the model and writes it to `path`; returns the path."""
    data = build(name_or_config, resolution, width, seed)
    directory = os.path.dirname(os.fspath(path))
    if directory:
        os.makedirs(directory, exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    return os.fspath(path)
