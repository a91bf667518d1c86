"""FastJSONProvider: orjson for answers, Flask's encoder where orjson would change the wire."""

from __future__ import annotations

import json
import math

import numpy as np
from flask import Flask

from service.api.json import FastJSONProvider


def provider() -> FastJSONProvider:
    return FastJSONProvider(Flask(__name__))


def test_answers_are_compact_in_insertion_order_and_read_back_equal() -> None:
    scores = np.random.default_rng(0).random((2, 1000), dtype=np.float32)
    body = {"model": "m", "version": 1, "predictions": scores.tolist(), "a": {"z": 1, "b": [True, False]}}
    text = provider().dumps(body, separators=(",", ":"))
    assert json.loads(text) == body
    assert text.startswith('{"model":"m","version":1,"predictions":[[')  # keys not sorted, no spaces


def test_orjson_writes_them_so_non_ascii_labels_stay_utf8() -> None:
    # Flask's own provider would write "\\u00e9": this fails if orjson is not on the path.
    assert provider().dumps({"label": "café"}) == '{"label":"café"}'


def test_nan_and_infinity_are_written_as_tensorflow_serving_does_not_as_null() -> None:
    text = provider().dumps({"predictions": [float("nan"), float("inf"), -1.5]})
    assert text == '{"predictions":[NaN,Infinity,-1.5]}'
    values = json.loads(text)["predictions"]
    assert math.isnan(values[0]) and values[1] == math.inf


def test_response_sets_the_json_mimetype_and_a_trailing_newline() -> None:
    app = Flask(__name__)
    app.json = FastJSONProvider(app)
    with app.app_context():
        response = app.json.response({"ok": 1})
    assert response.mimetype == "application/json"
    assert response.get_data(as_text=True) == '{"ok":1}\n'
