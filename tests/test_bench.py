"""The benchmark harness: the baseline's data loading and the comparison's verdicts."""

from __future__ import annotations

import io
import pathlib
import sys
import tarfile

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "bench"))

import compare  # noqa: E402
import keras_baseline  # noqa: E402


def jpeg_bytes(value: int, size: int = 8) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), (value, value, value)).save(buffer, format="JPEG")
    return buffer.getvalue()


def image_tar(path: pathlib.Path, files: dict[str, bytes]) -> pathlib.Path:
    with tarfile.open(path, "w:gz") as archive:
        for name, data in files.items():
            member = tarfile.TarInfo(name)
            member.size = len(data)
            archive.addfile(member, io.BytesIO(data))
    return path


def test_baseline_loads_archive_into_labelled_arrays(tmp_path):
    files = {
        f"cifar/{split}/{name}/{index}.jpg": jpeg_bytes(200 if name == "cat" else 20)
        for split in ("train", "test")
        for name in ("dog", "cat")
        for index in range(3)
    }
    archive = image_tar(tmp_path / "images.tar.gz", files)

    arrays = keras_baseline.load_arrays(str(archive), image_size=4, max_per_class=2)

    x_train, y_train, class_names = arrays["train"]
    assert class_names == ["cat", "dog"]
    assert x_train.shape == (4, 4, 4, 3)
    assert x_train.dtype == np.uint8
    assert list(y_train) == [0, 0, 1, 1]
    # Labels follow the sorted class names: cat images are the bright ones.
    assert x_train[y_train == 0].min() > 150
    assert x_train[y_train == 1].max() < 60
    assert arrays["test"][0].shape == (4, 4, 4, 3)


def test_baseline_rejects_differing_class_folders(tmp_path):
    files = {"train/cat/0.jpg": jpeg_bytes(1), "test/dog/0.jpg": jpeg_bytes(1)}
    archive = image_tar(tmp_path / "images.tar.gz", files)

    with pytest.raises(SystemExit, match=r"found train: \['cat'\], test: \['dog'\]"):
        keras_baseline.load_arrays(str(archive), image_size=4, max_per_class=None)


def test_baseline_hold_out_takes_fraction_of_each_class():
    x = np.arange(40).reshape(40, 1)
    y = np.repeat([0, 1], [30, 10])

    x_train, y_train, x_val, y_val = keras_baseline.hold_out(x, y, fraction=0.1, seed=3)

    assert sorted(np.bincount(y_val)) == [1, 3]
    assert len(y_train) == 36
    assert set(x_train[:, 0]).isdisjoint(x_val[:, 0])
    np.testing.assert_array_equal(keras_baseline.hold_out(x, y, 0.1, seed=3)[2], x_val)


@pytest.mark.parametrize(
    ("key", "value", "met"),
    [
        ("wall_ratio", 0.95, True),
        ("wall_ratio", 1.05, False),
        ("training_speed_ratio", 1.31, True),
        ("training_speed_ratio", 1.29, False),
        ("pipeline_test_accuracy", None, None),
    ],
)
def test_comparison_verdict_follows_bound_direction(key, value, met):
    values = dict.fromkeys((target[0] for target in compare.TARGETS), 1.0)
    values[key] = value

    [row] = [row for row in compare.verdicts(values) if row["key"] == key]

    assert row["met"] is met
