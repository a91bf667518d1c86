"""service.memory: the allocator chosen before TensorFlow starts, and free memory given back after a warm-up."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys

from service import memory
from tests.conftest import REPO

CHUNK = 64 * 1024
CHUNKS = 1600  # 100 MiB in chunks malloc keeps in its heap (below its mmap threshold)


def test_configure_allocator_sets_the_system_allocator_unless_the_environment_chose() -> None:
    code = (
        "import os; from service import memory; memory.configure_allocator(); "
        "print(os.environ['TF_ONEDNN_USE_SYSTEM_ALLOCATOR'])"
    )
    env = {k: v for k, v in os.environ.items() if k != "TF_ONEDNN_USE_SYSTEM_ALLOCATOR"}
    chosen = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, check=True)
    assert chosen.stdout.strip() == "1"
    kept = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env={**env, "TF_ONEDNN_USE_SYSTEM_ALLOCATOR": "0"},
        capture_output=True,
        text=True,
        check=True,
    )
    assert kept.stdout.strip() == "0"


def test_release_free_memory_returns_a_freed_heap_to_the_system() -> None:
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    chunks = [libc.malloc(CHUNK) for _ in range(CHUNKS)]
    sentinel = libc.malloc(CHUNK)  # above the chunks: their free space is a hole, not the heap's top
    for chunk in chunks:
        ctypes.memset(chunk, 1, CHUNK)  # resident
    for chunk in chunks:
        libc.free(chunk)
    try:
        before = memory.resident_bytes()
        assert memory.release_free_memory()
        released = before - memory.resident_bytes()
    finally:
        libc.free(sentinel)
    assert released >= 0.8 * CHUNK * CHUNKS, f"only {released / 2**20:.0f} MiB of 100 MiB given back"
