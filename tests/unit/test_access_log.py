"""The access log through Flask's test client: one record per request, with the fields operators read.

Real app, real batchers (over the fake models of `tests.unit.fakes`), real hooks; the records are
read from the `service.access` logger, where they are written.
"""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask

from service import access_log
from service.api import EXTENSION
from service.logs import JsonFormatter
from tests.unit.conftest import Records
from tests.unit.test_api import THREE_QUARTERS_WHITE, make_app


def serve(folder: Path, **options) -> Flask:
    folder.mkdir(exist_ok=True)
    return make_app(folder / "models", **options)


@pytest.fixture()
def app(tmp_path: Path) -> Iterator[Flask]:
    app = serve(tmp_path)
    yield app
    app.extensions[EXTENSION].stop()


def test_one_record_per_prediction_with_every_field(app: Flask, records: Records) -> None:
    body = json.dumps({"instances": [[1, 2], [3, 4]]}).encode()
    response = app.test_client().post(
        "/models/double/predict",
        data=body,
        content_type="application/json",
        headers={"X-Request-ID": "abc-123"},
        environ_base={"REMOTE_ADDR": "10.1.2.3"},
    )
    assert response.status_code == 200
    [fields] = records.fields()
    assert {k: fields[k] for k in fields if not k.endswith("_ms")} == {
        "protocol": "rest",
        "method": "POST",
        "path": "/models/double/predict",
        "route": "predict.predict",
        "model": "double",
        "version": 1,
        "rows": 2,
        "status": "200",
        "batch_rows": 2,
        "bytes_in": len(body),
        "bytes_out": len(response.data),
        "request_id": "abc-123",
        "trace_id": "",
        "client": "10.1.2.3",
    }
    assert fields["total_ms"] >= fields["queue_ms"] + fields["compute_ms"] > 0
    # The text line carries the same facts.
    line = records.records[0].getMessage()
    assert line.startswith("rest POST /models/double/predict 200 model=double version=1 rows=2 ")
    assert f"in={len(body)} out={len(response.data)}" in line and "client=10.1.2.3" in line


def test_a_batched_request_shows_its_queue_and_compute_times_and_the_rows_of_its_batch(
    tmp_path: Path, records: Records
) -> None:
    # Four one-row requests and batches of four rows: the batch runs when the fourth request joins, long
    # before its 2 s timeout, so every request's record shows the shared call.
    app = serve(tmp_path, max_batch_size=4, batch_timeout_ms=2000)
    client = app.test_client()
    try:
        start = threading.Barrier(4)

        def predict(value: int) -> None:
            start.wait()
            client.post("/models/double/predict", json={"instances": [[value, value]]})

        threads = [threading.Thread(target=predict, args=(i,)) for i in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
    finally:
        app.extensions[EXTENSION].stop()
    fields = records.fields()
    assert len(fields) == 4
    assert {(f["status"], f["rows"], f["batch_rows"]) for f in fields} == {("200", 1, 4)}
    assert len({f["compute_ms"] for f in fields}) == 1  # one device call answered them all
    # The first request waited for the other three; all waited less than the timeout.
    queued = sorted(f["queue_ms"] for f in fields)
    assert 0 <= queued[0] and queued[-1] < 2000
    for f in fields:
        assert f["total_ms"] >= f["queue_ms"] + f["compute_ms"]


def test_failed_requests_are_logged_with_their_status_and_the_model_they_named(app: Flask, records: Records) -> None:
    client = app.test_client()
    assert client.post("/models/nope/predict", json={"instances": [[1, 2]]}).status_code == 404
    assert client.post("/models/double/predict", data="{", content_type="application/json").status_code == 400
    assert client.get("/no/such/route").status_code == 404
    fields = records.fields()
    assert [(f["model"], f["version"], f["rows"], f["status"], f["route"]) for f in fields] == [
        ("nope", None, None, "404", "predict.predict"),
        ("double", None, None, "400", "predict.predict"),
        ("", None, None, "404", "unmatched"),
    ]
    assert fields[0]["queue_ms"] is None and fields[0]["compute_ms"] is None


def test_images_uploads_and_tfserving_and_v2_calls_are_logged_too(app: Flask, records: Records) -> None:
    client = app.test_client()
    client.post("/models/digits/predict", data={"image": (io.BytesIO(THREE_QUARTERS_WHITE), "a.png")})
    client.post("/v1/models/double:predict", json={"instances": [[1, 2]]})
    client.post(
        "/v2/models/double/infer",
        json={"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}]},
    )
    fields = records.fields()
    assert [(f["route"], f["model"], f["version"], f["rows"], f["status"]) for f in fields] == [
        ("predict.predict", "digits", 1, 1, "200"),
        ("tfserving.predict_classify_regress", "double", 1, 1, "200"),
        ("kserve_v2.infer", "double", 1, 1, "200"),
    ]


def test_probes_and_metrics_are_left_out_unless_asked(tmp_path: Path, records: Records) -> None:
    probes = ("/healthz", "/readyz", "/metrics", "/v2/health/live", "/v2/health/ready")
    app = serve(tmp_path / "a")
    try:
        for path in probes:
            assert app.test_client().get(path).status_code == 200
        assert records.fields() == []
    finally:
        app.extensions[EXTENSION].stop()
    app = serve(tmp_path / "b", access_log_probes=True)
    records.records.clear()  # make_app's own readiness polls
    try:
        for path in probes:
            app.test_client().get(path)
        assert [f["path"] for f in records.fields()] == list(probes)
    finally:
        app.extensions[EXTENSION].stop()


def test_access_log_off_writes_nothing(tmp_path: Path, records: Records) -> None:
    app = serve(tmp_path, access_log=False)
    try:
        assert app.test_client().post("/models/double/predict", json={"instances": [[1, 2]]}).status_code == 200
    finally:
        app.extensions[EXTENSION].stop()
        access_log.configure(app.extensions[EXTENSION].settings.model_copy(update={"access_log": True}))
    assert records.records == []


def test_with_log_json_every_field_is_a_key_of_the_line(app: Flask, records: Records) -> None:
    app.test_client().post("/models/double/predict", json={"instances": [[1, 2]]}, headers={"X-Request-ID": "r1"})
    [record] = records.records
    line = json.loads(JsonFormatter().format(record))
    assert line["logger"] == "service.access" and line["level"] == "INFO"
    assert {k: line[k] for k in ("method", "path", "model", "version", "rows", "status", "request_id")} == {
        "method": "POST",
        "path": "/models/double/predict",
        "model": "double",
        "version": 1,
        "rows": 1,
        "status": "200",
        "request_id": "r1",
    }
    assert line["queue_ms"] >= 0 and line["compute_ms"] > 0 and line["total_ms"] > 0
