"""Model-file isolation (issue 13): symlink loops, FIFOs, zip bombs, the probe child's environment."""

from __future__ import annotations

import os
import threading
import zipfile
from pathlib import Path

import pytest

from service import formats, sandbox
from service.errors import UnsafeModelRefused
from service.formats import check_model_files, detect_format, walk_folder
from service.repository import ModelRepository


def _old(path: Path) -> Path:
    os.utime(path, (1_000_000, 1_000_000), follow_symlinks=False)
    return path


def saved_model(folder: Path) -> Path:
    (folder / "variables").mkdir(parents=True)
    for name in ("saved_model.pb", "variables/variables.index", "variables/variables.data-00000-of-00001"):
        (folder / name).write_bytes(b"x")
        _old(folder / name)
    return folder


def scan(models: Path) -> dict:
    return ModelRepository(models, settle_s=1.0).scan()


def _in_thread(fn, timeout_s: float = 10.0):
    """Run `fn` in a thread and fail (instead of hanging the suite) when it blocks, e.g. on a FIFO."""
    box: dict = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as err:  # noqa: BLE001 - re-raised below
            box["error"] = err

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout_s)
    assert not thread.is_alive(), "blocked (opened a FIFO?)"
    if "error" in box:
        raise box["error"]
    return box["value"]


# --- symlink loops -----------------------------------------------------------------------------
def test_symlink_loop_inside_a_model_folder_is_walked_once(tmp_path: Path) -> None:
    model = saved_model(tmp_path / "m")
    (model / "variables" / "back").symlink_to(model)  # a loop to the version folder
    (model / "up").symlink_to(tmp_path)  # a loop to the models folder, an ancestor
    (model / "root").symlink_to("/")  # an ancestor of everything
    walk = _in_thread(lambda: walk_folder(model))
    assert sorted(p.name for p in walk.files) == [
        "saved_model.pb",
        "variables.data-00000-of-00001",
        "variables.index",
    ]
    assert sorted(p.name for p in walk.revisits) == ["back", "root", "up"]
    models = _in_thread(lambda: scan(tmp_path))
    assert [v.id.version for v in models["m"].aspired] == [1]
    assert not models["m"].aspired[0].error


