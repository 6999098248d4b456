"""Rebuild the run report of a finished pipeline run from its ML Metadata store.

    python -m tools.make_report --metadata runs/metadata.sqlite --output-dir /tmp/report
    python -m tools.make_report --run 2026-12-04T21:31:37.043825 --output-dir /tmp/report

Finds the run's artifacts through ML Metadata (the newest run unless --run
names one), builds the same report as the RunReport component with
components/report.py, and prints the path of report.html. A run that failed
part-way gets a report of what it wrote, with the missing parts marked.
Errors exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

# TensorFlow prints C++ start-up notes to stderr unless this is set before its import.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from ml_metadata.proto import metadata_store_pb2  # noqa: E402
from tfx.types import artifact_utils  # noqa: E402
from tfx.types.artifact import Artifact  # noqa: E402

from pipeline import config as cfg  # noqa: E402
from pipeline import run_summary  # noqa: E402

logger = logging.getLogger("make_report")

DEFAULT_METADATA = os.path.join("runs", "metadata.sqlite")

# (node id, artifact type) of each input of the report, by ReportInputs field.
REPORT_SOURCES = {
    "examples": ("ImportExampleGen", "Examples"),
    "statistics": ("StatisticsGen", "ExampleStatistics"),
    "model": ("Trainer", "Model"),
    "model_run": ("Trainer", "ModelRun"),
    "evaluation": ("Evaluator", "ModelEvaluation"),
    "blessing": ("Evaluator", "ModelBlessing"),
    "pushed_model": ("Pusher", "PushedModel"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--metadata",
        default=DEFAULT_METADATA,
        help="ML Metadata SQLite file of the run's --output-dir (default: %(default)s).",
    )
    parser.add_argument(
        "--run",
        default=None,
        help="Pipeline run id, as the run summary prints it after 'Run'. Default: the newest run.",
    )
    parser.add_argument(
        "--pipeline-name",
        default=cfg.PIPELINE_NAME,
        help="Name of the pipeline in the store (default: %(default)s).",
    )
    parser.add_argument(
        "--output-dir",
        required=True,
        help="Folder for report.html, report.md and the PNG files; created if missing, "
        "and an earlier report in it is replaced.",
    )
    return parser


def find_report_inputs(metadata_path: str, pipeline_name: str, run_id: str | None):
    """Return (run id, ReportInputs) of run `run_id`, the newest run when None."""
    from components.report_data import ReportInputs

    store = run_summary.open_store(metadata_path)
    run_id = run_id or run_summary.latest_run_id(store, pipeline_name)
    executions = run_summary.run_executions(store, pipeline_name, run_id)
    artifact_types = {item.id: item for item in store.get_artifact_types()}

    found: dict[str, Artifact | None] = dict.fromkeys(REPORT_SOURCES)
    label_names: tuple[str, ...] = ()
    for node_id, execution in executions:
        outputs = run_summary.output_artifacts(store, execution.id)
        for field, (source_node, type_name) in REPORT_SOURCES.items():
            if node_id == source_node and outputs.get(type_name):
                found[field] = _to_tfx_artifact(artifact_types, outputs[type_name][0])
        if node_id == "Trainer" and "custom_config" in execution.custom_properties:
            custom_config = json.loads(execution.custom_properties["custom_config"].string_value)
            label_names = tuple(custom_config.get("label_names", ()))
    return run_id, ReportInputs(label_names=label_names, **found)


def _to_tfx_artifact(
    artifact_types: dict[int, metadata_store_pb2.ArtifactType],
    artifact: metadata_store_pb2.Artifact,
) -> Artifact:
    return artifact_utils.deserialize_artifact(artifact_types[artifact.type_id], artifact)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname).1s %(message)s")
    from components.report import build_report

    try:
        run_id, inputs = find_report_inputs(
            os.path.abspath(args.metadata), args.pipeline_name, args.run
        )
        logger.info("Building the report of run %s.", run_id)
        result = build_report(inputs, args.output_dir)
    except (FileNotFoundError, FileExistsError, LookupError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(result.html_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
