"""ModelRepository.scan(): layout, version policy, settle detection, fingerprints (no TensorFlow)."""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path

import pytest

from service.model_config import ModelConfig
from service.repository import SETTLING, ModelRepository, is_ignored
from service.servable import ServableId


class FakeClocks:
    """Monotonic and wall clocks the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.wall = time.time()

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self.wall += seconds


def write(path: Path, data: bytes | str = b"model", *, age_s: float = 3600.0) -> Path:
    """Write a file whose mtime lies `age_s` in the past (an old, settled file by default)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    stamp = time.time() - age_s
    os.utime(path, (stamp, stamp))
    return path


def saved_model(folder: Path, *, age_s: float = 3600.0) -> Path:
    """Write the files of a one-shard SavedModel (contents do not matter to the repository)."""
    write(folder / "saved_model.pb", b"pb", age_s=age_s)
    write(folder / "variables" / "variables.index", b"idx", age_s=age_s)
    write(folder / "variables" / "variables.data-00000-of-00001", b"data", age_s=age_s)
    return folder


@pytest.fixture
def clocks() -> FakeClocks:
    return FakeClocks()


@pytest.fixture
def repo(tmp_path: Path, clocks: FakeClocks) -> ModelRepository:
    return ModelRepository(tmp_path, settle_s=1.0, clock=lambda: clocks.now, wall_clock=lambda: clocks.wall)


def test_single_file_is_version_1_with_its_config_and_labels(tmp_path: Path, repo: ModelRepository) -> None:
    write(tmp_path / "digits.keras")
    write(tmp_path / "digits.yaml", "batching:\n  max_batch_size: 4\n")
    write(tmp_path / "digits.labels.txt", "zero\none\n\n")

    models = repo.scan()

    assert list(models) == ["digits"]
    (version,) = models["digits"].aspired
    assert version.id == ServableId("digits", 1)
    assert version.path == tmp_path / "digits.keras"
    assert version.config.batching.max_batch_size == 4
    assert version.labels == ("zero", "one")
    assert version.error == ""


def test_versioned_folder_serves_the_latest_complete_version_by_default(tmp_path: Path, repo: ModelRepository) -> None:
    write(tmp_path / "m" / "1" / "model.h5")
    write(tmp_path / "m" / "2" / "model.h5")
    write(tmp_path / "m" / "00000010" / "model.h5")

    source = repo.scan()["m"]

    assert [v.id.version for v in source.aspired] == [10]
    assert source.aspired[0].path == tmp_path / "m" / "00000010"
    assert source.present == {1, 2, 10}
    assert dict(source.pending) == {}


@pytest.mark.parametrize(
    ("config", "expected"),
    [("version_policy: all\n", [1, 2, 3]), ("version_policy: specific\nversions: [1, 3, 7]\n", [1, 3])],
)
def test_version_policy_all_and_specific(
    tmp_path: Path, repo: ModelRepository, config: str, expected: list[int]
) -> None:
    for v in (1, 2, 3):
        write(tmp_path / "m" / str(v) / "model.keras")
    write(tmp_path / "m" / "config.yaml", config + "version_labels:\n  stable: 1\n")

    source = repo.scan()["m"]

    assert [v.id.version for v in source.aspired] == expected
    assert dict(source.version_labels) == {"stable": 1}


def test_version_folder_config_overrides_the_model_folder_config(tmp_path: Path, repo: ModelRepository) -> None:
    write(tmp_path / "m" / "1" / "model.keras")
    write(tmp_path / "m" / "config.yaml", "labels: [a, b]\nbatching:\n  max_batch_size: 8\n")
    write(tmp_path / "m" / "1" / "config.json", '{"batching": {"max_batch_size": 2}}')

    (version,) = repo.scan()["m"].aspired

    assert version.config.batching.max_batch_size == 2
    assert version.labels == ("a", "b")


def test_a_version_config_that_clashes_with_the_model_config_gives_the_version_an_error(
    tmp_path: Path, repo: ModelRepository
) -> None:
    write(tmp_path / "m" / "1" / "model.keras")
    write(tmp_path / "m" / "config.yaml", "precision: bf16\n")
    write(tmp_path / "m" / "1" / "config.yaml", "backend: xla\n")

    (version,) = repo.scan()["m"].aspired

    assert version.error.startswith("config.yaml: the model's and the version's config do not go together")
    assert "precision bf16 is OpenVINO's" in version.error


