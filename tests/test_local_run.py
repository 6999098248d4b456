"""End to end: local_runner.py on real CIFAR-10 images, with very few training steps."""

from __future__ import annotations

import os
import pathlib

import pytest
import tensorflow as tf
from conftest import (
    LABEL_NAMES,
    PIPELINE_NODE_IDS,
    QUICK_TRAINING,
    first_run_arguments,
    serialized_example,
)

import local_runner
from pipeline import config as cfg
from pipeline import pipeline, run_summary

pytestmark = pytest.mark.slow


def pushed_versions(output: pathlib.Path) -> list[pathlib.Path]:
    return sorted((output / "serving" / "cifar10").iterdir())


def test_first_run_blesses_and_pushes_without_baseline(first_run):
    output, printed = first_run

    assert "Test accuracy:" in printed
    assert "on 100 examples" in printed
    assert "Blessed: yes" in printed
    assert "Baseline comparison: skipped, no blessed model yet" in printed
    [version] = pushed_versions(output)
    assert version.name.isdigit()
    assert (version / "saved_model.pb").is_file()
    assert (version / "variables" / "variables.index").is_file()
    assert f"Pushed to: {version}" in printed


def test_pushed_model_classifies_real_image_bytes(first_run, cifar_subset):
    output, _ = first_run
    [version] = pushed_versions(output)
    images = [sorted((cifar_subset / "test" / name).iterdir())[0] for name in LABEL_NAMES[:4]]
    payload = [path.read_bytes() for path in images]

    served = tf.saved_model.load(str(version))
    outputs = served.signatures["serving_default"](image_bytes=tf.constant(payload))
    from_examples = served.signatures["serving_examples"](
        examples=tf.constant([serialized_example(image) for image in payload])
    )

    assert outputs["probabilities"].shape == (4, len(LABEL_NAMES))
    assert {name.decode() for name in outputs["class_name"].numpy()} <= set(LABEL_NAMES)
    tf.debugging.assert_near(outputs["probabilities"], from_examples["probabilities"])


def test_metadata_records_every_component(first_run):
    output, _ = first_run

    summary = run_summary.summarize_run(str(output / "metadata.sqlite"), cfg.PIPELINE_NAME)

    states = {component.node_id: component.state for component in summary.components}
    assert set(states) == set(PIPELINE_NODE_IDS)
    assert set(states.values()) == {"complete"}
    assert len(summary.per_class_accuracy) == len(LABEL_NAMES)
    assert summary.test_examples == 100


def test_rerun_warm_starts_and_unblessed_model_is_not_pushed(first_run, cifar_subset, capsys):
    output, _ = first_run
    [before] = pushed_versions(output)

    status = local_runner.main(
        [
            "--source",
            str(cifar_subset),
            "--output-dir",
            str(output),
            "--base-weights",
            "blessed",
            "--head-epochs",
            "1",
            "--fine-tune-epochs",
            "0",
            "--min-accuracy",
            "0.99",
            *QUICK_TRAINING,
        ]
    )
    printed = capsys.readouterr().out

    assert status == 0
    assert "Blessed: no" in printed
    assert "Baseline comparison: against the last blessed model" in printed
    assert "sparse_categorical_accuracy = " in printed
    assert "failed the bound >= 0.9900" in printed
    assert "Pushed to: nothing pushed" in printed
    assert pushed_versions(output) == [before]
    # The data and its validation did not change, so TFX reused them.
    assert "ImportExampleGen                 cached" in printed
    assert "StatisticsGen                    cached" in printed


def test_unchanged_rerun_pushes_no_second_version(first_run, cifar_subset, capsys):
    output, _ = first_run
    [before] = pushed_versions(output)

    status = local_runner.main(first_run_arguments(cifar_subset, output))
    captured = capsys.readouterr()

    assert status == 0
    # The cached model is blessed again against itself as the baseline.
    assert "Trainer                          cached" in captured.out
    assert "Blessed: yes" in captured.out
    assert "Baseline comparison: against the last blessed model" in captured.out
    assert f"already pushed as version {before.name}" in captured.err
    assert "Pushed to: nothing pushed" in captured.out
    assert pushed_versions(output) == [before]


def write_examples(path: pathlib.Path, examples: list[bytes]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for example in examples:
            writer.write(example)


def test_anomalies_stop_the_run_before_training(real_images, tmp_path):
    data = tmp_path / "data"
    good = [serialized_example(image, label) for image, label in real_images[:20]]
    image = real_images[0][0]
    bad_label = serialized_example(image, 12)
    no_image = tf.train.Example(
        features=tf.train.Features(
            feature={"label": tf.train.Feature(int64_list=tf.train.Int64List(value=[1]))}
        )
    ).SerializeToString()
    write_examples(data / "train" / "train.tfrecord", good + [bad_label, no_image])
    write_examples(data / "eval" / "eval.tfrecord", good[:5])
    write_examples(data / "test" / "test.tfrecord", good[:5])
    config = cfg.PipelineConfig(
        data_root=str(data),
        pipeline_root=str(tmp_path / "root"),
        serving_base=str(tmp_path / "serving"),
        metadata_path=str(tmp_path / "metadata.sqlite"),
        label_names=LABEL_NAMES,
        training=cfg.TrainingConfig(base_weights="none"),
    )
    from tfx import v1 as tfx

    with pytest.raises(Exception, match="anomalies") as error:
        tfx.orchestration.LocalDagRunner().run(pipeline.create_pipeline(config))

    message = str(error.value)
    assert "train: feature 'label'" in message
    assert "train: feature 'image_raw'" in message
    assert "eval:" not in message
    summary = run_summary.summarize_run(config.metadata_path, cfg.PIPELINE_NAME)
    ran = {component.node_id for component in summary.components}
    assert "Trainer" not in ran
    assert "Transform" not in ran
    assert not os.path.exists(tmp_path / "serving")
