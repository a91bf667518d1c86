"""ServableManager: states, swaps, failures, readiness and handles.

Most tests drive the manager through the real repository and watcher over real files, wired as
`service.app` wires them, with a small builder that turns a file holding a number into a servable
multiplying by it (no TensorFlow: these tests are about states and swaps). `test_real_*` use the real
`ServableBuilder` (loader, runner and batcher).
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path

import numpy as np
import pytest

from service.errors import ModelLoadError, ModelNotFound, ModelNotReady
from service.manager import Builder, ServableManager
from service.repository import VersionSource
from service.servable import Servable, ServableInfo, ServableRequest, ServableState, Signature, TensorInfo
from service.settings import Settings
from tests.conftest import in_fresh_process, run_in_fresh_process, wait_until
from tests.unit.fakes import checked, serve

SIGNATURE = Signature(
    "serving_default", (TensorInfo("x", "float32", (None, 1)),), (TensorInfo("y", "float32", (None, 1)),)
)


class NumberModels:
    """Builds servables from files holding a number (y = x * number); 'broken' files fail to load."""

    device = "/CPU:0"

    def __init__(self) -> None:
        self.built: list[VersionSource] = []
        self.closed: list[tuple[str, int, str]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.needs_plugin: Path | None = None
        self.registry_builds = 0

    def rebuild_registry(self) -> None:
        self.registry_builds += 1

    def build(self, source: VersionSource) -> Servable:
        self.built.append(source)
        self.gate.wait(30)
        path = source.path if source.path.is_file() else next(source.path.glob("*.h5"))
        text = path.read_text().strip()
        if text == "broken":
            raise ModelLoadError(f"'{path.name}' is truncated or corrupt")
        if self.needs_plugin is not None and not self.needs_plugin.exists():
            raise ModelLoadError("custom layer 'Scale' is not registered", missing=("Scale",))
        factor = float(text)

        def submit(inputs) -> Future:
            future: Future = Future()
            future.set_result({"y": np.asarray(inputs.arrays["x"], dtype=np.float32) * factor})
            return future

        tag = (source.id.name, source.id.version, text)
        return Servable(
            id=source.id,
            config=source.config,
            signatures={"serving_default": SIGNATURE},
            default_signature="serving_default",
            info=ServableInfo(path=str(path.name), format="number", loader="test", load_s=0.01, warmup_s=0.02),
            labels=source.labels,
            submit={"serving_default": submit},
            close=lambda: self.closed.append(tag),
        )


class Repo:
    """Writes models into a models folder the way users should: copy elsewhere, then mv."""

    def __init__(self, root: Path) -> None:
        self.models = root / "models"
        self.models.mkdir()
        self.staging = root / "staging"
        self.staging.mkdir()

    def put_file(self, relative: str, text: str) -> Path:
        staged = self.staging / Path(relative).name
        staged.write_text(text)
        target = self.models / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staged, target)
        return target

    def put_version(self, name: str, version: int, text: str) -> Path:
        staged = self.staging / f"{name}-{version}"
        staged.mkdir()
        (staged / "model.h5").write_text(text)
        target = self.models / name / str(version)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.rename(staged, target)
        return target


@pytest.fixture
def repo(tmp_path: Path) -> Repo:
    return Repo(tmp_path)


@pytest.fixture
def models() -> NumberModels:
    return NumberModels()


@pytest.fixture
def make_manager(repo: Repo, models: NumberModels) -> Iterator:
    stops: list[Callable[[], None]] = []

    def make(**settings) -> ServableManager:
        options = {"models_dir": repo.models, "settle_s": 0.3, "poll_interval_s": 0.1, **settings}
        recycled = settings.pop("recycled", None)
        options.pop("recycled", None)
        manager, stop = serve(
            Settings(**options), models, on_recycle=(lambda: recycled.append(True)) if recycled is not None else None
        )
        stops.append(stop)
        return manager

    yield make
    for stop in stops:
        stop()


def predict(manager: ServableManager, request: ServableRequest, x: float = 1.0) -> float:
    with manager.handle(request) as servable:
        out = servable.submit[servable.default_signature](checked({"x": np.array([[x]], dtype=np.float32)})).result()
        (y,) = out.values()
        return float(y[0, 0])


def states(manager: ServableManager, name: str) -> dict[int, tuple[str, str]]:
    return {v.version: (v.state.value, v.error) for v in manager.status(name).versions}


def test_models_present_at_start_become_available_and_ready(repo: Repo, make_manager) -> None:
    repo.put_file("double.h5", "2")
    repo.put_file("double.labels.txt", "a\nb\n")
    manager = make_manager()

    wait_until(lambda: manager.readiness().ready, timeout_s=10)

    assert predict(manager, ServableRequest.latest("double"), 3.0) == 6.0
    status = manager.status("double")
    (version,) = status.versions
    assert (version.version, version.state, version.error) == (1, ServableState.AVAILABLE, "")
    assert version.info is not None and version.info.format == "number" and version.info.warmup_s == 0.02
    assert list(version.signatures) == ["serving_default"]
    assert status.labels == ("a", "b")
    assert manager.readiness().models == {"double": True}
    assert manager.model_names() == ["double"] and manager.default_model() == "double"


def test_readiness_waits_for_the_start_up_models(repo: Repo, make_manager, models: NumberModels) -> None:
    repo.put_file("m.h5", "2")
    models.gate.clear()
    manager = make_manager()

    wait_until(lambda: models.built, timeout_s=10)
    readiness = manager.readiness()
    assert not readiness.ready and readiness.reason == "loading m"
    assert readiness.models == {"m": False}
    assert states(manager, "m") == {1: ("LOADING", "")}
    with pytest.raises(ModelNotReady, match="version 1 is LOADING"):
        predict(manager, ServableRequest.latest("m"))

    models.gate.set()
    wait_until(lambda: manager.readiness().ready, timeout_s=10)


def test_empty_models_folder_is_ready_after_the_start_up_scan(make_manager) -> None:
    manager = make_manager()

    assert manager.readiness().ready
    assert manager.model_names() == []
    with pytest.raises(ModelNotFound, match="name the model"):
        manager.default_model()


def test_failed_start_up_model_does_not_block_readiness(repo: Repo, make_manager) -> None:
    repo.put_file("bad.h5", "broken")
    manager = make_manager()

    wait_until(lambda: manager.readiness().ready, timeout_s=10)

    assert states(manager, "bad") == {1: ("END", "'bad.h5' is truncated or corrupt")}
    with pytest.raises(ModelNotReady, match="failed to load: 'bad.h5' is truncated"):
        predict(manager, ServableRequest.latest("bad"))


def test_new_version_swaps_in_while_a_held_handle_finishes_on_the_old_one(
    repo: Repo, make_manager, models: NumberModels
) -> None:
    repo.put_version("m", 1, "1")
    manager = make_manager()
    wait_until(lambda: manager.readiness().ready, timeout_s=10)

    with manager.handle(ServableRequest.latest("m")) as old:
        repo.put_version("m", 2, "2")
        wait_until(lambda: predict(manager, ServableRequest.latest("m")) == 2.0, timeout_s=10)
        assert manager.readiness().ready
        # The held version is out of the map but still usable, and not closed.
        assert old.id.version == 1
        assert old.submit["serving_default"](checked({"x": np.ones((1, 1), np.float32)})).result()["y"][0, 0] == 1.0
        assert ("m", 1, "1") not in models.closed
        assert states(manager, "m")[1][0] == "UNLOADING"

    wait_until(lambda: ("m", 1, "1") in models.closed, timeout_s=10)
    wait_until(lambda: states(manager, "m") == {1: ("END", ""), 2: ("AVAILABLE", "")}, timeout_s=10)


def test_failed_new_version_leaves_the_serving_version_and_is_not_retried_until_it_changes(
    repo: Repo, make_manager, models: NumberModels
) -> None:
    repo.put_version("m", 2, "2")
    manager = make_manager()
    wait_until(lambda: manager.readiness().ready, timeout_s=10)

    repo.put_version("m", 3, "broken")
    wait_until(lambda: states(manager, "m").get(3, ("",))[0] == "END", timeout_s=10)

    assert states(manager, "m") == {2: ("AVAILABLE", ""), 3: ("END", "'model.h5' is truncated or corrupt")}
    assert predict(manager, ServableRequest.latest("m")) == 2.0
    assert manager.readiness().ready
    attempts = sum(1 for s in models.built if s.id.version == 3)
    threading.Event().wait(0.5)  # several polls happen here
    assert sum(1 for s in models.built if s.id.version == 3) == attempts == 1

    # A good copy of version 3 (new size and mtime) recovers without a restart.
    staged = repo.staging / "fixed.h5"
    staged.write_text("3")
    os.replace(staged, repo.models / "m" / "3" / "model.h5")
    wait_until(lambda: predict(manager, ServableRequest.latest("m")) == 3.0, timeout_s=10)
    wait_until(lambda: states(manager, "m") == {2: ("END", ""), 3: ("AVAILABLE", "")}, timeout_s=10)


def test_plugin_change_retries_a_version_that_missed_a_custom_object(
    repo: Repo, make_manager, models: NumberModels
) -> None:
    models.needs_plugin = repo.models / "plugins" / "scale.py"
    repo.put_file("m.h5", "5")
    manager = make_manager()
    wait_until(lambda: states(manager, "m") == {1: ("END", "custom layer 'Scale' is not registered")}, timeout_s=10)

    repo.put_file("plugins/scale.py", "SCALE = 5\n")

    wait_until(lambda: states(manager, "m") == {1: ("AVAILABLE", "")}, timeout_s=10)
    assert predict(manager, ServableRequest.latest("m")) == 5.0


def test_replacing_a_single_file_reloads_the_same_version_and_swaps(
    repo: Repo, make_manager, models: NumberModels
) -> None:
    repo.put_file("m.h5", "2")
    manager = make_manager()
    wait_until(lambda: manager.readiness().ready, timeout_s=10)

    repo.put_file("m.h5", "7")

    wait_until(lambda: predict(manager, ServableRequest.latest("m")) == 7.0, timeout_s=10)
    wait_until(lambda: ("m", 1, "2") in models.closed, timeout_s=10)
    assert states(manager, "m") == {1: ("AVAILABLE", "")}


def test_broken_replacement_of_a_single_file_keeps_the_previous_copy(repo: Repo, make_manager) -> None:
    repo.put_file("m.h5", "2")
    manager = make_manager()
    wait_until(lambda: manager.readiness().ready, timeout_s=10)

    repo.put_file("m.h5", "broken")

    wait_until(lambda: states(manager, "m")[1][1] != "", timeout_s=10)
    assert states(manager, "m") == {1: ("AVAILABLE", "'m.h5' is truncated or corrupt")}
    assert predict(manager, ServableRequest.latest("m")) == 2.0


def test_deleted_model_is_unloaded_then_not_found(repo: Repo, make_manager, models: NumberModels) -> None:
    repo.put_file("m.h5", "2")
    manager = make_manager()
    wait_until(lambda: manager.readiness().ready, timeout_s=10)

    (repo.models / "m.h5").unlink()

    wait_until(lambda: manager.model_names() == [], timeout_s=10)
    assert ("m", 1, "2") in models.closed
    with pytest.raises(ModelNotFound):
        predict(manager, ServableRequest.latest("m"))
    with pytest.raises(ModelNotFound):
        manager.status("m")
    assert manager.readiness().ready  # a removed model no longer counts


def test_deleted_version_folder_is_unloaded(repo: Repo, make_manager) -> None:
    repo.put_file("m/config.yaml", "version_policy: all\n")
    repo.put_version("m", 1, "1")
    repo.put_version("m", 2, "2")
    manager = make_manager()
    wait_until(lambda: manager.readiness().ready and len(manager.status("m").versions) == 2, timeout_s=10)

    shutil.rmtree(repo.models / "m" / "2")

    wait_until(lambda: states(manager, "m") == {1: ("AVAILABLE", "")}, timeout_s=10)
    with pytest.raises(ModelNotFound, match="version 2"):
        predict(manager, ServableRequest.specific("m", 2))


def test_version_policy_all_serves_every_version_by_number_and_label(repo: Repo, make_manager) -> None:
    repo.put_file("m/config.yaml", "version_policy: all\nversion_labels:\n  stable: 1\n  canary: 2\n")
    repo.put_version("m", 1, "1")
    repo.put_version("m", 2, "2")
    manager = make_manager()
    wait_until(lambda: states(manager, "m") == {1: ("AVAILABLE", ""), 2: ("AVAILABLE", "")}, timeout_s=10)

    assert predict(manager, ServableRequest.latest("m")) == 2.0
    assert predict(manager, ServableRequest.specific("m", 1)) == 1.0
    assert predict(manager, ServableRequest.labelled("m", "stable")) == 1.0
    assert predict(manager, ServableRequest.labelled("m", "canary")) == 2.0
    assert manager.status("m").version_labels == {"stable": 1, "canary": 2}
    with pytest.raises(ModelNotFound, match="version 9 of model 'm'"):
        predict(manager, ServableRequest.specific("m", 9))
    with pytest.raises(ModelNotFound, match="label 'beta'"):
        predict(manager, ServableRequest.labelled("m", "beta"))


def test_invalid_config_fails_the_version_without_loading(repo: Repo, make_manager, models: NumberModels) -> None:
    repo.put_file("m.h5", "2")
    repo.put_file("m.yaml", "version_policy: sometimes\n")
    manager = make_manager()

    wait_until(lambda: states(manager, "m")[1][0] == "END", timeout_s=10)

    assert "m.yaml is invalid" in states(manager, "m")[1][1]
    assert models.built == []


def test_worker_recycles_after_the_configured_number_of_swaps(repo: Repo, make_manager) -> None:
    recycled: list[bool] = []
    repo.put_file("m.h5", "1")
    manager = make_manager(swaps_before_recycle=2, recycled=recycled)
    wait_until(lambda: manager.readiness().ready, timeout_s=10)

    for n in (2, 3, 4):
        repo.put_file("m.h5", str(n))
        wait_until(lambda: predict(manager, ServableRequest.latest("m")) == float(n), timeout_s=10)
        if n == 2:
            threading.Event().wait(0.3)
            assert recycled == []

    wait_until(lambda: recycled == [True], timeout_s=10)
    threading.Event().wait(0.3)
    assert recycled == [True]  # once


def test_stop_unloads_everything_and_is_safe_twice(repo: Repo, make_manager, models: NumberModels) -> None:
    repo.put_file("m.h5", "2")
    manager = make_manager()
    wait_until(lambda: manager.readiness().ready, timeout_s=10)

    manager.stop()
    manager.stop()

    assert models.closed == [("m", 1, "2")]
    with pytest.raises(ModelNotReady):
        predict(manager, ServableRequest.latest("m"))


def test_a_file_rewritten_in_place_keeps_serving_the_old_copy_until_the_new_one_settles(
    repo: Repo, make_manager
) -> None:
    repo.put_file("m.h5", "2")
    manager = make_manager(settle_s=0.5)
    wait_until(lambda: manager.readiness().ready, timeout_s=10)

    path = repo.models / "m.h5"
    for text in ("9", "9.", "9.0"):  # a slow, non-atomic upload over the served file
        path.write_text(text)
        assert predict(manager, ServableRequest.latest("m")) == 2.0
        assert states(manager, "m") == {1: ("AVAILABLE", "")}
        threading.Event().wait(0.2)

    wait_until(lambda: predict(manager, ServableRequest.latest("m")) == 9.0, timeout_s=10)
    assert manager.readiness().ready


def test_polling_finds_versions_inotify_cannot_see_behind_a_symlinked_folder(
    repo: Repo, make_manager, tmp_path: Path
) -> None:
    # inotify does not follow symbolic links (nor see network volumes): the periodic scan must.
    export = tmp_path / "export" / "m"
    (export / "1").mkdir(parents=True)
    (export / "1" / "model.h5").write_text("1")
    (repo.models / "m").symlink_to(export)
    manager = make_manager(poll_interval_s=0.2)
    wait_until(lambda: manager.readiness().ready and manager.readiness().models == {"m": True}, timeout_s=10)

    staged = tmp_path / "export" / ".2"
    staged.mkdir()
    (staged / "model.h5").write_text("2")
    os.rename(staged, export / "2")

    wait_until(lambda: predict(manager, ServableRequest.latest("m")) == 2.0, timeout_s=10)


# --- the real loader, runner and batcher -----------------------------------------------------------
# A manager's start() configures TensorFlow for the whole process (once: device, threads), which
# other test modules check from a fresh state. So the tests using the real loader run in a fresh
# interpreter: `test_real_tensorflow_manager_tests_in_a_fresh_process` starts pytest on them through
# `run_in_fresh_process`; in this process they are skipped.
fresh_process_only = pytest.mark.skipif(
    not in_fresh_process(),
    reason="runs in a fresh process (see test_real_tensorflow_manager_tests_in_a_fresh_process)",
)


def real_builder(settings: Settings) -> Builder:
    """A started `ServableBuilder`: the loader, runners and batchers on TensorFlow."""
    from service.builder import ServableBuilder

    builder = ServableBuilder(settings)
    builder.start()
    return builder


@pytest.mark.skipif(in_fresh_process(), reason="already in the fresh process")
def test_real_tensorflow_manager_tests_in_a_fresh_process() -> None:
    passed = run_in_fresh_process("-m", "not slow", "-k", "real_keras or real_plugin", __file__)
    assert passed == {
        "test_real_keras_model_loads_warms_up_serves_and_swaps",
        "test_real_plugin_change_rebuilds_the_registry_and_retries_the_failed_model",
    }


@fresh_process_only
def test_real_keras_model_loads_warms_up_serves_and_swaps(repo: Repo, tmp_path: Path) -> None:
    from tests.e2e.scaled_models import copy_then_mv, save_scaled_model

    two = save_scaled_model(tmp_path / "two.keras", 2.0)
    three = save_scaled_model(tmp_path / "three.keras", 3.0)
    copy_then_mv(two, repo.models / "m.keras", repo.staging)
    settings = Settings(models_dir=repo.models, settle_s=0.3, poll_interval_s=0.1, max_batch_size=4)
    manager, stop = serve(settings, real_builder(settings))
    try:
        wait_until(lambda: manager.readiness().ready, timeout_s=60)
        assert predict(manager, ServableRequest.latest("m"), 1.5) == 3.0
        (version,) = manager.status("m").versions
        assert version.state is ServableState.AVAILABLE and version.info is not None
        assert (version.info.format, version.info.device, version.info.path) == ("keras", "/CPU:0", "m.keras")
        assert version.info.load_s > 0 and version.info.warmup_s > 0
        assert [t.name for t in version.signatures[version.default_signature].inputs] == ["x"]

        copy_then_mv(three, repo.models / "m.keras", repo.staging)
        wait_until(lambda: predict(manager, ServableRequest.latest("m"), 1.5) == 4.5, timeout_s=60)
    finally:
        stop()


@pytest.mark.slow
def test_resident_memory_stays_flat_across_swaps() -> None:
    import subprocess
    import sys

    from tests.conftest import REPO

    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "bench" / "swap_memory.py"),
            "--swaps",
            "20",
            "--units",
            "1024",
            "--max-growth-mb",
            "16",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "growth_after_warm_up_mb" in result.stdout


DOUBLER_PLUGIN = '''
import keras


class Doubler(keras.layers.Layer):
    """Custom layer a model needs: y = 2 * x."""

    def call(self, x):
        return x * 2.0
'''


@fresh_process_only
def test_real_plugin_change_rebuilds_the_registry_and_retries_the_failed_model(repo: Repo, tmp_path: Path) -> None:
    import importlib.util

    import keras

    from tests.e2e.scaled_models import copy_then_mv

    source = tmp_path / "training" / "doubler_training.py"
    source.parent.mkdir()
    source.write_text(DOUBLER_PLUGIN)
    spec = importlib.util.spec_from_file_location("doubler_training", source)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = keras.Sequential([keras.Input((1,), name="x"), module.Doubler(name="double")])
    model.save(tmp_path / "training" / "double.keras")
    copy_then_mv(tmp_path / "training" / "double.keras", repo.models / "double.keras", repo.staging)
    settings = Settings(models_dir=repo.models, settle_s=0.3, poll_interval_s=0.1, max_batch_size=2)
    manager, stop = serve(settings, real_builder(settings))
    try:
        wait_until(lambda: states(manager, "double")[1][0] == "END", timeout_s=60)
        assert "Doubler" in states(manager, "double")[1][1]
        assert manager.readiness().ready  # a failed start-up model does not hold readiness

        copy_then_mv(source, repo.models / "plugins" / "doubler.py", repo.staging)

        wait_until(lambda: states(manager, "double") == {1: ("AVAILABLE", "")}, timeout_s=60)
        assert predict(manager, ServableRequest.latest("double"), 4.0) == 8.0
    finally:
        stop()


def test_changed_labels_file_loads_the_version_again(repo: Repo, make_manager, models: NumberModels) -> None:
    repo.put_file("m.h5", "2")
    repo.put_file("m.labels.txt", "a\nb\n")
    manager = make_manager()
    wait_until(lambda: manager.status("m").labels == ("a", "b"), timeout_s=10)

    repo.put_file("m.labels.txt", "cat\ndog\n")

    wait_until(lambda: manager.status("m").labels == ("cat", "dog"), timeout_s=10)
    assert len(models.built) == 2
    wait_until(lambda: models.closed == [("m", 1, "2")], timeout_s=10)


# --- MAX_LOADED_MODELS: more models than memory --------------------------------------------------


class CountingModels(NumberModels):
    """NumberModels that records the most servables alive at once (built and not yet closed)."""

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self.alive = 0
        self.most_alive = 0

    def build(self, source: VersionSource) -> Servable:
        with self._lock:
            self.alive += 1
            self.most_alive = max(self.most_alive, self.alive)
        try:
            servable = super().build(source)
        except Exception:
            with self._lock:
                self.alive -= 1
            raise
        close = servable.close

        def counted_close() -> None:
            with self._lock:
                self.alive -= 1
            close()

        servable.close = counted_close
        return servable


@pytest.fixture
def counting() -> CountingModels:
    return CountingModels()


def budget_manager(repo: Repo, builder: NumberModels, stops: list, **options) -> ServableManager:
    settings = Settings(models_dir=repo.models, settle_s=0, poll_interval_s=60, **options)
    manager, stop = serve(settings, builder)
    stops.append(stop)
    return manager


@pytest.fixture
def stops() -> Iterator[list]:
    stops: list[Callable[[], None]] = []
    yield stops
    for stop in stops:
        stop()


def resident(manager: ServableManager) -> list[str]:
    return [status.name for status in manager.statuses() if status.resident]


def test_a_budget_loads_the_first_models_and_a_request_swaps_in_another_for_the_least_recently_used(
    repo: Repo, counting: CountingModels, stops: list
) -> None:
    for number, name in enumerate("abcd", start=1):
        repo.put_file(f"{name}.h5", str(number))
    manager = budget_manager(repo, counting, stops, max_loaded_models=2)
    wait_until(lambda: manager.readiness().ready, timeout_s=10)
    assert resident(manager) == ["a", "b"]
    assert [s.name for s in manager.statuses() if s.evicted] == ["c", "d"]
    # Models left out by the budget do not hold readiness, and each can answer (a request loads it).
    assert manager.readiness().ready
    assert manager.readiness().models == {"a": True, "b": True, "c": True, "d": True}

    assert predict(manager, ServableRequest.latest("b")) == 2.0  # b is now the most recently used
    assert predict(manager, ServableRequest.latest("c"), 2.0) == 6.0  # waits for c, which takes a's place
    assert resident(manager) == ["b", "c"]
    assert predict(manager, ServableRequest.latest("a")) == 1.0  # a again, in place of b
    wait_until(lambda: resident(manager) == ["a", "c"], timeout_s=5)
    assert states(manager, "b") == {1: ("END", "")}
    assert manager.readiness().ready
    assert counting.most_alive == 2


def test_requests_over_more_models_than_the_budget_all_succeed_and_residency_stays_bounded(
    repo: Repo, counting: CountingModels, stops: list
) -> None:
    names = [f"m{i:02d}" for i in range(6)]
    for number, name in enumerate(names, start=1):
        repo.put_file(f"{name}.h5", str(number))
    manager = budget_manager(repo, counting, stops, max_loaded_models=3, load_wait_s=30)
    wait_until(lambda: manager.readiness().ready, timeout_s=10)
    failures: list[BaseException] = []
    wrong: list[tuple[str, float]] = []

    def client(seed: int) -> None:
        rng = np.random.default_rng(seed)
        for _ in range(10):  # each unload runs gc.collect(), slow in a test process holding TensorFlow
            index = int(rng.integers(len(names)))
            try:
                answer = predict(manager, ServableRequest.latest(names[index]))
            except BaseException as err:  # noqa: BLE001 - every failure is counted
                failures.append(err)
                continue
            if answer != index + 1:
                wrong.append((names[index], answer))

    threads = [threading.Thread(target=client, args=(seed,)) for seed in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert (failures, wrong) == ([], [])
    assert counting.most_alive <= 3
    assert len(resident(manager)) <= 3


def test_a_request_gives_up_after_load_wait_s_when_the_model_does_not_load_in_time(
    repo: Repo, counting: CountingModels, stops: list
) -> None:
    repo.put_file("a.h5", "1")
    repo.put_file("b.h5", "2")
    manager = budget_manager(repo, counting, stops, max_loaded_models=1, load_wait_s=0.3)
    wait_until(lambda: manager.readiness().ready, timeout_s=10)
    counting.gate.clear()  # every build now hangs
    try:
        with pytest.raises(ModelNotReady, match=r"not loaded again within 0.3s \(MAX_LOADED_MODELS, LOAD_WAIT_S\)"):
            predict(manager, ServableRequest.latest("b"))
    finally:
        counting.gate.set()
    assert predict(manager, ServableRequest.latest("b")) == 2.0  # once loads work again, it comes in


def test_a_lookup_that_must_not_load_leaves_an_evicted_model_unloaded(
    repo: Repo, counting: CountingModels, stops: list
) -> None:
    repo.put_file("a.h5", "1")
    repo.put_file("b.h5", "2")
    manager = budget_manager(repo, counting, stops, max_loaded_models=1)
    wait_until(lambda: manager.readiness().ready, timeout_s=10)
    with pytest.raises(ModelNotReady), manager.handle(ServableRequest.latest("b"), load=False):
        pass
    assert resident(manager) == ["a"]
    assert len(counting.built) == 1


def test_a_byte_budget_counts_the_model_files_and_a_model_over_it_loads_alone(
    repo: Repo, counting: CountingModels, stops: list
) -> None:
    for number, name in enumerate("abc", start=1):
        repo.put_file(f"{name}.h5", str(number).ljust(1000))  # 1000 bytes each
    repo.put_file("big.h5", "9".ljust(3000))
    manager = budget_manager(repo, counting, stops, max_loaded_bytes=2500)
    wait_until(lambda: manager.readiness().ready, timeout_s=10)
    assert resident(manager) == ["a", "b"]  # 2000 bytes; c (and big) would go over 2500

    assert predict(manager, ServableRequest.latest("c")) == 3.0
    assert resident(manager) == ["b", "c"]
    assert predict(manager, ServableRequest.latest("big")) == 9.0  # over the budget by itself: alone
    assert resident(manager) == ["big"]
    assert predict(manager, ServableRequest.latest("a")) == 1.0
    assert resident(manager) == ["a"]
    assert counting.most_alive == 2