def test_unversioned_folder_is_version_1(tmp_path: Path, repo: ModelRepository) -> None:
    write(tmp_path / "lstm" / "arch.json", "{}")
    write(tmp_path / "lstm" / "arch.weights.h5")
    write(tmp_path / "lstm" / "labels.txt", "x\n")

    (version,) = repo.scan()["lstm"].aspired

    assert version.id == ServableId("lstm", 1)
    assert version.path == tmp_path / "lstm"
    assert version.labels == ("x",)


def test_unsafe_names_temporary_files_plugins_and_other_files_are_skipped(
    tmp_path: Path, repo: ModelRepository
) -> None:
    write(tmp_path / "good.h5")
    write(tmp_path / "bad name.h5")
    write(tmp_path / ".hidden.keras")
    write(tmp_path / "x.keras.part")
    write(tmp_path / "y.keras.tmp")
    write(tmp_path / "z.keras~")
    write(tmp_path / "README.md")
    write(tmp_path / "plugins" / "layers.py", "X = 1\n")
    (tmp_path / "empty").mkdir()

    assert list(repo.scan()) == ["good"]


@pytest.mark.parametrize("name", [".x", "a.tmp", "a.part", "a.crdownload", "a.swp", "a~", "__pycache__"])
def test_is_ignored(name: str) -> None:
    assert is_ignored(name)


def test_a_changing_file_is_pending_until_unchanged_for_the_settle_period(
    tmp_path: Path, repo: ModelRepository, clocks: FakeClocks
) -> None:
    write(tmp_path / "m.keras", b"part", age_s=0)
    repo.scan()  # the start-up scan: only files older than settle_s are complete at first sight

    path = write(tmp_path / "m.keras", b"part-2", age_s=0)
    clocks.advance(0.6)
    first = repo.scan()["m"]
    assert first.aspired == () and dict(first.pending) == {1: SETTLING}
    assert repo.next_settle_deadline() == pytest.approx(clocks.now + 1.0)

    clocks.advance(0.6)
    path.write_bytes(b"part-2-and-3")  # still growing: the settle period starts again
    assert repo.scan()["m"].aspired == ()
    clocks.advance(0.9)
    assert repo.scan()["m"].aspired == ()
    clocks.advance(0.2)
    (version,) = repo.scan()["m"].aspired
    assert version.id.version == 1


def test_a_file_that_arrived_by_rename_is_complete_at_once(tmp_path: Path, repo: ModelRepository) -> None:
    repo.scan()
    write(tmp_path / "m.keras", age_s=0)
    repo.note_arrived(tmp_path / "m.keras")

    assert [v.id.version for v in repo.scan()["m"].aspired] == [1]


def test_a_folder_that_arrived_by_rename_is_complete_at_once(tmp_path: Path, repo: ModelRepository) -> None:
    repo.scan()
    saved_model(tmp_path / "m" / "3", age_s=0)
    repo.note_arrived(tmp_path / "m" / "3")

    assert [v.id.version for v in repo.scan()["m"].aspired] == [3]


def test_a_renamed_file_written_again_afterwards_must_settle(tmp_path: Path, repo: ModelRepository) -> None:
    repo.scan()
    path = write(tmp_path / "m.keras", age_s=0)
    repo.note_arrived(path)
    path.write_bytes(b"rewritten in place")

    assert repo.scan()["m"].aspired == ()


def test_files_older_than_the_settle_period_are_complete_at_start_up_only(
    tmp_path: Path, repo: ModelRepository, clocks: FakeClocks
) -> None:
    write(tmp_path / "a.keras", age_s=5)
    assert "a" in repo.scan() and repo.scan()["a"].aspired
    write(tmp_path / "b.keras", age_s=5)  # e.g. a file server whose clock lags: observed first
    assert repo.scan()["b"].aspired == ()
    clocks.advance(1.0)
    assert repo.scan()["b"].aspired


