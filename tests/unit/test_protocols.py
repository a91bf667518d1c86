"""Unit tests of the protocol adapters (TF Serving, KServe v2, native) and tf.Example encoding."""

from __future__ import annotations

import base64
import json
import struct

import numpy as np
import pytest
from flask import Flask

from service import protocols
from service.dataplane import ExamplesResponse, ModelMetadata, PredictRequest, PredictResponse
from service.errors import (
    InferenceError,
    InvalidInput,
    InvalidTensor,
    ModelNotFound,
    UnsupportedMediaType,
)
from service.examples import encode_example
from service.preprocessing import UNNAMED
from service.protocols import kserve_v2, native, tfserving
from service.servable import (
    ServableId,
    ServableRequest,
    ServableState,
    Signature,
    TensorInfo,
)

SIG = Signature(
    "serving_default",
    (TensorInfo("x", "float32", (None, 2), graph_name="x:0"),),
    (TensorInfo("y", "float32", (None, 1)), TensorInfo("z", "int64", (None,))),
)
SID = ServableId("m", 3)


# --- TF Serving URLs ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path,request_,method",
    [
        ("m:predict", ServableRequest("m"), "predict"),
        ("m/versions/12:classify", ServableRequest("m", version=12), "classify"),
        ("m/labels/stable:regress", ServableRequest("m", label="stable"), "regress"),
        ("m/VERSIONS/12:Predict", ServableRequest("m", version=12), "predict"),
    ],
)
def test_post_urls(path: str, request_: ServableRequest, method: str) -> None:
    target = tfserving.parse_url(path, post=True)
    assert (target.request, target.method) == (request_, method)


@pytest.mark.parametrize(
    "path,request_,method",
    [
        ("m", ServableRequest("m"), "status"),
        ("m/versions/1", ServableRequest("m", version=1), "status"),
        ("m/labels/canary/metadata", ServableRequest("m", label="canary"), "metadata"),
    ],
)
def test_get_urls(path: str, request_: ServableRequest, method: str) -> None:
    target = tfserving.parse_url(path, post=False)
    assert (target.request, target.method) == (request_, method)


@pytest.mark.parametrize(
    "path,post,fragment",
    [
        ("m/versions/1/labels/x:predict", True, "both"),
        ("m/versions/abc:predict", True, "positive integer"),
        ("m:explain", True, "malformed"),
        ("m/other", False, "malformed"),
        ("m/labels/a-b:predict", True, "letters"),
    ],
)
def test_bad_urls_are_invalid_input(path: str, post: bool, fragment: str) -> None:
    with pytest.raises(InvalidInput, match=fragment):
        tfserving.parse_url(path, post=post)


# --- TF Serving JSON tensors ----------------------------------------------------------------------


def test_row_format_unnamed_named_and_b64() -> None:
    assert tfserving.decode_instances([1.0, 2.0])[UNNAMED].tolist() == [1.0, 2.0]
    named = tfserving.decode_instances([{"a": [1, 2], "b": "x"}, {"a": [3, 4], "b": "y"}])
    assert named["a"].tolist() == [[1, 2], [3, 4]] and named["b"].tolist() == [b"x", b"y"]
    encoded = tfserving.decode_instances([{"b64": base64.b64encode(b"\x00img\x00").decode()}])
    assert encoded[UNNAMED].dtype == object and encoded[UNNAMED].tolist() == [b"\x00img\x00"]  # NULs kept


@pytest.mark.parametrize(
    "instances,error,fragment",
    [
        ([[1, 2], [3]], InvalidTensor, "ragged"),
        ([1, None], InvalidTensor, "null"),
        ([{"a": 1}, {"b": 2}], InvalidInput, "same inputs"),
        ([], InvalidInput, "empty"),
        ("x", InvalidInput, "list"),
        ([{"b64": "!!!"}], InvalidInput, "base64"),
        ([1, "a"], InvalidTensor, "mixes"),
        ([2**80], InvalidTensor, "64-bit"),
    ],
)
def test_bad_rows(instances: object, error: type, fragment: str) -> None:
    with pytest.raises(error, match=fragment):
        tfserving.decode_instances(instances)


