"""One worker per GPU, through the real gunicorn hooks: with a faked GPU list (CUDA_VISIBLE_DEVICES,
as a device plugin sets it), WORKERS unset starts one worker per GPU, worker i is pinned to GPU i mod
N before TensorFlow starts, the log names each worker's GPU, and a replacement worker gets the GPU of
the worker it replaces. No GPU here: TensorFlow in each worker then finds none and runs on the CPU,
which is what this machine can show; the pinning itself is what is checked."""

from __future__ import annotations

import os
import re
import signal
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, wait_until
from tests.e2e.conftest import GUNICORN, free_port, serve

PINNED = re.compile(r"worker (\d+) \(pid (\d+)\) runs on GPU (\S+) of (\d+) visible \(([^)]*)\)")


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import keras

    folder = tmp_path_factory.mktemp("gpu_worker_models")
    inputs = keras.Input((4,), name="features")
    keras.Model(inputs, keras.layers.Dense(2, name="scores")(inputs)).save(folder / "tiny.keras")
    return folder


def pinned(log: str) -> list[tuple[int, int, str]]:
    """(slot, pid, GPU) of every worker the log says was pinned, in order."""
    return [(int(m[1]), int(m[2]), m[3]) for m in PINNED.finditer(log)]


def test_workers_default_to_one_per_gpu_and_each_is_pinned_to_its_own(models: Path, tmp_path: Path) -> None:
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if k not in {"WORKERS", "PROMETHEUS_MULTIPROC_DIR"}},
        "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "GRPC_PORT": "0",
        "MODELS_DIR": str(models),
        "CUDA_VISIBLE_DEVICES": "3,5",  # two GPUs, as the NVIDIA device plugin would list them
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    with serve(
        [GUNICORN, "wsgi:app"], cwd=REPO, env=env, url=f"http://127.0.0.1:{port}", log_path=tmp_path / "g.log"
    ) as server:
        workers = pinned(server.log())
        assert sorted((slot, gpu) for slot, _, gpu in workers) == [(0, "3"), (1, "5")]
        assert "of 2 visible (3, 5)" in server.log()
        assert server.post("/models/tiny/predict", json={"instances": [[1, 2, 3, 4]]}).status_code == 200

        (pid_of_slot_1,) = [pid for slot, pid, _ in workers if slot == 1]
        os.kill(pid_of_slot_1, signal.SIGKILL)
        replacement = wait_until(lambda: pinned(server.log())[2:], timeout_s=120)
        assert [(slot, gpu) for slot, _, gpu in replacement] == [(1, "5")]  # its predecessor's GPU
        assert replacement[0][1] != pid_of_slot_1
