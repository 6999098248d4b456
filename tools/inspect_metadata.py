"""Inspect the pipeline's ML Metadata store: runs, artifacts and the lineage of a pushed model.

    python -m tools.inspect_metadata runs                  # every pipeline run
    python -m tools.inspect_metadata runs --latest         # executions of the newest run
    python -m tools.inspect_metadata artifacts --type Model
    python -m tools.inspect_metadata lineage               # the newest pushed model
    python -m tools.inspect_metadata lineage --json | jq .evaluation.accuracy

The store is runs/metadata.sqlite unless --metadata or --connection-config
selects another. A SQLite store is opened read-only. --connection-config reads
a text-format ml_metadata ConnectionConfig (SQLite or MySQL) or a
MetadataStoreClientConfig (gRPC metadata server). Errors exit with status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import sys
from collections.abc import Iterable, Sequence
from typing import Any

import ml_metadata as mlmd
from google.protobuf import json_format, text_format
from ml_metadata import errors as mlmd_errors
from ml_metadata.proto import metadata_store_pb2

from pipeline import config as cfg

# TensorFlow prints C++ start-up notes to stderr unless this is set before
# its first import, here and through TFMA in run_summary.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

from pipeline import run_summary  # noqa: E402

DEFAULT_METADATA = os.path.join("runs", "metadata.sqlite")

# Context types that TFX 1.16 registers for every pipeline, run and node.
PIPELINE_CONTEXT = "pipeline"
RUN_CONTEXT = "pipeline_run"
NODE_CONTEXT = "node"

_INPUT_EVENTS = (metadata_store_pb2.Event.INPUT, metadata_store_pb2.Event.DECLARED_INPUT)
_OUTPUT_EVENTS = (metadata_store_pb2.Event.OUTPUT, metadata_store_pb2.Event.DECLARED_OUTPUT)
_UNFINISHED_STATES = (metadata_store_pb2.Execution.NEW, metadata_store_pb2.Execution.RUNNING)
_FAILED_STATES = (metadata_store_pb2.Execution.FAILED, metadata_store_pb2.Execution.CANCELED)


class InspectError(Exception):
    """Error in a request, such as a missing store or an unknown run id.

    Its message names the value and the next step.
    """


# --- Connection -------------------------------------------------------------------------------


@dataclasses.dataclass
class Store:
    """An open metadata store and the name of its location for messages."""

    metadata: mlmd.MetadataStore
    location: str


def _parse_text(text: str, message) -> str | None:
    """Merge text format into `message`. Return the parse error, or None on success."""
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as error:
        return str(error)
    return None


def parse_connection_config(
    text: str, path: str
) -> metadata_store_pb2.ConnectionConfig | metadata_store_pb2.MetadataStoreClientConfig:
    """Parse `text` as a ConnectionConfig, or else as a MetadataStoreClientConfig."""
    connection = metadata_store_pb2.ConnectionConfig()
    connection_error = _parse_text(text, connection)
    if connection_error is None:
        if connection.WhichOneof("config") is None:
            raise InspectError(
                f"The connection config {path} sets no database. Add a sqlite {{ ... }}, "
                "mysql { ... } or postgresql { ... } block, or host and port of a metadata "
                "server."
            )
        return connection

    client = metadata_store_pb2.MetadataStoreClientConfig()
    client_error = _parse_text(text, client)
    if client_error is not None:
        raise InspectError(
            f"The connection config {path} is neither a text-format ConnectionConfig "
            f"({connection_error}) nor a MetadataStoreClientConfig ({client_error})."
        )
    if not client.host:
        raise InspectError(
            f"The MetadataStoreClientConfig in {path} sets no host. Add e.g. "
            "host: 'localhost' port: 8080."
        )
    return client


def connect(metadata_path: str, connection_config_path: str | None) -> Store:
    """Open the store named by --connection-config, or else the SQLite file --metadata."""
    if connection_config_path is None:
        return _open_sqlite(
            metadata_path,
            "Pass --metadata with the metadata.sqlite of a run's --output-dir, "
            "or --connection-config",
        )

    try:
        with open(connection_config_path, encoding="utf-8") as file:
            text = file.read()
    except OSError as error:
        raise InspectError(
            f"Cannot read the connection config {connection_config_path}: {error.strerror}."
        ) from None
    config = parse_connection_config(text, connection_config_path)

    if isinstance(config, metadata_store_pb2.MetadataStoreClientConfig):
        location = f"metadata server {config.host}:{config.port}"
    elif config.HasField("sqlite"):
        # Through open_store, so the file is opened read-only whatever
        # connection_mode the config sets.
        return _open_sqlite(
            config.sqlite.filename_uri, f"Check sqlite.filename_uri in {connection_config_path}"
        )
    elif config.HasField("mysql"):
        location = f"MySQL {config.mysql.host}:{config.mysql.port}/{config.mysql.database}"
    elif config.HasField("postgresql"):
        location = f"PostgreSQL {config.postgresql.host}:{config.postgresql.port}"
    else:
        location = f"{config.WhichOneof('config')} store of {connection_config_path}"
    # NOTE: ml_metadata has no read-only mode for MySQL, PostgreSQL or gRPC.
    # This tool only reads, but connecting to an empty MySQL or PostgreSQL
    # database creates MLMD's tables in it.
    try:
        return Store(mlmd.MetadataStore(config), location)
    except (RuntimeError, mlmd_errors.StatusError) as error:
        raise InspectError(f"Cannot connect to the {location}: {error}") from None


def _open_sqlite(path: str, hint: str) -> Store:
    try:
        return Store(run_summary.open_store(path), path)
    except FileNotFoundError:
        raise InspectError(f"No ML Metadata store at {path}. {hint}.") from None
    # ml_metadata raises RuntimeError when the file is not an SQLite database
    # or lacks MLMD's tables, which a read-only connection cannot create.
    except (RuntimeError, mlmd_errors.StatusError) as error:
        raise InspectError(f"{path} is not a readable ML Metadata store: {error}") from None


# --- Values, times and events ------------------------------------------------------------------


def value_to_python(value: metadata_store_pb2.Value) -> Any:
    """Convert an MLMD property value to int, float, str, bool, dict or None."""
    kind = value.WhichOneof("value")
    if kind == "struct_value":
        return json_format.MessageToDict(value.struct_value)
    if kind == "proto_value":
        return value.proto_value.type_url
    return getattr(value, kind) if kind else None


def properties_to_python(properties) -> dict[str, Any]:
    return {name: value_to_python(properties[name]) for name in sorted(properties)}


def custom_property(node, name: str) -> Any:
    """Return a custom property of an artifact or execution, or None when it is not set."""
    if name not in node.custom_properties:
        return None
    return value_to_python(node.custom_properties[name])


def time_text(milliseconds: int) -> str:
    """Return local time in ISO 8601 with its UTC offset, from milliseconds since the epoch."""
    moment = datetime.datetime.fromtimestamp(milliseconds / 1000).astimezone()
    return moment.isoformat(timespec="milliseconds")


def _state_name(enum, state: int) -> str:
    return enum.Name(state).lower()


def _event_key(event: metadata_store_pb2.Event) -> str:
    return next((step.key for step in event.path.steps if step.HasField("key")), "")


def _artifacts_of_events(
    store: Store, execution_id: int, event_types: Sequence[int]
) -> list[tuple[str, metadata_store_pb2.Artifact]]:
    """Return (event key, artifact) for each event of these types of the execution."""
    events = [
        event
        for event in store.metadata.get_events_by_execution_ids([execution_id])
        if event.type in event_types
    ]
    if not events:
        return []
    artifacts = {
        artifact.id: artifact
        for artifact in store.metadata.get_artifacts_by_id([event.artifact_id for event in events])
    }
    return [(_event_key(event), artifacts[event.artifact_id]) for event in events]


def _executions_of_events(
    store: Store, artifact_id: int, event_types: Sequence[int]
) -> list[metadata_store_pb2.Execution]:
    """Return the executions with an event of these types on the artifact, oldest first."""
    execution_ids = sorted(
        {
            event.execution_id
            for event in store.metadata.get_events_by_artifact_ids([artifact_id])
            if event.type in event_types
        }
    )
    return list(store.metadata.get_executions_by_id(execution_ids)) if execution_ids else []


def producing_execution(store: Store, artifact_id: int) -> metadata_store_pb2.Execution | None:
    """Return the execution that wrote the artifact.

    A cached execution in a later run also records an OUTPUT event on the
    artifact it reused, so the first execution that was not served from the
    cache is the one that wrote it.
    """
    producers = _executions_of_events(store, artifact_id, _OUTPUT_EVENTS)
    written = [
        execution
        for execution in producers
        if execution.last_known_state != metadata_store_pb2.Execution.CACHED
    ]
    return (written or producers or [None])[0]


# --- Runs and executions -----------------------------------------------------------------------


def _run_context(store: Store, run_id: str) -> metadata_store_pb2.Context:
    context = store.metadata.get_context_by_type_and_name(RUN_CONTEXT, run_id)
    if context is None:
        raise InspectError(
            f"No pipeline run {run_id!r} in {store.location}. `runs` lists the run ids."
        )
    return context


def _run_state(executions: Iterable[metadata_store_pb2.Execution]) -> str:
    """Return failed, running or complete for a run, from the states of its executions.

    A run whose process was killed keeps its last execution in state RUNNING,
    so it shows as running too.
    """
    states = {execution.last_known_state for execution in executions}
    if states & set(_FAILED_STATES):
        return "failed"
    if states & set(_UNFINISHED_STATES):
        return "running"
    return "complete"


def run_record(store: Store, context: metadata_store_pb2.Context) -> dict[str, Any]:
    """Describe one pipeline run: pipeline, state, start time and duration."""
    executions = store.metadata.get_executions_by_context(context.id)
    pipelines = [
        parent.name
        for parent in store.metadata.get_parent_contexts_by_context(context.id)
        if parent.type == PIPELINE_CONTEXT
    ]
    start = min(
        (execution.create_time_since_epoch for execution in executions),
        default=context.create_time_since_epoch,
    )
    end = max((execution.last_update_time_since_epoch for execution in executions), default=start)
    return {
        "run_id": context.name,
        "pipeline": pipelines[0] if pipelines else None,
        "state": _run_state(executions),
        "start_time": time_text(start),
        "duration_seconds": (end - start) / 1000,
        "executions": len(executions),
    }


def list_runs(store: Store) -> list[dict[str, Any]]:
    """Describe every pipeline run in the store, oldest first."""
    contexts = sorted(
        store.metadata.get_contexts_by_type(RUN_CONTEXT),
        key=lambda context: (context.create_time_since_epoch, context.id),
    )
    return [run_record(store, context) for context in contexts]


def execution_record(store: Store, execution: metadata_store_pb2.Execution) -> dict[str, Any]:
    """Describe one component execution: node id, run, state, start time and duration."""
    contexts = store.metadata.get_contexts_by_execution(execution.id)
    pipeline = next((item.name for item in contexts if item.type == PIPELINE_CONTEXT), "")
    node_names = [item.name for item in contexts if item.type == NODE_CONTEXT]
    # TFX names node contexts "<pipeline name>.<node id>".
    node_id = node_names[0].removeprefix(pipeline + ".") if node_names else execution.type
    run_ids = [item.name for item in contexts if item.type == RUN_CONTEXT]
    seconds = (execution.last_update_time_since_epoch - execution.create_time_since_epoch) / 1000
    return {
        "execution_id": execution.id,
        "node_id": node_id,
        "run_id": run_ids[0] if run_ids else None,
        "state": _state_name(metadata_store_pb2.Execution.State, execution.last_known_state),
        "cached": execution.last_known_state == metadata_store_pb2.Execution.CACHED,
        "start_time": time_text(execution.create_time_since_epoch),
        "duration_seconds": seconds,
    }


def describe_run(store: Store, run_id: str) -> dict[str, Any]:
    """Describe a run and each of its component executions, in the order they started."""
    context = _run_context(store, run_id)
    executions = sorted(
        store.metadata.get_executions_by_context(context.id), key=lambda item: item.id
    )
    return {
        "run": run_record(store, context),
        "executions": [execution_record(store, execution) for execution in executions],
    }


# --- Artifacts ---------------------------------------------------------------------------------


def artifact_record(artifact: metadata_store_pb2.Artifact) -> dict[str, Any]:
    return {
        "id": artifact.id,
        "type": artifact.type,
        "uri": artifact.uri,
        "state": _state_name(metadata_store_pb2.Artifact.State, artifact.state),
        "create_time": time_text(artifact.create_time_since_epoch),
        "properties": properties_to_python(artifact.properties),
        "custom_properties": properties_to_python(artifact.custom_properties),
    }


def list_artifacts(
    store: Store, type_name: str | None = None, run_id: str | None = None
) -> dict[str, list[dict[str, Any]]]:
    """Describe the artifacts grouped by type name, types in registration order.

    `run_id` keeps the artifacts that TFX attributed to that run: its outputs,
    and also what its executions read or reused from earlier runs.
    """
    types = sorted(store.metadata.get_artifact_types(), key=lambda item: item.id)
    type_names = [item.name for item in types]
    if type_name is not None and type_name not in type_names:
        raise InspectError(
            f"No artifact type {type_name!r} in {store.location}. Its types are "
            f"{', '.join(type_names) or 'none'}."
        )

    if run_id is not None:
        artifacts = store.metadata.get_artifacts_by_context(_run_context(store, run_id).id)
    elif type_name is not None:
        artifacts = store.metadata.get_artifacts_by_type(type_name)
    else:
        artifacts = store.metadata.get_artifacts()

    grouped: dict[str, list[dict[str, Any]]] = {}
    for name in type_names:
        if type_name is not None and name != type_name:
            continue
        of_type = sorted(
            (artifact for artifact in artifacts if artifact.type == name), key=lambda a: a.id
        )
        if of_type:
            grouped[name] = [artifact_record(artifact) for artifact in of_type]
    return grouped


# --- Lineage of a pushed model -----------------------------------------------------------------


def _is_pushed(artifact: metadata_store_pb2.Artifact) -> bool:
    return custom_property(artifact, "pushed") == 1


def find_pushed_model(store: Store, artifact_id: int | None) -> metadata_store_pb2.Artifact:
    """Return the PushedModel artifact `artifact_id`, or the newest one that was pushed."""
    if artifact_id is None:
        pushed = [
            artifact
            for artifact in store.metadata.get_artifacts_by_type("PushedModel")
            if _is_pushed(artifact)
        ]
        if not pushed:
            raise InspectError(
                f"No pushed model in {store.location}: no PushedModel artifact has pushed=1. "
                "`artifacts --type ModelBlessing` shows whether any model was blessed."
            )
        return max(pushed, key=lambda artifact: (artifact.create_time_since_epoch, artifact.id))

    found = store.metadata.get_artifacts_by_id([artifact_id])
    if not found:
        raise InspectError(
            f"No artifact with id {artifact_id} in {store.location}. "
            "`artifacts --type PushedModel` lists the pushed models."
        )
    artifact = found[0]
    if artifact.type != "PushedModel":
        raise InspectError(
            f"Artifact {artifact_id} is a {artifact.type}, not a PushedModel. "
            "`artifacts --type PushedModel` lists the pushed models."
        )
    if not _is_pushed(artifact):
        raise InspectError(
            f"PushedModel {artifact_id} was not pushed (pushed=0, its model was not blessed). "
            "`artifacts --type PushedModel` shows which ones have pushed=1."
        )
    return artifact


def _first_of_type(
    pairs: list[tuple[str, metadata_store_pb2.Artifact]], type_name: str, key: str | None = None
) -> metadata_store_pb2.Artifact | None:
    return next(
        (
            artifact
            for event_key, artifact in pairs
            if artifact.type == type_name and (key is None or event_key == key)
        ),
        None,
    )


def _record_or_none(artifact: metadata_store_pb2.Artifact | None) -> dict[str, Any] | None:
    return artifact_record(artifact) if artifact is not None else None


def _split_names(artifact: metadata_store_pb2.Artifact) -> list[str]:
    """Return the split names TFX stores as a JSON list in the `split_names` property."""
    if "split_names" not in artifact.properties:
        return []
    return json.loads(artifact.properties["split_names"].string_value)


def _splits_with_anomalies(artifact: metadata_store_pb2.Artifact) -> list[str] | None:
    """Return the splits ExampleValidator found anomalies in, or None when it did not record them.

    TFX 1.16's ExampleValidator sets the custom property `blessed` to
    {split: 1 without anomalies, 0 with anomalies}.
    """
    blessed = custom_property(artifact, "blessed")
    if not isinstance(blessed, dict):
        return None
    return sorted(split for split, value in blessed.items() if value != 1)


def _label_names(execution: metadata_store_pb2.Execution | None) -> list[str]:
    """Return the label names pipeline.py passes in the Trainer's custom_config, if any."""
    custom_config = custom_property(execution, "custom_config") if execution else None
    if not custom_config:
        return []
    return list(json.loads(custom_config).get("label_names", []))


