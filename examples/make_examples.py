"""Regenerate the example digit PNGs in this folder from the default model's held-out digits.

    .venv/bin/python examples/make_examples.py

Writes `examples/<digit>.png` (28x28 grayscale, bright strokes on black) for the digits 0..9: for
each, the first held-out digit of that class in `service.default_model.heldout_digits()`, i.e. a
digit the default model never saw in training. The output is deterministic (fixed split seed).
"""

from __future__ import annotations

import sys
from pathlib import Path

from PIL import Image

EXAMPLES = Path(__file__).resolve().parent
sys.path.insert(0, str(EXAMPLES.parent))  # run as a script from anywhere: make `service` importable

from service.default_model import heldout_digits  # noqa: E402


def main() -> int:
    """Write one held-out PNG per digit class into this folder."""
    images, labels = heldout_digits()
    for digit in range(10):
        index = int((labels == digit).nonzero()[0][0])
        path = EXAMPLES / f"{digit}.png"
        Image.fromarray(images[index]).save(path, optimize=True)
        print(f"{path.relative_to(EXAMPLES.parent)}: held-out digit #{index}, label {digit}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
