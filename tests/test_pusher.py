"""components/pusher.py: the Pusher executor called directly on a real exported model."""

from __future__ import annotations

import json
import logging
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import uuid

import pytest
from tfx import v1 as tfx
from tfx.dsl.io import fileio
from tfx.types import standard_artifacts
from tfx.utils import proto_utils

from components import pusher, staging

TESTS_DIR = pathlib.Path(__file__).resolve().parent
REPO_ROOT = TESTS_DIR.parent


def push(
    model_uri: str, base_directory: str, pushed_uri: str, blessed: bool = True
) -> standard_artifacts.PushedModel:
    """Run the executor as TFX would for one Model and ModelBlessing; return the PushedModel."""
    model = standard_artifacts.Model()
    model.uri = model_uri
    blessing = standard_artifacts.ModelBlessing()
    blessing.uri = pushed_uri + "-blessing"
    blessing.set_int_custom_property("blessed", 1 if blessed else 0)
    pushed_model = standard_artifacts.PushedModel()
    pushed_model.uri = pushed_uri
    destination = tfx.proto.PushDestination(
        filesystem=tfx.proto.PushDestination.Filesystem(base_directory=base_directory)
    )
    pusher.Executor().Do(
        {"model": [model], "model_blessing": [blessing]},
        {"pushed_model": [pushed_model]},
        {"push_destination": proto_utils.proto_to_json(destination), "custom_config": "null"},
    )
    return pushed_model


def relative_files(folder: pathlib.Path) -> set[str]:
    return {str(path.relative_to(folder)) for path in folder.rglob("*") if path.is_file()}


def assert_complete_copy(version: pathlib.Path, export_dir: str) -> None:
    """Check that `version` contains every file of the export, byte for byte, plus the marker."""
    source = pathlib.Path(export_dir)
    assert relative_files(version) == relative_files(source) | {pusher.SOURCE_MODEL_FILE}
    for name in relative_files(source):
        assert (version / name).read_bytes() == (source / name).read_bytes(), name


@pytest.fixture()
def model_uri(export_dir) -> str:
    """URI of a Model artifact whose Format-Serving/ folder is the exported model."""
    return os.path.dirname(export_dir)


def test_push_writes_one_complete_version(model_uri, export_dir, tmp_path):
    base = tmp_path / "serving" / "cifar10"

    pushed_model = push(model_uri, str(base), str(tmp_path / "pushed"))

    [version] = list(base.iterdir())
    assert version.name.isdigit()
    assert_complete_copy(version, export_dir)
    marker = json.loads((version / pusher.SOURCE_MODEL_FILE).read_text())
    assert marker["model_uri"] == model_uri
    assert pushed_model.get_int_custom_property("pushed") == 1
    assert pushed_model.get_string_custom_property("pushed_destination") == str(version)
    assert pushed_model.get_string_custom_property("pushed_version") == version.name
    assert (tmp_path / "pushed" / "saved_model.pb").is_file()


def test_failure_mid_copy_leaves_no_version(model_uri, tmp_path, monkeypatch):
    base = tmp_path / "serving" / "cifar10"
    copy = fileio.copy
    copied = []

    def copy_then_fail(source, destination, overwrite=False):
        if len(copied) == 2:
            raise OSError("simulated disk failure")
        copied.append(source)
        copy(source, destination, overwrite=overwrite)

    monkeypatch.setattr(fileio, "copy", copy_then_fail)

    with pytest.raises(OSError, match="simulated disk failure"):
        push(model_uri, str(base), str(tmp_path / "pushed"))

    assert len(copied) == 2
    assert os.listdir(base) == []


# Runs in a child process, which SIGKILLs itself in the middle of the copy.
KILLED_PUSH = """
import os, signal, sys
from tfx.dsl.io import fileio
sys.path.insert(0, sys.argv[4])
import test_pusher

copy = fileio.copy
copied = []

def copy_then_die(source, destination, overwrite=False):
    if len(copied) == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    copied.append(source)
    copy(source, destination, overwrite=overwrite)

fileio.copy = copy_then_die
test_pusher.push(sys.argv[1], sys.argv[2], sys.argv[3])
"""