def _evaluation_record(
    store: Store,
    evaluation: metadata_store_pb2.Artifact | None,
    blessing: metadata_store_pb2.Artifact | None,
    evaluator: metadata_store_pb2.Execution | None,
    label_names: list[str],
) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """Read the metrics and the blessing through the reader of the end-of-run summary."""
    # The store may outlive the files or have been copied from another
    # machine. TFMA then finds no metrics, and load_validation_result fails
    # an assert, so a missing folder is reported instead of read.
    files_found = evaluation is not None and tf.io.gfile.isdir(evaluation.uri)
    summary = run_summary.RunSummary(run_id="", metadata_path=store.location, components=[])
    outputs = {"ModelEvaluation": [evaluation] if files_found else []}
    outputs["ModelBlessing"] = [blessing] if blessing else []
    # The same reader as the end-of-run summary, so both print the same numbers.
    run_summary.read_evaluation(summary, outputs)

    evaluation_record = None
    if evaluation is not None:
        splits_json = custom_property(evaluator, "example_splits") if evaluator else None
        example_splits = json.loads(splits_json) if splits_json else []
        evaluation_record = {
            "artifact": artifact_record(evaluation),
            "evaluator": execution_record(store, evaluator) if evaluator else None,
            "example_splits": example_splits,
            "files_found": files_found,
            "metric": run_summary.ACCURACY_METRIC,
            "accuracy": summary.test_accuracy,
            "example_count": summary.test_examples,
            "per_class_accuracy": [
                {
                    "label": label,
                    "name": label_names[label] if label < len(label_names) else None,
                    "accuracy": accuracy,
                }
                for label, accuracy in sorted(summary.per_class_accuracy.items())
            ],
        }

    blessing_record = None
    if blessing is not None:
        blessing_record = {
            "artifact": artifact_record(blessing),
            "blessed": bool(summary.blessed),
            "baseline_model_id": custom_property(blessing, "baseline_model_id"),
            "baseline_accuracy": summary.baseline_accuracy,
            "failed_thresholds": summary.failed_thresholds,
        }
    return evaluation_record, blessing_record


