"""AnomalyGate: stops the pipeline when ExampleValidator found anomalies.

TFX's ExampleValidator records anomalies but does not fail, so without a gate
the Trainer would train on data that breaks the schema (a label outside the
label set or of another type than int64, an example without image bytes, a
split without examples). The gate reads each split's
anomalies and raises with every anomaly named; Transform runs after it.
"""

import logging
import os
from typing import TypedDict

from tensorflow_metadata.proto.v0 import anomalies_pb2
from tfx import v1 as tfx
from tfx.types import artifact_utils

logger = logging.getLogger(__name__)

# File name ExampleValidator writes into each split's folder (TFX 1.16).
SCHEMA_DIFF_FILE = "SchemaDiff.pb"


class DataAnomaliesError(RuntimeError):
    """The examples do not match the curated schema."""


def describe_anomalies(anomalies_uri: str, split_names: list[str]) -> list[str]:
    """Return one line per anomaly found, as 'split: feature: description'."""
    problems = []
    for split in split_names:
        path = os.path.join(anomalies_uri, f"Split-{split}", SCHEMA_DIFF_FILE)
        with open(path, "rb") as handle:
            anomalies = anomalies_pb2.Anomalies.FromString(handle.read())
        # TFDV sets data_missing, and reports nothing else, when a split has no examples.
        if anomalies.data_missing:
            problems.append(
                f"{split}: dataset: the split has no examples. Check that the split's "
                "TFRecord files contain records, or prepare the data again."
            )
        for feature, info in sorted(anomalies.anomaly_info.items()):
            problems.append(f"{split}: feature '{feature}': {info.description}")
        if anomalies.HasField("dataset_anomaly_info"):
            problems.append(f"{split}: dataset: {anomalies.dataset_anomaly_info.description}")
    return problems


class GateOutput(TypedDict):
    checked_splits: str


@tfx.dsl.components.component
def AnomalyGate(  # noqa: N802 - TFX names components like classes.
    anomalies: tfx.dsl.components.InputArtifact[tfx.types.standard_artifacts.ExampleAnomalies],
) -> GateOutput:
    """Raise DataAnomaliesError if any split has anomalies; return the checked splits."""
    split_names = artifact_utils.decode_split_names(anomalies.split_names)
    problems = describe_anomalies(anomalies.uri, split_names)
    if problems:
        raise DataAnomaliesError(
            "ExampleValidator found anomalies, so the pipeline stops before training:\n  "
            + "\n  ".join(problems)
            + "\nFix the data (re-run data preparation on a clean source) or, if the data "
            "is right, update the curated schema in schemas/."
        )
    logger.info("No anomalies in splits %s.", ", ".join(split_names))
    return {"checked_splits": ",".join(split_names)}
