"""local_runner.py flags: help text and the errors raised before any component runs."""

from __future__ import annotations

import os
import pathlib
import shutil
import socket
import subprocess
import sys

import pytest

import local_runner

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent


def run(arguments: list[str], capsys) -> tuple[int, str]:
    status = local_runner.main(arguments)
    captured = capsys.readouterr()
    return status, captured.out + captured.err


def test_help_explains_flags_with_units(capsys):
    with pytest.raises(SystemExit) as exit_info:
        local_runner.main(["--help"])
    text = capsys.readouterr().out

    assert exit_info.value.code == 0
    for flag in ("--source", "--base-weights", "--head-epochs", "--min-accuracy", "--output-dir"):
        assert flag in text
    assert "fraction in 0..1" in text
    assert "Side in pixels" in text


def test_unreachable_imagenet_mirror_fails_before_pipeline(tmp_path, capsys):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    status, output = run(
        [
            "--output-dir",
            str(tmp_path),
            "--source",
            str(tmp_path / "unused"),
            "--imagenet-weights-url",
            f"http://127.0.0.1:{port}/weights.h5",
        ],
        capsys,
    )

    assert status == 2
    assert f"127.0.0.1:{port}" in output
    assert "--base-weights none" in output
    assert not (tmp_path / "metadata.sqlite").exists()
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        (["--min-accuracy", "1.5"], "min_accuracy=1.5 is outside 0..1"),
        (["--image-size", "16"], "image_size=16 is below 32"),
        (["--base-weights", "imagenett"], "base_weights='imagenett'"),
        (["--model-name", ".."], "model_name='..' is not a plain folder name"),
    ],
)
def test_invalid_flag_exits_2_with_message(arguments, expected, tmp_path, capsys):
    # --base-weights none keeps the run away from Keras' download URL.
    status, output = run(
        ["--output-dir", str(tmp_path), "--source", str(tmp_path), "--base-weights", "none"]
        + arguments,
        capsys,
    )

    assert status == 2
    assert expected in output
    assert not (tmp_path / "metadata.sqlite").exists()


def test_output_dir_that_cannot_be_created_exits_2(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")

    arguments = ["--output-dir", str(blocker / "runs"), "--source", str(tmp_path)]
    status, output = run([*arguments, "--base-weights", "none"], capsys)

    assert status == 2
    assert str(blocker / "runs") in output


# setpriv (util-linux) options that remove CAP_DAC_OVERRIDE from the child process. Without it,
# root is refused writes by a folder's mode bits like any other user.
DROP_DAC_OVERRIDE = ["--inh-caps=-dac_override", "--bounding-set=-dac_override"]


def test_output_dir_not_writable_exits_2(tmp_path):
    output = tmp_path / "read-only"
    output.mkdir()
    output.chmod(0o555)
    command = [
        sys.executable,
        "local_runner.py",
        "--output-dir",
        str(output),
        "--source",
        str(tmp_path / "unused"),
        "--base-weights",
        "none",
    ]
    if os.geteuid() == 0:
        # Root's CAP_DAC_OVERRIDE ignores the mode, so the run drops that capability first.
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("runs as root, and setpriv is missing to drop CAP_DAC_OVERRIDE")
        probe = subprocess.run(
            [setpriv, *DROP_DAC_OVERRIDE, "true"], capture_output=True, text=True, check=False
        )
        if probe.returncode != 0:
            pytest.skip(f"runs as root, and setpriv cannot drop CAP_DAC_OVERRIDE: {probe.stderr}")
        command = [setpriv, *DROP_DAC_OVERRIDE, *command]

    result = subprocess.run(
        command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=False
    )

    assert result.returncode == 2, result.stderr
    assert f"The output folder {output} is not writable" in result.stderr
    assert "pass another --output-dir" in result.stderr
    assert os.listdir(output) == []


def test_bad_source_exits_2_naming_it(tmp_path, capsys):
    source = tmp_path / "not-an-archive.txt"
    source.write_text("hello")

    status, output = run(
        ["--output-dir", str(tmp_path / "out"), "--source", str(source), "--base-weights", "none"],
        capsys,
    )

    assert status == 2
    assert str(source) in output
    assert not (tmp_path / "out" / "metadata.sqlite").exists()


def test_serving_dir_that_is_a_file_exits_2(tmp_path, capsys):
    blocker = tmp_path / "serving-file"
    blocker.write_text("not a folder")

    status, output = run(
        [
            "--output-dir",
            str(tmp_path / "out"),
            "--source",
            str(tmp_path),
            "--base-weights",
            "none",
            "--serving-dir",
            str(blocker),
        ],
        capsys,
    )

    assert status == 2
    assert "--serving-dir" in output
    assert not (tmp_path / "out" / "data").exists()


def test_weights_file_of_other_model_fails_before_data(tmp_path, capsys):
    import keras

    weights = tmp_path / "dense.weights.h5"
    keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)]).save_weights(str(weights))

    status, output = run(
        [
            "--output-dir",
            str(tmp_path / "out"),
            "--source",
            str(tmp_path),
            "--base-weights",
            str(weights),
        ],
        capsys,
    )

    assert status == 2
    assert "does not fit ResNet50" in output
    assert len(output) < 2000
    assert not (tmp_path / "out" / "data").exists()


# Runs in a child process: takes the output folder's lock, then waits to be killed.
HOLD_LOCK = """
import sys, time
import local_runner
local_runner.lock_output_folder(sys.argv[1])
print("locked", flush=True)
time.sleep(600)
"""


def test_locked_output_dir_exits_2_until_holder_dies(tmp_path, capsys):
    output = tmp_path / "out"
    output.mkdir()
    arguments = ["--output-dir", str(output), "--source", str(tmp_path / "unused")]
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(output)],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline() == "locked\n"

        status, printed = run([*arguments, "--base-weights", "none"], capsys)

        assert status == 2
        assert f"PID {holder.pid}" in printed
        assert f"output folder {output}" in printed
        assert "--output-dir" in printed
        assert os.listdir(output) == [".lock"]
        assert (output / ".lock").read_text() == f"{holder.pid}\n"
    finally:
        holder.kill()
        holder.wait()

    # The kernel released the lock of the SIGKILLed holder, so this run takes
    # the lock and stops at its invalid flag instead.
    status, printed = run([*arguments, "--base-weights", "none", "--min-accuracy", "1.5"], capsys)

    assert status == 2
    assert "min_accuracy=1.5 is outside 0..1" in printed
    assert "Another run" not in printed
    assert (output / ".lock").read_text() == f"{os.getpid()}\n"


def test_lock_file_that_is_a_folder_exits_2(tmp_path, capsys):
    (tmp_path / ".lock").mkdir()

    status, output = run(
        ["--output-dir", str(tmp_path), "--source", str(tmp_path), "--base-weights", "none"],
        capsys,
    )

    assert status == 2
    assert f"Cannot open the lock file {tmp_path / '.lock'}" in output
    assert not (tmp_path / "serving").exists()