def _derived_artifacts(
    store: Store,
    sources: list[metadata_store_pb2.Artifact],
    type_name: str,
    run_execution_ids: set[int] | None,
) -> list[dict[str, Any]]:
    """Describe the artifacts of `type_name` output by executions that read any of `sources`.

    Only executions in `run_execution_ids` count when it is given, because
    other runs may have read the same examples with another Transform.
    """
    found: dict[int, dict[str, Any]] = {}
    for source in sources:
        for consumer in _executions_of_events(store, source.id, _INPUT_EVENTS):
            if run_execution_ids is not None and consumer.id not in run_execution_ids:
                continue
            for key, artifact in _artifacts_of_events(store, consumer.id, _OUTPUT_EVENTS):
                if artifact.type != type_name or artifact.id in found:
                    continue
                producer = producing_execution(store, artifact.id)
                record = artifact_record(artifact)
                record["split_names"] = _split_names(artifact)
                record["output_key"] = key
                record["producer"] = execution_record(store, producer) if producer else None
                if type_name == "ExampleAnomalies":
                    record["splits_with_anomalies"] = _splits_with_anomalies(artifact)
                found[artifact.id] = record
    return [found[artifact_id] for artifact_id in sorted(found)]


def describe_lineage(store: Store, pushed_model_id: int | None) -> dict[str, Any]:
    """Walk ML Metadata events from a pushed model back to the data it was trained on.

    PushedModel -> Pusher (OUTPUT event) -> its Model and ModelBlessing (INPUT events)
    Model -> Trainer -> its Examples, TransformGraph, Schema and base model
    ModelBlessing -> Evaluator -> its ModelEvaluation
    Examples -> executions that read them -> ExampleStatistics -> ExampleAnomalies
    """
    pushed = find_pushed_model(store, pushed_model_id)
    pusher = producing_execution(store, pushed.id)
    pusher_inputs = _artifacts_of_events(store, pusher.id, _INPUT_EVENTS) if pusher else []
    model = _first_of_type(pusher_inputs, "Model")
    blessing = _first_of_type(pusher_inputs, "ModelBlessing")

    trainer = producing_execution(store, model.id) if model else None
    trainer_inputs = _artifacts_of_events(store, trainer.id, _INPUT_EVENTS) if trainer else []
    examples = [artifact for _, artifact in trainer_inputs if artifact.type == "Examples"]

    evaluator = producing_execution(store, blessing.id) if blessing else None
    evaluator_outputs = (
        _artifacts_of_events(store, evaluator.id, _OUTPUT_EVENTS) if evaluator else []
    )
    evaluation, blessing_record = _evaluation_record(
        store,
        _first_of_type(evaluator_outputs, "ModelEvaluation"),
        blessing,
        evaluator,
        _label_names(trainer),
    )

    # The statistics and anomalies that the Trainer's run computed or reused
    # from the cache.
    trainer_record = execution_record(store, trainer) if trainer else None
    run_execution_ids = None
    if trainer_record and trainer_record["run_id"]:
        run_context = _run_context(store, trainer_record["run_id"])
        run_execution_ids = {
            execution.id for execution in store.metadata.get_executions_by_context(run_context.id)
        }
    statistics = _derived_artifacts(store, examples, "ExampleStatistics", run_execution_ids)
    statistics_artifacts = list(
        store.metadata.get_artifacts_by_id([item["id"] for item in statistics])
    )
    anomalies = _derived_artifacts(
        store, examples + statistics_artifacts, "ExampleAnomalies", run_execution_ids
    )

    pushed_record = artifact_record(pushed)
    pushed_record["destination"] = custom_property(pushed, "pushed_destination")
    pushed_record["version"] = custom_property(pushed, "pushed_version")
    examples_records = []
    for artifact in examples:
        record = artifact_record(artifact)
        record["split_names"] = _split_names(artifact)
        examples_records.append(record)
    return {
        "pushed_model": pushed_record,
        "pusher": execution_record(store, pusher) if pusher else None,
        "model": _record_or_none(model),
        "trainer": trainer_record,
        "base_model": _record_or_none(_first_of_type(trainer_inputs, "Model", "base_model")),
        "evaluation": evaluation,
        "blessing": blessing_record,
        "transform_graph": _record_or_none(_first_of_type(trainer_inputs, "TransformGraph")),
        "schema": _record_or_none(_first_of_type(trainer_inputs, "Schema")),
        "examples": examples_records,
        "statistics": statistics,
        "anomalies": anomalies,
    }


