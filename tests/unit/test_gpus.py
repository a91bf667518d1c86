"""service/gpus.py: one worker per GPU, from a faked device list (no GPU, no TensorFlow here)."""

from __future__ import annotations

import pytest

from service import gpus

FOUR_GPUS = "GPU 0: NVIDIA H100 (UUID: GPU-a)\nGPU 1: NVIDIA H100 (UUID: GPU-b)\nGPU 2: x\nGPU 3: y\n"


def test_worker_i_runs_on_gpu_i_mod_n() -> None:
    devices = ("0", "1", "2", "3")
    assert [gpus.gpu_for_worker(devices, i) for i in range(6)] == ["0", "1", "2", "3", "0", "1"]
    assert [gpus.gpu_for_worker(("GPU-a", "GPU-b"), i) for i in range(3)] == ["GPU-a", "GPU-b", "GPU-a"]


def test_no_gpu_means_no_pinning() -> None:
    assert gpus.gpu_for_worker((), 3) is None
    assert gpus.worker_environment((), 0, "auto") == {}
    with pytest.raises(ValueError):
        gpus.gpu_for_worker(("0",), -1)


def test_worker_environment_pins_one_gpu_unless_device_is_cpu() -> None:
    assert gpus.worker_environment(("0", "1"), 3, "auto") == {"CUDA_VISIBLE_DEVICES": "1"}
    assert gpus.worker_environment(("0", "1"), 2, "gpu") == {"CUDA_VISIBLE_DEVICES": "0"}
    assert gpus.worker_environment(("0", "1"), 1, "cpu") == {"CUDA_VISIBLE_DEVICES": ""}
    assert gpus.worker_environment((), 0, "cpu") == {"CUDA_VISIBLE_DEVICES": ""}


def test_workers_default_to_one_per_gpu_on_gpu_hosts() -> None:
    assert gpus.default_workers(("0", "1", "2", "3"), "auto") == 4
    assert gpus.default_workers(("0",), "gpu") == 1
    assert gpus.default_workers(("0", "1"), "cpu") == gpus.DEFAULT_CPU_WORKERS
    assert gpus.default_workers((), "auto") == gpus.DEFAULT_CPU_WORKERS


def test_a_replacement_worker_takes_the_lowest_free_slot() -> None:
    assert gpus.free_slot(set()) == 0
    assert gpus.free_slot({0, 1, 3}) == 2  # worker 2 died: its replacement gets GPU 2 back
    assert gpus.free_slot({0, 1, 2}) == 3


def test_cuda_visible_devices_decides_when_set() -> None:
    def never() -> str:
        raise AssertionError("nvidia-smi must not run when CUDA_VISIBLE_DEVICES is set")

    assert gpus.visible_gpus({"CUDA_VISIBLE_DEVICES": "2,3"}, nvidia_smi=never) == ("2", "3")
    assert gpus.visible_gpus({"CUDA_VISIBLE_DEVICES": "GPU-a, GPU-b"}, nvidia_smi=never) == ("GPU-a", "GPU-b")
    assert gpus.visible_gpus({"CUDA_VISIBLE_DEVICES": ""}, nvidia_smi=never) == ()
    assert gpus.visible_gpus({"CUDA_VISIBLE_DEVICES": "-1"}, nvidia_smi=never) == ()
    assert gpus.visible_gpus({"CUDA_VISIBLE_DEVICES": "0,-1,1"}, nvidia_smi=never) == ("0",)  # CUDA stops there


def test_nvidia_smi_listing_then_device_files() -> None:
    assert gpus.visible_gpus({}, nvidia_smi=lambda: FOUR_GPUS) == ("0", "1", "2", "3")
    assert gpus.visible_gpus({}, nvidia_smi=lambda: "No devices were found\n") == ()
    files = ["nvidia0", "nvidia3", "nvidiactl", "nvidia-uvm", "null"]
    assert gpus.visible_gpus({}, nvidia_smi=lambda: None, device_files=lambda: files) == ("0", "1")
    assert gpus.visible_gpus({}, nvidia_smi=lambda: None, device_files=lambda: ["null"]) == ()


def test_this_machine_is_probed_without_failing() -> None:
    # The real probes: whatever this host has, a tuple of ids comes back (no exception, no TensorFlow).
    found = gpus.visible_gpus({})
    assert isinstance(found, tuple) and all(isinstance(g, str) for g in found)
