"""tools/inspect_metadata.py against the ML Metadata store of a real pipeline run.

The tests marked slow read the store of the shared `first_run` fixture. When
test_local_run.py ran first, that store also contains a second run that was not
blessed and pushed nothing, so no test here assumes a number of runs.
"""

from __future__ import annotations

import hashlib
import json
import pathlib
import shutil
import socket

import ml_metadata as mlmd
import pytest
from conftest import LABEL_NAMES
from ml_metadata.proto import metadata_store_pb2

from pipeline import config as cfg
from pipeline import pipeline, run_summary
from tools import inspect_metadata

slow = pytest.mark.slow


def run_tool(capsys, *arguments: str) -> tuple[int, str, str]:
    """Call main() and return (exit status, stdout, stderr)."""
    status = inspect_metadata.main(list(arguments))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def run_json(capsys, *arguments: str):
    status, output, errors = run_tool(capsys, *arguments, "--json")
    assert status == 0, errors
    return json.loads(output)


@pytest.fixture(scope="module")
def pipeline_nodes(tmp_path_factory) -> set[str]:
    """Node ids of the pipeline definition that `first_run` ran."""
    folder = tmp_path_factory.mktemp("definition")
    config = cfg.PipelineConfig(
        data_root=str(folder / "data"),
        pipeline_root=str(folder / "pipeline"),
        serving_base=str(folder / "serving"),
        metadata_path=None,
        label_names=LABEL_NAMES,
        training=cfg.TrainingConfig(base_weights=cfg.BASE_WEIGHTS_NONE),
    )
    return {component.id for component in pipeline.create_pipeline(config).components}


@pytest.fixture()
def store_path(first_run) -> str:
    output, _ = first_run
    return str(output / "metadata.sqlite")


@pytest.fixture()
def pushed_folder(first_run) -> pathlib.Path:
    output, _ = first_run
    [version] = sorted((output / "serving" / "cifar10").iterdir())
    return version


@pytest.fixture()
def empty_store(tmp_path) -> str:
    """An ML Metadata SQLite store with MLMD's tables and nothing in them."""
    path = tmp_path / "empty.sqlite"
    connection = metadata_store_pb2.ConnectionConfig()
    connection.sqlite.filename_uri = str(path)
    connection.sqlite.connection_mode = (
        metadata_store_pb2.SqliteMetadataSourceConfig.READWRITE_OPENCREATE
    )
    mlmd.MetadataStore(connection)
    return str(path)


def write_sqlite_config(path: pathlib.Path, store: str, mode: str = "READONLY") -> str:
    path.write_text(f'sqlite {{ filename_uri: "{store}" connection_mode: {mode} }}\n')
    return str(path)


# --- runs -------------------------------------------------------------------------------------


@slow
def test_runs_lists_a_complete_run(store_path, pipeline_nodes, capsys):
    runs = run_json(capsys, "--metadata", store_path, "runs")["runs"]

    assert runs
    assert all(run["pipeline"] == cfg.PIPELINE_NAME for run in runs)
    assert "complete" in {run["state"] for run in runs}
    first = runs[0]
    assert first["executions"] == len(pipeline_nodes)
    assert first["duration_seconds"] > 0
    assert set(first) == {
        "run_id",
        "pipeline",
        "state",
        "start_time",
        "duration_seconds",
        "executions",
    }


@slow
def test_runs_table_names_every_run(store_path, capsys):
    runs = run_json(capsys, "--metadata", store_path, "runs")["runs"]

    status, table, _ = run_tool(capsys, "--metadata", store_path, "runs")

    assert status == 0
    assert table.splitlines()[0].split() == [
        "RUN",
        "ID",
        "PIPELINE",
        "STATE",
        "STARTED",
        "DURATION",
        "EXECUTIONS",
    ]
    for run in runs:
        assert run["run_id"] in table


