"""FastJSONProvider: Flask's JSON provider with orjson for response bodies.

Answers carry model outputs as nested lists of floats. Python's json module spends 0.45 ms on the
1,000 scores of one ImageNet-sized row; orjson 0.03 ms (measured, bench/ figures in
docs/benchmarks.md), a few per cent of a MobileNetV2 request's CPU. Two differences are kept out of
the wire: orjson writes NaN and Infinity as `null`, and refuses some types json accepts, so a body
whose orjson text holds `null` (rare: no output is null) or that orjson cannot encode is written by
Flask's own provider instead, with `NaN` / `Infinity` as TensorFlow Serving writes them.
"""

from __future__ import annotations

from typing import Any

import orjson
from flask.json.provider import DefaultJSONProvider

_COMPACT: tuple[dict[str, Any], dict[str, Any]] = ({}, {"separators": (",", ":")})


class FastJSONProvider(DefaultJSONProvider):
    """Compact, insertion-ordered JSON through orjson; Flask's encoder where orjson differs."""

    sort_keys = False  # outputs in signature order, keys as documented
    compact = True

    def dumps(self, obj: Any, **kwargs: Any) -> str:
        if kwargs in _COMPACT:  # what response() asks for; anything else (indent, ...) goes to json
            try:
                text = orjson.dumps(obj, option=orjson.OPT_NON_STR_KEYS).decode()
            except TypeError:
                pass
            else:
                if "null" not in text:
                    return text
        return super().dumps(obj, **(kwargs or _COMPACT[1]))