def test_predict_body_needs_exactly_one_format() -> None:
    with pytest.raises(InvalidInput, match="exactly one"):
        tfserving.decode_predict_body({"instances": [1], "inputs": [1]}, ServableRequest("m"))
    with pytest.raises(InvalidInput, match="exactly one"):
        tfserving.decode_predict_body({}, ServableRequest("m"))
    request, columnar = tfserving.decode_predict_body(
        {"inputs": {"x": [[1, 2]]}, "signature_name": "s"}, ServableRequest("m")
    )
    assert columnar and request.signature_name == "s" and request.inputs["x"].shape == (1, 2)


def test_parse_json_object_accepts_nan_and_refuses_non_objects() -> None:
    assert np.isnan(protocols.parse_json_object(b'{"instances": [NaN]}')["instances"][0])
    with pytest.raises(InvalidInput, match="object"):
        protocols.parse_json_object(b"[1]")
    with pytest.raises(InvalidInput, match="JSON"):
        protocols.parse_json_object(b"\xff")


def test_predict_answers_drop_the_name_of_a_single_output() -> None:
    sent = PredictRequest(ServableRequest("m"), {"x": np.array([[1.0, 2.0], [3.0, 4.0]])})
    one = PredictResponse(SID, {"y": np.array([[1.0], [2.0]])}, signature=SIG)
    assert tfserving.encode_predict(sent, one, columnar=False) == {"predictions": [[1.0], [2.0]]}
    assert tfserving.encode_predict(sent, one, columnar=True) == {"outputs": [[1.0], [2.0]]}
    two = PredictResponse(SID, {"y": np.array([[1.0], [2.0]]), "z": np.array([7, 8])}, signature=SIG)
    assert tfserving.encode_predict(sent, two, columnar=False) == {
        "predictions": [{"y": [1.0], "z": 7}, {"y": [2.0], "z": 8}]
    }
    assert tfserving.encode_predict(sent, two, columnar=True) == {"outputs": {"y": [[1.0], [2.0]], "z": [7, 8]}}


# --- TF Serving's unit axis and :classify / :regress shapes (the adapter's, not the data plane's) -----

UNIT = Signature(
    "serving_default",
    (TensorInfo("x", "float32", (None, 1)),),
    (TensorInfo("y", "float32", (None, 1)), TensorInfo("z", "float32", (None, 3))),
)
"""An input of shape (None, 1): TF Serving clients may send one plain value per row."""


@pytest.mark.parametrize("body", [{"instances": [1.0, 2.0]}, {"inputs": [1.0, 2.0]}, {"inputs": {"x": [1.0, 2.0]}}])
def test_tf_serving_adds_the_unit_axis_for_the_borrowed_signature(body: dict) -> None:
    request, _ = tfserving.decode_predict_body(body, ServableRequest("m"))

    assert request.inputs_for is not None
    (shaped,) = request.inputs_for(UNIT).values()
    assert shaped.tolist() == [[1.0], [2.0]]
    (unchanged,) = request.inputs_for(SIG).values()  # (None, 2): nothing to add, the boundary refuses it
    assert unchanged.tolist() == [1.0, 2.0]


def test_tf_serving_answers_one_value_per_row_only_when_it_added_the_unit_axis() -> None:
    outputs = {"y": np.array([[0.5], [1.0]]), "z": np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])}
    response = PredictResponse(SID, outputs, signature=UNIT)
    per_row, _ = tfserving.decode_predict_body({"instances": [1.0, 2.0]}, ServableRequest("m"))
    with_axis, _ = tfserving.decode_predict_body({"instances": [[1.0], [2.0]]}, ServableRequest("m"))

    assert tfserving.encode_predict(per_row, response, columnar=False) == {
        "predictions": [{"y": 0.5, "z": [1.0, 2.0, 3.0]}, {"y": 1.0, "z": [4.0, 5.0, 6.0]}]
    }
    assert tfserving.encode_predict(with_axis, response, columnar=False)["predictions"][0]["y"] == [0.5]
    # A response built without its signature (none known): the outputs as they are.
    assert tfserving.encode_predict(per_row, PredictResponse(SID, outputs), columnar=True)["outputs"]["y"] == [
        [0.5],
        [1.0],
    ]