@slow
def test_run_lists_every_component(store_path, pipeline_nodes, capsys):
    first_run_id = run_json(capsys, "--metadata", store_path, "runs")["runs"][0]["run_id"]

    described = run_json(capsys, "--metadata", store_path, "runs", "--run", first_run_id)

    assert described["run"]["run_id"] == first_run_id
    assert described["run"]["state"] == "complete"
    executions = described["executions"]
    assert {execution["node_id"] for execution in executions} == pipeline_nodes
    assert {"ImportExampleGen", "Transform", "Trainer", "Evaluator", "Pusher"} <= pipeline_nodes
    assert {execution["state"] for execution in executions} == {"complete"}
    assert not any(execution["cached"] for execution in executions)
    assert all(execution["run_id"] == first_run_id for execution in executions)
    summary = run_summary.summarize_run(store_path, cfg.PIPELINE_NAME, first_run_id)
    assert [(item["node_id"], item["state"]) for item in executions] == [
        (component.node_id, component.state) for component in summary.components
    ]


@slow
def test_run_table_shows_state_and_cache(store_path, pipeline_nodes, capsys):
    first_run_id = run_json(capsys, "--metadata", store_path, "runs")["runs"][0]["run_id"]

    status, table, _ = run_tool(capsys, "--metadata", store_path, "runs", "--run", first_run_id)

    assert status == 0
    lines = table.splitlines()
    assert lines[0].startswith(f"Run {first_run_id} of {cfg.PIPELINE_NAME}: complete")
    assert lines[1].split() == ["NODE", "EXECUTION", "STATE", "STARTED", "DURATION", "CACHED"]
    trainer_line = next(line for line in lines if line.startswith("Trainer "))
    assert trainer_line.split()[2] == "complete"
    assert trainer_line.split()[-1] == "no"
    assert len(lines) == 2 + len(pipeline_nodes)


@slow
def test_runs_latest_is_newest_run(store_path, pipeline_nodes, capsys):
    store = run_summary.open_store(store_path)
    newest = run_summary.latest_run_id(store, cfg.PIPELINE_NAME)

    described = run_json(capsys, "--metadata", store_path, "runs", "--latest")

    assert described["run"]["run_id"] == newest
    assert {execution["node_id"] for execution in described["executions"]} == pipeline_nodes


@slow
def test_unknown_run_id_exits_2(store_path, capsys):
    status, output, errors = run_tool(
        capsys, "--metadata", store_path, "runs", "--run", "2000-01-01T00:00:00"
    )

    assert status == 2
    assert output == ""
    assert "No pipeline run '2000-01-01T00:00:00'" in errors
    assert store_path in errors


# --- artifacts --------------------------------------------------------------------------------


@slow
def test_pushed_model_artifact_names_serving_folder(store_path, pushed_folder, capsys):
    grouped = run_json(capsys, "--metadata", store_path, "artifacts", "--type", "PushedModel")[
        "artifacts"
    ]

    assert list(grouped) == ["PushedModel"]
    pushed = [
        artifact for artifact in grouped["PushedModel"] if artifact["custom_properties"]["pushed"]
    ]
    assert len(pushed) == 1
    properties = pushed[0]["custom_properties"]
    assert properties["pushed_destination"] == str(pushed_folder)
    assert properties["pushed_version"] == pushed_folder.name
    assert pushed[0]["state"] == "live"


@slow
def test_artifacts_grouped_by_type(store_path, first_run, capsys):
    output, _ = first_run

    grouped = run_json(capsys, "--metadata", store_path, "artifacts")["artifacts"]

    for type_name in (
        "Examples",
        "ExampleStatistics",
        "Schema",
        "ExampleAnomalies",
        "TransformGraph",
        "Model",
        "ModelRun",
        "ModelEvaluation",
        "ModelBlessing",
        "PushedModel",
    ):
        assert grouped.get(type_name), type_name
        assert all(artifact["type"] == type_name for artifact in grouped[type_name])
    [examples] = grouped["Examples"]
    assert examples["uri"].startswith(str(output / "pipeline" / "ImportExampleGen"))
    assert json.loads(examples["properties"]["split_names"]) == ["train", "eval", "test"]
    blessings = {artifact["custom_properties"]["blessed"] for artifact in grouped["ModelBlessing"]}
    assert 1 in blessings


@slow
def test_artifacts_table_has_section_per_type(store_path, pushed_folder, capsys):
    status, table, _ = run_tool(capsys, "--metadata", store_path, "artifacts")

    assert status == 0
    headings = [line for line in table.splitlines() if line and not line.startswith(" ")]
    assert "Examples (1)" in headings
    assert any(heading.startswith("PushedModel (") for heading in headings)
    assert f"pushed_destination={pushed_folder}" in table
    assert "split_names=" in table