# --- Text output -------------------------------------------------------------------------------


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], indent: str = "") -> str:
    """Align columns on their widest cell. Cells go through str() with newlines escaped."""
    cells = [list(headers)] + [[str(cell).replace("\n", "\\n") for cell in row] for row in rows]
    widths = [max(len(row[column]) for row in cells) for column in range(len(headers))]
    lines = []
    for row in cells:
        padded = [cell.ljust(width) for cell, width in zip(row, widths, strict=True)]
        lines.append(indent + "  ".join(padded).rstrip())
    return "\n".join(lines)


def _seconds_text(seconds: float) -> str:
    return f"{seconds:.1f} s"


def _short_time(iso_time: str) -> str:
    """Return 'YYYY-MM-DD HH:MM:SS' of an ISO 8601 time (local time, offset dropped)."""
    return iso_time[:19].replace("T", " ")


def _properties_text(record: dict[str, Any]) -> str:
    values = {**record["properties"], **record["custom_properties"]}
    return ", ".join(
        f"{name}={json.dumps(value) if isinstance(value, dict | list) else value}"
        for name, value in values.items()
    )


def format_runs(runs: list[dict[str, Any]]) -> str:
    if not runs:
        return "No pipeline runs in the store."
    rows = [
        (
            run["run_id"],
            run["pipeline"] or "-",
            run["state"],
            _short_time(run["start_time"]),
            _seconds_text(run["duration_seconds"]),
            run["executions"],
        )
        for run in runs
    ]
    return format_table(("RUN ID", "PIPELINE", "STATE", "STARTED", "DURATION", "EXECUTIONS"), rows)


