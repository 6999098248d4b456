"""Summary of one pipeline run, read back from ML Metadata.

Everything here comes from the metadata store and the artifacts it points to,
so the summary of a finished run can be rebuilt at any time from its SQLite
file: per-component state and wall time, test accuracy overall and per class,
the blessing with the thresholds that decided it, and the pushed path.
"""

from __future__ import annotations

import dataclasses
import os

import ml_metadata as mlmd
import tensorflow_model_analysis as tfma
from ml_metadata.proto import metadata_store_pb2

ACCURACY_METRIC = "sparse_categorical_accuracy"

# The RunReport component (components/report.py): its node id, its output
# artifact's type and the custom property that names the HTML file in it.
REPORT_NODE_ID = "RunReport"
REPORT_TYPE_NAME = "cifar10_tfx.RunReport"
REPORT_HTML_PROPERTY = "html_file"

_STATE_NAMES = {
    metadata_store_pb2.Execution.NEW: "new",
    metadata_store_pb2.Execution.RUNNING: "running",
    metadata_store_pb2.Execution.COMPLETE: "complete",
    metadata_store_pb2.Execution.FAILED: "failed",
    metadata_store_pb2.Execution.CACHED: "cached",
    metadata_store_pb2.Execution.CANCELED: "canceled",
}


@dataclasses.dataclass
class ComponentRun:
    node_id: str
    state: str
    seconds: float


@dataclasses.dataclass
class RunSummary:
    run_id: str
    metadata_path: str
    components: list[ComponentRun]
    test_accuracy: float | None = None
    per_class_accuracy: dict[int, float] = dataclasses.field(default_factory=dict)
    test_examples: int | None = None
    blessed: bool | None = None
    baseline_compared: bool = False
    baseline_accuracy: float | None = None
    failed_thresholds: list[str] = dataclasses.field(default_factory=list)
    pushed_path: str | None = None
    model_uri: str | None = None
    # Trainer's ModelRun artifact: TensorBoard logs, checkpoints, history.json.
    model_run_uri: str | None = None
    # The HTML page of the RunReport component's artifact.
    report_path: str | None = None


def open_store(metadata_path: str) -> mlmd.MetadataStore:
    if not os.path.isfile(metadata_path):
        raise FileNotFoundError(f"No ML Metadata store at {metadata_path}.")
    connection = metadata_store_pb2.ConnectionConfig()
    connection.sqlite.filename_uri = metadata_path
    connection.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READONLY
    return mlmd.MetadataStore(connection)


def latest_run_id(store: mlmd.MetadataStore, pipeline_name: str) -> str:
    """Return the id of the newest run of the pipeline."""
    runs = [
        context
        for context in store.get_contexts_by_type("pipeline_run")
        if _belongs_to(store, context, pipeline_name)
    ]
    if not runs:
        raise LookupError(f"The metadata store has no run of pipeline {pipeline_name!r}.")
    return max(runs, key=lambda context: context.create_time_since_epoch).name


def _belongs_to(store: mlmd.MetadataStore, run_context, pipeline_name: str) -> bool:
    executions = store.get_executions_by_context(run_context.id)
    if not executions:
        return False
    names = {context.name for context in store.get_contexts_by_execution(executions[0].id)}
    return pipeline_name in names


def run_executions(
    store: mlmd.MetadataStore, pipeline_name: str, run_id: str
) -> list[tuple[str, metadata_store_pb2.Execution]]:
    """Return (node id, execution) for every execution of run `run_id`, oldest first."""
    run_context = store.get_context_by_type_and_name("pipeline_run", run_id)
    if run_context is None:
        raise LookupError(f"The metadata store has no pipeline run {run_id!r}.")
    node_prefix = pipeline_name + "."
    result = []
    for execution in sorted(
        store.get_executions_by_context(run_context.id), key=lambda item: item.id
    ):
        node_id = next(
            (
                context.name[len(node_prefix) :]
                for context in store.get_contexts_by_execution(execution.id)
                if context.name.startswith(node_prefix)
            ),
            execution.type,
        )
        result.append((node_id, execution))
    return result


def summarize_run(metadata_path: str, pipeline_name: str, run_id: str | None = None) -> RunSummary:
    """Collect the summary of run `run_id` (the newest run when None)."""
    store = open_store(metadata_path)
    run_id = run_id or latest_run_id(store, pipeline_name)
    executions = run_executions(store, pipeline_name, run_id)
    summary = RunSummary(run_id=run_id, metadata_path=metadata_path, components=[])

    for node_id, execution in executions:
        seconds = (
            execution.last_update_time_since_epoch - execution.create_time_since_epoch
        ) / 1000
        state = _STATE_NAMES.get(execution.last_known_state, "unknown")
        summary.components.append(ComponentRun(node_id, state, seconds))
        outputs = output_artifacts(store, execution.id)
        if node_id == "Evaluator":
            read_evaluation(summary, outputs)
        elif node_id == "Pusher":
            for artifact in outputs.get("PushedModel", []):
                if _int_property(artifact, "pushed") == 1:
                    summary.pushed_path = artifact.custom_properties[
                        "pushed_destination"
                    ].string_value
        elif node_id == "Trainer":
            models = outputs.get("Model", [])
            summary.model_uri = models[0].uri if models else None
            model_runs = outputs.get("ModelRun", [])
            summary.model_run_uri = model_runs[0].uri if model_runs else None
        elif node_id == REPORT_NODE_ID:
            for report in outputs.get(REPORT_TYPE_NAME, []):
                if REPORT_HTML_PROPERTY in report.custom_properties:
                    summary.report_path = os.path.join(
                        report.uri, report.custom_properties[REPORT_HTML_PROPERTY].string_value
                    )
    return summary