def test_unit_axis_is_never_added_to_images_or_unbatched_signatures_or_an_unnamed_array_of_several_inputs() -> None:
    images = {"x": np.array([b"png"], dtype=object)}
    assert protocols.add_unit_axis(images, UNIT)["x"].shape == (1,)
    unbatched = Signature("s", (TensorInfo("x", "float32", (1,)),), (), batched=False)
    assert protocols.add_unit_axis({"x": np.array([1.0])}, unbatched)["x"].shape == (1,)
    two = Signature("s", (TensorInfo("a", "float32", (None, 1)), TensorInfo("b", "float32", (None, 1))), ())
    assert protocols.add_unit_axis({UNNAMED: np.array([1.0])}, two)[UNNAMED].shape == (1,)
    assert protocols.add_unit_axis({"a": np.array([1.0]), "b": np.array([[2.0]])}, two)["a"].shape == (1, 1)


def examples_response(outputs: dict, *, rows: int = 1, labels: tuple = (), examples_signature: bool = False):
    return ExamplesResponse(SID, "sig", outputs, rows, labels, examples_signature)


def test_classify_lists_every_class_with_its_score_and_label() -> None:
    scores = {"y": np.array([[2.0, 4.0]], np.float32)}
    assert tfserving.examples_results(examples_response(scores), "classify") == [[["", 2.0], ["", 4.0]]]
    labelled = examples_response(scores, labels=("cat", "dog"))
    assert tfserving.encode_examples(labelled, "classify") == {"results": [[["cat", 2.0], ["dog", 4.0]]]}


def test_regress_answers_one_value_per_example_and_refuses_several() -> None:
    one = examples_response({"total": np.array([[3.0], [7.0]], np.float32)}, rows=2)
    assert tfserving.encode_examples(one, "regress") == {"results": [3.0, 7.0]}
    with pytest.raises(InvalidInput, match=r"^regress needs one value per example; output 'y' has 2$"):
        tfserving.examples_results(examples_response({"y": np.array([[1.0, 2.0]])}), "regress")


def test_classify_and_regress_signatures_answer_their_named_outputs() -> None:
    classify = examples_response(
        {"classes": np.array([[b"a", b"b"]], dtype=object), "scores": np.array([[0.25, 0.75]])},
        examples_signature=True,
    )
    assert tfserving.examples_results(classify, "classify") == [[["a", 0.25], ["b", 0.75]]]
    scores_only = examples_response({"scores": np.array([[0.5]])}, examples_signature=True)
    assert tfserving.examples_results(scores_only, "classify") == [[["", 0.5]]]
    regress = examples_response({"outputs": np.array([2.5, 3.0])}, rows=2, examples_signature=True)
    assert tfserving.examples_results(regress, "regress") == [2.5, 3.0]
    with pytest.raises(InferenceError, match="^classify signature 'sig' returned neither scores nor classes$"):
        tfserving.examples_results(examples_response({"other": np.array([1.0])}, examples_signature=True), "classify")


def test_examples_request_gives_features_with_the_unit_axis() -> None:
    request = tfserving.decode_examples({"examples": [{"x": 1.0}, {"x": 2.0}]}, ServableRequest("m"), "regress")

    assert request.inputs_for is not None
    assert request.inputs_for(UNIT)["x"].tolist() == [[1.0], [2.0]]
    with pytest.raises(InvalidInput, match=r"^example 0 has no feature 'y' \(the model's input\)$"):
        request.inputs_for(Signature("s", (TensorInfo("y", "float32", (None, 1)),), ()))