def test_saved_model_is_incomplete_until_its_variables_are_there(tmp_path: Path, repo: ModelRepository) -> None:
    folder = tmp_path / "m" / "1"
    write(folder / "saved_model.pb")
    (folder / "variables").mkdir()
    write(folder / "variables" / "variables.data-00000-of-00002")

    source = repo.scan()["m"]
    assert source.aspired == () and "variables.index" in source.pending[1]

    repo.note_arrived(write(folder / "variables" / "variables.index"))
    source = repo.scan()["m"]
    assert source.aspired == () and "1 of 2" in source.pending[1]

    repo.note_arrived(write(folder / "variables" / "variables.data-00001-of-00002"))
    assert [v.id.version for v in repo.scan()["m"].aspired] == [1]


def test_variables_without_saved_model_pb_are_incomplete(tmp_path: Path, repo: ModelRepository) -> None:
    folder = tmp_path / "m" / "1"
    write(folder / "variables" / "variables.index")
    write(folder / "variables" / "variables.data-00000-of-00001")

    assert repo.scan()["m"].pending == {1: "saved_model.pb missing"}


def test_fingerprint_changes_with_the_model_file_and_its_config(tmp_path: Path, repo: ModelRepository) -> None:
    write(tmp_path / "m.keras", b"one")
    fingerprints = [repo.scan()["m"].aspired[0].fingerprint]
    repo.note_arrived(write(tmp_path / "m.keras", b"two", age_s=100))
    fingerprints.append(repo.scan()["m"].aspired[0].fingerprint)
    write(tmp_path / "m.yaml", "labels: [a]\n", age_s=50)
    # A new config file must settle too; afterwards it is part of the fingerprint.
    repo.note_arrived(tmp_path / "m.yaml")
    fingerprints.append(repo.scan()["m"].aspired[0].fingerprint)

    assert len(set(fingerprints)) == 3
    assert repo.scan()["m"].aspired[0].fingerprint == fingerprints[-1]


def test_invalid_config_gives_the_version_an_error(tmp_path: Path, repo: ModelRepository) -> None:
    write(tmp_path / "m.keras")
    write(tmp_path / "m.yaml", "no_such_key: 1\n")

    (version,) = repo.scan()["m"].aspired

    assert "m.yaml" in version.error and "no_such_key" in version.error


def test_a_version_config_that_does_not_go_with_the_model_config_gives_the_version_an_error(
    tmp_path: Path, repo: ModelRepository
) -> None:
    write(tmp_path / "m" / "config.yaml", "backend: onnxruntime\nversion_policy: all\n")
    write(tmp_path / "m" / "1" / "model.keras")
    write(tmp_path / "m" / "1" / "config.yaml", "precision: bf16\n")
    write(tmp_path / "m" / "2" / "model.keras")

    first, second = sorted(repo.scan()["m"].aspired, key=lambda v: v.id.version)

    assert first.error == (
        "config.yaml: the model's and the version's config do not go together: "
        "backend: onnxruntime runs fp32 only (precision: bf16 is OpenVINO's; use backend: openvino)"
    )
    assert (second.error, second.config.backend) == ("", "onnxruntime")


HUB_CONFIG = '{"architectures": ["WideDeep"], "model_type": "wide_deep", "hidden_size": 64, "num_labels": 2}'


def test_a_folder_with_another_tools_config_json_gets_the_default_config_and_one_info_line(
    tmp_path: Path, repo: ModelRepository, caplog: pytest.LogCaptureFixture
) -> None:
    write(tmp_path / "hub" / "model.keras")
    write(tmp_path / "hub" / "config.json", HUB_CONFIG)
    write(tmp_path / "hub" / "README.md", "# a model card")

    with caplog.at_level(logging.INFO, logger="service.repository"):
        (version,) = repo.scan()["hub"].aspired
        repo.scan()

    assert version.error == ""
    assert version.config == ModelConfig()
    assert version.path == tmp_path / "hub"
    notes = [r for r in caplog.records if "config.json" in r.getMessage()]
    assert [(r.levelno, r.getMessage()) for r in notes] == [
        (
            logging.INFO,
            "hub/config.json: config.json is not a kerasserve model config (none of its keys is ours); "
            "ignored, the model gets the default config",
        )
    ]


def test_another_tools_config_json_in_a_version_folder_keeps_the_model_folder_config(
    tmp_path: Path, repo: ModelRepository
) -> None:
    write(tmp_path / "m" / "config.yaml", "labels: [a, b]\n")
    write(tmp_path / "m" / "1" / "model.keras")
    write(tmp_path / "m" / "1" / "config.json", HUB_CONFIG)

    (version,) = repo.scan()["m"].aspired

    assert version.error == ""
    assert version.labels == ("a", "b")


