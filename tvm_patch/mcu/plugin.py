"""The TCG plugin that makes the emulator count instructions: built once from
firmware/qemu_insn_plugin.c with the host C compiler, cached by its source (tvm_patch.cache)."""

from __future__ import annotations

import shutil
import subprocess
from importlib import resources

from .. import cache
from ..graph import ModelError


def plugin_library() -> str:
    source = resources.files(__package__) / "firmware" / "qemu_insn_plugin.c"
    text = source.read_bytes()

    def make(lib):
        cc = shutil.which("gcc") or shutil.which("cc")
        if cc is None:
            raise ModelError("no host C compiler (gcc) to build the instruction-counting "
                             "plugin: run scripts/setup.sh")
        done = subprocess.run([cc, "-shared", "-fPIC", "-O2", "-o", lib, "-x", "c", "-"],
                              input=text, capture_output=True)
        if done.returncode != 0:
            raise ModelError(f"building the instruction-counting plugin failed:\n"
                             f"{done.stderr.decode()[-1500:]}")
    return cache.fetch(f"libinsn-{cache.key(text)[:12]}.so", make)
