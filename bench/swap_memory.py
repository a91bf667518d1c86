"""Resident memory of one worker across repeated swaps of the same model.

Runs a real `ServableManager` (repository watcher, `ServableBuilder`: loader, runners, batchers),
wired as `service.app` wires them, over a temporary models folder, installs the same Keras model
again and again the recommended way (copy, then mv: a new file, so a new fingerprint and a full
load, warm-up, swap and unload each time), and reads the process's resident set size (VmRSS) after
each swap has finished unloading the old copy.

    .venv/bin/python bench/swap_memory.py [--swaps 50] [--units 256] [--max-growth-mb 64]

Prints one line per swap and a summary; exits 1 when RSS grew more than `--max-growth-mb` between the
end of the warm-up swaps and the last swap. The figure is reported in docs/model-repository.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

WARM_UP_SWAPS = 5


def rss_mb() -> float:
    """Resident set size of this process, in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("VmRSS not found in /proc/self/status")


def manager_idle(manager) -> bool:
    """Tell whether no unload thread is still running (their names start with `unload-`)."""
    import threading

    return not any(t.name.startswith("unload-") for t in threading.enumerate())


def build_model(path: Path, units: int) -> Path:
    """Save a small MLP (`units` wide, about units^2 * 2 parameters) as a `.keras` file."""
    import keras

    model = keras.Sequential(
        [
            keras.Input((64,), name="x"),
            keras.layers.Dense(units, activation="relu"),
            keras.layers.Dense(units, activation="relu"),
            keras.layers.Dense(10, activation="softmax", name="y"),
        ]
    )
    model.save(path)
    return path


def measure(swaps: int, units: int) -> dict:
    """Swap the same model `swaps` times; return the RSS series (MiB) and timings."""
    import numpy as np

    from service.builder import ServableBuilder
    from service.manager import ServableManager
    from service.preprocessing import to_model_inputs
    from service.repository import ModelRepository, RepositoryWatcher
    from service.servable import ServableRequest
    from service.settings import Settings

    root = Path(tempfile.mkdtemp(prefix="swap-memory-"))
    try:
        models, staging = root / "models", root / "staging"
        models.mkdir()
        staging.mkdir()
        source = build_model(root / "model.keras", units)
        settings = Settings(models_dir=models, settle_s=0.2, poll_interval_s=0.2, max_batch_size=8)
        builder = ServableBuilder(settings)
        builder.start()
        manager = ServableManager(builder, settings)
        watcher = RepositoryWatcher(ModelRepository(models, settle_s=settings.settle_s), manager, settings)
        watcher.start()
        manager.start()
        request = ServableRequest.latest("m")
        series: list[float] = []
        started = time.monotonic()

        def install(n: int) -> None:
            staged = staging / f"m-{n}.keras"
            shutil.copyfile(source, staged)
            os.replace(staged, models / "m.keras")

        def serving_generation() -> str:
            with manager.handle(request) as servable:
                signature = servable.signatures[servable.default_signature]
                inputs = to_model_inputs(
                    {"x": np.ones((1, 64), np.float32)},
                    (),
                    signature,
                    servable.config.preprocessing,
                    max_pixels=settings.max_image_pixels,
                    max_rows=settings.max_images_per_request,
                )
                servable.submit[servable.default_signature](inputs).result()
                return repr(id(servable))

        install(0)
        deadline = time.monotonic() + 120
        while not manager.readiness().models.get("m"):
            if time.monotonic() > deadline:
                raise RuntimeError(f"model never became AVAILABLE: {manager.status('m')}")
            time.sleep(0.02)
        current = serving_generation()
        for n in range(1, swaps + 1):
            install(n)
            deadline = time.monotonic() + 60
            while True:  # the new copy serves, and the old one has finished unloading
                generation = serving_generation()
                status = manager.status("m").versions
                if (
                    generation != current
                    and all(v.state.value == "AVAILABLE" for v in status)
                    and manager_idle(manager)
                ):
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"swap {n} did not finish: {status}")
                time.sleep(0.01)
            current = generation
            # The old copy has reached END: the manager closed it and ran its own gc.collect().
            series.append(rss_mb())
            print(f"swap {n:3d}: rss {series[-1]:8.1f} MiB", flush=True)
        watcher.stop()
        manager.stop()
        return {"rss_mb": series, "seconds": time.monotonic() - started}
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--swaps", type=int, default=50)
    parser.add_argument("--units", type=int, default=256, help="width of the two hidden layers")
    parser.add_argument(
        "--max-growth-mb", type=float, default=16.0, help="fail when RSS grows more than this after the warm-up swaps"
    )
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    args = parser.parse_args()
    if args.swaps <= WARM_UP_SWAPS:
        parser.error(f"--swaps must be more than {WARM_UP_SWAPS}")
    result = measure(args.swaps, args.units)
    series = result["rss_mb"]
    baseline = series[WARM_UP_SWAPS - 1]
    growth = series[-1] - baseline
    per_swap = growth / (len(series) - WARM_UP_SWAPS)
    summary = {
        "swaps": args.swaps,
        "rss_after_first_swap_mb": round(series[0], 1),
        "rss_after_warm_up_mb": round(baseline, 1),
        "rss_after_last_swap_mb": round(series[-1], 1),
        "rss_peak_mb": round(max(series), 1),
        "growth_after_warm_up_mb": round(growth, 1),
        "growth_per_swap_mb": round(per_swap, 2),
        "seconds": round(result["seconds"], 1),
        "bound_mb": args.max_growth_mb,
    }
    print(json.dumps(summary) if args.json else "\n".join(f"{k}: {v}" for k, v in summary.items()))
    if growth > args.max_growth_mb:
        print(
            f"FAIL: RSS grew {growth:.1f} MiB over {args.swaps - WARM_UP_SWAPS} swaps (bound {args.max_growth_mb} MiB)"
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
