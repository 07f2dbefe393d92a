"""Int8 TFLite models with deterministic synthetic weights and calibrated quantization.

    from tvm_patch import zoo
    data = zoo.build("mobilenetv2", resolution=144, width=0.35)      # .tflite bytes
    zoo.save("/work/shared/models/configs/mcunet-5fps_imagenet.json", "mcunet-5fps.tflite")

Standard nets: see `names()`. A model may also be an MCUNet-format JSON config (path or dict).
quant="adversarial" gives the same nets with negative, zero, tiny and huge per-channel weight
scales, multipliers rounding up to 2^31 and extreme zero points (see emit.py).
"""
from __future__ import annotations

import os

from .emit import QUANT_MODES, to_tflite
from .nets import STANDARD_NETS, construct
from .writer import ModelWriter

__all__ = ["names", "build", "save", "ModelWriter"]


def names() -> list[str]:
    """The standard nets `build` accepts by name."""
    return list(STANDARD_NETS)


def build(name_or_config, resolution: int | None = None, width: float | None = None, seed: int = 0,
          quant: str = "standard") -> bytes:
    """The int8 .tflite flatbuffer of a standard net or an MCUNet-format config (path or dict).

    width scales every channel count (rounded to multiples of 8); resolution replaces the input
    size. The same arguments always give the same bytes.
    """
    if quant not in QUANT_MODES:  # before the float net is built and calibrated
        raise ValueError(f"quant={quant!r}: expected one of {', '.join(QUANT_MODES)}")
    return to_tflite(construct(name_or_config, resolution, width, seed), quant)


def save(name_or_config, path, resolution: int | None = None, width: float | None = None, seed: int = 0,
         quant: str = "standard") -> str:
    """Builds the model and writes it to `path`; returns the path."""
    data = build(name_or_config, resolution, width, seed, quant)
    directory = os.path.dirname(os.fspath(path))
    if directory:
        os.makedirs(directory, exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    return os.fspath(path)
