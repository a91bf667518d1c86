"""GPUs per worker: which GPUs the host shows, how many workers that makes, and which GPU each worker gets.

With N visible GPUs, worker i (its slot, 0..WORKERS-1, kept by a replacement worker) runs on GPU
i mod N: gunicorn.conf.py finds the GPUs in the master, gives each new worker the lowest free slot
(`free_slot`) and, in the worker right after the fork and so before TensorFlow starts there, sets
`CUDA_VISIBLE_DEVICES` to that worker's one GPU (`worker_environment`). TensorFlow then sees a
single GPU, `/GPU:0`, and the builder needs no choice of its own. Finding the GPUs never imports
TensorFlow (which would start CUDA in the master): CUDA_VISIBLE_DEVICES when it is set, else
`nvidia-smi -L`, else the `/dev/nvidiaN` device files. Pure functions apart from `visible_gpus`'s
probes; imports nothing of the service.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Callable, Collection, Mapping, Sequence

DEFAULT_CPU_WORKERS = 2
"""Workers when WORKERS is unset and no GPU is used (a CPU host, or DEVICE=cpu)."""

_NVIDIA_SMI_GPU = re.compile(r"^GPU (\d+):")
_DEVICE_FILE = re.compile(r"^nvidia(\d+)$")


def parse_cuda_visible_devices(value: str) -> tuple[str, ...]:
    """The GPU ids CUDA_VISIBLE_DEVICES lists (indexes or UUIDs), in order; CUDA stops at the first invalid one.

    Empty, or `-1` first: no GPU.
    """
    ids: list[str] = []
    for part in (p.strip() for p in value.split(",")):
        if not part or part.startswith("-"):
            break  # CUDA ignores this entry and every one after it
        ids.append(part)
    return tuple(ids)


def visible_gpus(
    environ: Mapping[str, str],
    *,
    nvidia_smi: Callable[[], str | None] | None = None,
    device_files: Callable[[], Collection[str]] | None = None,
) -> tuple[str, ...]:
    """The ids of the GPUs this process may use, as CUDA_VISIBLE_DEVICES values, without starting CUDA.

    Args:
        environ: the process environment (CUDA_VISIBLE_DEVICES, when set, decides).
        nvidia_smi: returns `nvidia-smi -L`'s output, None when it cannot run (default: runs it).
        device_files: names in /dev (default: lists /dev); `nvidiaN` files count when nvidia-smi is missing.
    """
    if "CUDA_VISIBLE_DEVICES" in environ:
        return parse_cuda_visible_devices(environ["CUDA_VISIBLE_DEVICES"])
    listing = (nvidia_smi or _nvidia_smi)()
    if listing is not None:
        return tuple(m.group(1) for m in map(_NVIDIA_SMI_GPU.match, listing.splitlines()) if m)
    # In a container the device plugin mounts only the allocated /dev/nvidiaN; CUDA numbers them 0..n-1.
    count = sum(1 for name in (device_files or _dev_names)() if _DEVICE_FILE.match(name))
    return tuple(str(i) for i in range(count))


def default_workers(gpus: Sequence[str], device: str) -> int:
    """Workers when WORKERS is unset: one per GPU when models run on GPUs, else `DEFAULT_CPU_WORKERS`."""
    if gpus and device != "cpu":
        return len(gpus)
    return DEFAULT_CPU_WORKERS


def gpu_for_worker(gpus: Sequence[str], worker_index: int) -> str | None:
    """The GPU of worker `worker_index`: GPU i mod N of the visible ones; None when there is none."""
    if worker_index < 0:
        raise ValueError(f"worker index must be at least 0, not {worker_index}")
    if not gpus:
        return None
    return gpus[worker_index % len(gpus)]


def free_slot(taken: Collection[int]) -> int:
    """The lowest worker slot no living worker holds (a replacement worker takes its predecessor's slot)."""
    slot = 0
    while slot in taken:
        slot += 1
    return slot


def worker_environment(gpus: Sequence[str], worker_index: int, device: str) -> dict[str, str]:
    """Environment changes for worker `worker_index` (before TensorFlow starts): its one GPU, or none on CPU.

    `DEVICE=cpu` hides every GPU (an empty CUDA_VISIBLE_DEVICES): a worker that merely sees a GPU
    makes TensorFlow open a CUDA context on it and hold its memory, though no model runs there (seen
    on an H200 host: with nothing set, a CPU worker's process still saw the GPU; bench/gpu_probe.py).
    """
    if device == "cpu":
        return {"CUDA_VISIBLE_DEVICES": ""}
    gpu = gpu_for_worker(gpus, worker_index)
    return {} if gpu is None else {"CUDA_VISIBLE_DEVICES": gpu}


def _nvidia_smi() -> str | None:
    command = shutil.which("nvidia-smi")
    if command is None:
        return None
    try:
        result = subprocess.run([command, "-L"], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout if result.returncode == 0 else None


def _dev_names() -> list[str]:
    try:
        return os.listdir("/dev")
    except OSError:
        return []
