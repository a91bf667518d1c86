"""Protocol adapters: wire formats (native, TF Serving REST, KServe v2) to and from the data plane's values.

Each module turns one protocol's requests into `service.dataplane` request values and the data
plane's responses into that protocol's JSON or bytes. Adapters never call a model or the manager.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

from service.errors import InvalidInput


def parse_json_object(body: bytes, *, what: str = "request body") -> dict:
    """Parse a body that must be one JSON object (NaN and Infinity allowed, as in TF Serving).

    Raises:
        InvalidInput: not JSON, nested too deeply, or not an object; the message names `what`.
    """
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError) as err:
        raise InvalidInput(f"{what} is not valid JSON: {err}") from err
    except RecursionError as err:
        raise InvalidInput(f"{what} is nested too deeply") from err
    if not isinstance(value, dict):
        raise InvalidInput(f"{what} must be a JSON object")
    return value


def leaves(value: object) -> Iterator[object]:
    """Yield the leaves of nested JSON lists, row-major."""
    if isinstance(value, list):
        for item in value:
            yield from leaves(item)
    else:
        yield value