def test_bytes_outputs_are_text_or_b64() -> None:
    values = np.array([b"ok", b"\xff"], dtype=object)
    assert tfserving.array_to_json("words", values) == ["ok", {"b64": "/w=="}]
    assert tfserving.array_to_json("image_bytes", values) == [{"b64": "b2s="}, {"b64": "/w=="}]


def _status(*versions):
    from service.manager import ModelStatus, VersionStatus

    return ModelStatus("m", tuple(VersionStatus(*v) for v in versions), {"stable": 1}, ())


def test_status_lists_versions_latest_first_with_errors() -> None:
    status = _status((1, ServableState.AVAILABLE), (2, ServableState.END, "bad file"))
    assert tfserving.encode_status(status, ServableRequest("m")) == {
        "model_version_status": [
            {"version": "2", "state": "END", "status": {"error_code": "UNKNOWN", "error_message": "bad file"}},
            {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}},
        ]
    }
    assert len(tfserving.encode_status(status, ServableRequest("m", label="stable"))["model_version_status"]) == 1
    with pytest.raises(ModelNotFound, match="version 5"):
        tfserving.encode_status(status, ServableRequest("m", version=5))
    with pytest.raises(ModelNotFound, match="label 'canary'"):
        tfserving.encode_status(status, ServableRequest("m", label="canary"))


def test_metadata_has_the_doubled_signature_def_and_tensor_infos() -> None:
    unknown = TensorInfo("inputs", "string", (), graph_name="tf_example:0", unknown_rank=True)
    classify = Signature("c", (unknown,), (TensorInfo("scores", "float32", (None, 1)),), "tensorflow/serving/classify")
    metadata = ModelMetadata(SID, {"serving_default": SIG, "c": classify}, "serving_default", (), "/CPU:0")
    body = tfserving.encode_metadata(metadata)
    assert body["model_spec"] == {"name": "m", "signature_name": "", "version": "3"}
    defs = body["metadata"]["signature_def"]["signature_def"]
    assert defs["serving_default"]["inputs"]["x"] == {
        "dtype": "DT_FLOAT",
        "name": "x:0",
        "tensor_shape": {"dim": [{"size": "-1", "name": ""}, {"size": "2", "name": ""}], "unknown_rank": False},
    }
    assert defs["c"]["inputs"]["inputs"] == {
        "dtype": "DT_STRING",
        "name": "tf_example:0",
        "tensor_shape": {"dim": [], "unknown_rank": True},
    }
    assert defs["c"]["method_name"] == "tensorflow/serving/classify" and defs["c"]["defaults"] == {}


# --- tf.Example encoding ---------------------------------------------------------------------------


def test_examples_are_the_protos_tensorflow_parses() -> None:
    from tensorflow.core.example import example_pb2

    blob = encode_example(
        {"x": 1.5, "n": [1, -2], "s": "hi", "b": {"b64": base64.b64encode(b"\x00\x01").decode()}, "e": []},
        context={"x": 9.0, "c": 7},
    )
    example = example_pb2.Example.FromString(blob)
    feature = example.features.feature
    assert list(feature["x"].float_list.value) == [1.5]  # the example's value wins over the context's
    assert list(feature["n"].int64_list.value) == [1, -2]
    assert list(feature["s"].bytes_list.value) == [b"hi"]
    assert list(feature["b"].bytes_list.value) == [b"\x00\x01"]
    assert list(feature["c"].int64_list.value) == [7]
    assert feature["e"].WhichOneof("kind") == "float_list"


@pytest.mark.parametrize(
    "features,fragment",
    [
        ({"x": [1, "a"]}, "mixes"),
        ({"x": [[1]]}, "numbers, strings"),
        ({"x": None}, "null"),
        ({"x": {"b64": "%%"}}, "base64"),
        ({"x": 2**70}, "int64"),
    ],
)
def test_bad_example_features(features: dict, fragment: str) -> None:
    with pytest.raises(InvalidInput, match=fragment):
        encode_example(features)