def test_killed_push_leaves_no_version(model_uri, export_dir, tmp_path):
    base = tmp_path / "serving" / "cifar10"

    child = subprocess.run(
        [sys.executable, "-c", KILLED_PUSH, model_uri, str(base), str(tmp_path / "a"), TESTS_DIR],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )

    assert child.returncode == -signal.SIGKILL, child.stderr
    [leftover] = list(base.iterdir())
    assert leftover.name.startswith(".")
    assert ".tmp-" in leftover.name
    assert (leftover / "saved_model.pb").is_file()  # The copy had started.

    push(model_uri, str(base), str(tmp_path / "b"))

    [version] = list(base.iterdir())
    assert version.name.isdigit()
    assert_complete_copy(version, export_dir)


def test_temporary_of_live_or_other_host_kept(tmp_path):
    base = tmp_path / "cifar10"
    own = base / f".1.tmp-{staging.HOST}-{os.getpid()}-0123abcd"
    # Another host's process cannot be checked from here.
    other_host = base / ".2.tmp-other-host.example-1-0123abcd"
    own.mkdir(parents=True)
    other_host.mkdir()

    pusher.remove_stale_temporaries(str(base))

    assert own.is_dir()
    assert other_host.is_dir()


def test_temporary_of_dead_process_removed(tmp_path):
    # The PID of a child that has exited and been waited for.
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    base = tmp_path / "cifar10"
    dead = base / f".1.tmp-{staging.HOST}-{child.pid}-0123abcd"
    (dead / "variables").mkdir(parents=True)

    pusher.remove_stale_temporaries(str(base))

    assert not dead.exists()


def test_same_model_pushed_once(model_uri, tmp_path, caplog):
    base = tmp_path / "serving" / "cifar10"
    first = push(model_uri, str(base), str(tmp_path / "first"))
    [version] = list(base.iterdir())

    with caplog.at_level(logging.INFO, logger=pusher.__name__):
        second = push(model_uri, str(base), str(tmp_path / "second"))

    assert first.get_int_custom_property("pushed") == 1
    assert second.get_int_custom_property("pushed") == 0
    assert not second.has_custom_property("pushed_destination")
    assert not second.has_custom_property("pushed_version")
    assert f"already pushed as version {version.name}" in caplog.text
    assert list(base.iterdir()) == [version]


def test_same_uri_with_other_files_pushed_again(export_dir, tmp_path):
    # A deleted metadata store makes execution ids, and so model URIs, repeat.
    model_uri = tmp_path / "Trainer" / "model" / "7"
    shutil.copytree(export_dir, model_uri / "Format-Serving")
    base = tmp_path / "serving" / "cifar10"
    push(str(model_uri), str(base), str(tmp_path / "first"))
    index = model_uri / "Format-Serving" / "variables" / "variables.index"
    index.write_bytes(index.read_bytes() + b"\0")

    second = push(str(model_uri), str(base), str(tmp_path / "second"))

    assert second.get_int_custom_property("pushed") == 1
    assert len(list(base.iterdir())) == 2


def test_unblessed_model_not_pushed(model_uri, tmp_path):
    base = tmp_path / "serving" / "cifar10"

    pushed_model = push(model_uri, str(base), str(tmp_path / "pushed"), blessed=False)

    assert pushed_model.get_int_custom_property("pushed") == 0
    assert not base.exists()


def test_versions_increase_past_existing_ones(tmp_path):
    (tmp_path / "9999999999").mkdir()
    (tmp_path / ".10000000005.tmp-host-1-0123abcd").mkdir()

    assert pusher.next_version(str(tmp_path)) == "10000000000"


def test_remote_destination_copies_in_place_and_once(tmp_path):
    # TensorFlow's in-memory file system (ram://) takes the place of gs:// or
    # s3://. It cannot delete files, so a few small files replace the model.
    model_uri = tmp_path / "model"
    (model_uri / "Format-Serving" / "variables").mkdir(parents=True)
    (model_uri / "Format-Serving" / "saved_model.pb").write_bytes(b"graph")
    (model_uri / "Format-Serving" / "variables" / "variables.index").write_bytes(b"weights")
    base = f"ram://serving-{uuid.uuid4().hex}/cifar10"

    first = push(str(model_uri), base, str(tmp_path / "first"))
    second = push(str(model_uri), base, str(tmp_path / "second"))

    [version] = fileio.listdir(base)
    version_path = f"{base}/{version}"
    assert first.get_string_custom_property("pushed_destination") == version_path
    with fileio.open(f"{version_path}/saved_model.pb", "rb") as handle:
        assert handle.read() == b"graph"
    assert fileio.exists(f"{version_path}/variables/variables.index")
    assert fileio.exists(f"{version_path}/{pusher.SOURCE_MODEL_FILE}")
    assert second.get_int_custom_property("pushed") == 0