def test_a_mistyped_folder_config_of_ours_still_fails_the_version(tmp_path: Path, repo: ModelRepository) -> None:
    write(tmp_path / "m" / "model.keras")
    write(tmp_path / "m" / "config.yaml", "labels: [a, b]\nbatchin:\n  max_batch_size: 8\n")

    (version,) = repo.scan()["m"].aspired

    assert "config.yaml is invalid" in version.error and "batchin" in version.error


def test_folder_wins_over_a_file_of_the_same_name(tmp_path: Path, repo: ModelRepository) -> None:
    write(tmp_path / "m.keras")
    write(tmp_path / "m" / "7" / "model.keras")

    assert [v.id.version for v in repo.scan()["m"].aspired] == [7]


def test_deleted_model_disappears_from_the_scan(tmp_path: Path, repo: ModelRepository) -> None:
    write(tmp_path / "m" / "1" / "model.keras")
    assert "m" in repo.scan()
    shutil.rmtree(tmp_path / "m")
    assert repo.scan() == {}


def test_configmap_style_symlink_swap_changes_the_fingerprint(tmp_path: Path, repo: ModelRepository) -> None:
    # Kubernetes mounts a ConfigMap as name -> ..data/name, ..data -> ..<timestamp>/ and swaps ..data.
    write(tmp_path / "..2024_01" / "m.keras", b"first")
    write(tmp_path / "..2024_02" / "m.keras", b"second version")
    (tmp_path / "..data").symlink_to("..2024_01")
    (tmp_path / "m.keras").symlink_to("..data/m.keras")
    before = repo.scan()["m"].aspired[0].fingerprint

    (tmp_path / "..data_tmp").symlink_to("..2024_02")
    os.replace(tmp_path / "..data_tmp", tmp_path / "..data")
    after = repo.scan()["m"]

    assert after.pending == {1: SETTLING} or after.aspired[0].fingerprint != before


def test_plugins_fingerprint_follows_the_plugin_files(
    tmp_path: Path, repo: ModelRepository, clocks: FakeClocks
) -> None:
    write(tmp_path / "plugins" / "a.py", "A = 1\n")
    repo.scan()
    first = repo.plugins_fingerprint()
    assert first is not None

    write(tmp_path / "plugins" / "a.py", "A = 22\n", age_s=0)
    repo.scan()
    assert repo.plugins_fingerprint() is None  # still settling
    clocks.advance(1.0)
    repo.scan()
    assert repo.plugins_fingerprint() not in (None, first)


def test_missing_models_folder_gives_no_models(tmp_path: Path, clocks: FakeClocks) -> None:
    repo = ModelRepository(tmp_path / "nope", settle_s=1.0, clock=lambda: clocks.now)
    assert repo.scan() == {}


def test_half_plus_two_2_versions_serves_124_by_default(tmp_path: Path, corpus: Path, repo: ModelRepository) -> None:
    (tmp_path / "half_plus_two").symlink_to(corpus / "half_plus_two_2_versions")

    source = repo.scan()["half_plus_two"]

    assert [v.id.version for v in source.aspired] == [124]
    assert source.present == {123, 124}


def test_dangling_links_are_not_files_and_never_hold_a_version_back(tmp_path: Path, repo: ModelRepository) -> None:
    write(tmp_path / "m" / "1" / "model.keras")
    (tmp_path / "m" / "1" / "extra.bin").symlink_to(tmp_path / "gone")
    (tmp_path / "n.keras").symlink_to(tmp_path / "gone.keras")

    models = repo.scan()

    assert list(models) == ["m"]
    assert [v.id.version for v in models["m"].aspired] == [1]


# --- single-model mode (MODEL_NAME, KServe's --model_name with /mnt/models) -----------------------


def single(folder: Path, clocks: FakeClocks, name: str = "flowers") -> ModelRepository:
    return ModelRepository(
        folder, settle_s=1.0, model_name=name, clock=lambda: clocks.now, wall_clock=lambda: clocks.wall
    )


