"""The TCG plugin that makes the emulator count instructions: built once from
firmware/qemu_insn_plugin.c with the host C compiler, cached by its source hash."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from importlib import resources

from ..graph import ModelError


def plugin_library() -> str:
    source = resources.files(__package__) / "firmware" / "qemu_insn_plugin.c"
    text = source.read_bytes()
    cache = os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")),
                         "tvm_patch")
    lib = os.path.join(cache, f"libinsn-{hashlib.sha1(text).hexdigest()[:12]}.so")
    if os.path.exists(lib):
        return lib
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        raise ModelError("no host C compiler (gcc) to build the instruction-counting plugin: "
                         "run scripts/setup.sh")
    os.makedirs(cache, exist_ok=True)
    tmp = f"{lib}.{os.getpid()}.tmp"
    done = subprocess.run([cc, "-shared", "-fPIC", "-O2", "-o", tmp, "-x", "c", "-"],
                          input=text, capture_output=True)
    if done.returncode != 0:
        raise ModelError(f"building the instruction-counting plugin failed:\n"
                         f"{done.stderr.decode()[-1500:]}")
    os.replace(tmp, lib)
    return lib
