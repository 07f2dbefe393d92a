"""Firmware projects for a model: `write_project` turns a Relax module into a self-contained
directory (Makefile, start-up, linker script with the board's memory budget, the model as
plain C, the protocol server) and `build_firmware` compiles and links it with
arm-none-eabi-gcc and measures the result from the ELF and its map."""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from importlib import resources

from .. import cache
from ..analysis.memory import largest_steps, plan_memory
from ..graph import ModelError
from ..kernels.variants import ATTR as VARIANT_ATTR
from .codegen import model_sources, weight_blob

KB = 1024
RAM_ORIGIN, RAM_BYTES, FLASH_BYTES = 0x20000000, 320 * KB, 1024 * KB  # STM32F746
# The emulated board's own SSRAMs (4 MB at 0x0, 4 MB at 0x20000000): for checking models
# beyond the STM32F746 on the emulator. Not a real microcontroller's budget.
BUDGETS = {"stm32f746": (RAM_BYTES, FLASH_BYTES), "mps2-an500": (4096 * KB, 4096 * KB)}
STACK_BYTES = 8 * KB
CFLAGS = "-mcpu=cortex-m7 -mthumb -mfpu=fpv5-sp-d16 -mfloat-abi=hard"


@dataclass(frozen=True)
class Board:
    name: str
    flash_origin: int
    source: str          # board support file in firmware/
    description: str


BOARDS = {
    "stm32f746": Board("stm32f746", 0x08000000, "board_stm32f746.c",
                       "STM32F746G-DISCO: 216 MHz, USART1 on the ST-LINK serial port"),
    "qemu-m7": Board("qemu-m7", 0x00000000, "board_qemu_m7.c",
                     "qemu-system-arm -M mps2-an500 -cpu cortex-m7, UART0"),
}
FIRMWARE = ("board.h", "startup.c", "server.c", "tvmp_nn.h", "tvmp_nn.c", "tvmp_block.h",
            "tvmp_block.c")
HAND_WRITTEN = {"tvmp_nn.c": ("tvmp_nn.h",), "tvmp_block.c": ("tvmp_block.h", "tvmp_nn.h")}


@dataclass
class Firmware:
    """What the linked firmware really occupies, from its ELF (accounting rule in each name)."""
    elf: str
    flash_bytes: int        # text + rodata + data initializers + vector table
    static_ram_bytes: int   # .data + .bss (the arena included), without the stack region
    arena_bytes: int        # the tvmp_arena input section in the linker map
    stack_reserved: int     # the stack region the linker script sets aside
    sections: dict


def board(target: str) -> Board:
    if target not in BOARDS:
        raise ModelError(f"unknown target {target!r}: expected one of "
                         f"{', '.join(['host', *BOARDS])}")
    return BOARDS[target]