# --- KServe v2 -------------------------------------------------------------------------------------


def test_v2_json_inputs_flat_or_nested_and_requested_outputs() -> None:
    body = {
        "id": "7",
        "inputs": [
            {"name": "x", "shape": [2, 2], "datatype": "FP32", "data": [1, 2, 3, 4]},
            {"name": "t", "shape": [1], "datatype": "BYTES", "data": ["hé"]},
            {"name": "n", "shape": [1, 2], "datatype": "INT64", "data": [[5, 6]]},
        ],
        "outputs": [{"name": "y", "parameters": {"classification": 2, "binary_data": True}}],
    }
    request, options = kserve_v2.decode_infer(json.dumps(body).encode(), b"", ServableRequest("m"))
    assert request.inputs["x"].dtype == np.float32 and request.inputs["x"].shape == (2, 2)
    assert request.inputs["t"].tolist() == ["hé".encode()]
    assert request.inputs["n"].tolist() == [[5, 6]]
    assert request.outputs == ("y",)
    assert options.id == "7" and options.outputs == (kserve_v2.RequestedOutput("y", True, 2),)


def test_v2_binary_inputs_follow_the_header_in_order() -> None:
    x = np.arange(4, dtype="<f4")
    strings = struct.pack("<I", 2) + b"ab" + struct.pack("<I", 0)
    header = json.dumps(
        {
            "inputs": [
                {"name": "x", "shape": [1, 4], "datatype": "FP32", "parameters": {"binary_data_size": 16}},
                {"name": "s", "shape": [2], "datatype": "BYTES", "parameters": {"binary_data_size": len(strings)}},
            ]
        }
    ).encode()
    body = header + x.tobytes() + strings
    head, binary = kserve_v2.split_body(body, str(len(header)))
    request, _ = kserve_v2.decode_infer(head, binary, ServableRequest("m"))
    assert request.inputs["x"].tolist() == [[0, 1, 2, 3]]
    assert request.inputs["s"].tolist() == [b"ab", b""]


@pytest.mark.parametrize(
    "inputs,error,fragment",
    [
        ([{"name": "x", "shape": [2], "datatype": "FP32", "data": [1]}], InvalidTensor, "needs 2 values"),
        ([{"name": "x", "shape": [1], "datatype": "FP8", "data": [1]}], InvalidInput, "not supported"),
        (
            [{"name": "x", "shape": [1], "datatype": "FP32", "parameters": {"binary_data_size": 4}}],
            InvalidInput,
            "does not fit",
        ),
        ([{"name": "x", "shape": "1", "datatype": "FP32", "data": [1]}], InvalidInput, "shape"),
        ([{"name": "x", "shape": [1], "datatype": "FP32", "data": ["a"]}], InvalidTensor, "FP32"),
        ([], InvalidInput, "non-empty"),
    ],
)
def test_v2_bad_inputs(inputs: list, error: type, fragment: str) -> None:
    with pytest.raises(error, match=fragment):
        kserve_v2.decode_infer(json.dumps({"inputs": inputs}).encode(), b"", ServableRequest("m"))


def test_v2_encode_json_binary_and_classification() -> None:
    response = PredictResponse(SID, {"y": np.array([[0.25, 0.75]], np.float32)}, labels=("a", "b"))
    header, binary = kserve_v2.encode_infer(response, kserve_v2.InferOptions(id="1"))
    assert binary == b"" and header == {
        "model_name": "m",
        "model_version": "3",
        "id": "1",
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [1, 2], "data": [0.25, 0.75]}],
    }
    options = kserve_v2.InferOptions(outputs=(kserve_v2.RequestedOutput("y", True, 1),))
    header, binary = kserve_v2.encode_infer(response, options)
    assert header["outputs"] == [
        {"name": "y", "datatype": "BYTES", "shape": [1, 1], "parameters": {"binary_data_size": len(binary)}}
    ]
    assert binary == struct.pack("<I", 12) + b"0.750000:1:b"


