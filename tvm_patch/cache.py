"""Content-addressed cache of compiled artifacts (host kernel libraries, firmware, the
emulator plugin). Compiling is the slow part of a build and the same inputs recur: a
patched model keeps every kernel after its stage, and tests, the CLI and benchmarks build
the same models again. An entry is named by the SHA-256 of everything that determines it
(the full source and the tool versions), so it is never stale; it is written under a
temporary name and renamed, so concurrent builds never see a partial one.

The folder is $TVM_PATCH_CACHE, else $XDG_CACHE_HOME/tvm_patch (~/.cache/tvm_patch);
TVM_PATCH_CACHE=off compiles everything afresh (what compile-time benchmarks measure)."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile


def enabled() -> bool:
    """False with TVM_PATCH_CACHE=off: builds then compile everything afresh."""
    return os.environ.get("TVM_PATCH_CACHE") != "off"


def folder() -> str:
    where = os.environ.get("TVM_PATCH_CACHE")
    if where and where != "off":
        return where
    return os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")),
                        "tvm_patch")


def key(*parts) -> str:
    """SHA-256 of the parts (str or bytes), each length-prefixed so no two lists collide."""
    h = hashlib.sha256()
    for part in parts:
        data = part if isinstance(part, bytes) else str(part).encode()
        h.update(len(data).to_bytes(8, "little") + data)
    return h.hexdigest()


def fetch(name: str, make) -> str:
    """Path of the entry `name` (a file name made with key()); on a miss, `make(path)`
    writes it at a temporary path in the cache folder, which then becomes the entry."""
    root = folder()
    path = os.path.join(root, name)
    if os.path.exists(path):
        return path
    os.makedirs(root, exist_ok=True)
    work = tempfile.mkdtemp(prefix=".tmp-", dir=root)
    try:
        tmp = os.path.join(work, name)  # the same name: tools that read the suffix see it
        make(tmp)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return path
