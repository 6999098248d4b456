"""Run summary lines for an Evaluator that does not bless, read from TFMA's own output files.

The validation result comes from TFMA's metrics validator applied to the pipeline's EvalConfig,
completed with a baseline model as TFX's Evaluator completes it. No pipeline runs.
"""

from __future__ import annotations

import pathlib

import tensorflow as tf
import tensorflow_model_analysis as tfma
from ml_metadata.proto import metadata_store_pb2
from tensorflow_model_analysis.evaluators import metrics_validator
from tensorflow_model_analysis.writers import metrics_plots_and_validations_writer as tfma_writer

from pipeline import config as cfg
from pipeline import pipeline as pipeline_definition
from pipeline import run_summary

OVERALL_SLICE = ()


def evaluator_eval_config(evaluation: cfg.EvaluationConfig) -> tfma.EvalConfig:
    """Return the pipeline's EvalConfig as TFX's Evaluator uses it when a baseline exists."""
    eval_config = tfma.utils.update_eval_config_with_defaults(
        pipeline_definition.eval_config(evaluation), has_baseline=True, rubber_stamp=True
    )
    tfma.utils.verify_eval_config(eval_config)
    return eval_config


def accuracy_keys(eval_config: tfma.EvalConfig) -> tuple:
    """Return the candidate's accuracy key and its change key, as the thresholds name them."""
    thresholds = tfma.metrics.metric_thresholds_from_metrics_specs(
        eval_config.metrics_specs, eval_config=eval_config
    )
    [value_key] = [
        key
        for key in thresholds
        if key.name == run_summary.ACCURACY_METRIC
        and key.model_name == tfma.CANDIDATE_KEY
        and not key.is_diff
    ]
    return value_key, value_key.make_diff_key()


def write_evaluation(
    folder: pathlib.Path,
    eval_config: tfma.EvalConfig,
    candidate_accuracy: float,
    baseline_accuracy: float,
) -> tfma.ValidationResult:
    """Write the `metrics` and `validations` files that TFMA's writer puts in a ModelEvaluation."""
    value_key, change_key = accuracy_keys(eval_config)
    metrics = {
        value_key: candidate_accuracy,
        value_key.make_baseline_key(tfma.BASELINE_KEY): baseline_accuracy,
        change_key: candidate_accuracy - baseline_accuracy,
    }
    validation = metrics_validator.validate_metrics((OVERALL_SLICE, metrics), eval_config)
    metrics_proto = tfma_writer.convert_slice_metrics_to_proto((OVERALL_SLICE, metrics), None)

    folder.mkdir(parents=True)
    # TFMA's writer stores each as one TFRecord file without a shard suffix.
    with tf.io.TFRecordWriter(str(folder / "metrics")) as writer:
        writer.write(metrics_proto.SerializeToString())
    with tf.io.TFRecordWriter(str(folder / "validations")) as writer:
        writer.write(validation.SerializeToString())
    return validation


def evaluator_outputs(evaluation_folder: pathlib.Path, blessed: bool) -> dict[str, list]:
    """Return the Evaluator's output artifacts as ML Metadata stores them, with a baseline."""
    blessing = metadata_store_pb2.Artifact(uri=str(evaluation_folder.parent / "blessing"))
    blessing.custom_properties["blessed"].int_value = int(blessed)
    blessing.custom_properties["baseline_model_id"].int_value = 7
    evaluation = metadata_store_pb2.Artifact(uri=str(evaluation_folder))
    return {"ModelBlessing": [blessing], "ModelEvaluation": [evaluation]}


def test_threshold_text_of_value_and_change_parts():
    threshold = tfma.MetricThreshold(
        value_threshold=tfma.GenericValueThreshold(lower_bound={"value": 0.6}),
        change_threshold=tfma.GenericChangeThreshold(
            direction=tfma.MetricDirection.HIGHER_IS_BETTER, absolute={"value": -0.02}
        ),
    )
    change_only = tfma.MetricThreshold(change_threshold=threshold.change_threshold)

    assert run_summary.threshold_text(threshold) == "the bound >= 0.6000"
    assert run_summary.threshold_text(change_only) == (
        "the change threshold (allowed change >= -0.0200 vs. the baseline)"
    )


def test_worse_than_baseline_names_change_threshold(tmp_path):
    eval_config = evaluator_eval_config(
        cfg.EvaluationConfig(min_accuracy=0.5, max_accuracy_drop=0.02)
    )
    evaluation_folder = tmp_path / "evaluation"
    # Above the bound of 0.5, but 0.05 below the baseline, more than the allowed drop of 0.02.
    validation = write_evaluation(
        evaluation_folder, eval_config, candidate_accuracy=0.65, baseline_accuracy=0.70
    )
    summary = run_summary.RunSummary(run_id="run-1", metadata_path="metadata.sqlite", components=[])

    run_summary.read_evaluation(summary, evaluator_outputs(evaluation_folder, blessed=False))
    printed = run_summary.format_summary(summary)

    assert not validation.validation_ok
    assert summary.blessed is False
    assert summary.baseline_accuracy == 0.70
    assert summary.test_accuracy == 0.65
    assert summary.failed_thresholds == [
        "sparse_categorical_accuracy change = -0.0500 failed the change threshold "
        "(allowed change >= -0.0200 vs. the baseline)"
    ]
    lines = printed.splitlines()
    assert "Blessed: no" in lines
    assert "Baseline comparison: against the last blessed model (accuracy 0.7000)" in lines
    assert [line for line in lines if "Not blessed because" in line] == [
        "  Not blessed because sparse_categorical_accuracy change = -0.0500 failed the change "
        "threshold (allowed change >= -0.0200 vs. the baseline)"
    ]
    assert "Pushed to: nothing pushed" in lines


def test_equal_accuracy_passes_default_change_threshold(tmp_path):
    # max_accuracy_drop=0 keeps a slack of 1e-10, so a candidate exactly as accurate as the
    # baseline fails no threshold.
    eval_config = evaluator_eval_config(cfg.EvaluationConfig(min_accuracy=0.5))
    evaluation_folder = tmp_path / "evaluation"
    validation = write_evaluation(
        evaluation_folder, eval_config, candidate_accuracy=0.7, baseline_accuracy=0.7
    )
    summary = run_summary.RunSummary(run_id="run-1", metadata_path="metadata.sqlite", components=[])

    run_summary.read_evaluation(summary, evaluator_outputs(evaluation_folder, blessed=True))

    assert validation.validation_ok
    assert summary.failed_thresholds == []


def test_change_threshold_slack_shown_as_zero():
    # The pipeline's default threshold is -1e-10 (a slack against float noise).
    threshold = tfma.MetricThreshold(
        change_threshold=tfma.GenericChangeThreshold(
            direction=tfma.MetricDirection.HIGHER_IS_BETTER, absolute={"value": -1e-10}
        )
    )

    assert "allowed change >= 0.0000 vs." in run_summary.threshold_text(threshold)