def test_top_level_link_to_the_models_folder_or_a_parent_is_skipped(tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    saved_model(models / "m")
    (models / "self").symlink_to(models)
    (models / "parent").symlink_to(tmp_path)
    (models / "eloop").symlink_to(models / "eloop")  # a link to itself: ELOOP
    assert sorted(_in_thread(lambda: scan(models))) == ["m"]


def test_two_links_pointing_at_each_other_terminate(tmp_path: Path) -> None:
    a, b = tmp_path / "m" / "a", tmp_path / "m" / "b"
    a.mkdir(parents=True)
    b.mkdir()
    (tmp_path / "m" / "model.keras").write_bytes(b"x")
    (a / "to_b").symlink_to(b)
    (b / "to_a").symlink_to(a)
    walk = _in_thread(lambda: walk_folder(tmp_path / "m"))
    assert [p.name for p in walk.files] == ["model.keras"]
    assert len(walk.revisits) == 2


def test_links_leading_out_of_the_models_folder_are_still_followed(tmp_path: Path) -> None:
    corpus = saved_model(tmp_path / "corpus" / "sm")
    (tmp_path / "corpus" / "file.keras").write_bytes(b"x")
    models = tmp_path / "models"
    (models / "folder").mkdir(parents=True)
    (models / "folder" / "1").symlink_to(corpus)  # what tests/e2e/test_hot_swap.py does
    (models / "single.keras").symlink_to(tmp_path / "corpus" / "file.keras")
    _old(tmp_path / "corpus" / "file.keras")
    found = scan(models)
    assert [v.id.version for v in found["folder"].aspired] == [1]
    assert [v.id.version for v in found["single"].aspired] == [1]


# --- FIFOs and other non-regular files -----------------------------------------------------------
def test_fifo_in_a_saved_model_fails_the_version_before_any_read(tmp_path: Path) -> None:
    model = saved_model(tmp_path / "m")
    (model / "saved_model.pb").unlink()
    os.mkfifo(model / "saved_model.pb")
    found = _in_thread(lambda: scan(tmp_path))
    (version,) = found["m"].aspired
    assert version.error.startswith("refused: m/saved_model.pb is a FIFO (named pipe)")
    with pytest.raises(UnsafeModelRefused, match="FIFO"):
        _in_thread(lambda: detect_format(model))
    with pytest.raises(UnsafeModelRefused, match="FIFO"):
        _in_thread(lambda: sandbox.lambda_layers(model))


def test_fifo_deep_in_variables_is_refused(tmp_path: Path) -> None:
    model = saved_model(tmp_path / "m" / "3")
    os.mkfifo(model / "variables" / "pipe")
    (version,) = _in_thread(lambda: scan(tmp_path))["m"].aspired
    assert "3/variables/pipe is a FIFO" in version.error


def test_fifo_as_a_model_file_is_a_failed_version(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe.keras")
    _old(tmp_path / "pipe.keras")
    (version,) = _in_thread(lambda: scan(tmp_path))["pipe"].aspired
    assert version.error.startswith("refused: pipe.keras is a FIFO (named pipe)")
    with pytest.raises(UnsafeModelRefused, match="pipe.keras is a FIFO"):
        _in_thread(lambda: detect_format(tmp_path / "pipe.keras"))


def test_symlink_to_a_fifo_is_refused(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe")
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "model.keras").symlink_to(tmp_path / "pipe")
    with pytest.raises(UnsafeModelRefused, match="model.keras is a FIFO"):
        _in_thread(lambda: check_model_files(tmp_path / "m"))


def test_regular_folders_pass_the_check(tmp_path: Path) -> None:
    check_model_files(saved_model(tmp_path / "m"))


# --- zip bombs -----------------------------------------------------------------------------------
def _bomb(path: Path, size: int) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        archive.writestr("config.json", '{"class_name": "Sequential", "config": {}}')
        with archive.open("model.weights.h5", "w", force_zip64=True) as member:
            chunk = bytes(1024 * 1024)
            for _ in range(size // len(chunk)):
                member.write(chunk)
    return path


def test_zip_bomb_keras_is_refused_before_it_is_expanded(tmp_path: Path) -> None:
    bomb = _bomb(tmp_path / "bomb.keras", 512 * 1024 * 1024)
    assert bomb.stat().st_size < 1024 * 1024
    with pytest.raises(UnsafeModelRefused, match="bomb.keras would expand .* times.*a zip bomb"):
        detect_format(bomb)


def test_declared_size_over_the_total_limit_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(formats, "MAX_ZIP_UNCOMPRESSED_BYTES", 1024 * 1024)
    bomb = _bomb(tmp_path / "big.keras", 2 * 1024 * 1024)
    with pytest.raises(UnsafeModelRefused, match="declares .* GiB once expanded"):
        detect_format(bomb)
    with pytest.raises(UnsafeModelRefused):
        formats.check_zip(bomb)


def test_small_zero_filled_keras_passes_the_ratio_check(tmp_path: Path) -> None:
    small = _bomb(tmp_path / "zeros.keras", 64 * 1024 * 1024)  # 1000x, but under the 256 MiB floor
    assert detect_format(small).format is formats.ModelFormat.KERAS_ZIP


def test_too_many_members_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(formats, "MAX_ZIP_MEMBERS", 3)
    path = tmp_path / "many.keras"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("config.json", "{}")
        for i in range(4):
            archive.writestr(f"x{i}", "")
    with pytest.raises(UnsafeModelRefused, match="5 members"):
        detect_format(path)


# --- the probe child's environment --------------------------------------------------------------
def test_probe_child_gets_a_minimal_environment() -> None:
    parent = {
        "PATH": "/usr/bin",
        "PYTHONPATH": "/extra",
        "HOME": "/home/u",
        "TMPDIR": "/tmp/x",
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "TF_CPP_MIN_LOG_LEVEL": "3",
        "TF_NUM_INTEROP_THREADS": "2",
        "KERAS_BACKEND": "tensorflow",
        "CUDA_VISIBLE_DEVICES": "0,1",
        "AUTH_TOKEN": "s3cret",
        "TF_HUB_TOKEN": "s3cret",
        "AWS_SECRET_ACCESS_KEY": "s3cret",
        "DATABASE_URL": "postgres://u:p@h/db",
        "PROMETHEUS_MULTIPROC_DIR": "/tmp/prom",
        "MODELS_DIR": "/models",
    }
    env = sandbox.child_environment(parent)
    assert env == {
        "PATH": "/usr/bin",
        "PYTHONPATH": os.pathsep.join([str(sandbox.PACKAGE_ROOT), "/extra"]),
        "HOME": "/home/u",
        "TMPDIR": "/tmp/x",
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "TF_CPP_MIN_LOG_LEVEL": "3",
        "TF_NUM_INTEROP_THREADS": "2",
        "KERAS_BACKEND": "tensorflow",
        "CUDA_VISIBLE_DEVICES": "",
    }
    assert "s3cret" not in repr(env)


def test_probe_request_file_holds_no_token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The child's settings come from the request file: the token must not travel there either."""
    from service.settings import Settings

    seen: dict = {}

    class FakePopen:
        def __init__(self, args, **kwargs) -> None:
            seen["env"] = kwargs["env"]
            seen["request"] = Path(args[3]).read_text(encoding="utf-8")
            Path(args[4]).write_text('{"ok": true}', encoding="utf-8")
            self.returncode = 0

        def wait(self, timeout=None) -> int:
            return 0

        def poll(self) -> int:
            return 0

    monkeypatch.setattr(sandbox.subprocess, "Popen", FakePopen)
    monkeypatch.setenv("AUTH_TOKEN", "s3cret-token")
    settings = Settings(models_dir=tmp_path, auth_token="s3cret-token")
    sandbox.probe(tmp_path / "m.keras", None, settings)
    assert "s3cret-token" not in seen["request"]
    assert "AUTH_TOKEN" not in seen["env"]
