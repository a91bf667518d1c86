"""Single-model mode (MODEL_NAME) against the real server, on a writable folder: TF Serving's
model_base_path behaviour. The folder's version folders are versions of the one named model, a new
version folder swaps in under that name over every protocol, and a plugins/ folder stays plugins."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import wait_until
from tests.e2e.scaled_models import copy_then_mv, save_scaled_model


@pytest.fixture(scope="module")
def scaled(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    folder = tmp_path_factory.mktemp("single-scaled")
    return {k: save_scaled_model(folder / f"times{k}.keras", float(k)) for k in (1, 2)}


def test_version_folders_are_versions_of_the_named_model_and_new_ones_swap_in(
    run_server, tmp_path: Path, scaled: dict[int, Path]
) -> None:
    base = tmp_path / "flowers-base"
    (base / "plugins").mkdir(parents=True)
    (base / "plugins" / "nothing.py").write_text("VALUE = 1\n")
    copy_then_mv(scaled[1], base / "1" / "model.keras", tmp_path / "staging")
    with run_server(base, MODEL_NAME="flowers", SETTLE_S="0.3", POLL_INTERVAL_S="0.3") as server:
        answer = server.post("/v1/models/flowers:predict", json={"instances": [[2.0]]})
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"predictions": [[2.0]]}
        models = server.get("/models").json()
        assert [m["name"] for m in models["models"]] == ["flowers"]  # never `1`, never `plugins`
        assert server.get("/v1/models/1").status_code == 404

        copy_then_mv(scaled[2], base / "2" / "model.keras", tmp_path / "staging")
        wait_until(
            lambda: server.get("/v2/models/flowers/versions/2/ready").status_code == 200, timeout_s=60, interval_s=0.1
        )
        wait_until(lambda: server.get("/v1/models/flowers").json()["model_version_status"][0]["version"] == "2")
        answer = server.post("/v1/models/flowers:predict", json={"instances": [[2.0]]})
        assert answer.json() == {"predictions": [[4.0]]}
        assert "as the one model 'flowers'" in server.log()