def test_single_model_file_at_the_root_is_version_1_of_the_named_model(tmp_path: Path, clocks: FakeClocks) -> None:
    write(tmp_path / "model.keras")  # KServe downloads a file storageUri into /mnt/models/<file name>
    write(tmp_path / "config.yaml", "batching:\n  max_batch_size: 4\n")
    write(tmp_path / "labels.txt", "daisy\nrose\n")
    write(tmp_path / "plugins" / "layers.py", "X = 1\n")

    models = single(tmp_path, clocks).scan()

    assert list(models) == ["flowers"]
    (version,) = models["flowers"].aspired
    assert version.id == ServableId("flowers", 1)
    assert version.path == tmp_path
    assert version.config.batching.max_batch_size == 4
    assert version.labels == ("daisy", "rose")


def test_single_model_saved_model_at_the_root_is_version_1(tmp_path: Path, clocks: FakeClocks) -> None:
    saved_model(tmp_path)
    (version,) = single(tmp_path, clocks).scan()["flowers"].aspired
    assert (version.id, version.path) == (ServableId("flowers", 1), tmp_path)


def test_single_model_numbered_folders_are_its_versions(tmp_path: Path, clocks: FakeClocks) -> None:
    saved_model(tmp_path / "1")
    saved_model(tmp_path / "00000002")
    write(tmp_path / "plugins" / "layers.py", "X = 1\n")

    models = single(tmp_path, clocks).scan()

    assert list(models) == ["flowers"]  # never a model called `1`, nor `plugins`
    assert [v.id for v in models["flowers"].aspired] == [ServableId("flowers", 2)]
    assert models["flowers"].present == {1, 2}


def test_single_model_plugins_are_not_part_of_the_version(tmp_path: Path, clocks: FakeClocks) -> None:
    write(tmp_path / "model.h5")
    repository = single(tmp_path, clocks)
    before = repository.scan()["flowers"].aspired[0].fingerprint
    write(tmp_path / "plugins" / "layers.py", "X = 2\n")
    repository.scan()
    clocks.advance(2.0)
    after = repository.scan()
    assert after["flowers"].aspired[0].fingerprint == before  # a plugin change rebuilds the registry instead
    assert repository.plugins_fingerprint() is not None


def test_single_model_folder_with_only_plugins_has_no_model_yet(tmp_path: Path, clocks: FakeClocks) -> None:
    write(tmp_path / "plugins" / "layers.py", "X = 1\n")
    assert single(tmp_path, clocks).scan() == {}
    assert single(tmp_path / "missing", clocks).scan() == {}


def test_single_model_name_must_be_a_valid_model_name(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="MODEL_NAME '../x' is not a valid model name"):
        ModelRepository(tmp_path, settle_s=1.0, model_name="../x")


def test_gate_inputs_resolve_against_the_folder_of_the_config_that_names_them(
    tmp_path: Path, repo: ModelRepository
) -> None:
    write(tmp_path / "digits.keras")
    write(tmp_path / "digits.yaml", "gate:\n  inputs: .digits-samples\n")
    write(tmp_path / ".digits-samples" / "a.png", b"png")
    write(tmp_path / "m" / "config.yaml", "version_policy: all\ngate:\n  inputs: samples\n")
    write(tmp_path / "m" / "samples" / "a.png", b"png")
    write(tmp_path / "m" / "1" / "model.h5")
    write(tmp_path / "m" / "2" / "model.h5")
    write(tmp_path / "m" / "2" / "config.yaml", "gate:\n  inputs: mine\n")
    write(tmp_path / "n" / "model.h5")
    write(tmp_path / "n" / "config.yaml", f"gate:\n  inputs: {tmp_path / 'anywhere'}\n")
    write(tmp_path / "plain.keras")

    models = repo.scan()

    # A hidden folder beside a single-file model, or a non-numeric one beside versions, is no model.
    assert sorted(models) == ["digits", "m", "n", "plain"]
    assert models["digits"].aspired[0].gate_inputs == tmp_path / ".digits-samples"
    assert models["digits"].aspired[0].config.gate.inputs == ".digits-samples"
    one, two = models["m"].aspired
    assert one.gate_inputs == tmp_path / "m" / "samples"
    assert two.gate_inputs == tmp_path / "m" / "2" / "mine"  # the version config's gate section wins
    assert models["n"].aspired[0].gate_inputs == tmp_path / "anywhere"
    assert models["plain"].aspired[0].gate_inputs is None