def format_run(description: dict[str, Any]) -> str:
    run = description["run"]
    heading = (
        f"Run {run['run_id']} of {run['pipeline'] or 'an unknown pipeline'}: {run['state']}, "
        f"started {_short_time(run['start_time'])}, {_seconds_text(run['duration_seconds'])}"
    )
    rows = [
        (
            execution["node_id"],
            execution["execution_id"],
            execution["state"],
            _short_time(execution["start_time"]),
            _seconds_text(execution["duration_seconds"]),
            "yes" if execution["cached"] else "no",
        )
        for execution in description["executions"]
    ]
    table = format_table(("NODE", "EXECUTION", "STATE", "STARTED", "DURATION", "CACHED"), rows)
    return heading + "\n" + table


def format_artifacts(grouped: dict[str, list[dict[str, Any]]]) -> str:
    if not grouped:
        return "No artifacts in the store."
    sections = []
    for type_name, records in grouped.items():
        rows = [
            (
                record["id"],
                record["state"],
                _short_time(record["create_time"]),
                record["uri"],
                _properties_text(record),
            )
            for record in records
        ]
        table = format_table(("ID", "STATE", "CREATED", "URI", "PROPERTIES"), rows, indent="  ")
        sections.append(f"{type_name} ({len(records)})\n{table}")
    return "\n\n".join(sections)


