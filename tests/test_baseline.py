"""pipeline/baseline.py and the runner's stop on a blessed model trained on other classes.

The tests read the ML Metadata store of the shared `first_run` fixture, whose
model was trained on the ten CIFAR-10 classes.
"""

from __future__ import annotations

import pathlib
import shutil

import numpy as np
import pytest
from conftest import LABEL_NAMES, REPO_ROOT, jpeg_bytes

import local_runner
from pipeline import baseline, run_summary
from pipeline import config as cfg

pytestmark = pytest.mark.slow

FLOWERS = ("daisy", "rose", "tulip")


def write_flower_source(folder: pathlib.Path) -> None:
    """Write train/<class>/ and test/<class>/ folders of random-pixel JPEGs for 3 classes."""
    rng = np.random.default_rng(0)
    for split, count in (("train", 10), ("test", 3)):
        for name in FLOWERS:
            class_folder = folder / split / name
            class_folder.mkdir(parents=True)
            for index in range(count):
                pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                (class_folder / f"{index}.jpg").write_bytes(jpeg_bytes(pixels))


def write_three_class_schema(folder: pathlib.Path) -> None:
    text = (REPO_ROOT / "schemas" / "schema.pbtxt").read_text()
    assert "max: 9" in text
    folder.mkdir()
    (folder / "schema.pbtxt").write_text(text.replace("max: 9", "max: 2"))


def execution_count(metadata_path: pathlib.Path) -> int:
    return len(run_summary.open_store(str(metadata_path)).get_executions())


def test_blessed_model_label_names_read_from_trainer(first_run):
    output, _ = first_run
    store = run_summary.open_store(str(output / "metadata.sqlite"))

    model = baseline.latest_blessed_model(store, cfg.PIPELINE_NAME)

    assert model is not None
    assert model.uri.startswith(str(output / "pipeline" / "Trainer" / "model"))
    assert baseline.trained_label_names(store, model) == LABEL_NAMES


def test_same_label_names_pass_check(first_run, tmp_path):
    output, _ = first_run

    baseline.check_baseline_label_names(
        str(output / "metadata.sqlite"), cfg.PIPELINE_NAME, LABEL_NAMES
    )
    baseline.check_baseline_label_names(
        str(tmp_path / "missing.sqlite"), cfg.PIPELINE_NAME, FLOWERS
    )


def test_other_classes_than_blessed_model_exit_2(first_run, tmp_path, capsys):
    first_output, _ = first_run
    # The check only reads ML Metadata, so a copy of the store is the whole
    # output folder it needs, and the shared run stays untouched.
    output = tmp_path / "out"
    output.mkdir()
    shutil.copy2(first_output / "metadata.sqlite", output / "metadata.sqlite")
    executions_before = execution_count(output / "metadata.sqlite")
    write_flower_source(tmp_path / "flowers")
    write_three_class_schema(tmp_path / "schema")

    status = local_runner.main(
        [
            "--source",
            str(tmp_path / "flowers"),
            "--output-dir",
            str(output),
            "--schema-dir",
            str(tmp_path / "schema"),
            "--base-weights",
            "none",
        ]
    )
    captured = capsys.readouterr()
    printed = captured.out + captured.err

    assert status == 2
    assert f"10 classes ({', '.join(LABEL_NAMES)})" in printed
    assert "3 classes (daisy, rose, tulip)" in printed
    assert "Pass another --output-dir" in printed
    assert not (output / "pipeline").exists()
    assert execution_count(output / "metadata.sqlite") == executions_before