def test_v2_raw_binary_request_is_the_only_inputs_bytes_shaped_for_the_borrowed_signature() -> None:
    request, options = kserve_v2.decode_raw_infer(np.array([1, 2], "<f4").tobytes(), ServableRequest("m"))
    assert request.inputs == {} and request.inputs_for is not None and options.raw_binary
    assert request.inputs_for(SIG)["x"].tolist() == [[1.0, 2.0]]
    bad, _ = kserve_v2.decode_raw_infer(b"\0" * 12, ServableRequest("m"))
    assert bad.inputs_for is not None
    with pytest.raises(InvalidTensor):
        bad.inputs_for(SIG)


def test_v2_metadata_names_and_dims() -> None:
    metadata = ModelMetadata(SID, {"serving_default": SIG}, "serving_default", (), "cpu")
    assert kserve_v2.encode_model_metadata(metadata, [3], "keras") == {
        "name": "m",
        "versions": ["3"],
        "platform": "keras",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 2]}],
        "outputs": [
            {"name": "y", "datatype": "FP32", "shape": [-1, 1]},
            {"name": "z", "datatype": "INT64", "shape": [-1]},
        ],
    }


# --- native ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def flask_app() -> Flask:
    return Flask(__name__)


def test_native_decodes_multipart_raw_and_json(flask_app: Flask) -> None:
    import io

    target = ServableRequest("m")
    with flask_app.test_request_context(
        "/",
        method="POST",
        data={
            "image": [(io.BytesIO(b"one"), "a.png"), (io.BytesIO(b"two"), "b.png")],
            "other": (io.BytesIO(b"three"), "c.png"),
        },
        content_type="multipart/form-data",
    ):
        from flask import request

        assert native.decode_predict(request, target).images == (b"one", b"two", b"three")
    with flask_app.test_request_context("/", method="POST", data=b"raw", content_type="image/jpeg"):
        assert native.decode_predict(request, target).images == (b"raw",)
    with flask_app.test_request_context("/", method="POST", json={"instances": [[1, 2]]}):
        assert native.decode_predict(request, target).inputs[UNNAMED].tolist() == [[1, 2]]
    with flask_app.test_request_context("/", method="POST", data=b"x", content_type="text/csv"):
        with pytest.raises(UnsupportedMediaType, match="text/csv"):
            native.decode_predict(request, target)
    with flask_app.test_request_context(
        "/", method="POST", data={"field": "no file"}, content_type="multipart/form-data"
    ):
        with pytest.raises(InvalidInput, match="'image'"):
            native.decode_predict(request, target)


def test_outputs_are_chosen_by_output_filter_in_tf_serving_and_outputs_natively(flask_app: Flask) -> None:
    from flask import request

    body = {"instances": [[1, 2]], "output_filter": ["backbone/avg_pool", "y"]}
    predict_request, _ = tfserving.decode_predict_body(body, ServableRequest("m"))
    assert predict_request.outputs == ("backbone/avg_pool", "y")
    assert tfserving.decode_predict_body({"instances": [[1, 2]]}, ServableRequest("m"))[0].outputs is None
    for bad in ([], "y", ["y", "y"], [1]):
        with pytest.raises(InvalidInput, match="output_filter"):
            tfserving.decode_predict_body({"instances": [[1]], "output_filter": bad}, ServableRequest("m"))
    target = ServableRequest("m")
    with flask_app.test_request_context(
        "/?outputs=backbone/avg_pool,y&outputs=z", method="POST", data=b"raw", content_type="image/jpeg"
    ):
        chosen = native.decode_predict(request, target)
        assert (chosen.images, chosen.outputs) == ((b"raw",), ("backbone/avg_pool", "y", "z"))
    with flask_app.test_request_context("/", method="POST", json={"instances": [[1, 2]], "output_filter": ["y"]}):
        assert native.decode_predict(request, target).outputs == ("y",)
    with flask_app.test_request_context("/?outputs=y,,z", method="POST", data=b"raw", content_type="image/jpeg"):
        with pytest.raises(InvalidInput, match="empty output name"):
            native.decode_predict(request, target)


