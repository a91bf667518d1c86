"""A worker's memory: which allocator TensorFlow uses, and giving freed memory back to the system.

Every worker loads every model, so what a model costs is paid once per worker. Measured with
`bench/memory.py` (docs/operations.md, sizing guide): most of what a CNN cost on CPU was not its
weights but the activations of its largest warm-up batch, kept by TensorFlow's oneDNN allocator,
a pool of regions that doubles as it grows and never shrinks (MobileNetV2 at batch 32: about
600 MiB per worker for a 14 MB model). This module holds the two remedies that measurement kept:

* `configure_allocator()`, before TensorFlow starts: TensorFlow's oneDNN builds then allocate with
  glibc's malloc instead of that pool (`TF_ONEDNN_USE_SYSTEM_ALLOCATOR`, read once by TensorFlow);
  freed activations can then go back to the system; and malloc's arenas are capped
  (`MALLOC_ARENAS`), so the batcher threads of many models share what is freed;
* `release_free_memory()`, after a version's warm-up: glibc's `malloc_trim`, which returns the free
  pages of every heap, so the warm-up's high-water mark is not kept.

It never imports TensorFlow, and does nothing where glibc is not the C library.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

ALLOCATOR_ENVIRONMENT = {"TF_ONEDNN_USE_SYSTEM_ALLOCATOR": "1"}
"""Set before TensorFlow starts unless already set; `TF_ONEDNN_USE_SYSTEM_ALLOCATOR=0` keeps TensorFlow's pool."""

_libc: ctypes.CDLL | None = None
_libc_loaded = False


MALLOC_ARENAS = 2
"""malloc arenas (heaps) per worker process (glibc's `M_ARENA_MAX`; its default is 8 per core)."""
_M_ARENA_MAX = -8
"""glibc's mallopt parameter number for M_ARENA_MAX."""


def configure_allocator() -> None:
    """Make TensorFlow allocate CPU tensors with malloc, and cap malloc's arenas; call it before TensorFlow starts.

    TensorFlow reads `TF_ONEDNN_USE_SYSTEM_ALLOCATOR` once, at its first tensor; an environment that
    already sets it wins. glibc gives each new thread its own arena up to 8 per core, and each
    arena keeps its own freed memory: every batcher thread (one per model) that runs a model would
    keep the high-water mark of its model's calls. With `MALLOC_ARENAS` the threads share what is
    freed; it must be set before those threads first allocate.
    """
    for name, value in ALLOCATOR_ENVIRONMENT.items():
        os.environ.setdefault(name, value)
    libc = _glibc()
    if libc is not None and "MALLOC_ARENA_MAX" not in os.environ:
        libc.mallopt(_M_ARENA_MAX, MALLOC_ARENAS)


def resident_bytes() -> int:
    """Resident set size of this process (VmRSS), in bytes; 0 where /proc is missing."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def release_free_memory() -> bool:
    """Return the free pages of every malloc heap to the system (glibc's `malloc_trim(0)`).

    Cheap next to a warm-up (milliseconds for a heap of hundreds of MiB); it changes no allocation
    in use. Returns False where the C library is not glibc.
    """
    libc = _glibc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True


def _glibc() -> ctypes.CDLL | None:
    global _libc, _libc_loaded
    if not _libc_loaded:
        _libc_loaded = True
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            libc.malloc_trim.argtypes = [ctypes.c_size_t]
            libc.malloc_trim.restype = ctypes.c_int
            libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
            libc.mallopt.restype = ctypes.c_int
            _libc = libc
        except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to trim
            log.debug("malloc_trim is not available; freed memory stays with the allocator")
    return _libc
