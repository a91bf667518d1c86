"""A TF1 wide-and-deep SavedModel (two named inputs, no `variables/` folder) served by real gunicorn
over the TensorFlow Serving REST API, in the row (`instances`) and columnar (`inputs`) formats; and
the same model dropped in as a Hub folder with its own `config.json` and model card."""

from __future__ import annotations

import json
from collections.abc import Iterator

import numpy as np
import pytest

from tests.e2e.conftest import Server, start_server
from tests.tf1_models import build_tf1_saved_model, expected_score

WIDE_AND_DEEP = {"wide": 2, "deep": 3}
WIDE = [[1.0, 2.0], [0.5, -1.0]]
DEEP = [[3.0, 0.0, -2.0], [1.0, 1.0, 1.0]]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    models = tmp_path_factory.mktemp("tf1_models")
    build_tf1_saved_model(models / "wide_deep" / "1", WIDE_AND_DEEP)
    hub = build_tf1_saved_model(models / "hub_wide_deep", WIDE_AND_DEEP)
    (hub / "config.json").write_text(
        json.dumps({"architectures": ["WideDeep"], "model_type": "wide_deep", "num_labels": 1})
    )
    (hub / "README.md").write_text("# wide_deep\nA model card.\n")
    with start_server(models, tmp_path_factory.mktemp("tf1_logs")) as running:
        yield running


def _expected() -> list[list[float]]:
    return expected_score(WIDE_AND_DEEP, {"wide": np.array(WIDE), "deep": np.array(DEEP)}, variables=False).tolist()


def test_tf1_two_input_saved_model_predicts_named_columns(server: Server) -> None:
    response = server.post("/v1/models/wide_deep:predict", json={"inputs": {"wide": WIDE, "deep": DEEP}})

    assert response.status_code == 200, response.text
    np.testing.assert_allclose(response.json()["outputs"], _expected(), rtol=1e-6)


def test_tf1_two_input_saved_model_predicts_named_rows(server: Server) -> None:
    rows = [{"wide": w, "deep": d} for w, d in zip(WIDE, DEEP)]

    response = server.post("/v1/models/wide_deep:predict", json={"instances": rows})

    assert response.status_code == 200, response.text
    np.testing.assert_allclose(response.json()["predictions"], _expected(), rtol=1e-6)


def test_tf1_two_input_saved_model_metadata_names_both_inputs(server: Server) -> None:
    response = server.get("/v1/models/wide_deep/metadata")

    assert response.status_code == 200, response.text
    signature = response.json()["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert sorted(signature["inputs"]) == ["deep", "wide"]
    assert list(signature["outputs"]) == ["score"]


def test_a_folder_with_its_own_config_json_serves_with_the_defaults(server: Server) -> None:
    response = server.post("/v1/models/hub_wide_deep:predict", json={"inputs": {"wide": WIDE, "deep": DEEP}})

    assert response.status_code == 200, response.text
    np.testing.assert_allclose(response.json()["outputs"], _expected(), rtol=1e-6)
    assert "hub_wide_deep/config.json: config.json is not a kerasserve model config" in server.log()
