"""What service/gpus.py finds on a real GPU host, and what a worker pinned by it sees.

Runs without TensorFlow (the lent GPU machine has none, and TensorFlow's 2 GB does not travel): it
prints `nvidia-smi -L`, the GPUs `visible_gpus` finds (by nvidia-smi, by /dev files, by
CUDA_VISIBLE_DEVICES), the environment each of four workers would get, and — in a child process
started with that environment, as gunicorn's worker is — how many CUDA devices the CUDA driver
shows (through PyTorch when it is installed: the same driver masking TensorFlow relies on).

    python3 bench/gpu_probe.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from service import gpus  # noqa: E402

CHILD = (
    "import json, os\n"
    "try:\n"
    "    import torch\n"
    "    n = torch.cuda.device_count()\n"
    "    names = [torch.cuda.get_device_name(i) for i in range(n)]\n"
    "except ImportError:\n"
    "    n, names = None, []\n"
    "print(json.dumps({'CUDA_VISIBLE_DEVICES': os.environ.get('CUDA_VISIBLE_DEVICES'), 'cuda_devices': n, 'names': names}))\n"
)


def child_view(extra: dict[str, str]) -> dict[str, object]:
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"} | extra
    done = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, timeout=120)
    return json.loads(done.stdout) if done.returncode == 0 else {"error": done.stderr[-500:]}


def main() -> None:
    environ = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    listing = gpus._nvidia_smi()
    print("nvidia-smi -L:", repr(listing))
    print("/dev nvidia files:", sorted(n for n in gpus._dev_names() if n.startswith("nvidia")))
    found = gpus.visible_gpus(environ)
    print("visible_gpus (nvidia-smi):", found)
    print("visible_gpus (/dev files only):", gpus.visible_gpus(environ, nvidia_smi=lambda: None))
    print("visible_gpus (CUDA_VISIBLE_DEVICES=0):", gpus.visible_gpus({"CUDA_VISIBLE_DEVICES": "0"}))
    print("default_workers(auto):", gpus.default_workers(found, "auto"), " (cpu):", gpus.default_workers(found, "cpu"))
    for worker in range(4):
        env = gpus.worker_environment(found, worker, "auto")
        print(f"worker {worker}: env {env} -> sees {child_view(env)}")
    cpu_env = gpus.worker_environment(found, 0, "cpu")
    print("worker 0 with DEVICE=cpu:", cpu_env, "-> sees", child_view(cpu_env))
    print("a worker with nothing set:", child_view({}))
    uuids = [line.split("UUID: ")[1].rstrip(")") for line in (listing or "").splitlines() if "UUID: " in line]
    if uuids:
        print("pinned by UUID:", child_view({"CUDA_VISIBLE_DEVICES": uuids[0]}))
    print("pinned to a GPU that does not exist:", child_view({"CUDA_VISIBLE_DEVICES": "7"}))


if __name__ == "__main__":
    main()