def write_project(mod, target: str, directory, stack_bytes: int = STACK_BYTES,
                  budget: str = "stm32f746") -> dict:
    """Writes the project for `mod` into `directory`; returns its description, also saved
    as project.json. Fails before writing when the arena cannot fit the budget's RAM or the
    weights its Flash. budget "mps2-an500" (qemu-m7 only) gives the emulator's 4 MB + 4 MB."""
    b = board(target)
    if budget not in BUDGETS or (budget != "stm32f746" and target != "qemu-m7"):
        raise ModelError(f"budget {budget!r}: {target} builds use "
                         f"{'stm32f746' if target != 'qemu-m7' else ' or '.join(BUDGETS)}")
    ram_bytes, flash_bytes = BUDGETS[budget]
    plan = plan_memory(mod)
    model = str(mod["main"].attrs.get("tvm_patch.model", "model"))
    ram_need = plan.arena_bytes + stack_bytes
    breakdown = largest_steps(plan)
    if ram_need > ram_bytes:
        raise ModelError(
            f"{model} does not fit the {b.name} RAM: arena {plan.arena_bytes:,} B + stack "
            f"{stack_bytes:,} B > {ram_bytes:,} B; the layers with the most live memory:\n"
            f"{breakdown}")
    weights = weight_blob(plan.constants)
    if len(weights[0]) > flash_bytes:
        raise ModelError(f"{model} does not fit the {b.name} Flash: its constants alone take "
                         f"{len(weights[0]):,} B > {flash_bytes:,} B")
    sources = model_sources(mod, plan, model, weights)
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    for name, text in sources.files.items():
        with open(os.path.join(directory, name), "wb" if isinstance(text, bytes) else "w") as f:
            f.write(text)
    firmware = resources.files(__package__) / "firmware"
    for name in FIRMWARE:
        shutil.copyfile(firmware / name, os.path.join(directory, name))
    shutil.copyfile(firmware / b.source, os.path.join(directory, "board.c"))
    with open(os.path.join(directory, "firmware.ld"), "w") as f:
        f.write(_linker_script(b, stack_bytes, ram_bytes, flash_bytes))
    with open(os.path.join(directory, "Makefile"), "w") as f:
        f.write(_makefile(b))
    description = {
        "model": model, "target": b.name, "board": b.description,
        "model_id": sources.model_id, "arena_bytes": plan.arena_bytes,
        "stack_bytes": stack_bytes, "weight_bytes": sources.weight_bytes,
        "budget": budget, "ram_bytes": ram_bytes, "flash_bytes": flash_bytes,
        "inputs": [_io(plan, n) for n in plan.inputs],
        "outputs": [_io(plan, n) for n in plan.outputs],
        "layers": [{"func": s.func, "kind": s.op.get("kind", s.func), "index": s.op.get("index"),
                    "macs": s.macs, "output": s.output, "attrs": s.op.get("attrs", {}),
                    "weights": list(plan.constants[s.consts[0]].shape) if s.consts else None,
                    "c_kernel": _c_kernel(mod, s.func)}
                   for s in plan.steps],
        "breakdown": breakdown,
    }
    with open(os.path.join(directory, "project.json"), "w") as f:
        json.dump(description, f, indent=1)
    return description


def _c_kernel(mod, func: str) -> str | None:
    """The hand-written C kernel a step runs (kernels/variants.py; tvmp_block_run for a
    fused block, passes/c_block.py), None for TVM's C."""
    try:
        attrs = mod[func].attrs
    except (KeyError, ValueError):
        return None
    if attrs is None or VARIANT_ATTR not in attrs:
        return None
    return json.loads(str(attrs[VARIANT_ATTR])).get("name", "tvmp_block_run")


def _io(plan, name) -> dict:
    _, shape, dtype = plan.views[name]
    return {"name": name, "shape": list(shape), "dtype": dtype}


def _linker_script(b: Board, stack_bytes: int, ram_bytes: int, flash_bytes: int) -> str:
    return f"""/* {b.description}. The memory budget: a model that does not fit fails here. */
MEMORY
{{
  FLASH (rx) : ORIGIN = 0x{b.flash_origin:08X}, LENGTH = {flash_bytes // KB}K
  RAM (rwx)  : ORIGIN = 0x{RAM_ORIGIN:08X}, LENGTH = {ram_bytes // KB}K
}}
ENTRY(Reset_Handler)

SECTIONS
{{
  .isr_vector : {{ KEEP(*(.isr_vector)) }} > FLASH
  .text : {{ *(.text*) *(.rodata*) . = ALIGN(4); }} > FLASH
  .ARM.exidx : {{ *(.ARM.exidx*) }} > FLASH
  _sidata = LOADADDR(.data);
  .data : {{ _sdata = .; *(.data*) . = ALIGN(4); _edata = .; }} > RAM AT > FLASH
  .bss (NOLOAD) : {{ _sbss = .; *(.bss*) *(COMMON) . = ALIGN(4); _ebss = .; }} > RAM
  .stack (NOLOAD) : {{ . = ALIGN(8); _sstack = .; . += {stack_bytes}; _estack = .; }} > RAM
}}
"""


