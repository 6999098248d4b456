"""Configuration checks and the DAG that create_pipeline() wires."""

from __future__ import annotations

import dataclasses

import pytest
from conftest import LABEL_NAMES, PIPELINE_NODE_IDS

from components import pusher
from pipeline import config as cfg
from pipeline import pipeline


def make_config(tmp_path, **changes) -> cfg.PipelineConfig:
    values = dict(
        data_root=str(tmp_path / "data"),
        pipeline_root=str(tmp_path / "root"),
        serving_base=str(tmp_path / "serving"),
        metadata_path=str(tmp_path / "metadata.sqlite"),
        label_names=LABEL_NAMES,
    )
    values.update(changes)
    return cfg.PipelineConfig(**values)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"image_size": 16}, "image_size=16 is below 32"),
        ({"batch_size": 0}, "batch_size=0"),
        ({"head_epochs": 0, "fine_tune_epochs": 0}, "nothing would train"),
        ({"steps_per_epoch": 0}, "steps_per_epoch=0"),
        ({"learning_rate": 0.0}, "learning_rate=0.0 must be positive"),
        ({"dropout": 1.0}, "dropout=1.0"),
        ({"base_weights": "imagenett"}, "base_weights='imagenett'"),
        ({"optimizer": "rmsprop"}, "optimizer='rmsprop' is not one of adam, sgd"),
        ({"momentum": 1.0}, r"momentum=1.0 must be in \[0, 1\)"),
        ({"weight_decay": -1e-4}, "weight_decay=-0.0001 must not be negative"),
        ({"shift_pixels": 32}, r"shift_pixels=32 must be in 0..31"),
    ],
)
def test_invalid_training_value_rejected(changes, message):
    with pytest.raises(cfg.ConfigError, match=message):
        cfg.TrainingConfig(**changes).validate()


@pytest.mark.parametrize("bound", [-0.1, 1.5, 60.0])
def test_accuracy_bound_outside_unit_interval_rejected(bound):
    with pytest.raises(cfg.ConfigError, match="outside 0..1"):
        cfg.EvaluationConfig(min_accuracy=bound).validate()


def test_weights_file_path_accepted(tmp_path):
    weights = tmp_path / "resnet50.weights.h5"
    weights.write_bytes(b"")

    cfg.TrainingConfig(base_weights=str(weights)).validate()


def test_training_config_survives_custom_config_round_trip():
    original = cfg.TrainingConfig(image_size=64, base_weights="none", steps_per_epoch=5)

    restored = cfg.TrainingConfig.from_custom_config(original.to_custom_config())

    assert restored == original


def component(definition, node_id: str):
    return next(node for node in definition.components if node.id == node_id)


def test_pipeline_wires_every_component_in_order(tmp_path):
    definition = pipeline.create_pipeline(make_config(tmp_path))

    ids = [component.id for component in definition.components]
    assert sorted(ids) == sorted(PIPELINE_NODE_IDS)
    # Components come topologically sorted: validation gates Transform, the
    # Evaluator's blessing gates the Pusher, and the report reads the Pusher's output.
    assert ids.index("AnomalyGate") < ids.index("Transform") < ids.index("Trainer")
    assert ids.index("Trainer") < ids.index("Evaluator") < ids.index("Pusher")
    assert ids.index("Pusher") < ids.index("RunReport")
    report = component(definition, "RunReport")
    assert {node.id for node in report.upstream_nodes} >= {"Trainer", "Evaluator", "Pusher"}
    transform = component(definition, "Transform")
    assert "AnomalyGate" in {node.id for node in transform.upstream_nodes}


def test_blessed_warm_start_feeds_resolver_model_to_trainer(tmp_path):
    warm = make_config(tmp_path, training=cfg.TrainingConfig(base_weights="blessed"))
    cold = make_config(tmp_path, training=cfg.TrainingConfig(base_weights="none"))

    warm_trainer = component(pipeline.create_pipeline(warm), "Trainer")
    cold_trainer = component(pipeline.create_pipeline(cold), "Trainer")

    assert "base_model" in warm_trainer.inputs
    assert "base_model" not in cold_trainer.inputs


def test_pusher_runs_atomic_executor(tmp_path):
    definition = pipeline.create_pipeline(make_config(tmp_path))

    executor_spec = component(definition, "Pusher").executor_spec

    assert executor_spec.executor_class is pusher.Executor


def test_schema_label_domain_must_match_label_names(tmp_path):
    config = make_config(tmp_path, label_names=("cat", "dog", "bird"))

    with pytest.raises(cfg.ConfigError, match="0..2"):
        pipeline.create_pipeline(config)


def test_accuracy_thresholds_gate_overall_slice_only(tmp_path):
    evaluation = cfg.EvaluationConfig(min_accuracy=0.7, max_accuracy_drop=0.02)

    eval_config = pipeline.eval_config(evaluation)

    [accuracy] = [
        metric
        for metric in eval_config.metrics_specs[0].metrics
        if metric.class_name == "SparseCategoricalAccuracy"
    ]
    assert not accuracy.HasField("threshold")
    [per_slice] = accuracy.per_slice_thresholds
    assert len(per_slice.slicing_specs) == 1
    assert not per_slice.slicing_specs[0].feature_keys
    assert per_slice.threshold.value_threshold.lower_bound.value == pytest.approx(0.7)
    assert per_slice.threshold.change_threshold.absolute.value == pytest.approx(-0.02)


def test_config_is_immutable():
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.TrainingConfig().image_size = 64