def _execution_text(execution: dict[str, Any] | None) -> str:
    if execution is None:
        return "not recorded"
    return (
        f"{execution['node_id']} execution {execution['execution_id']}, {execution['state']}, "
        f"{_seconds_text(execution['duration_seconds'])}, run {execution['run_id']}"
    )


def _artifact_row(role: str, record: dict[str, Any] | None, note: str = "") -> tuple[str, ...]:
    if record is None:
        return (role, "-", "none")
    return (role, str(record["id"]), record["uri"] + (f"  ({note})" if note else ""))


def _evaluation_rows(evaluation: dict[str, Any] | None) -> list[tuple[str, ...]]:
    if evaluation is None:
        return [("evaluation", "-", "none")]
    accuracy = evaluation["accuracy"]
    splits = ", ".join(evaluation["example_splits"]) or "unknown splits"
    per_class = ", ".join(
        f"{item['name'] or item['label']} {item['accuracy']:.3f}"
        for item in evaluation["per_class_accuracy"]
    )
    accuracy_text = "not recorded"
    if not evaluation["files_found"]:
        accuracy_text = "not readable: the evaluation folder is missing"
    elif accuracy is not None:
        accuracy_text = f"{accuracy:.4f} on {evaluation['example_count']} examples of {splits}"
    return [
        _artifact_row("evaluation", evaluation["artifact"]),
        ("evaluated by", "", _execution_text(evaluation["evaluator"])),
        ("accuracy", "", accuracy_text),
        ("per class", "", per_class or "not recorded"),
    ]


