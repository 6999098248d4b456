"""Read the figures of a run report from the artifacts of one pipeline run.

Every function here takes TFX artifacts, as the RunReport component receives
them or as tools/make_report.py rebuilds them from ML Metadata, and returns
plain values. components/report_plots.py and components/report_render.py turn
those values into figures and pages.
"""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import tensorflow as tf
import tensorflow_data_validation as tfdv
import tensorflow_model_analysis as tfma
from tensorflow_model_analysis.writers import eval_config_writer
from tfx.components.statistics_gen import stats_artifact_utils
from tfx.types import artifact_utils
from tfx.types.artifact import Artifact
from tfx.utils import path_utils

from components.exporter import EXAMPLES_INPUT, EXAMPLES_SIGNATURE
from components.trainer import HISTORY_FILE
from pipeline import config as cfg
from pipeline import run_summary

# Examples per call of the serving signature over the test split.
PREDICTION_BATCH_SIZE = 256
# Misclassified test images shown in the report, taken in the split's order.
MAX_MISCLASSIFIED = 25
# Training phases in the order the Trainer runs them (components/trainer.py).
PHASE_NAMES = ("head", "fine_tune")
HISTORY_KEYS = ("loss", "accuracy", "val_loss", "val_accuracy", "images_per_second")


@dataclasses.dataclass
class ReportInputs:
    """The artifacts a run report is built from; None where the run has none."""

    examples: Artifact | None
    statistics: Artifact | None
    model: Artifact | None
    model_run: Artifact | None
    evaluation: Artifact | None
    blessing: Artifact | None
    pushed_model: Artifact | None
    label_names: tuple[str, ...]


@dataclasses.dataclass
class PhaseHistory:
    """Per-epoch metrics of one training phase, as Keras' fit() recorded them."""

    name: str
    metrics: dict[str, list[float]]

    @property
    def epochs(self) -> int:
        return max((len(values) for values in self.metrics.values()), default=0)


@dataclasses.dataclass
class SplitData:
    """Size and label counts of one split."""

    name: str
    # From the ExampleStatistics artifact (TFDV).
    num_examples: int | None
    label_present: int | None
    image_present: int | None
    label_min: float | None
    label_max: float | None
    # Counted exactly in the Examples artifact, by class id.
    class_counts: dict[int, int]


@dataclasses.dataclass
class Misclassified:
    """A test example the model got wrong."""

    index: int
    image_bytes: bytes
    true_label: int
    predicted_label: int
    # Probability the model gave to its predicted class.
    confidence: float


