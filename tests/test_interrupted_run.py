"""A run killed (SIGKILL) mid-way completes when the same command runs again."""

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


def kill_when(process: subprocess.Popen, ready, description: str) -> None:
    """SIGKILL the run and its children once `ready()` is true; fail if the run ends first."""
    deadline = time.monotonic() + TIMEOUT_SECONDS
    try:
        while time.monotonic() < deadline:
            if ready():
                return
            if process.poll() is not None:
                pytest.fail(
                    f"local_runner.py ended (status {process.returncode}) before {description}"
                )
            time.sleep(0.05)
        pytest.fail(f"No {description} after {TIMEOUT_SECONDS} s")
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def start_run(command: list[str], log_path: pathlib.Path) -> subprocess.Popen:
    with open(log_path, "w") as log:
        # A session of its own, so the kill reaches Beam's and TFX's children too.
        return subprocess.Popen(
            command, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )


def rerun(command: list[str]) -> str:
    """Run `command` to its end; return what it printed."""
    finished = subprocess.run(
        command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=TIMEOUT_SECONDS
    )
    printed = finished.stdout + finished.stderr
    assert finished.returncode == 0, printed[-3000:]
    return printed


def pushed_versions(output: pathlib.Path) -> list[str]:
    folder = output / "serving" / "cifar10"
    return sorted(path.name for path in folder.iterdir()) if folder.exists() else []


def test_killed_training_resumes_from_last_epoch_on_rerun(cifar_subset, tmp_path):
    output = tmp_path / "run"
    command = runner_command(cifar_subset, output)
    backups = output / "pipeline" / pipeline.TRAINER_BACKUPS_FOLDER

    # First run: killed once the Trainer has backed up its second epoch.
    process = start_run(command, tmp_path / "first.log")
    kill_when(
        process,
        lambda: any(
            int(path.name.split("-")[1]) >= 2 for path in backups.glob("*/fine_tune/epoch-*")
        ),
        "a backup of epoch 2",
    )
    assert process.returncode == -signal.SIGKILL
    assert pushed_versions(output) == [], "a killed run must not push a model"

    printed = rerun(command)

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

    # One version was pushed and the backups removed.
    assert [name.isdigit() for name in pushed_versions(output)] == [True]
    assert not any(backups.glob("*/*")), sorted(backups.rglob("*"))


@pytest.mark.parametrize(
    ("component", "cached", "rerun_components"),
    [
        ("Transform", ("ImportExampleGen", "StatisticsGen"), ("Transform", "Trainer")),
        ("Evaluator", ("ImportExampleGen", "Transform", "Trainer"), ("Evaluator",)),
    ],
)
def test_run_killed_in_component_reruns_unfinished_ones(
    cifar_subset, tmp_path, component, cached, rerun_components
):
    output = tmp_path / "run"
    command = runner_command(cifar_subset, output)
    component_outputs = output / "pipeline" / component

    process = start_run(command, tmp_path / "first.log")
    kill_when(process, component_outputs.exists, f"the {component}'s output folder")
    assert pushed_versions(output) == []

    printed = rerun(command)

    summary = run_summary.summarize_run(str(output / "metadata.sqlite"), cfg.PIPELINE_NAME)
    states = {run.node_id: run.state for run in summary.components}
    for node_id in cached:
        assert states[node_id] == "cached", states
    for node_id in rerun_components:
        assert states[node_id] == "complete", states
    assert "Resuming after epoch" not in printed
    assert [name.isdigit() for name in pushed_versions(output)] == [True]