def output_artifacts(store: mlmd.MetadataStore, execution_id: int) -> dict[str, list]:
    events = store.get_events_by_execution_ids([execution_id])
    output_types = (metadata_store_pb2.Event.OUTPUT, metadata_store_pb2.Event.DECLARED_OUTPUT)
    artifact_ids = [event.artifact_id for event in events if event.type in output_types]
    if not artifact_ids:
        return {}
    types = {item.id: item.name for item in store.get_artifact_types()}
    result: dict[str, list] = {}
    for artifact in store.get_artifacts_by_id(artifact_ids):
        result.setdefault(types[artifact.type_id], []).append(artifact)
    return result


def _int_property(artifact, name: str) -> int | None:
    if name in artifact.custom_properties:
        return artifact.custom_properties[name].int_value
    return None


def read_evaluation(summary: RunSummary, outputs: dict[str, list]) -> None:
    """Fill the evaluation fields of `summary` from ModelEvaluation and ModelBlessing artifacts."""
    for blessing in outputs.get("ModelBlessing", []):
        summary.blessed = _int_property(blessing, "blessed") == 1
        summary.baseline_compared = "baseline_model_id" in blessing.custom_properties
    for evaluation in outputs.get("ModelEvaluation", []):
        for metrics in tfma.load_metrics(evaluation.uri):
            _read_slice_metrics(summary, metrics)
        validation = tfma.load_validation_result(evaluation.uri)
        for per_slice in validation.metric_validations_per_slice:
            for failure in per_slice.failures:
                summary.failed_thresholds.append(
                    f"{failure.metric_key.name}"
                    f"{' change' if failure.metric_key.is_diff else ''} = "
                    f"{metric_value(failure.metric_value):.4f} failed "
                    f"{threshold_text(failure.metric_threshold)}"
                )


def _read_slice_metrics(summary: RunSummary, metrics) -> None:
    slice_keys = list(metrics.slice_key.single_slice_keys)
    for entry in metrics.metric_keys_and_values:
        key, value = entry.key, metric_value(entry.value)
        is_baseline = key.model_name == "baseline"
        if key.is_diff:
            continue
        if key.name == "example_count" and not slice_keys and not is_baseline:
            summary.test_examples = int(value)
        if key.name != ACCURACY_METRIC:
            continue
        if not slice_keys:
            if is_baseline:
                summary.baseline_accuracy = value
            else:
                summary.test_accuracy = value
        elif not is_baseline and slice_keys[0].column == "label":
            summary.per_class_accuracy[int(slice_keys[0].int64_value)] = value


def metric_value(value) -> float:
    """Return a TFMA MetricValue's double, or nan for other kinds of value."""
    if value.HasField("double_value"):
        return value.double_value.value
    return float("nan")


def threshold_text(threshold) -> str:
    """Describe a TFMA MetricThreshold: its value bounds, or else its change threshold."""
    if threshold.HasField("value_threshold"):
        bound = threshold.value_threshold
        parts = []
        if bound.HasField("lower_bound"):
            parts.append(f">= {bound.lower_bound.value:.4f}")
        if bound.HasField("upper_bound"):
            parts.append(f"<= {bound.upper_bound.value:.4f}")
        return "the bound " + " and ".join(parts)
    # The pipeline adds a slack of -1e-10 against float noise; rounding (and
    # adding 0.0, which turns -0.0 into 0.0) shows the configured value.
    allowed = round(threshold.change_threshold.absolute.value, 4) + 0.0
    return f"the change threshold (allowed change >= {allowed:.4f} vs. the baseline)"


def format_summary(summary: RunSummary, label_names: tuple[str, ...] = ()) -> str:
    """Render the summary as the lines the local runner prints at the end."""
    lines = [f"Run {summary.run_id}"]
    for component in summary.components:
        lines.append(f"  {component.node_id:32s} {component.state:9s} {component.seconds:8.1f} s")
    if summary.test_accuracy is not None:
        examples = f" on {summary.test_examples} examples" if summary.test_examples else ""
        lines.append(f"Test accuracy: {summary.test_accuracy:.4f}{examples}")
    if summary.per_class_accuracy:
        per_class = ", ".join(
            f"{label_names[label] if label < len(label_names) else label} {value:.3f}"
            for label, value in sorted(summary.per_class_accuracy.items())
        )
        lines.append(f"Per-class accuracy: {per_class}")
    if summary.blessed is None:
        lines.append("Blessed: no evaluation in this run")
    else:
        lines.append(f"Blessed: {'yes' if summary.blessed else 'no'}")
    if summary.baseline_compared:
        baseline = (
            f"{summary.baseline_accuracy:.4f}" if summary.baseline_accuracy is not None else "n/a"
        )
        lines.append(f"Baseline comparison: against the last blessed model (accuracy {baseline})")
    elif summary.blessed is not None:
        lines.append(
            "Baseline comparison: skipped, no blessed model yet "
            "(judged on the accuracy bound alone)"
        )
    for failure in summary.failed_thresholds:
        lines.append(f"  Not blessed because {failure}")
    lines.append(f"Pushed to: {summary.pushed_path or 'nothing pushed'}")
    lines.append(f"Report: {summary.report_path or 'not written in this run'}")
    lines.append(f"ML Metadata: {summary.metadata_path}")
    return "\n".join(lines)