@slow
def test_artifacts_of_run(store_path, capsys):
    first_run_id = run_json(capsys, "--metadata", store_path, "runs")["runs"][0]["run_id"]

    grouped = run_json(
        capsys, "--metadata", store_path, "artifacts", "--run", first_run_id, "--type", "Model"
    )["artifacts"]

    [model] = grouped["Model"]
    lineage = run_json(capsys, "--metadata", store_path, "lineage")
    assert model["id"] == lineage["model"]["id"]


@slow
def test_unknown_artifact_type_exits_2(store_path, capsys):
    status, _, errors = run_tool(capsys, "--metadata", store_path, "artifacts", "--type", "Modle")

    assert status == 2
    assert "No artifact type 'Modle'" in errors
    assert "PushedModel" in errors


# --- lineage ----------------------------------------------------------------------------------


@slow
def test_lineage_reaches_pushed_folder_and_trainer(store_path, pushed_folder, capsys):
    lineage = run_json(capsys, "--metadata", store_path, "lineage")

    assert lineage["pushed_model"]["destination"] == str(pushed_folder)
    assert lineage["pushed_model"]["version"] == pushed_folder.name
    assert lineage["pusher"]["node_id"] == "Pusher"
    assert lineage["model"]["type"] == "Model"
    assert lineage["trainer"]["node_id"] == "Trainer"
    assert lineage["trainer"]["state"] == "complete"
    assert lineage["trainer"]["run_id"] == lineage["pusher"]["run_id"]
    # The first run trains from random initialisation: no warm start.
    assert lineage["base_model"] is None


@slow
def test_lineage_reaches_examples_schema_and_transform(store_path, first_run, capsys):
    output, _ = first_run
    pipeline_root = output / "pipeline"

    lineage = run_json(capsys, "--metadata", store_path, "lineage")

    [examples] = lineage["examples"]
    assert examples["type"] == "Examples"
    assert pathlib.Path(examples["uri"]).parent.parent == pipeline_root / "ImportExampleGen"
    assert examples["split_names"] == ["train", "eval", "test"]
    assert lineage["schema"]["type"] == "Schema"
    assert lineage["schema"]["uri"].startswith(str(pipeline_root / "ImportSchemaGen"))
    assert lineage["transform_graph"]["type"] == "TransformGraph"
    assert lineage["transform_graph"]["uri"].startswith(str(pipeline_root / "Transform"))


@slow
def test_lineage_evaluation_matches_run_summary(store_path, capsys):
    lineage = run_json(capsys, "--metadata", store_path, "lineage")
    summary = run_summary.summarize_run(
        store_path, cfg.PIPELINE_NAME, lineage["evaluation"]["evaluator"]["run_id"]
    )

    evaluation = lineage["evaluation"]
    assert evaluation["artifact"]["type"] == "ModelEvaluation"
    assert evaluation["files_found"] is True
    assert evaluation["example_splits"] == ["test"]
    assert evaluation["accuracy"] == summary.test_accuracy
    assert evaluation["example_count"] == summary.test_examples == 100
    per_class = {item["label"]: item["accuracy"] for item in evaluation["per_class_accuracy"]}
    assert per_class == summary.per_class_accuracy
    names = [item["name"] for item in evaluation["per_class_accuracy"]]
    assert names[:2] == ["airplane", "automobile"]


@slow
def test_lineage_blessing_without_baseline(store_path, capsys):
    lineage = run_json(capsys, "--metadata", store_path, "lineage")

    blessing = lineage["blessing"]
    assert blessing["artifact"]["type"] == "ModelBlessing"
    assert blessing["blessed"] is True
    assert blessing["baseline_model_id"] is None
    assert blessing["failed_thresholds"] == []


@slow
def test_lineage_statistics_and_anomalies_of_examples(store_path, capsys):
    lineage = run_json(capsys, "--metadata", store_path, "lineage")

    statistics = {item["producer"]["node_id"]: item for item in lineage["statistics"]}
    assert statistics["StatisticsGen"]["type"] == "ExampleStatistics"
    assert statistics["StatisticsGen"]["output_key"] == "statistics"
    assert statistics["StatisticsGen"]["split_names"] == ["train", "eval", "test"]
    anomalies = {item["producer"]["node_id"]: item for item in lineage["anomalies"]}
    assert anomalies["ExampleValidator"]["type"] == "ExampleAnomalies"
    assert anomalies["ExampleValidator"]["splits_with_anomalies"] == []