def _makefile(b: Board) -> str:
    run = {
        "qemu-m7": "run: build/firmware.elf\n\tqemu-system-arm -M mps2-an500 -cpu cortex-m7 "
                   "-display none -monitor none -serial stdio -kernel build/firmware.elf\n",
        "stm32f746": "flash: build/firmware.elf build/firmware.bin\n"
                     "\topenocd -f board/stm32f746g-disco.cfg -c \"program build/firmware.elf "
                     "verify reset exit\" || st-flash --reset write build/firmware.bin "
                     "0x08000000\n",
    }[b.name]
    return f"""# Firmware for {b.description}. Generated by tvm_patch.
CC = arm-none-eabi-gcc
OBJCOPY = arm-none-eabi-objcopy
CFLAGS = {CFLAGS} -O3 -std=c11 -ffp-contract=off -ffunction-sections -fdata-sections -Wall -Wno-maybe-uninitialized
LDFLAGS = -T firmware.ld -nostartfiles --specs=nano.specs --specs=nosys.specs \\
          -Wl,--gc-sections -Wl,-Map=build/firmware.map
SOURCES = startup.c board.c server.c model.c kernels.c tvmp_nn.c tvmp_block.c weights.S
OBJECTS = $(SOURCES:%=build/%.o)

all: build/firmware.elf

build/%.c.o: %.c board.h tvmp_model.h tvmp_kernels.h tvmp_nn.h tvmp_block.h
\t@mkdir -p build
\t$(CC) $(CFLAGS) -c $< -o $@

build/tvmp_nn.c.o: tvmp_nn.c tvmp_nn.h
\t@mkdir -p build
\t$(CC) $(CFLAGS) -c $< -o $@

build/tvmp_block.c.o: tvmp_block.c tvmp_block.h tvmp_nn.h
\t@mkdir -p build
\t$(CC) $(CFLAGS) -c $< -o $@

build/weights.S.o: weights.S weights.bin
\t@mkdir -p build
\t$(CC) $(CFLAGS) -c $< -o $@

build/firmware.elf: $(OBJECTS) firmware.ld
\t$(CC) $(CFLAGS) $(OBJECTS) $(LDFLAGS) -lm -o $@

build/firmware.bin: build/firmware.elf
\t$(OBJCOPY) -O binary $< $@

{run}
clean:
\trm -rf build

.PHONY: all clean {"run" if b.name == "qemu-m7" else "flash"}
"""


def build_firmware(directory) -> Firmware:
    """Compiles and links the project; a model that does not fit fails with the budget and
    the per-layer memory breakdown."""
    directory = os.fspath(directory)
    need_toolchain()
    with open(os.path.join(directory, "project.json")) as f:
        project = json.load(f)
    for source in HAND_WRITTEN:
        _cached_object(directory, source)
    done = subprocess.run(["make", "-s", f"-j{os.cpu_count() or 1}", "-C", directory,
                           "build/firmware.elf"], capture_output=True, text=True)
    if done.returncode != 0:
        overflow = re.findall(r"region `(\w+)' overflowed by (\d+) bytes", done.stderr)
        if overflow:
            what = ", ".join(f"{region} by {int(n):,} B" for region, n in overflow)
            raise ModelError(f"{project['model']} does not fit the {project['target']} "
                             f"budget (RAM {project['ram_bytes']:,} B, Flash "
                             f"{project['flash_bytes']:,} B): the link "
                             f"overflows {what}; arena {project['arena_bytes']:,} B; the layers "
                             f"with the most live memory:\n{project['breakdown']}")
        raise ModelError(f"building the firmware failed:\n{done.stderr[-2000:]}")
    elf = os.path.join(directory, "build", "firmware.elf")
    return measure(elf, project["stack_bytes"])


