"""Property tests (hypothesis) for the inputs that used to answer 500: Unicode digits, lone surrogates,
huge and negative dimensions, deep nesting.

Every protocol's decode functions get them, and so does every route through Flask's test client
(over the fake builder of `tests.unit.fakes`). Whatever arrives, the answer is a value or a
`ServingError` whose status (from the one table in `service/api/errors.py`) is a 4xx; any other
exception, or a 5xx, is a bug.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from werkzeug.datastructures import MultiDict

from service import examples, protocols, security
from service.api import EXTENSION
from service.api.errors import status_for
from service.errors import ServingError
from service.protocols import kserve_v2, native, tfserving
from service.servable import ServableRequest
from tests.unit.test_api import make_app

FUZZ = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
TARGET = ServableRequest.latest("m")

# --- strategies ------------------------------------------------------------------------------------
NOT_DECIMAL_DIGITS = "".join(c for c in map(chr, range(0x3000)) if c.isdigit() and not c.isdecimal())
"""'²', '①' and the like: `str.isdigit()` passes them, `int()` refuses them."""
UNICODE_DIGIT = st.one_of(st.sampled_from(NOT_DECIMAL_DIGITS), st.characters(categories=["Nd", "No", "Nl"]))
"""Digits of every script ('١', '３'), superscripts ('²'), fractions, Roman numerals."""
DIGITS = st.text(st.one_of(st.sampled_from("0123456789"), UNICODE_DIGIT), min_size=1, max_size=4)
NUMBER_TEXT = st.one_of(
    DIGITS, st.text(st.one_of(UNICODE_DIGIT, st.sampled_from("0123456789+-_ .eE\t")), min_size=1, max_size=24)
)
SURROGATE = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF, categories=["Cs"])
TEXT = st.text(st.one_of(st.characters(), SURROGATE, UNICODE_DIGIT), max_size=8)
"""Strings that may hold lone surrogates (JSON spells them `\\ud800`) and digits of any script."""
DIMENSION = st.one_of(
    st.integers(-3, 5),
    st.sampled_from([2**31 - 1, 2**31, 2**32, 2**62, 2**63 - 1, 2**63, 2**64, -(2**63)]),
    st.integers(-(2**70), 2**70),
)
SHAPE = st.one_of(
    st.lists(DIMENSION, max_size=6),
    st.lists(st.sampled_from([0, 1]), min_size=30, max_size=70),  # ranks around numpy's limit of 64
    st.lists(DIMENSION, min_size=30, max_size=70),
)
LEAF = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(),
    TEXT,
    st.fixed_dictionaries({"b64": TEXT}),
)
JSON = st.recursive(
    LEAF,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(TEXT, children, max_size=3),
    max_leaves=25,
)


@st.composite
def deeply_nested(draw: st.DrawFn) -> object:
    """A leaf inside 1 to 1,500 lists or objects (Python's JSON parser gives up near 1,000)."""
    depth = draw(st.integers(1, 1500))
    value = draw(LEAF)
    as_objects = draw(st.booleans())
    for _ in range(depth):
        value = {"a": value} if as_objects else [value]
    return value


STRINGS = st.lists(st.lists(TEXT, min_size=2, max_size=2), min_size=1, max_size=2) | st.lists(
    TEXT, min_size=1, max_size=3
)
"""String tensors: where a lone surrogate reaches an encoder."""
VALUES = st.one_of(JSON, STRINGS, deeply_nested())


def body(value: object) -> bytes:
    """JSON text of `value`, lone surrogates escaped as `\\ud800` (ensure_ascii), as a client may send them."""
    try:
        return json.dumps(value, ensure_ascii=True, allow_nan=True).encode("ascii")
    except RecursionError:  # deeper than json.dumps goes: write the brackets by hand
        depth, leaf = 0, value
        while isinstance(leaf, (list, dict)) and leaf:
            leaf = leaf[0] if isinstance(leaf, list) else next(iter(leaf.values()))
            depth += 1
        return b"[" * depth + json.dumps(leaf, ensure_ascii=True).encode() + b"]" * depth


@st.composite
def kserve_entries(draw: st.DrawFn) -> dict:
    entry: dict = {
        "name": draw(st.one_of(TEXT, st.just("x"))),
        "shape": draw(st.one_of(st.sampled_from([[1], [1, 2], [2]]), SHAPE, JSON)),
        "datatype": draw(
            st.one_of(st.sampled_from(["BYTES", "FP32"]), st.sampled_from(list(kserve_v2.V2_TO_NUMPY)), JSON)
        ),
    }
    if draw(st.booleans()):
        entry["data"] = draw(VALUES)
    else:
        entry["parameters"] = {"binary_data_size": draw(st.one_of(st.integers(-5, 64), JSON))}
    return entry


def assert_client_error(call: Callable[[], object]) -> object:
    """Call; a raised error must be a ServingError answered with a 4xx."""
    try:
        return call()
    except ServingError as err:
        assert 400 <= status_for(err) < 500, (type(err).__name__, status_for(err), str(err))
        return None


# --- numbers from text -----------------------------------------------------------------------------
@FUZZ
@given(text=NUMBER_TEXT)
def test_numbers_from_text_are_ascii_digits_only(text: str) -> None:
    number = protocols.parse_int(text)
    assert number is None or (text.isascii() and text.isdigit() and number == int(text))
    value = protocols.parse_float(text)
    assert value is None or text.isascii()
    top_k = assert_client_error(lambda: native.parse_top_k({"top_k": text}))
    assert top_k is None or (text.isascii() and top_k == int(text))
    threshold = assert_client_error(lambda: native.parse_threshold({"threshold": text}))
    assert threshold is None or text.isascii()


@FUZZ
@given(
    name=st.one_of(st.just("m"), TEXT),
    version=NUMBER_TEXT,
    verb=st.sampled_from([":predict", ":classify", "/metadata", ""]),
)
def test_version_urls_parse_or_raise_a_client_error(name: str, version: str, verb: str) -> None:
    for path in (f"{name}/versions/{version}{verb}", f"{name}/labels/{version}{verb}"):
        target = assert_client_error(lambda: tfserving.parse_url(path, post=verb.startswith(":")))
        if target is not None and target.request.version is not None:  # type: ignore[attr-defined]  # fuzzed values: any type on purpose
            assert version.isascii() and target.request.version == int(version)  # type: ignore[attr-defined]  # fuzzed values: any type on purpose
        assert_client_error(lambda: security.check_view_args({"path": path}, None))
    request = assert_client_error(lambda: kserve_v2.parse_version("m", version))
    if request is not None:
        assert version.isascii() and request.version == int(version)  # type: ignore[attr-defined]  # fuzzed values: any type on purpose
    assert_client_error(lambda: kserve_v2.split_body(b"{}" * 8, version))


# --- JSON bodies: surrogates, deep nesting, every protocol's decoder ------------------------------
@FUZZ
@given(value=VALUES)
def test_every_json_decoder_answers_a_value_or_a_client_error(value: object) -> None:
    raw = body({"instances": value})
    parsed = assert_client_error(lambda: protocols.parse_json_object(raw))
    if parsed is not None:
        assert_client_error(lambda: tfserving.decode_predict_body(parsed, TARGET))  # type: ignore[arg-type]  # fuzzed values: any type on purpose
    parsed = assert_client_error(lambda: protocols.parse_json_object(body({"inputs": value})))
    if parsed is not None:
        assert_client_error(lambda: tfserving.decode_predict_body(parsed, TARGET))  # type: ignore[arg-type]  # fuzzed values: any type on purpose
    parsed = assert_client_error(
        lambda: protocols.parse_json_object(body({"examples": [{"x": value}], "context": {"c": value}}))
    )
    if parsed is not None:
        request = assert_client_error(lambda: tfserving.decode_examples(parsed, TARGET, "classify"))  # type: ignore[arg-type]  # fuzzed values: any type on purpose
        if request is not None:
            for example in request.examples:  # type: ignore[attr-defined]  # fuzzed values: any type on purpose
                assert_client_error(lambda: examples.encode_example(example, request.context))  # type: ignore[attr-defined]  # fuzzed values: any type on purpose
                values = assert_client_error(lambda: examples.json_feature_values("x", example["x"]))
                if values is not None:
                    column = assert_client_error(lambda: examples.feature_column("x", [values, values]))
                    assert column is None or isinstance(column, np.ndarray)


@FUZZ
@given(entries=st.lists(kserve_entries(), min_size=1, max_size=2), binary=st.binary(max_size=64), extra=JSON)
def test_kserve_infer_decodes_or_raises_a_client_error(entries: list, binary: bytes, extra: object) -> None:
    header = body({"inputs": entries, "id": extra if isinstance(extra, str) else "r", "outputs": [{"name": "y"}]})
    decoded = assert_client_error(lambda: kserve_v2.decode_infer(header, binary, TARGET))
    if decoded is not None:
        request, _ = decoded  # type: ignore[misc]  # fuzzed values: any type on purpose
        for array in request.inputs.values():
            assert isinstance(array, np.ndarray) and array.ndim <= protocols.MAX_RANK


@FUZZ
@given(shape=SHAPE)
def test_kserve_shapes_are_bounded_before_anything_is_allocated(shape: list) -> None:
    for entry in ({"data": []}, {"parameters": {"binary_data_size": 0}}):
        header = json.dumps({"inputs": [{"name": "x", "shape": shape, "datatype": "FP32", **entry}]}).encode()
        decoded = assert_client_error(lambda: kserve_v2.decode_infer(header, b"", TARGET))
        if decoded is not None:
            assert decoded[0].inputs["x"].shape == tuple(shape)  # type: ignore[index]  # fuzzed values: any type on purpose


# --- every route, through Flask ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FlaskClient]:
    app = make_app(Path(tmp_path_factory.mktemp("fuzz")) / "models", max_images_per_request=3)
    yield app.test_client()
    app.extensions[EXTENSION].stop()


ROUTES = (
    "/models/{name}/predict",
    "/models/{name}/versions/{version}/predict_classes",
    "/v1/models/{name}/versions/{version}:predict",
    "/v1/models/{name}:classify",
    "/v1/models/{name}:regress",
    "/v2/models/{name}/versions/{version}/infer",
    "/v2/models/{name}/infer",
)


@FUZZ
@given(
    route=st.sampled_from(ROUTES),
    name=st.sampled_from(["double", "digits", "sum", "madeup"]),
    version=NUMBER_TEXT,
    value=st.one_of(VALUES, st.lists(kserve_entries(), min_size=1, max_size=1)),
    key=st.sampled_from(["instances", "inputs", "examples"]),
)
def test_no_route_answers_5xx_to_these_bodies(
    client: FlaskClient, route: str, name: str, version: str, value: object, key: str
) -> None:
    url = route.format(name=name, version=version)
    payload = {key: value} if key != "examples" else {key: [{"x": value, "image": value}]}
    response = client.post(
        url,
        data=body(payload),
        content_type="application/json",
        query_string=MultiDict([("top_k", version), ("threshold", version)]),
    )
    assert response.status_code < 500, (url, response.get_data(as_text=True)[:300])
    if response.status_code >= 400:
        assert list(response.get_json()) == ["error"]