@slow
def test_lineage_table_shows_same_facts(store_path, capsys):
    lineage = run_json(capsys, "--metadata", store_path, "lineage")

    status, table, _ = run_tool(capsys, "--metadata", store_path, "lineage")

    assert status == 0
    rows = {line.split()[0]: line for line in table.splitlines()[1:] if line.split()}
    assert lineage["pushed_model"]["destination"] in table
    assert lineage["examples"][0]["uri"] in rows["examples"]
    assert "(splits train, eval, test)" in rows["examples"]
    assert lineage["schema"]["uri"] in rows["schema"]
    assert rows["blessed"].split() == ["blessed", "yes"]
    accuracy = f"{lineage['evaluation']['accuracy']:.4f} on 100 examples of test"
    assert accuracy in rows["accuracy"]


@slow
def test_lineage_by_pushed_model_id(store_path, capsys):
    latest = run_json(capsys, "--metadata", store_path, "lineage", "--latest-pushed")

    chosen = run_json(
        capsys,
        "--metadata",
        store_path,
        "lineage",
        "--pushed-model",
        str(latest["pushed_model"]["id"]),
    )

    assert chosen == latest


@slow
def test_lineage_of_non_pushed_model_exits_2(store_path, capsys):
    model_id = run_json(capsys, "--metadata", store_path, "lineage")["model"]["id"]

    status, _, errors = run_tool(
        capsys, "--metadata", store_path, "lineage", "--pushed-model", str(model_id)
    )

    assert status == 2
    assert f"Artifact {model_id} is a Model, not a PushedModel" in errors


@slow
def test_lineage_with_missing_evaluation_folder(store_path, tmp_path, capsys):
    copy = tmp_path / "metadata.sqlite"
    shutil.copyfile(store_path, copy)
    before = run_json(capsys, "--metadata", str(copy), "lineage")
    evaluation_id = before["evaluation"]["artifact"]["id"]
    connection = metadata_store_pb2.ConnectionConfig()
    connection.sqlite.filename_uri = str(copy)
    writable = mlmd.MetadataStore(connection)
    [evaluation] = writable.get_artifacts_by_id([evaluation_id])
    evaluation.uri = str(tmp_path / "deleted" / "evaluation")
    writable.put_artifacts([evaluation])

    lineage = run_json(capsys, "--metadata", str(copy), "lineage")
    status, table, _ = run_tool(capsys, "--metadata", str(copy), "lineage")

    assert lineage["evaluation"]["files_found"] is False
    assert lineage["evaluation"]["accuracy"] is None
    assert lineage["blessing"]["blessed"] is True
    assert status == 0
    assert "not readable: the evaluation folder is missing" in table


@slow
def test_inspection_leaves_store_unchanged(store_path, capsys):
    before = hashlib.sha256(pathlib.Path(store_path).read_bytes()).hexdigest()

    for command in (["runs"], ["runs", "--latest"], ["artifacts"], ["lineage"]):
        status, _, errors = run_tool(capsys, "--metadata", store_path, *command)
        assert status == 0, errors

    assert hashlib.sha256(pathlib.Path(store_path).read_bytes()).hexdigest() == before


# --- --connection-config ----------------------------------------------------------------------


@slow
def test_connection_config_reads_same_store(store_path, tmp_path, capsys):
    config = write_sqlite_config(tmp_path / "connection.pbtxt", store_path)

    through_config = run_json(capsys, "--connection-config", config, "runs")
    direct = run_json(capsys, "--metadata", store_path, "runs")
    lineage = run_json(capsys, "lineage", "--connection-config", config)

    assert through_config == direct
    assert lineage == run_json(capsys, "--metadata", store_path, "lineage")


def test_connection_config_never_creates_sqlite(tmp_path, capsys):
    missing = tmp_path / "missing.sqlite"
    config = write_sqlite_config(tmp_path / "c.pbtxt", str(missing), "READWRITE_OPENCREATE")

    status, _, errors = run_tool(capsys, "--connection-config", config, "runs")

    assert status == 2
    assert f"No ML Metadata store at {missing}" in errors
    assert config in errors
    assert not missing.exists()