def _blessing_rows(blessing: dict[str, Any] | None) -> list[tuple[str, ...]]:
    if blessing is None:
        return [("blessing", "-", "none")]
    baseline = "none (no blessed model before it)"
    if blessing["baseline_model_id"] is not None:
        baseline = f"model {blessing['baseline_model_id']}"
        if blessing["baseline_accuracy"] is not None:
            baseline += f", accuracy {blessing['baseline_accuracy']:.4f}"
    rows = [
        _artifact_row("blessing", blessing["artifact"]),
        ("blessed", "", "yes" if blessing["blessed"] else "no"),
        ("baseline", "", baseline),
    ]
    rows += [("failed threshold", "", failure) for failure in blessing["failed_thresholds"]]
    return rows


def _data_rows(lineage: dict[str, Any]) -> list[tuple[str, ...]]:
    rows = []
    for record in lineage["examples"]:
        rows.append(_artifact_row("examples", record, "splits " + ", ".join(record["split_names"])))
    for record in lineage["statistics"]:
        rows.append(_artifact_row("statistics", record, _derived_note(record)))
    for record in lineage["anomalies"]:
        rows.append(_artifact_row("anomalies", record, _derived_note(record)))
    return rows


def _derived_note(record: dict[str, Any]) -> str:
    """Describe a statistics or anomalies artifact: its output and its splits."""
    producer = record["producer"]["node_id"] if record["producer"] else "unknown node"
    note = f"{producer}.{record['output_key']}"
    splits = ", ".join(record["split_names"])
    with_anomalies = record.get("splits_with_anomalies")
    if with_anomalies:
        note += ", anomalies in " + ", ".join(with_anomalies)
    elif with_anomalies is not None:
        note += f", no anomalies in {splits}"
    elif splits:
        note += f", splits {splits}"
    return note


def format_lineage(lineage: dict[str, Any]) -> str:
    pushed = lineage["pushed_model"]
    rows = [
        _artifact_row("pushed model", pushed),
        ("pushed to", "", f"{pushed['destination']}  (version {pushed['version']})"),
        ("pushed by", "", _execution_text(lineage["pusher"])),
        _artifact_row("model", lineage["model"]),
        ("trained by", "", _execution_text(lineage["trainer"])),
        _artifact_row("base model", lineage["base_model"]),
        *_evaluation_rows(lineage["evaluation"]),
        *_blessing_rows(lineage["blessing"]),
        _artifact_row("transform graph", lineage["transform_graph"]),
        _artifact_row("schema", lineage["schema"]),
        *_data_rows(lineage),
    ]
    return format_table(("ROLE", "ARTIFACT", "URI OR VALUE"), rows)