def test_model_view_shows_how_images_are_preprocessed_and_why() -> None:
    from service.manager import ModelStatus, VersionStatus
    from service.model_config import PreprocessingConfig
    from service.preprocessing import PreprocessingChoice
    from service.servable import ServableInfo

    choice = PreprocessingChoice(PreprocessingConfig(mode="caffe"), "auto", "Keras Applications ResNet recognised")
    info = ServableInfo(path="m.keras", format="keras", loader="keras3", preprocessing=choice)
    status = ModelStatus("m", (VersionStatus(3, ServableState.AVAILABLE, info=info),), {}, ())
    (version,) = native.encode_model(status, None)["versions"]
    assert version["preprocessing"] == {
        "mode": "caffe",
        "chosen_by": "auto",
        "reason": "Keras Applications ResNet recognised",
    }


@pytest.mark.parametrize("args,threshold,top_k", [({}, 0.5, None), ({"threshold": "0.9", "top_k": "3"}, 0.9, 3)])
def test_native_query_parameters(args: dict, threshold: float, top_k: int | None) -> None:
    assert native.parse_threshold(args) == threshold and native.parse_top_k(args) == top_k


@pytest.mark.parametrize("args", [{"threshold": "nan"}, {"threshold": "x"}, {"top_k": "-1"}, {"top_k": "1.5"}])
def test_native_bad_query_parameters(args: dict) -> None:
    with pytest.raises(InvalidInput):
        native.parse_threshold(args)
        native.parse_top_k(args)


def test_native_encode_classes_per_output() -> None:
    from service.classification import predict_classes
    from service.dataplane import ClassesResponse

    response = ClassesResponse(
        SID,
        {
            "kind": predict_classes(np.array([[0.2, 0.8]]), top_k=1, labels=("a", "b")),
            "flag": predict_classes(np.array([[0.1]])),
        },
    )
    assert native.encode_classes(response) == {
        "model": "m",
        "version": 3,
        "predictions": [
            {
                "kind": {
                    "class_id": 1,
                    "label": "b",
                    "score": pytest.approx(0.8),
                    "top_k": [{"class_id": 1, "label": "b", "score": pytest.approx(0.8)}],
                },
                "flag": {"class_id": 0, "label": None, "score": pytest.approx(0.9)},
            }
        ],
    }


# --- hostile inputs never become a 500 -------------------------------------------------------------


def test_deeply_nested_json_is_invalid_input() -> None:
    deep = b'{"instances": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    with pytest.raises(InvalidInput, match="nested too deeply"):
        protocols.parse_json_object(deep)
    with pytest.raises(InvalidInput, match="nested too deeply"):
        kserve_v2.decode_infer(deep, b"", ServableRequest("m"))


def test_example_integer_below_int64_is_refused_without_looping() -> None:
    with pytest.raises(InvalidInput, match="int64"):
        encode_example({"x": -(2**70)})


def test_v2_absurd_bytes_shape_is_refused_before_allocating() -> None:
    header = json.dumps(
        {"inputs": [{"name": "s", "shape": [2**40, 2**40], "datatype": "BYTES", "parameters": {"binary_data_size": 8}}]}
    ).encode()
    with pytest.raises(InvalidInput, match="larger than 2147483647"):
        kserve_v2.decode_infer(header, b"\0" * 8, ServableRequest("m"))


def test_v2_bytes_shape_within_bounds_is_still_checked_against_its_data_before_allocating() -> None:
    header = json.dumps(
        {"inputs": [{"name": "s", "shape": [2**15, 2**15], "datatype": "BYTES", "parameters": {"binary_data_size": 8}}]}
    ).encode()
    with pytest.raises(InvalidTensor, match="cannot hold"):
        kserve_v2.decode_infer(header, b"\0" * 8, ServableRequest("m"))
