"""The microcontroller target: plain C over one static arena, firmware projects for the
STM32F746G-DISCO and the Cortex-M7 emulator, and host-driven sessions on them.

    from tvm_patch import load, mcu
    fw = mcu.compile(load("model.tflite"), "qemu-m7", "build/model")
    with mcu.Session("build/model") as s:
        y = s.run_model(x)
"""

from .project import (BOARDS, FLASH_BYTES, RAM_BYTES, Firmware, build_firmware, flash,
                      write_project)
from .session import Counters, DeviceError, Session


def compile(mod, target: str, directory, **options) -> Firmware:  # noqa: A001
    """Writes the firmware project for `mod` and builds it. `options`: the patch options of
    tvm_patch.build (any of them turns patch-based inference on), the rest as for
    write_project."""
    from ..build import PATCH_OPTIONS, apply_passes
    patch = {name: options.pop(name) for name in PATCH_OPTIONS if name in options}
    write_project(apply_passes(mod, **patch), target, directory, **options)
    return build_firmware(directory)


__all__ = ["BOARDS", "FLASH_BYTES", "RAM_BYTES", "Firmware", "Counters", "DeviceError",
           "Session", "build_firmware", "compile", "flash", "write_project"]