# --- Command line ------------------------------------------------------------------------------


def _add_common_arguments(parser: argparse.ArgumentParser, suppress_defaults: bool) -> None:
    """Add the store and output flags, accepted before and after the subcommand.

    The subcommands' copies default to SUPPRESS, so they do not overwrite a
    value given before the subcommand.
    """

    def default(value: Any) -> Any:
        return argparse.SUPPRESS if suppress_defaults else value

    parser.add_argument(
        "--metadata",
        default=default(None),
        metavar="FILE",
        help=f"ML Metadata SQLite file, opened read-only (default: {DEFAULT_METADATA}).",
    )
    parser.add_argument(
        "--connection-config",
        default=default(None),
        metavar="FILE",
        help="Text-format ml_metadata ConnectionConfig (sqlite or mysql block) or "
        "MetadataStoreClientConfig (host and port of a gRPC metadata server), "
        "in place of --metadata.",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        default=default(False),
        help="Print JSON instead of tables.",
    )
    parser.add_argument(
        "--pipeline-name",
        default=default(cfg.PIPELINE_NAME),
        help=f"Pipeline whose newest run --latest selects (default: {cfg.PIPELINE_NAME}).",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tools.inspect_metadata",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_common_arguments(parser, suppress_defaults=False)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    runs = commands.add_parser(
        "runs",
        help="Pipeline runs, or the executions of one run.",
        description="List pipeline runs with state, start time and duration. With --run or "
        "--latest, list that run's component executions instead.",
    )
    _add_common_arguments(runs, suppress_defaults=True)
    selected = runs.add_mutually_exclusive_group()
    selected.add_argument("--run", metavar="ID", help="Run id, as `runs` lists it.")
    selected.add_argument(
        "--latest", action="store_true", help="The newest run of --pipeline-name."
    )

    artifacts = commands.add_parser(
        "artifacts",
        help="Artifacts grouped by type.",
        description="List artifacts grouped by type with id, URI, state, creation time "
        "and properties.",
    )
    _add_common_arguments(artifacts, suppress_defaults=True)
    artifacts.add_argument("--type", metavar="TYPE", help="Artifact type name, e.g. Model.")
    artifacts.add_argument(
        "--run",
        metavar="ID",
        help="Only artifacts attributed to this run: its outputs and what it read or reused.",
    )

    lineage = commands.add_parser(
        "lineage",
        help="Where a pushed model came from.",
        description="Follow ML Metadata events from a pushed model to its Trainer run, "
        "evaluation, blessing, Transform graph, schema, examples and their statistics.",
    )
    _add_common_arguments(lineage, suppress_defaults=True)
    pushed = lineage.add_mutually_exclusive_group()
    pushed.add_argument(
        "--pushed-model", type=int, metavar="ID", help="Id of a PushedModel artifact."
    )
    pushed.add_argument(
        "--latest-pushed",
        action="store_true",
        help="The newest model that was pushed (the default).",
    )
    return parser


def _dispatch(args: argparse.Namespace, store: Store) -> tuple[Any, str]:
    """Run the subcommand. Return its result for JSON and its text rendering."""
    if args.command == "runs":
        run_id = args.run
        if args.latest:
            try:
                run_id = run_summary.latest_run_id(store.metadata, args.pipeline_name)
            except LookupError as error:
                raise InspectError(f"{error} Pass --pipeline-name or --run.") from None
        if run_id is None:
            runs = list_runs(store)
            return {"runs": runs}, format_runs(runs)
        description = describe_run(store, run_id)
        return description, format_run(description)

    if args.command == "artifacts":
        grouped = list_artifacts(store, args.type, args.run)
        return {"artifacts": grouped}, format_artifacts(grouped)

    lineage = describe_lineage(store, args.pushed_model)
    return lineage, format_lineage(lineage)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.metadata is not None and args.connection_config is not None:
        parser.error("pass either --metadata or --connection-config, not both.")
    try:
        store = connect(args.metadata or DEFAULT_METADATA, args.connection_config)
        try:
            result, text = _dispatch(args, store)
        except mlmd_errors.StatusError as error:
            raise InspectError(f"Reading {store.location} failed: {error}") from None
    except InspectError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(text)
    return 0


if __name__ == "__main__":
    # TFMA's metrics reader calls a deprecated TensorFlow function, which logs
    # a warning. Only the command line silences it, so tests keep every log.
    tf.get_logger().setLevel("ERROR")
    sys.exit(main())
