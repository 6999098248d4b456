"""Pusher executor: atomic version folders, and no second push of the same model.

TF Serving polls `<serving base>/<model name>/` and loads the numeric
subfolders it finds. It skips names that do not parse as integers
(FileSystemStoragePathSource in tensorflow/serving). TFX 1.16's own Pusher
copies straight into `<version>/`, so a process killed mid-copy leaves a
numeric folder that contains part of a model. This executor differs in two ways:

- On a local file system it copies into a hidden `.<version>.tmp-<host>-<pid>-<token>`
  folder beside the versions, flushes it to disk and renames it to `<version>`.
  A rename within one file system is atomic, so a version folder is either
  absent or complete, even if the process dies. Temporary folders left by dead
  processes of this host are removed before the next push.
- It writes `assets.extra/source_model.json` into each version, naming the
  Model artifact's URI and a SHA-256 digest of its files. When a complete version
  already contains the same model, the push is skipped and PushedModel gets
  pushed=0. A rerun of an unchanged pipeline re-blesses its cached model
  against itself, so without this check every rerun would add an identical
  version.

TFX's blessing check and its PushedModel custom properties (pushed,
pushed_destination, pushed_version) are kept as TFX sets them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from typing import Any

from tfx import types
from tfx import v1 as tfx
from tfx.components.pusher import executor as tfx_pusher_executor
from tfx.dsl.components.base import executor_spec
from tfx.dsl.io import fileio
from tfx.proto import pusher_pb2
from tfx.types import artifact_utils, standard_component_specs
from tfx.utils import io_utils, proto_utils

from components import staging

logger = logging.getLogger(__name__)

# Marker written into every pushed version. TF Serving reads only
# tf_serving_warmup_requests from assets.extra/, so the marker does not affect serving.
SOURCE_MODEL_FILE = os.path.join("assets.extra", "source_model.json")
SAVED_MODEL_FILE = "saved_model.pb"

# Temporary folders are named `.<version>.tmp-<host>-<pid>-<8 hex digits>`, as
# data preparation names its own, so that a later push can tell whether the
# process that wrote one still runs.


class Executor(tfx_pusher_executor.Executor):
    """TFX's Pusher executor with atomic local pushes and duplicate detection."""

    def Do(  # noqa: N802 - TFX's executor interface.
        self,
        input_dict: dict[str, list[types.Artifact]],
        output_dict: dict[str, list[types.Artifact]],
        exec_properties: dict[str, Any],
    ) -> None:
        self._log_startup(input_dict, output_dict, exec_properties)
        model_push = artifact_utils.get_single_instance(
            output_dict[standard_component_specs.PUSHED_MODEL_KEY]
        )
        if not self.CheckBlessing(input_dict):
            self._MarkNotPushed(model_push)
            return
        model_path = self.GetModelPath(input_dict)
        base_directory = filesystem_base_directory(exec_properties)
        source = {"model_uri": source_model_uri(input_dict), "digest": model_digest(model_path)}

        pushed_version = find_pushed_version(base_directory, source)
        if pushed_version is not None:
            logger.info(
                "Model %s already pushed as version %s to %s; not pushing it again.",
                source["model_uri"],
                pushed_version,
                base_directory,
            )
            self._MarkNotPushed(model_push)
            return

        model_version = next_version(base_directory)
        serving_path = os.path.join(base_directory, model_version)
        if is_local_path(base_directory):
            push_atomically(model_path, base_directory, model_version, source)
        else:
            push_in_place(model_path, serving_path, source)
        logger.info("Model %s pushed as version %s to %s.", model_path, model_version, serving_path)

        # Like TFX: keep a copy in the PushedModel artifact for archiving.
        io_utils.copy_dir(model_path, model_push.uri)
        self._MarkPushed(model_push, pushed_destination=serving_path, pushed_version=model_version)


def filesystem_base_directory(exec_properties: dict[str, Any]) -> str:
    """Return the push destination's base folder.

    Raise NotImplementedError, as TFX 1.16 does, for other destinations and versionings.
    """
    push_destination = pusher_pb2.PushDestination()
    proto_utils.json_to_proto(
        exec_properties[standard_component_specs.PUSH_DESTINATION_KEY], push_destination
    )
    kind = push_destination.WhichOneof("destination")
    if kind != "filesystem":
        raise NotImplementedError(f"Invalid push destination {kind}")
    versioning = push_destination.filesystem.versioning
    if versioning not in (pusher_pb2.Versioning.AUTO, pusher_pb2.Versioning.UNIX_TIMESTAMP):
        raise NotImplementedError(f"Invalid Versioning {versioning}")
    return push_destination.filesystem.base_directory


def source_model_uri(input_dict: dict[str, list[types.Artifact]]) -> str:
    """Return the URI of the artifact that contains the model: Model, else InfraBlessing."""
    artifacts = input_dict.get(standard_component_specs.MODEL_KEY) or input_dict.get(
        standard_component_specs.INFRA_BLESSING_KEY
    )
    return artifact_utils.get_single_instance(artifacts).uri