def test_parse_connection_config_detects_kind():
    mysql = inspect_metadata.parse_connection_config(
        'mysql { host: "db.example" port: 3306 database: "mlmd" }', "mysql.pbtxt"
    )
    server = inspect_metadata.parse_connection_config(
        'host: "metadata.example" port: 8080', "grpc.pbtxt"
    )

    assert isinstance(mysql, metadata_store_pb2.ConnectionConfig)
    assert mysql.mysql.database == "mlmd"
    assert isinstance(server, metadata_store_pb2.MetadataStoreClientConfig)
    assert server.port == 8080


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "sets no database"),
        ("port: 8080", "sets no host"),
        ("sqlite {", "neither a text-format ConnectionConfig"),
        ("hostname: 'x'", "neither a text-format ConnectionConfig"),
    ],
)
def test_invalid_connection_config_exits_2(text, expected, tmp_path, capsys):
    config = tmp_path / "connection.pbtxt"
    config.write_text(text)

    status, _, errors = run_tool(capsys, "--connection-config", str(config), "runs")

    assert status == 2
    assert expected in errors
    assert str(config) in errors


def test_missing_connection_config_exits_2(tmp_path, capsys):
    missing = tmp_path / "absent.pbtxt"

    status, _, errors = run_tool(capsys, "--connection-config", str(missing), "runs")

    assert status == 2
    assert f"Cannot read the connection config {missing}" in errors


def test_unreachable_metadata_server_exits_2(tmp_path, capsys):
    # A bound socket that does not listen refuses connections on loopback.
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        config = tmp_path / "grpc.pbtxt"
        config.write_text(f'host: "127.0.0.1" port: {port}')

        status, _, errors = run_tool(capsys, "--connection-config", str(config), "runs")

    assert status == 2
    assert f"metadata server 127.0.0.1:{port}" in errors


# --- errors without a run ---------------------------------------------------------------------


def test_missing_store_exits_2_naming_path(tmp_path, capsys):
    missing = tmp_path / "nowhere" / "metadata.sqlite"

    for command in ("runs", "artifacts", "lineage"):
        status, output, errors = run_tool(capsys, "--metadata", str(missing), command)
        assert status == 2
        assert output == ""
        assert f"No ML Metadata store at {missing}" in errors
    assert not missing.exists()


def test_file_that_is_not_a_store_exits_2(tmp_path, capsys):
    not_a_store = tmp_path / "notes.sqlite"
    not_a_store.write_text("not a database")

    status, _, errors = run_tool(capsys, "--metadata", str(not_a_store), "runs")

    assert status == 2
    assert f"{not_a_store} is not a readable ML Metadata store" in errors


def test_store_without_pushed_model_exits_2(empty_store, capsys):
    status, _, errors = run_tool(capsys, "--metadata", empty_store, "lineage")

    assert status == 2
    assert f"No pushed model in {empty_store}" in errors


def test_empty_store_lists_nothing(empty_store, capsys):
    assert run_json(capsys, "--metadata", empty_store, "runs") == {"runs": []}
    assert run_json(capsys, "--metadata", empty_store, "artifacts") == {"artifacts": {}}
    status, table, _ = run_tool(capsys, "--metadata", empty_store, "runs")
    assert status == 0
    assert table.strip() == "No pipeline runs in the store."


def test_metadata_and_connection_config_conflict(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        inspect_metadata.main(
            ["--metadata", "a.sqlite", "runs", "--connection-config", str(tmp_path / "c")]
        )

    assert exit_info.value.code == 2
    assert "either --metadata or --connection-config" in capsys.readouterr().err


def test_help_lists_subcommands_and_flags(capsys):
    with pytest.raises(SystemExit) as exit_info:
        inspect_metadata.main(["--help"])
    text = capsys.readouterr().out

    assert exit_info.value.code == 0
    for word in ("runs", "artifacts", "lineage", "--metadata", "--connection-config", "--json"):
        assert word in text


def test_lineage_help_names_selection_flags(capsys):
    with pytest.raises(SystemExit):
        inspect_metadata.main(["lineage", "--help"])
    text = capsys.readouterr().out

    assert "--pushed-model ID" in text
    assert "--latest-pushed" in text
