"""Tiny Keras models for hot-swap tests: `y = k * x` (one input of shape (None, 1)), and copy helpers."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path


def save_scaled_model(path: Path, factor: float) -> Path:
    """Save a `.keras` model computing `factor * x` (Dense(1), no bias) at `path`."""
    import keras

    model = keras.Sequential(
        [
            keras.Input((1,), name="x"),
            keras.layers.Dense(1, use_bias=False, kernel_initializer=keras.initializers.Constant(factor), name="y"),
        ]
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save(path)
    return path


def copy_then_mv(source: Path, target: Path, staging: Path) -> Path:
    """Install `source` at `target` the recommended way: copy to a staging place, then rename."""
    staging.mkdir(parents=True, exist_ok=True)
    staged = staging / f"{target.parent.name}-{target.name}-{time.monotonic_ns()}"
    if source.is_dir():
        shutil.copytree(source, staged)
    else:
        shutil.copyfile(source, staged)
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(staged, target)
    return target


def copy_slowly(source: Path, target: Path, *, chunks: int, pause_s: float) -> None:
    """Write `source` into `target` in `chunks` appends, `pause_s` apart (a slow upload, no rename)."""
    data = source.read_bytes()
    size = -(-len(data) // chunks)
    target.parent.mkdir(parents=True, exist_ok=True)
    for start in range(0, len(data), size):
        with target.open("ab") as out:
            out.write(data[start : start + size])
        time.sleep(pause_s)