def model_digest(model_path: str) -> str:
    """Return a SHA-256 hex digest of the model folder: each file's relative path and digest.

    Model artifact URIs repeat when a metadata store is deleted and execution
    ids start again, so the URI alone does not identify a model.
    """
    relative_paths = []
    for folder, _, file_names in fileio.walk(model_path):
        for name in file_names:
            relative_paths.append(os.path.relpath(os.path.join(folder, name), model_path))

    listing = hashlib.sha256()
    for relative_path in sorted(relative_paths):
        content = hashlib.sha256()
        with fileio.open(os.path.join(model_path, relative_path), "rb") as handle:
            while chunk := handle.read(1 << 20):
                content.update(chunk)
        listing.update(f"{relative_path}\0{content.hexdigest()}\n".encode())
    return listing.hexdigest()


def is_local_path(path: str) -> bool:
    return "://" not in path


def version_folders(base_directory: str) -> dict[int, str]:
    """Return {version: folder} for the numeric subfolders of the serving base."""
    if not fileio.isdir(base_directory):
        return {}
    versions = {}
    for name in fileio.listdir(base_directory):
        name = name.rstrip("/")  # Object stores may list folders with a slash.
        path = os.path.join(base_directory, name)
        if name.isdigit() and fileio.isdir(path):
            versions[int(name)] = path
    return versions


def find_pushed_version(base_directory: str, source: dict[str, str]) -> str | None:
    """Return the newest complete version whose marker names the same model, or None."""
    for version, path in sorted(version_folders(base_directory).items(), reverse=True):
        marker = os.path.join(path, SOURCE_MODEL_FILE)
        if not fileio.exists(os.path.join(path, SAVED_MODEL_FILE)) or not fileio.exists(marker):
            continue
        try:
            with fileio.open(marker, "r") as handle:
                pushed = json.loads(handle.read())
        except (OSError, ValueError) as error:
            logger.warning("Ignoring the unreadable push marker %s: %s", marker, error)
            continue
        if isinstance(pushed, dict) and all(pushed.get(key) == source[key] for key in source):
            return str(version)
    return None


def next_version(base_directory: str) -> str:
    """Return the current Unix time in seconds, or one more than the highest version.

    TF Serving's default policy serves the highest version, so a new push must
    get a higher number even when two pushes fall into the same second or the
    clock went back.
    """
    highest = max(version_folders(base_directory), default=-1)
    return str(max(int(time.time()), highest + 1))


def write_source_marker(model_folder: str, source: dict[str, str]) -> None:
    path = os.path.join(model_folder, SOURCE_MODEL_FILE)
    fileio.makedirs(os.path.dirname(path))
    with fileio.open(path, "w") as handle:
        handle.write(json.dumps(source, indent=2) + "\n")


def push_atomically(
    model_path: str, base_directory: str, version: str, source: dict[str, str]
) -> None:
    """Copy the model to a hidden folder in `base_directory`, then rename it to `version`."""
    os.makedirs(base_directory, exist_ok=True)
    remove_stale_temporaries(base_directory)
    temporary = os.path.join(
        base_directory,
        staging.temporary_name(version),
    )
    try:
        io_utils.copy_dir(model_path, temporary)
        write_source_marker(temporary, source)
        # Flush before the rename, so a crash of the machine cannot leave a
        # renamed folder with files that never reached the disk.
        sync_tree(temporary)
        os.rename(temporary, os.path.join(base_directory, version))
        sync_folder(base_directory)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise


def push_in_place(model_path: str, serving_path: str, source: dict[str, str]) -> None:
    """Copy the model straight into its version folder, saved_model.pb last, as TFX does.

    NOTE: not atomic. Object stores (gs://, s3://) have no folder rename, so a
    push killed midway leaves a version folder without saved_model.pb, which
    TF Serving fails to load and this executor does not count as pushed.
    """
    io_utils.copy_dir(model_path, serving_path, deny_regex_patterns=[r"saved_model\.pb"])
    write_source_marker(serving_path, source)
    io_utils.copy_file(
        os.path.join(model_path, SAVED_MODEL_FILE), os.path.join(serving_path, SAVED_MODEL_FILE)
    )


def remove_stale_temporaries(base_directory: str) -> None:
    """Remove temporary push folders whose process on this host no longer runs.

    Folders of other hosts (a serving folder shared over the network) stay,
    because their processes cannot be checked from here.
    """
    for name in os.listdir(base_directory):
        match = staging.abandoned_temporary(name)
        path = os.path.join(base_directory, name)
        # Only numeric labels are the Pusher's; other hidden folders are left alone.
        if match is None or not match["label"].isdigit():
            continue
        logger.warning(
            "Removing %s, left by a push that did not finish (process %s).", path, match["pid"]
        )
        shutil.rmtree(path, ignore_errors=True)


def sync_tree(folder: str) -> None:
    for path, _, file_names in os.walk(folder):
        for name in file_names:
            descriptor = os.open(os.path.join(path, name), os.O_RDONLY)
            try:
                os.fsync(descriptor)
            finally:
                os.close(descriptor)
        sync_folder(path)


def sync_folder(path: str) -> None:
    descriptor = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


class AtomicPusher(tfx.components.Pusher):
    """TFX's Pusher with the executor above; TFX's way to replace a component's executor."""

    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(Executor)
