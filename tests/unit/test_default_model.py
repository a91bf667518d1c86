"""The default model's data, files and `--if-empty` rule (training itself runs in tests/e2e/test_first_run.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from service import default_model
from service.model_config import read_model_config
from tests.conftest import REPO


def test_upsample_gives_28x28_uint8_images_spanning_the_pixel_range() -> None:
    digits = np.zeros((2, 8, 8))
    digits[0, 2:6, 3:5] = 16
    images = default_model.upsample(digits)
    assert images.shape == (2, 28, 28) and images.dtype == np.uint8
    assert images[0].max() == 255 and images[1].max() == 0


def test_heldout_split_is_reproducible_stratified_and_disjoint_from_training() -> None:
    split = default_model.digits_split()
    again = default_model.digits_split()
    assert np.array_equal(split.heldout_images, again.heldout_images)
    assert len(split.heldout_labels) == 450 and len(split.train_labels) == 1347
    assert np.bincount(split.heldout_labels).min() >= 40  # stratified: every class well represented
    train = {image.tobytes() for image in split.train_images}
    assert sum(image.tobytes() in train for image in split.heldout_images) <= 2  # the data set has a few duplicates


def test_example_pngs_are_the_first_heldout_digit_of_each_class() -> None:
    images, labels = default_model.heldout_digits()
    for digit in range(10):
        first = images[int((labels == digit).nonzero()[0][0])]
        png = np.asarray(Image.open(REPO / "examples" / f"{digit}.png"))
        assert png.shape == (28, 28)
        assert np.array_equal(png, first), f"examples/{digit}.png is stale: run examples/make_examples.py"


@pytest.mark.parametrize(
    "entries, expected",
    [
        ([], False),
        (["plugins/digits.py", "digits.yaml", "digits.labels.txt", "labels.txt", "notes.txt"], False),
        ([".default-model-x/digits.keras", "digits.keras.tmp", "__pycache__/x.pyc", "resnet/"], False),
        (["digits.keras"], True),
        (["resnet.h5"], True),
        (["resnet/1/saved_model.pb"], True),
        (["net/net.json", "net/net.weights.h5"], True),
    ],
)
def test_has_model_counts_what_the_repository_serves(tmp_path: Path, entries: list[str], expected: bool) -> None:
    for entry in entries:
        path = tmp_path / entry
        if entry.endswith("/"):
            path.mkdir(parents=True)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("x")
    assert default_model.has_model(tmp_path) is expected


def test_deleting_the_model_file_alone_makes_the_folder_empty_again(tmp_path: Path) -> None:
    for name in ("digits.keras", "digits.yaml", "digits.labels.txt", "plugins/digits.py"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text("x")
    assert default_model.has_model(tmp_path)
    (tmp_path / "digits.keras").unlink()
    assert not default_model.has_model(tmp_path)
    assert not default_model.has_model(tmp_path / "missing")


def test_if_empty_leaves_a_folder_with_a_model_alone(tmp_path: Path) -> None:
    (tmp_path / "mine.keras").write_bytes(b"PK")
    assert default_model.main(["--if-empty", "--models-dir", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.keras"]


def test_unwritable_models_dir_fails_before_training(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")  # even root cannot create a folder below a file
    assert default_model.main(["--models-dir", str(blocker / "models")]) == 1


def test_epochs_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        default_model.main(["--models-dir", str(tmp_path), "--epochs", "0"])


def test_install_plugin_copies_the_repository_plugin_once(tmp_path: Path) -> None:
    path = default_model.install_plugin(tmp_path)
    assert path.read_bytes() == (REPO / "models" / "plugins" / "digits.py").read_bytes()
    path.write_text("# edited by the user\n")
    default_model.install_plugin(tmp_path)
    assert path.read_text() == "# edited by the user\n"


def test_written_config_matches_the_plugin_and_the_schema(tmp_path: Path) -> None:
    plugin = default_model.import_plugin(REPO / "models" / "plugins" / "digits.py")
    config = default_model.model_config()
    assert config.labels is None  # the labels go to digits.labels.txt
    assert default_model.LABELS == tuple(str(d) for d in range(10))
    assert config.preprocessing.size == plugin.IMAGE_SIZE == default_model.IMAGE_SIZE
    assert config.preprocessing.color_mode == "grayscale"
    assert config.preprocessing.scale == "raw" and plugin.SCALE == pytest.approx(1 / 255)
    path = tmp_path / "digits.yaml"
    default_model._write_atomically(path, b"labels: ['0']\n")
    assert read_model_config(path).labels == ("0",)
    assert [p.name for p in tmp_path.iterdir()] == ["digits.yaml"]