@dataclasses.dataclass
class TestPredictions:
    """The model's predictions over the whole test split."""

    # confusion[true, predicted] = number of test examples.
    confusion: np.ndarray
    misclassified: list[Misclassified]

    @property
    def total(self) -> int:
        return int(self.confusion.sum())

    @property
    def correct(self) -> int:
        return int(np.trace(self.confusion))

    @property
    def accuracy(self) -> float:
        return self.correct / self.total if self.total else float("nan")

    def precision(self) -> np.ndarray:
        """Fraction of the examples predicted as each class that belong to it (nan if none)."""
        predicted = self.confusion.sum(axis=0)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(predicted > 0, np.diag(self.confusion) / predicted, np.nan)

    def recall(self) -> np.ndarray:
        """Fraction of each class's examples predicted correctly (nan if the class has none)."""
        actual = self.confusion.sum(axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(actual > 0, np.diag(self.confusion) / actual, np.nan)

    def row_normalised(self) -> np.ndarray:
        actual = self.confusion.sum(axis=1, keepdims=True)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(actual > 0, self.confusion / np.maximum(actual, 1), 0.0)


@dataclasses.dataclass
class EvaluationData:
    """Metrics, thresholds and blessing decision of the Evaluator."""

    # Overall accuracy, per-class accuracy, example count, blessing, baseline
    # accuracy and failed thresholds, read as the end-of-run summary reads them.
    summary: run_summary.RunSummary
    # One line per configured threshold, e.g. "sparse_categorical_accuracy on
    # the overall slice: the bound >= 0.5000".
    thresholds: list[str]
    crossentropy: float | None
    baseline_crossentropy: float | None
    baseline_examples: int | None
    baseline_model: str | None
    validation_ok: bool | None


@dataclasses.dataclass
class PushData:
    pushed: bool
    destination: str | None
    version: str | None


def split_files(examples: Artifact, split: str) -> list[str]:
    """Return the TFRecord files of one split of an Examples artifact."""
    split_uri = artifact_utils.get_split_uri([examples], split)
    files = sorted(tf.io.gfile.glob(os.path.join(split_uri, "*")))
    if not files:
        raise FileNotFoundError(
            f"No example files found in {split_uri}; the Examples artifact is incomplete."
        )
    return files


def _record_dataset(files: list[str]) -> tf.data.Dataset:
    # ImportExampleGen writes GZIP-compressed TFRecord files ending in .gz.
    compression = "GZIP" if files[0].endswith(".gz") else ""
    return tf.data.TFRecordDataset(files, compression_type=compression)


def read_history(model_run: Artifact) -> list[PhaseHistory] | None:
    """Read the Trainer's history.json and return its phases in training order (None if missing)."""
    path = os.path.join(model_run.uri, HISTORY_FILE)
    if not tf.io.gfile.exists(path):
        return None
    with tf.io.gfile.GFile(path) as handle:
        history = json.load(handle)
    phases = []
    for name in [*PHASE_NAMES, *sorted(set(history) - set(PHASE_NAMES))]:
        if name in history:
            metrics = {
                key: [float(value) for value in history[name].get(key, [])] for key in HISTORY_KEYS
            }
            phases.append(PhaseHistory(name, metrics))
    return phases


def count_labels(examples: Artifact, split: str) -> dict[int, int]:
    """Count the examples of each label in one split, parsing only the label."""
    spec = {cfg.LABEL_KEY: tf.io.FixedLenFeature([], tf.int64)}
    counts: dict[int, int] = {}
    dataset = _record_dataset(split_files(examples, split)).batch(1024)
    for batch in dataset:
        labels = tf.io.parse_example(batch, spec)[cfg.LABEL_KEY].numpy()
        for label, count in zip(*np.unique(labels, return_counts=True), strict=True):
            counts[int(label)] = counts.get(int(label), 0) + int(count)
    return counts


def read_split_data(examples: Artifact, statistics: Artifact | None) -> list[SplitData]:
    """Sizes and label counts of every split, from the statistics and the examples."""
    splits = []
    for split in artifact_utils.decode_split_names(examples.split_names):
        data = SplitData(split, None, None, None, None, None, count_labels(examples, split))
        if statistics is not None and split in artifact_utils.decode_split_names(
            statistics.split_names
        ):
            _read_split_statistics(data, statistics)
        splits.append(data)
    return splits


def _read_split_statistics(data: SplitData, statistics: Artifact) -> None:
    view = stats_artifact_utils.load_statistics(statistics, data.name).get_default_slice()
    data.num_examples = int(view.proto().num_examples)
    label = view.get_feature(tfdv.FeaturePath([cfg.LABEL_KEY]))
    if label is not None:
        data.label_present = int(label.common_statistics().num_non_missing)
        numeric = label.numeric_statistics()
        if numeric is not None:
            data.label_min, data.label_max = numeric.min, numeric.max
    image = view.get_feature(tfdv.FeaturePath([cfg.IMAGE_KEY]))
    if image is not None:
        data.image_present = int(image.common_statistics().num_non_missing)


def predict_test_split(
    model: Artifact, examples: Artifact, split: str = cfg.TEST_SPLIT
) -> TestPredictions:
    """Run the model's serving_examples signature over every example of `split`, in batches."""
    loaded = tf.saved_model.load(path_utils.serving_model_path(model.uri))
    classify = loaded.signatures[EXAMPLES_SIGNATURE]
    num_classes = int(classify.structured_outputs["probabilities"].shape[-1])
    spec = {
        cfg.LABEL_KEY: tf.io.FixedLenFeature([], tf.int64),
        cfg.IMAGE_KEY: tf.io.FixedLenFeature([], tf.string),
    }
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    misclassified: list[Misclassified] = []
    index = 0
    for batch in _record_dataset(split_files(examples, split)).batch(PREDICTION_BATCH_SIZE):
        features = tf.io.parse_example(batch, spec)
        outputs = classify(**{EXAMPLES_INPUT: batch})
        labels = features[cfg.LABEL_KEY].numpy()
        predicted = outputs["class_id"].numpy()
        probabilities = outputs["probabilities"].numpy()
        if labels.min() < 0 or labels.max() >= num_classes:
            raise ValueError(
                f"The {split} split has labels outside 0..{num_classes - 1} "
                f"(found {labels.min()}..{labels.max()}), but the model has {num_classes} "
                "classes; the model was not trained on this data."
            )
        np.add.at(confusion, (labels, predicted), 1)
        for position in np.flatnonzero(labels != predicted):
            if len(misclassified) == MAX_MISCLASSIFIED:
                break
            misclassified.append(
                Misclassified(
                    index=index + int(position),
                    image_bytes=features[cfg.IMAGE_KEY][position].numpy(),
                    true_label=int(labels[position]),
                    predicted_label=int(predicted[position]),
                    confidence=float(probabilities[position, predicted[position]]),
                )
            )
        index += len(labels)
    return TestPredictions(confusion, misclassified)


def read_evaluation(evaluation: Artifact, blessing: Artifact | None) -> EvaluationData:
    """Metrics, thresholds and the blessing decision of the Evaluator."""
    summary = run_summary.RunSummary(run_id="", metadata_path="", components=[])
    outputs = {"ModelEvaluation": [evaluation.mlmd_artifact]}
    if blessing is not None:
        outputs["ModelBlessing"] = [blessing.mlmd_artifact]
    run_summary.read_evaluation(summary, outputs)

    data = EvaluationData(summary, [], None, None, None, None, None)
    for metrics in tfma.load_metrics(evaluation.uri):
        if metrics.slice_key.single_slice_keys:
            continue
        for entry in metrics.metric_keys_and_values:
            if entry.key.is_diff:
                continue
            value = run_summary.metric_value(entry.value)
            baseline = entry.key.model_name == "baseline"
            if entry.key.name == "sparse_categorical_crossentropy":
                if baseline:
                    data.baseline_crossentropy = value
                else:
                    data.crossentropy = value
            elif entry.key.name == "example_count" and baseline:
                data.baseline_examples = int(value)
    data.validation_ok = tfma.load_validation_result(evaluation.uri).validation_ok
    # load_eval_run reads only eval_config.json: the config with the thresholds
    # that the Evaluator applied, without change thresholds when it had no baseline.
    eval_config, _, _, _ = eval_config_writer.load_eval_run(evaluation.uri)
    data.thresholds = describe_thresholds(eval_config) if eval_config else []
    if blessing is not None and "baseline_model" in blessing.mlmd_artifact.custom_properties:
        data.baseline_model = blessing.mlmd_artifact.custom_properties[
            "baseline_model"
        ].string_value
    return data


def describe_thresholds(eval_config: tfma.EvalConfig) -> list[str]:
    """Return one line per threshold of the evaluation's config."""
    lines = []
    for metrics_spec in eval_config.metrics_specs:
        for metric in metrics_spec.metrics:
            if metric.HasField("threshold"):
                lines.append(f"{metric.class_name} on every slice: {_bounds(metric.threshold)}")
            for per_slice in metric.per_slice_thresholds:
                slices = ", ".join(_slice_text(spec) for spec in per_slice.slicing_specs)
                lines.append(f"{metric.class_name} on {slices}: {_bounds(per_slice.threshold)}")
    return lines


def _bounds(threshold) -> str:
    parts = []
    if threshold.HasField("value_threshold"):
        parts.append(
            run_summary.threshold_text(
                tfma.MetricThreshold(value_threshold=threshold.value_threshold)
            )
        )
    if threshold.HasField("change_threshold"):
        parts.append(
            run_summary.threshold_text(
                tfma.MetricThreshold(change_threshold=threshold.change_threshold)
            )
        )
    return " and ".join(parts)


def _slice_text(spec) -> str:
    if not spec.feature_keys and not spec.feature_values:
        return "the overall slice"
    return "the slices by " + ", ".join(spec.feature_keys)


def read_push(pushed_model: Artifact) -> PushData:
    properties = pushed_model.mlmd_artifact.custom_properties
    pushed = "pushed" in properties and properties["pushed"].int_value == 1
    destination = properties["pushed_destination"].string_value if pushed else None
    version = properties["pushed_version"].string_value if pushed else None
    return PushData(pushed, destination, version)