def _cached_object(directory: str, source: str) -> None:
    """A hand-written C file (HAND_WRITTEN: the kernels take seconds to compile at -O3) is
    the same in every project: its object comes from the content-addressed cache (keyed by
    the source, its headers, the Makefile's flags and the compiler), copied into build/
    newer than its sources, so make compiles only the model's own files. On a miss, make
    builds it here first."""
    if not cache.enabled():
        return
    with open(os.path.join(directory, "Makefile")) as f:
        flags = re.search(r"^CFLAGS = .*$", f.read(), re.M).group(0)
    sources = [open(os.path.join(directory, n), "rb").read()
               for n in (source, *HAND_WRITTEN[source])]
    target = os.path.join(directory, "build", source + ".o")

    def make(path):
        subprocess.run(["make", "-s", "-C", directory, f"build/{source}.o"], check=True,
                       capture_output=True)
        shutil.copyfile(target, path)
    try:
        entry = cache.fetch(cache.key(f"{source} object", _compiler(), flags, *sources) + ".o",
                            make)
    except subprocess.CalledProcessError:
        return  # the full make below reports the error
    if not os.path.exists(target):
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copyfile(entry, target)  # a fresh modification time: make takes it as built


@functools.lru_cache(maxsize=None)
def _compiler() -> str:
    return subprocess.run(["arm-none-eabi-gcc", "--version"], capture_output=True,
                          text=True).stdout


def measure(elf: str, stack_reserved: int) -> Firmware:
    out = subprocess.run(["arm-none-eabi-size", "-A", elf], capture_output=True, text=True,
                         check=True).stdout
    sections = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0].startswith(".") and parts[1].isdigit():
            sections[parts[0]] = int(parts[1])
    flash = sum(sections.get(s, 0) for s in (".isr_vector", ".text", ".ARM.exidx", ".data"))
    ram = sections.get(".data", 0) + sections.get(".bss", 0)
    return Firmware(elf, flash, ram, map_section(elf[:-len(".elf")] + ".map", ".bss.tvmp_arena"),
                    stack_reserved, sections)


def map_section(map_file: str, name: str) -> int:
    """Size of an input section in a GNU ld map (its line, or the next when the name is long)."""
    with open(map_file) as f:
        lines = f.read().splitlines()
    for k, line in enumerate(lines):
        parts = line.split()
        if parts and parts[0] == name:
            fields = parts[1:] if len(parts) > 1 else lines[k + 1].split()
            return int(fields[1], 16)
    raise ModelError(f"{map_file}: no section {name}")


def symbol(elf: str, name: str) -> tuple:
    """(address, size) of a symbol of the ELF."""
    out = subprocess.run(["arm-none-eabi-nm", "-S", elf], capture_output=True, text=True,
                         check=True).stdout
    for line in out.splitlines():
        parts = line.split()
        if parts[-1] == name:
            return int(parts[0], 16), int(parts[1], 16) if len(parts) == 4 else 0
    raise ModelError(f"{elf}: no symbol {name}")


def need_toolchain():
    missing = [t for t in ("arm-none-eabi-gcc", "make") if shutil.which(t) is None]
    if missing:
        raise ModelError(f"{', '.join(missing)} not found: run scripts/setup.sh, which installs "
                         "gcc-arm-none-eabi, libnewlib-arm-none-eabi and qemu-system-arm")


def flash(directory):
    """Programs a stm32f746 project onto the board (openocd, or st-flash)."""
    if not (shutil.which("openocd") or shutil.which("st-flash")):
        raise ModelError("flashing the board needs openocd or st-flash (apt-get install "
                         "openocd / stlink-tools)")
    done = subprocess.run(["make", "-s", "-C", os.fspath(directory), "flash"],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise ModelError(f"flashing the board failed:\n{done.stderr[-1500:]}")
