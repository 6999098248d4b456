"""A run killed (SIGKILL) during training completes when the same command runs again."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest
from conftest import first_run_arguments

from pipeline import config as cfg
from pipeline import pipeline, run_summary

pytestmark = pytest.mark.slow

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
EPOCHS = 6
# Generous: a cold start imports TFX and runs every component before the Trainer.
TIMEOUT_SECONDS = 600


def runner_command(source: pathlib.Path, output: pathlib.Path) -> list[str]:
    arguments = first_run_arguments(source, output)
    arguments[arguments.index("--fine-tune-epochs") + 1] = str(EPOCHS)
    return [sys.executable, str(REPO_ROOT / "local_runner.py"), *arguments]


def wait_for_backup(process: subprocess.Popen, backups: pathlib.Path, epoch: int) -> None:
    """Return once an epoch backup of at least `epoch` exists; fail if the run ends first."""
    deadline = time.monotonic() + TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if any(
            int(path.name.split("-")[1]) >= epoch for path in backups.glob("*/fine_tune/epoch-*")
        ):
            return
        if process.poll() is not None:
            pytest.fail(f"local_runner.py ended (status {process.returncode}) before the kill")
        time.sleep(0.05)
    pytest.fail(f"No backup of epoch {epoch} in {backups} after {TIMEOUT_SECONDS} s")


def test_killed_training_resumes_from_last_epoch_on_rerun(cifar_subset, tmp_path):
    output = tmp_path / "run"
    command = runner_command(cifar_subset, output)
    backups = output / "pipeline" / pipeline.TRAINER_BACKUPS_FOLDER
    first_log = tmp_path / "first.log"

    # First run: killed with everything it started once epoch 2 is backed up.
    with open(first_log, "w") as log:
        process = subprocess.Popen(
            command, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            wait_for_backup(process, backups, epoch=2)
        finally:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert process.returncode == -signal.SIGKILL
    assert not (output / "serving" / "cifar10").exists() or not any(
        (output / "serving" / "cifar10").iterdir()
    ), "a killed run must not have pushed a model"

    # Second run: the same command completes.
    rerun = subprocess.run(
        command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=TIMEOUT_SECONDS
    )
    printed = rerun.stdout + rerun.stderr
    assert rerun.returncode == 0, printed[-3000:]

    # Training went on from a backup of epoch 2 or later instead of epoch 1.
    resumed = [line for line in printed.splitlines() if "Resuming after epoch" in line]
    assert len(resumed) == 1, printed[-3000:]
    resumed_epoch = int(resumed[0].split("Resuming after epoch ")[1].split()[0])
    assert 2 <= resumed_epoch < EPOCHS
    summary = run_summary.summarize_run(str(output / "metadata.sqlite"), cfg.PIPELINE_NAME)
    history = json.loads((pathlib.Path(summary.model_run_uri) / "history.json").read_text())
    assert len(history["fine_tune"]["val_loss"]) == EPOCHS
    assert len(history["fine_tune"]["images_per_second"]) == EPOCHS

    # Components finished before the kill were reused from TFX's cache.
    states = {component.node_id: component.state for component in summary.components}
    for node_id in ("ImportExampleGen", "StatisticsGen", "Transform"):
        assert states[node_id] == "cached", states
    assert states["Trainer"] == "complete"

    # The model was pushed and the backups removed.
    assert [path.name.isdigit() for path in (output / "serving" / "cifar10").iterdir()] == [True]
    assert not any(backups.glob("*/*")), sorted(backups.rglob("*"))
