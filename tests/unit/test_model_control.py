"""ModelControl: Triton's poll/explicit modes, and the decisions every worker shares through one file.

Two `ModelControl`s on the same file stand for two gunicorn workers (each builds its own); the file
is the only thing they share, as in the server.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from service.errors import ModelControlDisabled
from service.model_control import ModelControl
from service.settings import Settings


def control(tmp_path: Path, path: Path | None = None, **options) -> ModelControl:
    settings = Settings(models_dir=tmp_path, model_control="explicit", model_control_file=path, **options)
    return ModelControl(settings)


def test_poll_serves_every_model_and_refuses_load_and_unload(tmp_path: Path) -> None:
    poll = ModelControl(Settings(models_dir=tmp_path))
    assert poll.select({"a", "b"}) == {"a", "b"}
    for action in (poll.load, poll.unload):
        with pytest.raises(ModelControlDisabled, match="explicit model load / unload is not allowed if polling"):
            action("a")


def test_explicit_serves_the_startup_models_then_what_is_loaded(tmp_path: Path) -> None:
    explicit = control(tmp_path, startup_models=["a"])
    assert explicit.select({"a", "b", "c"}) == {"a"}
    explicit.load("b")
    explicit.unload("a")
    assert explicit.select({"a", "b", "c"}) == {"b"}
    assert explicit.decisions().unloaded == {"a"}
    assert explicit.repository_names() == {"a", "b", "c"}
    explicit.unload("made-up")  # idempotent, and not kept: clients cannot grow the decisions file
    assert explicit.decisions().unloaded == {"a"}


def test_startup_star_means_the_models_in_the_folder_at_start_only(tmp_path: Path) -> None:
    explicit = control(tmp_path, tmp_path / "control.json", startup_models=["*"])
    assert explicit.select({"a", "b"}) == {"a", "b"}
    assert explicit.select({"a", "b", "late"}) == {"a", "b"}  # as Triton's --load-model=*


def test_a_decision_taken_by_one_worker_reaches_the_other_through_the_file(tmp_path: Path) -> None:
    path = tmp_path / "run" / "control.json"
    first, second = control(tmp_path, path, startup_models=["a"]), control(tmp_path, path, startup_models=["a"])
    assert first.select({"a", "b"}) == second.select({"a", "b"}) == {"a"}
    first.load("b")
    assert second.select({"a", "b"}) == {"a", "b"}
    second.unload("a")
    assert first.select({"a", "b"}) == {"b"}
    # A worker started later (recycled) reads the decisions, not STARTUP_MODELS again.
    assert control(tmp_path, path, startup_models=["a"]).select({"a", "b"}) == {"b"}


def test_decisions_taken_at_once_by_two_workers_are_all_kept(tmp_path: Path) -> None:
    path = tmp_path / "control.json"
    workers = [control(tmp_path, path), control(tmp_path, path)]

    def decide(worker: ModelControl, prefix: str) -> None:
        for index in range(25):
            worker.load(f"{prefix}{index}")

    threads = [threading.Thread(target=decide, args=(w, p)) for w, p in zip(workers, "xy", strict=True)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert workers[0].decisions().loaded == {f"{p}{i}" for p in "xy" for i in range(25)}


def test_an_unreadable_file_keeps_the_decisions_read_before(tmp_path: Path) -> None:
    path = tmp_path / "control.json"
    explicit = control(tmp_path, path)
    explicit.load("a")
    path.write_text("{not json")
    assert explicit.select({"a", "b"}) == {"a"}
    explicit.load("b")  # rewrites a valid file from what it knew
    assert control(tmp_path, path).select({"a", "b"}) == {"a", "b"}
