"""The last blessed model of a metadata store and the label names it was trained on.

The pipeline's `latest_blessed_model_resolver` hands that model to the
Evaluator as the baseline (and to the Trainer with --base-weights blessed).
A baseline trained on other classes cannot be compared with the new model, so
the local runner checks its label names before it runs anything.
"""

from __future__ import annotations

import json
import os

import ml_metadata as mlmd
from ml_metadata.proto import metadata_store_pb2

from pipeline import config as cfg
from pipeline import run_summary

# Names TFX 1.16 uses in ML Metadata: the context type of a pipeline, the
# ModelBlessing custom properties written by the Evaluator, and the Trainer's
# exec property that contains `custom_config` as JSON.
PIPELINE_CONTEXT_TYPE = "pipeline"
BLESSED_PROPERTY = "blessed"
CURRENT_MODEL_ID_PROPERTY = "current_model_id"
CUSTOM_CONFIG_PROPERTY = "custom_config"


def latest_blessed_model(
    store: mlmd.MetadataStore, pipeline_name: str
) -> metadata_store_pb2.Artifact | None:
    """Return the Model that TFX's LatestBlessedModelStrategy resolves, or None.

    Like the resolver, this looks at the LIVE Model and ModelBlessing artifacts
    of the pipeline's context and picks the blessed Model with the highest id.
    """
    context = store.get_context_by_type_and_name(PIPELINE_CONTEXT_TYPE, pipeline_name)
    if context is None:
        return None
    types = {item.id: item.name for item in store.get_artifact_types()}
    models = []
    blessed_model_ids = set()
    for artifact in store.get_artifacts_by_context(context.id):
        if artifact.state != metadata_store_pb2.Artifact.LIVE:
            continue
        type_name = types.get(artifact.type_id)
        if type_name == "Model":
            models.append(artifact)
        elif type_name == "ModelBlessing" and _int_property(artifact, BLESSED_PROPERTY) == 1:
            blessed_model_ids.add(_int_property(artifact, CURRENT_MODEL_ID_PROPERTY))
    blessed = [model for model in models if model.id in blessed_model_ids]
    return max(blessed, key=lambda model: model.id, default=None)


def _int_property(artifact: metadata_store_pb2.Artifact, name: str) -> int | None:
    if name in artifact.custom_properties:
        return artifact.custom_properties[name].int_value
    return None


def trained_label_names(
    store: mlmd.MetadataStore, model: metadata_store_pb2.Artifact
) -> tuple[str, ...] | None:
    """Return the `label_names` of the Trainer execution that produced `model`, or None."""
    outputs = [
        event.execution_id
        for event in store.get_events_by_artifact_ids([model.id])
        if event.type == metadata_store_pb2.Event.OUTPUT
    ]
    for execution in store.get_executions_by_id(outputs):
        if CUSTOM_CONFIG_PROPERTY not in execution.custom_properties:
            continue
        custom_config = json.loads(execution.custom_properties[CUSTOM_CONFIG_PROPERTY].string_value)
        if isinstance(custom_config, dict) and "label_names" in custom_config:
            return tuple(custom_config["label_names"])
    return None


def check_baseline_label_names(
    metadata_path: str, pipeline_name: str, label_names: tuple[str, ...]
) -> None:
    """Raise ConfigError if the store's last blessed model was trained on other label names.

    A missing store, no blessed model, or a Trainer execution without
    `label_names` in its custom_config pass the check.
    """
    if not os.path.isfile(metadata_path):
        return
    store = run_summary.open_store(metadata_path)
    model = latest_blessed_model(store, pipeline_name)
    if model is None:
        return
    baseline_names = trained_label_names(store, model)
    if baseline_names is None or baseline_names == tuple(label_names):
        return
    raise cfg.ConfigError(
        f"The last blessed model in {metadata_path} ({model.uri}) was trained on "
        f"{len(baseline_names)} classes ({', '.join(baseline_names)}), but this run's data "
        f"has {len(label_names)} classes ({', '.join(label_names)}). That model would be "
        "the Evaluator's baseline, but a model trained on other classes is no meaningful one. "
        "Pass another --output-dir for this dataset, so that it gets a metadata store "
        "of its own."
    )
